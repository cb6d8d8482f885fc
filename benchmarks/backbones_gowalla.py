"""Every recommender backbone on Gowalla, side by side: seconds per training epoch, full-ranking time, peak memory.

    python benchmarks/backbones_gowalla.py --data-dir ../shared/data                 # all backbones
    python benchmarks/backbones_gowalla.py --data-dir ../shared/data --batches 30 --threads 1 --only ngcf pinsage

Each backbone is built from its shipped config, ``configs/<backbone>/gowalla.yaml``, through the ``recot`` CLI parser
(the model, optimizer, loss, batch size and negatives of a real run), in its own subprocess so that its peak resident
memory (``ru_maxrss``) is its own. The rows run one after another in one invocation, on the same machine and threads.

Training time is EXTRAPOLATED, not a full epoch: a Lightning Trainer runs ``--batches`` training batches; the time to
the end of the first batch (which includes drawing the epoch's negative samples and warm-up) is kept as is, and the
remaining batches' mean time is multiplied by the epoch's remaining batches. ``setup_s`` is data loading plus
``bind`` (for PinSage this includes the random walks). ``eval_s`` is one full-ranking pass over all test users,
extrapolated from ``--eval-users`` users (scoring plus top-k metrics, embeddings computed once).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BACKBONES = ["mostpop", "mf", "neumf", "ngcf", "pinsage", "lightgcn"]


def measure(backbone: str, data_dir: str, batches: int, eval_users: int, threads: int) -> dict:
    """One backbone, in this process: build from its config, time training batches and a full-ranking slice."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    from lightning.pytorch.cli import LightningCLI

    from recot.metrics import RankingMetrics
    from recot.tasks.base import Task

    torch.set_num_threads(threads)
    # the parser `recot fit` uses (a LightningCLI over Task / LightningDataModule subclasses), without a run folder
    cli = LightningCLI(model_class=Task, datamodule_class=L.LightningDataModule, subclass_mode_model=True,
                       subclass_mode_data=True, seed_everything_default=2020, auto_configure_optimizers=False,
                       save_config_callback=None, run=False,
                       args=["--config", str(REPO / "configs" / backbone / "gowalla.yaml"),
                             "--data.init_args.data_dir", data_dir, "--trainer.logger", "false"])
    task, dm = cli.model, cli.datamodule
    t0 = time.perf_counter()
    dm.setup("fit")
    task.model.bind(dm.data)
    setup_s = time.perf_counter() - t0
    full = len(dm.train_dataloader())
    out = {"backbone": backbone, "model": type(task.model).__name__, "setup_s": setup_s, "epoch_batches": full,
           "batch_size": dm.batch_size, "threads": threads}

    if task.model.trainable:
        class BatchClock(Callback):
            def __init__(self):
                self.start, self.ends = 0.0, []

            def on_train_epoch_start(self, trainer, pl_module):
                self.start = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                self.ends.append(time.perf_counter())

        clock = BatchClock()
        trainer = L.Trainer(max_epochs=1, limit_train_batches=batches, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, callbacks=[clock])
        trainer.fit(task, dm)
        first = clock.ends[0] - clock.start
        per_batch = (clock.ends[-1] - clock.ends[0]) / max(1, len(clock.ends) - 1)
        out.update(timed_batches=len(clock.ends), first_batch_s=first, batch_s=per_batch,
                   epoch_s=first + per_batch * (full - 1))

    task.model.eval()
    loader = dm.test_dataloader()
    users_total = int(loader.users.size)
    metrics = RankingMetrics([20])
    done, t0 = 0, time.perf_counter()
    with torch.no_grad():
        user_emb, item_emb = task.model.embed()
        for batch in loader:
            scores = task.model.score(batch["users"], user_emb[batch["users"]], item_emb)
            metrics.update(scores, batch["target"], batch["exclude"])
            done += batch["users"].numel()
            if done >= eval_users:
                break
    out.update(eval_s=(time.perf_counter() - t0) * users_total / done, eval_timed_users=done,
               eval_users=users_total)
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("RECOT_DATA", "data"))
    parser.add_argument("--batches", type=int, default=20, help="training batches timed per backbone")
    parser.add_argument("--eval-users", type=int, default=2048, help="test users scored to time the evaluation")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the same for every backbone)")
    parser.add_argument("--only", nargs="*", default=BACKBONES, choices=BACKBONES)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.child, args.data_dir, args.batches, args.eval_users, args.threads)))
        return

    rows = []
    for backbone in args.only:
        cmd = [sys.executable, __file__, "--child", backbone, "--data-dir", args.data_dir, "--batches",
               str(args.batches), "--eval-users", str(args.eval_users), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            sys.exit(f"{backbone} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"[done] {backbone}", file=sys.stderr, flush=True)

    print(f"Gowalla, {args.threads} thread(s); training epoch EXTRAPOLATED from {args.batches} batches; full-ranking "
          f"evaluation of all test users extrapolated from {args.eval_users}")
    print("| backbone | batch | batches/epoch | setup s | s/batch | epoch s (extrapolated) | eval s | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        epoch = f"{r['epoch_s']:.1f}" if "epoch_s" in r else "no training"
        batch = f"{r['batch_s']:.3f}" if "batch_s" in r else "-"
        print(f"| {r['model']} | {r['batch_size']} | {r['epoch_batches']} | {r['setup_s']:.1f} | {batch} | {epoch} | "
              f"{r['eval_s']:.1f} | {r['peak_rss_gib']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
