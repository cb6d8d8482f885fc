"""LT-OCF on Gowalla: seconds per training batch and per epoch for each ODE solver, side by side with LightGCN.

    python benchmarks/ltocf_gowalla.py --data-dir ../shared/data                      # 10 timed batches per model
    python benchmarks/ltocf_gowalla.py --data-dir ../shared/data --batches 30 --models lightgcn-k4 rk4

Every model is a :class:`recot.tasks.RankingTask` (BPR + L2, Adam) on the data module of ``recot fit --config
configs/ltocf/gowalla.yaml`` (d = 64, batch 2048). A training batch is what Lightning runs per step: ``training_step``
(the full ``embed()`` over the graph, BPR on the batch), ``backward``, ``Adam.step``. All models see the same
pre-sampled batches, and the models take turns batch by batch (round robin), so that load from other processes on a
shared machine falls on all of them alike. One warm-up round is not timed. Seconds per epoch = median seconds per
batch x batches per epoch (printed as such; no epoch is run in full).

Models: ``lightgcn-k3`` / ``lightgcn-k4`` (LightGCN with 3 / 4 layers), and LT-OCF (K = 4, T = 3, no residual) with
``euler``, ``rk4`` (the paper's default), ``rk4-adjoint``, ``implicit_adams`` (step 0.25, rtol 1e-5, atol 1e-7: one step
per segment would be plain RK4) and ``dopri5`` (the official rtol 1e-7, atol 1e-9) or ``dopri5-loose`` (1e-3 / 1e-4).

``euler`` and ``rk4`` evaluate their steps as polynomials in ``A`` (recot's default, see ``recot.nn.ode``);
``euler-torchdiffeq`` / ``rk4-torchdiffeq`` run the same steps through torchdiffeq's generic solver (same embeddings up
to rounding: compare the first batch's loss), which separates the cost of the products with ``A`` from the solver's
element-wise work.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.roundrobin import round_robin  # noqa: E402  (after the path insert)

LTOCF_VARIANTS = {
    "euler": {"solver": "euler"},
    "euler-torchdiffeq": {"solver": "euler", "polynomial_steps": False},
    "rk4": {"solver": "rk4"},
    "rk4-torchdiffeq": {"solver": "rk4", "polynomial_steps": False},
    "rk4-adjoint": {"solver": "rk4", "adjoint": True},
    "implicit_adams": {"solver": "implicit_adams", "step_size": 0.25, "rtol": 1e-5, "atol": 1e-7},
    "dopri5": {"solver": "dopri5", "rtol": 1e-7, "atol": 1e-9},
    "dopri5-loose": {"solver": "dopri5", "rtol": 1e-3, "atol": 1e-4},
}
DEFAULT_MODELS = ["lightgcn-k3", "lightgcn-k4", "euler", "euler-torchdiffeq", "rk4", "rk4-torchdiffeq", "rk4-adjoint",
                  "implicit_adams", "dopri5-loose"]


def build(name: str, data, lr: float):
    import torch

    from recot.nn import LTOCF, LightGCN
    from recot.tasks import RankingTask

    torch.manual_seed(2020)  # the same initial embeddings for every model
    if name.startswith("lightgcn-k"):
        model = LightGCN(embedding_dim=64, num_layers=int(name.removeprefix("lightgcn-k")))
    else:
        model = LTOCF(embedding_dim=64, final_time=4.0, num_times=3, time_lr=1e-6, **LTOCF_VARIANTS[name])
    task = RankingTask(model, optimizer=lambda groups: torch.optim.Adam(groups, lr=lr), l2_reg=1e-4)
    model.bind(data)
    return task, task.configure_optimizers()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--batches", type=int, default=10, help="timed batches per model (after one warm-up round)")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                        choices=["lightgcn-k3", "lightgcn-k4", *LTOCF_VARIANTS])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4, help="embedding learning rate (paper: 1e-4)")
    args = parser.parse_args()

    import torch

    from datamodules import InteractionDataModule

    torch.set_num_threads(args.threads)
    # training_step logs through self.log, which needs a Trainer; without one Lightning only warns
    warnings.filterwarnings("ignore", message=".*self.log.*")
    dm = InteractionDataModule("gowalla", data_dir=args.data_dir, batch_size=2048, seed=2020)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches_per_epoch = len(loader)
    stream = iter(loader)
    batches = [next(stream) for _ in range(args.batches + 1)]

    models = {name: build(name, dm.data, args.lr) for name in args.models}
    seconds, first_loss, _ = round_robin(models, batches)
    nfe = {name: getattr(task.model, "last_nfe", task.model.num_layers) for name, (task, _) in models.items()}

    anchor = "lightgcn-k4" if "lightgcn-k4" in seconds else next(iter(seconds))
    anchor_s = statistics.median(seconds[anchor])
    print(f"Gowalla: {dm.data.num_users:,} users, {dm.data.num_items:,} items, {batches_per_epoch} batches of 2048 per "
          f"epoch; {args.batches} timed batches per model, round robin, {args.threads} threads, torch "
          f"{torch.__version__}")
    print(f"| model | A-products per forward | loss of batch 1 | s/batch (median) | s/batch (min..max) | s/epoch "
          f"(median x {batches_per_epoch}) | x {anchor} |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, values in seconds.items():
        med = statistics.median(values)
        print(f"| {name} | {nfe[name]} | {first_loss[name]:.6f} | {med:.3f} | {min(values):.3f}..{max(values):.3f} | "
              f"{med * batches_per_epoch:.0f} | {med / anchor_s:.2f} |")


if __name__ == "__main__":
    main()
