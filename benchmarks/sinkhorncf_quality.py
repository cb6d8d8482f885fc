"""Recall@20/50 and NDCG@100 of SinkhornCF vs Mult-VAE and of MF / NeuMF / Mult-VAE with their own loss vs the Sinkhorn
loss, under strong generalization, over several seeds (mean +- sample std), beside the paper's ML-20M figures.

Every run is ``recot fit --config <config> --seed_everything <seed>`` (the seed also draws the user split and the
80/20 fold-in split), selected by validation NDCG@100 and tested with that checkpoint; the test metrics of
``results.json`` are averaged. Runs already finished under ``--out`` are reused, so an interrupted sweep continues.

    python benchmarks/sinkhorncf_quality.py --data_dir ../shared/data --out /tmp/scf-runs --seeds 1 2 3 \\
        --epochs 100 --configs sinkhorncf/ml-100k multvae/ml-100k
    python benchmarks/sinkhorncf_quality.py --out /tmp/scf-runs --report-only    # the table of what ran
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ("test/recall_min@20", "test/recall_min@50", "test/ndcg@100")
DEFAULT_CONFIGS = ["multvae/ml-100k", "sinkhorncf/ml-100k", "mf/ml-100k-strong", "mf/ml-100k-sinkhorn",
                   "neumf/ml-100k-strong", "neumf/ml-100k-sinkhorn", "multvae/ml-100k-sinkhorn", "multvae/ml-1m",
                   "sinkhorncf/ml-1m", "mf/ml-1m-strong", "mf/ml-1m-sinkhorn", "neumf/ml-1m-strong",
                   "neumf/ml-1m-sinkhorn"]
# Paper anchors (different data: ML-20M, Table 6; ML-20M-S, Tables 3-5 give NDCG@100 only)
PAPER = {"multvae/ml-20m (paper Table 6)": (0.400, 0.538, 0.429), "sinkhorncf/ml-20m (paper Table 6)": (0.405, 0.542, 0.438),
         "MF on ML-20M-S, own / Sinkhorn loss (Table 3)": (None, None, "0.315 / 0.352"),
         "NeuMF on ML-20M-S, own / Sinkhorn loss (Table 4)": (None, None, "0.312 / 0.390"),
         "Mult-VAE on ML-20M-S, own / Sinkhorn loss (Table 5)": (None, None, "0.461 / 0.476")}


def run_name(config: str, seed: int, epochs: int | None) -> str:
    budget = "" if epochs is None else f"-e{epochs}"
    return config.replace("/", "-") + f"{budget}-s{seed}"


def run(config: str, seed: int, args) -> None:
    name = run_name(config, seed, args.epochs)
    folder = Path(args.out) / name
    if (folder / "results.json").is_file() and "test" in json.loads((folder / "results.json").read_text()):
        return
    cmd = [sys.executable, "-m", "recot.cli", "fit", "--config", str(REPO / "configs" / f"{config}.yaml"),
           "--data.init_args.data_dir", args.data_dir, "--run_root", args.out, "--name", name,
           "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false",
           "--trainer.enable_model_summary", "false"]
    if args.epochs is not None:
        cmd += ["--trainer.max_epochs", str(args.epochs)]
    if (folder / "last.ckpt").is_file():
        cmd += ["--ckpt_path", "last"]  # an interrupted run continues exactly
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    print(f"[quality] {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"[quality] FAILED {config} seed {seed}:\n{proc.stderr[-3000:]}", flush=True)


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def report(configs: list[str], seeds: list[int], out: str, epochs: int | None) -> None:
    print("\n| config | seeds | epochs (best) | s/epoch | Recall@20 | Recall@50 | NDCG@100 |")
    print("|---|---|---|---|---|---|---|")
    for config in configs:
        found = []
        for seed in seeds:
            file = Path(out) / run_name(config, seed, epochs) / "results.json"
            if file.is_file():
                res = json.loads(file.read_text())
                if "test" in res:
                    found.append(res)
        if not found:
            continue
        ran = sorted({r.get("epochs") for r in found})
        best = [r.get("best_epoch") for r in found]
        cells = [fmt([r["test"][m] for r in found]) for m in METRICS]
        spe = statistics.mean(r.get("seconds_per_epoch") or float("nan") for r in found)
        print(f"| {config} | {len(found)} | {'/'.join(map(str, ran))} ({', '.join(map(str, best))}) | {spe:.1f} | "
              + " | ".join(cells) + " |")
    for name, values in PAPER.items():
        print(f"| {name} | | | | " + " | ".join("-" if v is None else str(v) for v in values) + " |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default="/tmp/sinkhorncf-quality", help="run root")
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="config paths below configs/, no .yaml")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=None,
                   help="override the configs' max_epochs (a fixed budget; part of the run names)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if not args.report_only:
        for config in args.configs:
            for seed in args.seeds:
                run(config, seed, args)
    report(args.configs, args.seeds, args.out, args.epochs)


if __name__ == "__main__":
    main()
