"""Seconds per training epoch of SinkhornCF vs Mult-VAE, side by side in one process (paper Table 9 as the anchor).

Each variant is the shipped config run through the CLI (``recot fit``) for a few epochs; the epoch time is
``results.json``'s ``seconds_per_epoch`` (training only, validation excluded: recot.callbacks.EpochTimer). The variants
alternate (Mult-VAE, SinkhornCF, ... per repetition) so that a change of load on a shared machine hits both.

    python benchmarks/sinkhorncf_speed.py --data_dir ../shared/data --datasets ml-100k ml-1m --epochs 2 --repeats 2

Variants: Mult-VAE (own loss), SinkhornCF (accelerated loss on every step, the paper's Alg. 1) and SinkhornCF with the
Sinkhorn term on every 10th step only (``sinkhorn_every: 10``, the speed-up the paper suggests at the end of Sec. 2.4).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER_MINUTES = {"ml-20m": (16, 41), "netflix": (223, 450)}  # Table 9: Mult-VAE, SinkhornCF (GPU, full training)
VARIANTS = {  # name -> (config folder, extra CLI arguments)
    "Mult-VAE": ("multvae", []),
    "SinkhornCF": ("sinkhorncf", []),
    "SinkhornCF (L1 every 10 steps)": ("sinkhorncf", ["--model.init_args.sinkhorn_every", "10"]),
}


def epoch_seconds(config: Path, extra: list[str], data_dir: str, epochs: int, root: Path, name: str,
                  threads: int) -> float:
    cmd = [sys.executable, "-m", "recot.cli", "fit", "--config", str(config), "--data.init_args.data_dir", data_dir,
           "--run_root", str(root), "--name", name, "--trainer.max_epochs", str(epochs), "--trainer.logger", "false",
           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
           "--test_after_fit", "false", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return json.loads((root / name / "results.json").read_text())["seconds_per_epoch"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-1m"])
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (their mean time is the run's figure)")
    p.add_argument("--repeats", type=int, default=2, help="runs per variant (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for rep in range(args.repeats):
                for variant, (folder, extra) in VARIANTS.items():
                    config = REPO / "configs" / folder / f"{dataset}.yaml"
                    name = f"{dataset}-{folder}-{len(extra)}-{rep}"
                    t = epoch_seconds(config, extra, args.data_dir, args.epochs, Path(tmp), name, args.threads)
                    times[variant].append(t)
                    print(f"[speed] {dataset} {variant} run {rep}: {t:.2f} s/epoch", flush=True)
            med = {v: statistics.median(ts) for v, ts in times.items()}
            rows.append((dataset, med))
    base = "Mult-VAE"
    print(f"\nseconds per training epoch, median of {args.repeats} runs x {args.epochs} epochs, "
          f"{args.threads} torch thread(s)")
    print("| data | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    for dataset, med in rows:
        cells = [f"{med[v]:.2f}" + ("" if v == base else f" ({med[v] / med[base]:.1f}x)") for v in VARIANTS]
        print(f"| {dataset} | " + " | ".join(cells) + " |")
    for dataset, (vae, scf) in PAPER_MINUTES.items():
        print(f"| paper {dataset} (Table 9, minutes, GPU) | {vae} | {scf} ({scf / vae:.1f}x) | - |")


if __name__ == "__main__":
    main()
