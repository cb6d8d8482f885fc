"""LightGCN on Gowalla: seconds per training epoch, seconds for a full-ranking evaluation of all test users, peak memory.

    python benchmarks/lightgcn_gowalla.py --data-dir ../shared/data            # recot only
    python benchmarks/lightgcn_gowalla.py --data-dir ../shared/data --recbole  # + RecBole 1.2.1 side by side
    python benchmarks/lightgcn_gowalla.py --recbole --recbole-python /path/to/venv-with-recbole/bin/python

recot runs through the same Lightning Trainer, task and data module as ``recot fit --config
configs/lightgcn/gowalla.yaml`` (d = 64, K = 3, batch 2048). RecBole (``pip install recbole==1.2.1``, not a recot
dependency) runs in a subprocess on the same split converted to its atomic files, with the same model settings; its
epoch is timed over ``--recbole-batches`` batches and scaled to a full epoch (printed as such). Peak memory is the
process's peak resident set size (VmHWM), measured separately for each side.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def peak_rss_gib() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux keeps that across fork + exec, so a
    subprocess would report the parent's peak whenever it is higher."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_recot(data_dir: str, batches: int | None, threads: int) -> dict:
    import lightning as L
    import torch

    from datamodules import InteractionDataModule
    from recot.callbacks import EpochTimer
    from recot.nn import LightGCN
    from recot.tasks import RankingTask

    torch.set_num_threads(threads)
    L.seed_everything(2020, verbose=False)
    t0 = time.perf_counter()
    dm = InteractionDataModule("gowalla", data_dir=data_dir, batch_size=2048, eval_batch_size=1024)
    dm.setup("fit")
    _ = dm.data.adjacency
    load_s = time.perf_counter() - t0
    task = RankingTask(LightGCN(embedding_dim=64, num_layers=3), optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=1, limit_val_batches=0, limit_train_batches=batches or 1.0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(task, dm)
    n_batches = trainer.num_training_batches
    full = len(dm.train_dataloader())
    epoch_s = timer.seconds[0] * full / n_batches
    t0 = time.perf_counter()
    metrics = trainer.test(task, dm, verbose=False)[0]
    eval_s = time.perf_counter() - t0
    users = int((dm.data.test.getnnz(axis=1) > 0).sum())
    return {"system": "recot", "epoch_s": epoch_s, "timed_batches": n_batches, "epoch_batches": full,
            "eval_s": eval_s, "eval_users": users, "load_s": load_s, "peak_rss_gib": peak_rss_gib(),
            "recall@20 (1 epoch)": metrics["test/recall@20"]}


RECBOLE_SCRIPT = r"""
import json, sys, time
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.general_recommender import LightGCN
from recbole.trainer import Trainer
from recbole.utils import init_seed
data_path, batches, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
config = Config(model="LightGCN", dataset="gowalla", config_dict={
    "data_path": data_path, "benchmark_filename": ["train", "valid", "test"], "load_col": {"inter": ["user_id", "item_id"]},
    "embedding_size": 64, "n_layers": 3, "reg_weight": 1e-4, "learning_rate": 1e-3, "train_batch_size": 2048,
    "eval_batch_size": 4096, "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
    "eval_args": {"split": {"RS": None}, "order": "RO", "group_by": "user", "mode": "full"}, "metrics": ["Recall", "NDCG"],
    "topk": [20], "valid_metric": "Recall@20", "device": "cpu", "use_gpu": False, "show_progress": False,
    "seed": 2020, "reproducibility": True, "log_wandb": False, "checkpoint_dir": sys.argv[4]})
init_seed(config["seed"], config["reproducibility"])
dataset = create_dataset(config)
train_data, valid_data, test_data = data_preparation(config, dataset)
model = LightGCN(config, train_data.dataset)
trainer = Trainer(config, model)
opt = trainer.optimizer
model.train()
n, t0 = 0, None
total = len(train_data)
for i, interaction in enumerate(train_data):
    if i == 1:
        t0 = time.perf_counter()  # the first batch pays one-off set-up (graph build, allocations)
    opt.zero_grad()
    loss = model.calculate_loss(interaction)
    loss.backward()
    opt.step()
    n += 1
    if n > batches:
        break
per_batch = (time.perf_counter() - t0) / (n - 1)
t0 = time.perf_counter()
result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
eval_s = time.perf_counter() - t0
print(json.dumps({"system": "RecBole 1.2.1", "epoch_s": per_batch * total, "timed_batches": n - 1,
                  "epoch_batches": total, "eval_s": eval_s,
                  "peak_rss_gib": [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0] / 2**20}))
"""


def run_recbole(data_dir: str, batches: int, threads: int, python: str) -> dict:
    """RecBole in a subprocess on the same split (train.txt with our validation carve-out, test.txt)."""
    from datamodules import load_interactions
    from datamodules.splits import csr_pairs

    data = load_interactions("gowalla", data_dir=data_dir, seed=2020)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gowalla"
        folder.mkdir()
        for split in ("train", "valid", "test"):
            users, items = csr_pairs({"train": data.train, "valid": data.val, "test": data.test}[split])
            body = "\n".join(f"{u}\t{i}" for u, i in zip(users.tolist(), items.tolist()))
            (folder / f"gowalla.{split}.inter").write_text("user_id:token\titem_id:token\n" + body + "\n")
        proc = subprocess.run([python, "-c", RECBOLE_SCRIPT, tmp, str(batches), str(threads), tmp],
                              capture_output=True, text=True, cwd=tmp)  # RecBole writes log_tensorboard/ to cwd
        if proc.returncode != 0:
            return {"system": "RecBole 1.2.1", "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("RECOT_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--batches", type=int, default=None, help="recot: time this many batches (default: a full epoch)")
    parser.add_argument("--recbole", action="store_true", help="also time RecBole 1.2.1's LightGCN (must be installed)")
    parser.add_argument("--recbole-batches", type=int, default=20)
    parser.add_argument("--recbole-python", default=sys.executable,
                        help="interpreter of an environment with recbole==1.2.1 (its pins clash with recot's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    rows = [run_recot(args.data_dir, args.batches, args.threads)]
    if args.recbole:
        rows.append(run_recbole(args.data_dir, args.recbole_batches, args.threads, args.recbole_python))
    print("\n| system | s / train epoch | batches timed / epoch | full-ranking eval (s) | users | peak RSS (GiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['system']} | failed: {r['error']} | | | | |")
            continue
        print(f"| {r['system']} | {r['epoch_s']:.1f} | {r['timed_batches']} / {r['epoch_batches']} | {r['eval_s']:.1f} "
              f"| {r.get('eval_users', '')} | {r['peak_rss_gib']:.2f} |")
    if len(rows) == 2 and "error" not in rows[1]:
        print(f"\nrecot / RecBole: epoch {rows[0]['epoch_s'] / rows[1]['epoch_s']:.2f}x, "
              f"evaluation {rows[0]['eval_s'] / rows[1]['eval_s']:.2f}x")
    print(f"recot: data + adjacency load {rows[0]['load_s']:.1f} s; torch {__import__('torch').__version__}, "
          f"{args.threads} threads")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
