"""GOTNet+LightGCN vs LightGCN on MovieLens: the same epoch budget, validation-selected epoch, several seeds.

    python benchmarks/gotnet_movielens.py --dataset ml-100k --seeds 1 2 3 --epochs 60
    python benchmarks/gotnet_movielens.py --dataset ml-1m --seeds 1 --epochs 20
    recot report benchmarks/out/gotnet/ml-100k --paper          # the table again, from the run folders

Each (model, seed) is one ``recot fit`` of the shipped config (configs/lightgcn/<dataset>.yaml and
configs/gotnet/<dataset>.yaml, identical backbone and training settings) with ``--trainer.max_epochs`` and
``--seed_everything`` overridden, validation every ``--val-every`` epochs; the test metrics are those of the best
validation epoch (the CLI tests the best checkpoint after fit). Run folders go to ``--run-root``/<dataset>/<model>-s<seed>
(an existing run folder is reused, not refitted). The table (mean +- sample std over seeds) is ``recot report``'s.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-100k", choices=["ml-100k", "ml-1m"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--val-every", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["lightgcn", "gotnet"])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--run-root", default=str(REPO / "benchmarks" / "out" / "gotnet"))
    args = parser.parse_args()

    root = Path(args.run_root) / args.dataset
    for seed in args.seeds:
        for model in args.models:
            name = f"{model}-s{seed}"
            if (root / name / "results.json").is_file() and (root / name / "last.ckpt").is_file():
                print(f"[gotnet_movielens] {name}: already run, kept", flush=True)
                continue
            cmd = [sys.executable, "-m", "recot.cli", "fit", "--config", f"configs/{model}/{args.dataset}.yaml",
                   "--seed_everything", str(seed), "--trainer.max_epochs", str(args.epochs),
                   "--trainer.check_val_every_n_epoch", str(args.val_every), "--trainer.enable_progress_bar", "false",
                   "--trainer.enable_model_summary", "false", "--data.init_args.data_dir", args.data_dir,
                   "--run_root", str(root), "--name", name]
            print("[gotnet_movielens]", " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=REPO, check=True)
    subprocess.run([sys.executable, "-m", "recot.cli", "report", str(root), "--paper", "--metrics", "test/recall@20",
                    "test/ndcg@20", "val/recall@20"], cwd=REPO, check=True)


if __name__ == "__main__":
    main()
