"""Where LCN-Sinkhorn's set-up time goes: CPU seconds of each step of building the LCN kernel, on the data of
benchmarks/scalable_sinkhorn.py (same clouds, eps, clusters and landmarks; one torch thread).

    python benchmarks/lcn_parts.py                     # n = 1e4, 16-D
    python benchmarks/lcn_parts.py --n 100000 --d 2
    python benchmarks/lcn_parts.py --paths blocks entries     # the correction's two paths side by side

Steps: k-means landmarks, k-means neighbour pattern, Nyström factors, exact kernel on the neighbour pairs, and the
float64 LCN correction K^sp - K^sp_Nys (recot.ot.lcn.lcn_correction: the block-GEMM path, the default at this
size, and/or the per-entry reference path; the largest difference of log|D| between them is printed). The Sinkhorn iterations are not included.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    from scalable_sinkhorn import clouds

    from recot.ot.factored import pair_sq_dists
    from recot.ot.lcn import lcn_correction
    from recot.ot.neighbours import neighbour_pattern
    from recot.ot.nystrom import landmarks_of, nystrom_factors

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--eps", type=float, default=0.05, help="relative to the mean squared distance")
    ap.add_argument("--points_per_cluster", type=int, default=100)
    ap.add_argument("--landmarks", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--paths", nargs="+", default=["blocks"], choices=["blocks", "entries"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y = clouds(args.n, args.d)
    x, y = x[None], y[None]
    eps = args.eps * float((x ** 2).sum(-1).mean() + (y ** 2).sum(-1).mean())
    k = max(1, args.n // args.points_per_cluster)
    fit = 20 * max(k, args.landmarks)
    g = torch.Generator().manual_seed(0)
    seconds = {}

    def timed(name, fn):
        start = time.process_time()
        out = fn()
        seconds[name] = time.process_time() - start
        return out

    with torch.no_grad():
        z = timed("landmarks (k-means)", lambda: landmarks_of(x, y, args.landmarks, generator=g, fit_size=fit))
        p = timed("neighbours (k-means)", lambda: neighbour_pattern(x, y, n_clusters=k, generator=g, fit_size=fit))
        f = timed("Nystrom factors", lambda: nystrom_factors(x, y, z, eps))
        lk = timed("exact kernel on neighbours", lambda: pair_sq_dists(x, y, p) / (-eps))
        out = [timed(f"LCN correction ({path})", lambda: lcn_correction(*f, lk, p, path=path)) for path in args.paths]
    print(f"n={args.n} d={args.d} nnz={p.nnz} CPU s:", {name: round(s, 2) for name, s in seconds.items()})
    if len(out) == 2:
        print("max |log|D| blocks - entries|:", float((out[0][0] - out[1][0]).abs().max()),
              "sign differences:", int((out[0][1] != out[1][1]).sum()))


if __name__ == "__main__":
    main()
