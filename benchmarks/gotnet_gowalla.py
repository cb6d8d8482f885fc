"""GOTNet+LightGCN vs LightGCN on Gowalla: seconds per training batch and per epoch, side by side; OT solvers at scale.

    python benchmarks/gotnet_gowalla.py --data-dir ../shared/data                 # 10 timed batches per model
    python benchmarks/gotnet_gowalla.py --data-dir ../shared/data --models lightgcn gotnet-converged --batches 10
    python benchmarks/gotnet_gowalla.py --data-dir ../shared/data --solvers        # + one Eq. 8 step per solver

Models (the shipped configs' settings, d = 64, 3 layers, batch 2048, Adam lr 1e-3, L2 1e-4):
``lightgcn`` (configs/lightgcn/gowalla.yaml) and GOTNet+LightGCN (configs/gotnet/gowalla.yaml: K = 299, P = 410,
H = 1, Sinkhorn on scaling vectors warm-started across batches, at most 5 iterations per Eq. 8 step) as
``gotnet-batch10`` (the shipped setting: Eq. 8 over the batch's users and items every 10th batch; the batches between
attend to the stored centroids), ``gotnet-batch1`` / ``gotnet-batch2`` (the same every batch / every 2nd batch),
``gotnet-every10`` / ``gotnet-every1`` (Eq. 8 over all 29,858 users and 40,981 items every 10th / every batch),
``gotnet-every1-log`` (as every1 with the log-domain Sinkhorn) and ``gotnet-converged`` (all nodes, every batch, to an
L1 marginal error of 1e-3, at most 100 iterations); ``gotnet-attend-only`` clusters in the warm-up round only, so its
timed batches are those without Eq. 8 (attention to the stored centroids, mixture, readout).

A training batch is what Lightning runs per step: ``training_step`` (the full ``embed()``, BPR + L2 + OT terms),
``backward``, ``Adam.step``. All models see the same pre-sampled batches and take turns batch by batch (round robin),
so that load from other processes on a shared machine falls on all of them alike. One warm-up round (which also
draws GOTNet's first centroids) is not timed. Seconds per epoch = mean seconds per batch x batches per epoch (printed
as such: no epoch is run in full); keep ``--batches`` a multiple of 10 for ``gotnet-every10``'s mean to be fair.

``--solvers``: one assignment step of Eq. 8 at Gowalla's user scale (N = 29,858 points, K = 299, d = 64, eps 0.01 of
the max-normalised cost) on LightGCN's layer-0 user embeddings projected by GOTNet's f, cold (random centroids) and
warm (from the centroids and potentials of a previous step), for Sinkhorn (scaling and log domain) and Greenkhorn: seconds, iterations
(Greenkhorn: sweeps of ceil((N + K) / block) greedy steps) and the L1 marginal error reached, with a cap on
iterations so that the table finishes.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.roundrobin import round_robin  # noqa: E402  (after the path insert)

# each variant: configs/gotnet/gowalla.yaml with these overrides
VARIANTS = {"gotnet-batch1": {"cluster_nodes": "batch", "cluster_every": 1, "ot_iters": 5},
            "gotnet-batch2": {"cluster_nodes": "batch", "cluster_every": 2, "ot_iters": 5},
            "gotnet-batch10": {"cluster_nodes": "batch", "cluster_every": 10, "ot_iters": 5},
            "gotnet-every10": {"cluster_nodes": "all", "cluster_every": 10, "ot_iters": 5},
            "gotnet-every1": {"cluster_nodes": "all", "cluster_every": 1, "ot_iters": 5},
            "gotnet-converged": {"cluster_nodes": "all", "cluster_every": 1, "ot_iters": 100, "ot_tol": 1e-3},
            "gotnet-every1-log": {"cluster_nodes": "all", "cluster_every": 1, "ot_iters": 5, "ot_method": "log"},
            "gotnet-attend-only": {"cluster_nodes": "batch", "cluster_every": 10 ** 9, "ot_iters": 5}}


def gotnet_args() -> dict:
    import yaml
    spec = yaml.safe_load((REPO / "configs" / "gotnet" / "gowalla.yaml").read_text())
    args = dict(spec["model"]["init_args"]["model"]["init_args"])
    backbone = args.pop("backbone")
    assert backbone["class_path"] == "recot.nn.LightGCN", backbone
    return {"backbone": backbone["init_args"], **args}


def build(name: str, data, lr: float):
    import torch

    from recot.nn import GOTNet, LightGCN
    from recot.tasks import RankingTask

    torch.manual_seed(2020)  # the same initial embeddings for every model
    if name == "lightgcn":
        model = LightGCN(embedding_dim=64, num_layers=3, init_std=0.1)
    else:
        args = gotnet_args()
        model = GOTNet(LightGCN(**args.pop("backbone")), **{**args, **VARIANTS[name]}, seed=2020)
    task = RankingTask(model, optimizer=lambda groups: torch.optim.Adam(groups, lr=lr), l2_reg=1e-4)
    model.bind(data)
    return task, task.configure_optimizers()


def time_models(dm, names: list[str], batches: int, lr: float) -> None:
    loader = dm.train_dataloader()
    per_epoch = len(loader)
    stream = iter(loader)
    data = [next(stream) for _ in range(batches + 1)]
    models = {name: build(name, dm.data, lr) for name in names}
    seconds, _, losses = round_robin(models, data)
    anchor = statistics.mean(seconds["lightgcn"]) if "lightgcn" in seconds else None
    print(f"| model | s/batch (mean) | s/batch (min..max) | s/epoch (mean x {per_epoch}) | x lightgcn | "
          f"loss of the last batch | OT iterations per step (users / items) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, values in seconds.items():
        mean = statistics.mean(values)
        logged = models[name][0].model.log_values()
        iters = (f"{logged['user_ot_iters']:.1f} / {logged['item_ot_iters']:.1f}" if "user_ot_iters" in logged
                 else "—")
        ratio = f"{mean / anchor:.2f}" if anchor else "—"
        print(f"| {name} | {mean:.2f} | {min(values):.2f}..{max(values):.2f} | {mean * per_epoch:.0f} | {ratio} | "
              f"{losses[name]:.4f} | {iters} |", flush=True)


def time_solvers(dm, greenkhorn_sweeps: int) -> None:
    import torch

    from recot.nn import GOTNet, LightGCN
    from recot.nn.gotnet import OTClustering, OTSettings

    torch.manual_seed(2020)
    model = GOTNet(LightGCN(embedding_dim=64, num_layers=3), seed=2020)
    model.bind(dm.data)
    with torch.no_grad():
        users = model.initial()[0]
        points = torch.matmul(users.unsqueeze(0), model.users[0].projection.transpose(-1, -2))  # (1, N, d)
    n, k = points.shape[1], model.users[0].clustering.num_clusters
    print(f"One assignment step of Eq. 8: N = {n:,} points, K = {k}, d = {points.shape[2]}, eps 0.01, target L1 "
          f"marginal error 1e-3, envelope gradients (no autograd through the iterations)")
    print("| solver | start | iterations (cap) | s | L1 marginal error |")
    print("|---|---|---:|---:|---:|")
    caps = {("sinkhorn", "scaling"): 100, ("sinkhorn", "log"): 100, ("greenkhorn", "log"): greenkhorn_sweeps}
    for (solver, method), cap in caps.items():
        settings = OTSettings(solver=solver, method=method, iters=cap, tol=1e-3)
        step = OTClustering(1, n, k, points.shape[2], settings)
        gen = torch.Generator().manual_seed(0)
        warmup = OTClustering(1, n, k, points.shape[2], OTSettings(solver="sinkhorn", iters=100, tol=1e-3))
        warmup(points, gen, update=True)  # converged centroids and potentials of a previous step
        for start in ("cold", "warm"):
            if start == "warm":
                step.load_state_dict(warmup.state_dict())
            t = time.perf_counter()
            with torch.no_grad():
                _, _, stats = step(points, torch.Generator().manual_seed(1), update=False)
            elapsed = time.perf_counter() - t
            print(f"| {solver}{' (' + method + ')' if solver == 'sinkhorn' else ''} | {start} | {stats['ot_iters']:.1f} ({cap}) | {elapsed:.2f} | {stats['ot_err']:.2e} |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--batches", type=int, default=10, help="timed batches per model (after one warm-up round)")
    parser.add_argument("--models", nargs="*", default=["lightgcn", "gotnet-batch1", "gotnet-batch2", "gotnet-batch10",
                                                         "gotnet-every10", "gotnet-every1"],
                        choices=["lightgcn", *VARIANTS])
    parser.add_argument("--solvers", action="store_true", help="also time one Eq. 8 step per solver")
    parser.add_argument("--greenkhorn-sweeps", type=int, default=3, help="cap of the Greenkhorn rows of --solvers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    import torch

    from datamodules import InteractionDataModule

    torch.set_num_threads(args.threads)
    # training_step logs through self.log, which needs a Trainer; without one Lightning only warns
    warnings.filterwarnings("ignore", message=".*self.log.*")
    dm = InteractionDataModule("gowalla", data_dir=args.data_dir, batch_size=2048, seed=2020)
    dm.setup("fit")
    print(f"Gowalla: {dm.data.num_users:,} users, {dm.data.num_items:,} items; {args.batches} timed batches of 2048 "
          f"per model, round robin, {args.threads} threads, torch {torch.__version__}")
    if args.models:
        time_models(dm, args.models, args.batches, args.lr)
    if args.solvers:
        time_solvers(dm, args.greenkhorn_sweeps)


if __name__ == "__main__":
    main()
