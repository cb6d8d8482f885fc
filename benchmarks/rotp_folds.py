"""Cross-validated accuracy of poolings under one config: every (pooling, fold) is one ``recot fit`` run.

    python benchmarks/rotp_folds.py --config configs/rotp/mutag.yaml                       # the config's pooling
    python benchmarks/rotp_folds.py --config configs/rotp/proteins.yaml --poolings add mean max attention set2set \
        rotp_s rotp_be rotp_bq --folds 0-9 --epochs 20
    python benchmarks/rotp_folds.py --config configs/mil/fox.yaml --poolings mean max attention gated_attention \
        rotp_s rotp_be rotp_bq --table-only                                                # collect what ran
    python benchmarks/rotp_folds.py --config configs/rotp/adgcl/mutag.yaml --poolings add mean max rotp_s rotp_be \
        rotp_bq --seeds 0-4                  # the paper's protocol: one run = one trial (AD-GCL + 10-fold SVM)

Runs land in ``<run_root>/<config stem>-<pooling>-fold<k>/`` (default ``benchmarks/out/rotp``, git-ignored); a run
whose ``results.json`` has test metrics is not run again, so the script resumes after an interruption. It prints a
markdown table of test accuracy, mean +- std (population std over folds) and the folds that ran. With ``--seeds`` a
run is a trial of a config without folds (``configs/rotp/adgcl/*``: its test accuracy is already a 10-fold SVM mean):
runs are ``<parent>-<stem>-<pooling>-seed<s>`` and the table gives mean +- std over trials and the mean within-trial
fold std. Runs in-process, one torch thread (on a shared CPU, two threads per process slow everyone down).
"""
from __future__ import annotations

import argparse
import json
import os
import math
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))

POOL = "--model.init_args.model.init_args.pooling"


def poolings(hidden: int) -> dict[str, dict]:
    """Pooling name -> class path and init args, for inputs of ``hidden`` features."""
    rot = "recot.nn.aggr."
    return {
        "add": {"class_path": "torch_geometric.nn.aggr.SumAggregation"},
        "mean": {"class_path": "torch_geometric.nn.aggr.MeanAggregation"},
        "max": {"class_path": "torch_geometric.nn.aggr.MaxAggregation"},
        "attention": {"class_path": rot + "AttentionPooling", "init_args": {"in_channels": hidden}},
        "gated_attention": {"class_path": rot + "GatedAttentionPooling", "init_args": {"in_channels": hidden}},
        "set2set": {"class_path": "torch_geometric.nn.aggr.Set2Set",
                    "init_args": {"in_channels": hidden, "processing_steps": 3}},
        "mixed": {"class_path": rot + "MixedPooling"},
        "gnp": {"class_path": rot + "GNPPooling"},
        "rotp_s": {"class_path": rot + "ROTPoolingS", "init_args": {"num_modules": 4}},
        "rotp_be": {"class_path": rot + "ROTPoolingBE", "init_args": {"num_modules": 4}},
        "rotp_bq": {"class_path": rot + "ROTPoolingBQ", "init_args": {"num_modules": 4}},
        "rotp_be_a0": {"class_path": rot + "ROTPoolingBE", "init_args": {
            "num_modules": 4, "alpha0": 0.0, "learn": ["alpha1", "alpha2", "alpha3", "step"]}},
        "rotp_bq_a0": {"class_path": rot + "ROTPoolingBQ", "init_args": {
            "num_modules": 4, "alpha0": 0.0, "learn": ["alpha1", "alpha2", "alpha3", "step"]}},
    }


def hidden_size(config: dict) -> int:
    """Features entering the pooling: GIN width or the last width of the MIL instance MLP."""
    model = config["model"]["init_args"]["model"]["init_args"]
    return int(model["hidden"][-1]) if "hidden" in model else int(model.get("hidden_channels", 32))


def parse_folds(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return f"{100 * mean:.2f} +- {100 * std:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--poolings", nargs="*", default=["config"], help="names (see poolings()) or 'config'")
    ap.add_argument("--folds", default=None, help="e.g. 0-9 or 0,3,5 (default: all folds of the config)")
    ap.add_argument("--seeds", default=None, help="trials instead of folds, e.g. 0-4 (seed_everything per run)")
    ap.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    ap.add_argument("--run_root", default=str(REPO / "benchmarks" / "out" / "rotp"))
    ap.add_argument("--data_dir", default=os.environ.get("RECOT_DATA") or (str(SHARED) if SHARED.is_dir() else None),
                    help="data folder (default $RECOT_DATA, else ../shared/data when it exists)")
    ap.add_argument("--table-only", action="store_true", help="only collect the results that exist")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="more CLI arguments after --")
    args = ap.parse_args()

    torch.set_num_threads(1)
    config = yaml.safe_load(Path(args.config).read_text())
    if args.seeds:
        folds = parse_folds(args.seeds)
    else:
        folds = parse_folds(args.folds) if args.folds else list(range(config["data"]["init_args"].get("num_folds", 10)))
    table = poolings(hidden_size(config))
    stem = Path(args.config).stem
    if args.seeds:
        stem = f"{Path(args.config).parent.name}-{stem}"
    rows = []
    for name in args.poolings:
        accs, seconds, stds = [], [], []
        for fold in folds:
            run = f"{stem}-{name}-seed{fold}" if args.seeds else f"{stem}-{name}-fold{fold}"
            out = Path(args.run_root) / run / "results.json"
            done = out.is_file() and json.loads(out.read_text()).get("test")
            if not done and not args.table_only:
                from recot.cli import main as recot
                cli = ["fit", "--config", args.config, "--run_root", args.run_root, "--name", run,
                       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
                cli += ["--seed_everything", str(fold)] if args.seeds else ["--data.init_args.fold", str(fold)]
                if name != "config":
                    cli += [POOL, json.dumps(table[name])]
                if args.epochs is not None:
                    cli += ["--trainer.max_epochs", str(args.epochs)]
                if args.data_dir:
                    cli += ["--data.init_args.data_dir", args.data_dir]
                if (Path(args.run_root) / run / "last.ckpt").is_file():
                    cli += ["--ckpt_path", "last"]
                cli += [a for a in args.extra if a != "--"]
                start = time.time()
                recot(cli)
                print(f"[rotp_folds] {run}: {time.time() - start:.0f} s", flush=True)
            if out.is_file():
                res = json.loads(out.read_text())
                if res.get("test"):
                    accs.append(res["test"]["test/acc"])
                    seconds.append(res.get("seconds_per_epoch") or float("nan"))
                    stds.append(res["test"].get("test/acc_std", float("nan")))
        rows.append((name, accs, seconds, stds))
    unit = "trials (each a 10-fold SVM mean)" if args.seeds else "folds"
    print(f"\n{args.config}: test accuracy (%), mean +- std over {unit}")
    print(f"| pooling | accuracy | {'trials | mean fold std' if args.seeds else 'folds'} | s/epoch |\n"
          f"|---|---|---|{'---|' if args.seeds else ''}---|")
    for name, accs, seconds, stds in rows:
        sec = f"{sum(seconds) / len(seconds):.2f}" if seconds else "n/a"
        within = f" {100 * sum(stds) / len(stds):.2f} |" if args.seeds and stds else (" n/a |" if args.seeds else "")
        print(f"| {name} | {summary(accs)} | {len(accs)} |{within} {sec} |")


if __name__ == "__main__":
    main()
