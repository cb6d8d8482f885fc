"""Embedding alignment (Wasserstein Procrustes) on synthetic rotated point clouds: accuracy vs time of each Sinkhorn
solver, side by side in one run (the solvers and steps of recot.tasks.AlignmentTask, configs/ot/alignment.yaml).

    python benchmarks/alignment.py                              # n = 2000 and 10000 points in 16-D, eps 0.05 and 0.2
    python benchmarks/alignment.py --sizes 2000 --eps 0.2 --steps 6

Per solver: ``--steps`` alternating OT / Procrustes steps from the identity, each OT solve at most ``--max_iter``
Sinkhorn iterations (tol 1e-3 on the L1 marginal error); reported: accuracy (share of points whose nearest neighbour
after alignment is their true partner), wall and CPU seconds of the OT and Procrustes steps, and whether the last
solve converged. Sparse and LCN
use ``n / 200`` k-means clusters, Nyström and LCN ``--landmarks`` landmarks. Writes ``benchmarks/out/alignment.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from datamodules.alignment import AlignmentDataModule
    from recot.tasks.alignment import cross_moment, match_accuracy, procrustes, solve_ot

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.2])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max_iter", type=int, default=200)
    ap.add_argument("--landmarks", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "alignment.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for n in args.sizes:
        dm = AlignmentDataModule(num_points=n, dim=16, clusters=10, angle=1.2, noise=0.05)
        dm.setup()
        x, y, match = dm.batch
        identity = match_accuracy(x, y, match)
        clusters = max(1, n // 200)
        for rel_eps in args.eps:
            for solver, kw in (("full", {}), ("sparse", dict(n_clusters=clusters)),
                               ("nystrom", dict(landmarks=args.landmarks)),
                               ("lcn", dict(landmarks=args.landmarks, n_clusters=clusters))):
                q, seconds, cpu, res = torch.eye(x.shape[1]), 0.0, 0.0, None
                for _ in range(args.steps):
                    xq = x @ q
                    scale = float((xq ** 2).sum(-1).mean() + (y ** 2).sum(-1).mean())
                    if solver != "full":
                        kw["generator"] = torch.Generator().manual_seed(0)
                    start, cpu0 = time.perf_counter(), time.process_time()
                    res = solve_ot(xq, y, solver, rel_eps * scale, max_iter=args.max_iter, tol=1e-3, **kw)
                    q = procrustes(cross_moment(res, x, y))
                    seconds += time.perf_counter() - start
                    cpu += time.process_time() - cpu0
                row = dict(n=n, eps=rel_eps, solver=solver, accuracy=match_accuracy(x @ q, y, match),
                           identity_accuracy=identity, ot_seconds=seconds, ot_cpu_seconds=cpu,
                           last_converged=bool(res.converged))
                rows.append(row)
                print(row, flush=True)
    out = dict(date=str(date.today()), command=" ".join(sys.argv), threads=args.threads, rows=rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print("\n| n | eps | solver | accuracy | OT wall s | OT CPU s | last solve converged |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['eps']} | {r['solver']} | {r['accuracy']:.3f} | {r['ot_seconds']:.1f} | "
              f"{r['ot_cpu_seconds']:.1f} | {r['last_converged']} |")


if __name__ == "__main__":
    main()
