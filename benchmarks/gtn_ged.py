"""GTN test RMSE on AIDS30, Pref. att. (1 and 8 heads) and Pref. att. 200 (full / Nyström / sparse / LCN) under a
fixed, reduced budget, next to the poster's numbers. Each run is ``recot fit`` with the shipped config and budget
overrides; results are read from the run folders' ``results.json``.

    python benchmarks/gtn_ged.py                                   # every run below, seed 0, one torch thread each
    python benchmarks/gtn_ged.py --runs aids30 --seeds 0 1 2 --epochs 20 --train_pairs 0   # 0 = all pairs
    python benchmarks/gtn_ged.py --max_minutes 4 --eval_pairs 500       # every run stopped after 4 min of training
    python benchmarks/gtn_ged.py --mean_baseline --eval_pairs 500       # RMSE of predicting the training mean
    python benchmarks/gtn_ged.py --runs aids30 --tag -nocal --set model.init_args.model.init_args.calibrate=false

The paper trains 200 epochs on all training pairs (10,296) with 3 seeds; on a shared 2-core CPU this script's default
budget is ``--epochs`` epochs on a fixed random subset of ``--train_pairs`` training pairs (Pref. att. 200:
``--train_pairs_200``), evaluated on all validation and test pairs (Pref. att. 200: ``--eval_pairs_200``), the best
validation epoch tested. ``--max_minutes`` caps each run's training time (Lightning's ``max_time``: the epoch in
progress stops, the best validated epoch is tested), ``--eval_pairs`` subsamples the AIDS30 / Pref. att. validation
and test pairs (0 = all), ``--timeout`` kills a run that overruns anyway. The numbers are therefore a budget-limited
reproduction, not the paper's protocol.
Writes ``benchmarks/out/gtn_ged.json``; run folders in ``benchmarks/out/gtn/``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# run -> (config, poster test RMSE; Pref. att. 200's poster numbers read as units of 1e-2 of the distance)
RUNS = {
    "aids30": ("configs/gtn/aids30.yaml", 3.7),
    "aids30-8heads": ("configs/gtn/aids30-8heads.yaml", 3.2),
    "pref_att": ("configs/gtn/pref_att.yaml", 4.5),
    "pref_att-8heads": ("configs/gtn/pref_att-8heads.yaml", 3.5),
    "pref_att_200": ("configs/gtn/pref_att_200.yaml", 1.3e-2),
    "pref_att_200-nystrom": ("configs/gtn/pref_att_200-nystrom.yaml", 2.4e-2),
    "pref_att_200-sparse": ("configs/gtn/pref_att_200-sparse.yaml", 7.6e-2),
    "pref_att_200-lcn": ("configs/gtn/pref_att_200-lcn.yaml", 1.4e-2),
    # the official GTN's Euclidean node cost (Laplacian kernel for Nyström / LCN)
    "pref_att_200-nystrom-euclidean": ("configs/gtn/pref_att_200-nystrom-euclidean.yaml", 2.4e-2),
    "pref_att_200-sparse-euclidean": ("configs/gtn/pref_att_200-sparse-euclidean.yaml", 7.6e-2),
    "pref_att_200-lcn-euclidean": ("configs/gtn/pref_att_200-lcn-euclidean.yaml", 1.4e-2),
}


def mean_baseline(args) -> None:
    """Test RMSE of the constant prediction = mean training target, on the pairs the runs use (same pair_seed)."""
    sys.path.insert(0, str(REPO))
    from datamodules.ged import GEDDataModule

    for dataset in dict.fromkeys(RUNS[run][0].split("/")[-1].split("-")[0].removesuffix(".yaml") for run in args.runs):
        pm200 = dataset == "pref_att_200"
        train = args.train_pairs_200 if pm200 else args.train_pairs
        evals = args.eval_pairs_200 if pm200 else args.eval_pairs
        dm = GEDDataModule(dataset, data_dir=args.data_dir, max_pairs=train or None, max_eval_pairs=evals or 10**9)
        dm.setup("fit")
        mean = dm.splits["train"].targets.double().mean()
        test = dm.splits["test"].targets.double()
        print(f"{dataset}: train pairs {len(dm.splits['train'])}, test pairs {len(test)}, "
              f"test RMSE of the training mean {float(((test - mean) ** 2).mean().sqrt()):.4g}", flush=True)


def summarize(files) -> None:
    """One row per run over the seeds found in ``files`` (later files win for a repeated run and seed)."""
    runs: dict = {}
    for f in files:
        for r in json.loads(Path(f).read_text())["rows"]:
            if r.get("test_rmse") is not None:
                runs.setdefault(r["run"], {})[r["seed"]] = r
    print("| run | seeds | test RMSE per seed | mean +- std | epochs done per seed | poster |")
    print("|---|---|---|---|---|---|")
    for run, by_seed in runs.items():
        rs = [by_seed[s] for s in sorted(by_seed)]
        v = [r["test_rmse"] for r in rs]
        mean = sum(v) / len(v)
        std = (sum((x - mean) ** 2 for x in v) / len(v)) ** 0.5
        print(f"| {run} | {', '.join(str(r['seed']) for r in rs)} | {' / '.join(f'{x:.4g}' for x in v)} | "
              f"{mean:.4g} +- {std:.2g} | {' / '.join(str(r.get('epochs_done', '-')) for r in rs)} | {rs[0]['poster']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=list(RUNS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--epochs_8heads", type=int, default=4)
    ap.add_argument("--epochs_200", type=int, default=5)
    ap.add_argument("--train_pairs", type=int, default=2000)
    ap.add_argument("--train_pairs_200", type=int, default=1000)
    ap.add_argument("--eval_pairs", type=int, default=0, help="AIDS30 / Pref. att. val and test pairs (0 = all)")
    ap.add_argument("--eval_pairs_200", type=int, default=300)
    ap.add_argument("--max_minutes", type=float, default=0, help="training time cap per run (0 = none)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds before a run is killed")
    ap.add_argument("--summarize", nargs="+", metavar="JSON",
                    help="only print test RMSE mean +- std (population) over the seeds of each run in these output files")
    ap.add_argument("--mean_baseline", action="store_true",
                    help="only print the test RMSE of predicting the training mean on the same pair subsets")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra CLI override for every run, e.g. model.init_args.model.init_args.calibrate=false")
    ap.add_argument("--tag", default="", help="suffix of the run names (and of the rows), e.g. -nocal")
    ap.add_argument("--data_dir", default=os.environ.get("RECOT_DATA") or str(SHARED))
    ap.add_argument("--root", default=str(REPO / "benchmarks" / "out" / "gtn"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "gtn_ged.json"))
    args = ap.parse_args()
    if args.summarize:
        return summarize(args.summarize)
    if args.mean_baseline:
        return mean_baseline(args)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rows = []
    for run in args.runs:
        config, poster = RUNS[run]
        pm200 = run.startswith("pref_att_200")
        epochs = args.epochs_200 if pm200 else args.epochs_8heads if "8heads" in run else args.epochs
        train = args.train_pairs_200 if pm200 else args.train_pairs
        evals = args.eval_pairs_200 if pm200 else args.eval_pairs
        for seed in args.seeds:
            name = f"{run}{args.tag}-s{seed}"
            cmd = [sys.executable, "-m", "recot.cli", "fit", "--config", config, "--seed_everything", str(seed),
                   "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
                   "--trainer.enable_model_summary", "false", "--data.init_args.data_dir", args.data_dir,
                   "--run_root", args.root, "--name", name]
            if train:
                cmd += ["--data.init_args.max_pairs", str(train)]
            cmd += ["--data.init_args.max_eval_pairs", str(evals or 10**9)]
            for item in args.set:
                key, _, value = item.partition("=")
                cmd += [f"--{key}", value]
            if args.max_minutes:
                minutes, seconds = divmod(round(args.max_minutes * 60), 60)
                cmd += ["--trainer.max_time", f"00:00:{minutes:02d}:{seconds:02d}"]  # Lightning's DD:HH:MM:SS
            start = time.time()
            try:
                proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
                failure = None if proc.returncode == 0 else (proc.stderr or proc.stdout)[-2000:]
            except subprocess.TimeoutExpired:
                failure = f"killed after --timeout {args.timeout} s"
            row = dict(run=run + args.tag, seed=seed, epochs=epochs, train_pairs=train or "all", eval_pairs=evals or "all",
                       max_minutes=args.max_minutes or None, poster=poster, wall_s=time.time() - start,
                       command=" ".join(cmd))
            res_file = Path(args.root) / name / "results.json"
            if failure is None and res_file.is_file():
                res = json.loads(res_file.read_text())
                # epochs_done < epochs: the time cap stopped training (max_time ends the epoch in progress)
                row.update(test_rmse=res["test"].get("test/rmse"), val_rmse=res["val"].get("val/rmse"),
                           best_epoch=res.get("best_epoch"), epochs_done=res.get("epochs"),
                           seconds_per_epoch=res.get("seconds_per_epoch"))
            else:
                row.update(error=failure or "no results.json")
            rows.append(row)
            print({k: v for k, v in row.items() if k != "command"}, flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(dict(date=str(date.today()), command=" ".join(sys.argv),
                                                      rows=rows), indent=2))
    print("\n| run | seed | epochs done / max | train pairs | eval pairs | s / epoch | test RMSE | poster |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rmse = f"{r['test_rmse']:.4g}" if r.get("test_rmse") is not None else r.get("error", "?")[:40]
        spe = f"{r['seconds_per_epoch']:.0f}" if r.get("seconds_per_epoch") else "-"
        print(f"| {r['run']} | {r['seed']} | {r.get('epochs_done', '-')} / {r['epochs']} | {r['train_pairs']} | "
              f"{r['eval_pairs']} | {spe} | {rmse} | {r['poster']} |")


if __name__ == "__main__":
    main()
