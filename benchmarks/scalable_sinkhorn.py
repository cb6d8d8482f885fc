"""Time, peak memory and transport-cost error of dense vs sparse vs Nyström vs LCN Sinkhorn, side by side in one run.

    python benchmarks/scalable_sinkhorn.py                        # n = 1e3, 1e4, 1e5; d = 2, 16; one torch thread
    python benchmarks/scalable_sinkhorn.py --sizes 1000 --dims 2 --iters 50
    python benchmarks/scalable_sinkhorn.py --cost euclidean --sizes 1000 10000 --dims 2   # Laplacian kernel

Data: two clouds of ``n`` points each from the same 20-component Gaussian mixture in ``d`` dimensions (unit variance
overall), uniform weights, squared Euclidean cost (``--cost euclidean``: the Euclidean cost, Laplacian kernel),
eps = ``--eps`` x the mean cost (the mean squared distance; for the Euclidean cost the mean distance of 10^6 random
pairs). With the Euclidean cost the value's low-rank part is evaluated exactly in O(n^2 (l + d))
(:func:`recot.ot.factored.lowrank_point_cost`), which is part of the measured time. Every solver runs the
same fixed number of Sinkhorn iterations (``--iters``, ``tol=0``) in float32; the relative error is
``|value - dense value| / dense value`` of the transport cost <C, P> (exact cost, approximate plan), where the dense
solver (``recot.ot.sinkhorn``) fits (``n <= --dense_max``). Approximation sizes grow with ``n``: sparse and LCN use
``n / --points_per_cluster`` k-means clusters of both clouds together (about that many neighbours per point), Nyström
and LCN ``--landmarks`` k-means landmarks; k-means is fitted on a sample of 20 points per cluster, then assigns all.

``--n_hashes 1 2 3`` adds sparse rows with the union of 2 and 3 independent k-means clusterings (``sparse x2``, ...):
one clustering makes the sparse kernel block-diagonal, so a cluster with unequal x / y mass cannot be balanced.

Each measurement runs in its own forked process: its time (wall clock and process CPU time, including the k-means /
neighbour search and the kernel construction) and its peak resident memory above the parent's are its own. On a
shared machine the CPU time is the figure least disturbed by other jobs. Writes
``benchmarks/out/scalable_sinkhorn.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def clouds(n: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(20, d, generator=g)
    x = centers[torch.randint(0, 20, (n,), generator=g)] + torch.randn(n, d, generator=g)
    y = centers[torch.randint(0, 20, (n,), generator=g)] + torch.randn(n, d, generator=g)
    scale = torch.cat([x, y]).std()
    return x / scale, y / scale


def run_solver(name, x, y, eps, iters, clusters, landmarks, threads, n_hashes=1, cost="sq_euclidean"):
    from recot.ot import pairwise_cost, sinkhorn
    from recot.ot.lcn import lcn_sinkhorn
    from recot.ot.nystrom import nystrom_sinkhorn
    from recot.ot.sparse import sparse_sinkhorn

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    fit = 20 * max(clusters, landmarks)
    common = dict(eps=eps, cost=cost, max_iter=iters, tol=0.0, grad="envelope", generator=g, fit_size=fit)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0, start = time.process_time(), time.perf_counter()
    with torch.no_grad():
        if name == "dense":
            res = sinkhorn(pairwise_cost(x, y, cost), eps=eps, max_iter=iters, tol=0.0, grad="envelope")
        elif name == "sparse":
            res = sparse_sinkhorn(x, y, n_clusters=clusters, n_hashes=n_hashes, **common)
        elif name == "nystrom":
            res = nystrom_sinkhorn(x, y, landmarks=landmarks, **common)
        else:
            res = lcn_sinkhorn(x, y, landmarks=landmarks, n_clusters=clusters, **common)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base  # KiB
    nnz = getattr(getattr(res.plan, "pattern", None), "nnz", None)
    return dict(seconds=seconds, cpu_seconds=cpu, peak_mib=peak / 1024, value=float(res.value), err=float(res.err),
                finite=bool(torch.isfinite(res.value).all()), nnz=nnz)


def _child(queue, args):
    try:
        queue.put(run_solver(*args))
    except Exception as err:  # out of memory or another failure: reported, the run goes on
        queue.put(dict(error=f"{type(err).__name__}: {err}"))


def measure(name, x, y, eps, iters, clusters, landmarks, threads, timeout, n_hashes=1, cost="sq_euclidean"):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, (name, x, y, eps, iters, clusters, landmarks, threads,
                                                    n_hashes, cost)))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return dict(error=f"timeout after {timeout} s")
    return queue.get() if not queue.empty() else dict(error=f"exit code {proc.exitcode}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 16])
    ap.add_argument("--eps", type=float, default=0.05, help="relative to the mean cost")
    ap.add_argument("--cost", default="sq_euclidean", choices=["sq_euclidean", "euclidean"],
                    help="point cost: squared Euclidean (Gaussian kernel) or Euclidean (Laplacian kernel)")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--points_per_cluster", type=int, default=100)
    ap.add_argument("--landmarks", type=int, default=100)
    ap.add_argument("--dense_max", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--solvers", nargs="+", default=["dense", "sparse", "nystrom", "lcn"],
                    choices=["dense", "sparse", "nystrom", "lcn"])
    ap.add_argument("--n_hashes", type=int, nargs="+", default=[1],
                    help="sparse Sinkhorn with the union of this many k-means clusterings (one row per value)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per measurement before it is killed")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "scalable_sinkhorn.json"))
    args = ap.parse_args()

    rows = []
    for d in args.dims:
        for n in args.sizes:
            x, y = clouds(n, d)
            if args.cost == "sq_euclidean":
                mean = (x ** 2).sum(-1).mean() + (y ** 2).sum(-1).mean()  # mean squared distance, centered clouds
            else:
                g = torch.Generator().manual_seed(1)
                i, j = torch.randint(0, n, (2, 10**6), generator=g)
                mean = (x[i] - y[j]).norm(dim=-1).mean()
            eps = args.eps * float(mean)
            clusters = max(1, n // args.points_per_cluster)
            results = {}
            runs = [(name, h) for name in args.solvers for h in (args.n_hashes if name == "sparse" else [1])]
            for name, h in runs:
                key = name if h == 1 else f"{name} x{h}"
                if name == "dense" and n > args.dense_max:
                    results[key] = dict(error=f"skipped: n > {args.dense_max} (n^2 cost matrix)")
                    continue
                results[key] = measure(name, x, y, eps, args.iters, clusters, args.landmarks, args.threads,
                                       args.timeout, h, args.cost)
                print(f"d={d} n={n} {key}: {results[key]}", flush=True)
            ref = results.get("dense", {}).get("value")
            for name, r in results.items():
                if ref is not None and "value" in r:
                    r["rel_err"] = abs(r["value"] - ref) / abs(ref)
                rows.append(dict(d=d, n=n, solver=name, cost=args.cost, eps=eps, clusters=clusters,
                                 landmarks=args.landmarks, **r))
            # written after every size, so an interrupted run keeps what it measured
            out = dict(date=str(date.today()), command=" ".join(sys.argv), iters=args.iters, threads=args.threads,
                       timeout=args.timeout, torch=torch.__version__, rows=rows)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=2))
    print("\n| d | n | solver | wall s | CPU s | peak MiB | rel. error vs dense | marginal err | nnz |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['d']} | {r['n']} | {r['solver']} | {r['error']} | | | | | |")
            continue
        err = f"{r['rel_err']:.2e}" if "rel_err" in r else "-"
        print(f"| {r['d']} | {r['n']} | {r['solver']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
              f"{r['peak_mib']:.0f} | {err} | {r['err']:.2g} | {r['nnz'] if r['nnz'] is not None else '-'} |")


if __name__ == "__main__":
    main()
