"""recot.ot side by side with POT and GeomLoss: time, peak memory, value; Markdown tables on stdout.

    python benchmarks/ot.py            # full run (about 10 minutes on a quiet 2-core CPU)
    python benchmarks/ot.py --quick    # 1 repeat, GOTNet case with N = 10000

Problems (points uniform in [0, 1]^d, cost = squared Euclidean divided by its max, eps relative to it):

(a) one 1000 x 1000 problem in 2-D and in 16-D, eps 0.05, 100 iterations, forward and forward+backward
    wrt the point coordinates;
(b) a batch of 64 problems 128 x 128 in 32-D, eps 0.05, 100 iterations, forward and forward+backward;
(c) the batch of (b) in float32 at eps 1e-3, 1000 iterations: stability (NaN?) and marginal error;
(m) peak memory of (b) forward+backward as the number of iterations grows 10 -> 100 -> 1000;
(g) GOTNet's clustering scale: N = 30000 points to K = 300 centroids (d = 64), eps 0.01: Sinkhorn vs
    Greenkhorn (one coordinate per step, and blocks), run to an L1 marginal error of 1e-2.

Anchors: POT ``ot.bregman.sinkhorn_log`` on torch tensors, looping over the batch (autograd through its
iterations), and GeomLoss ``SamplesLoss("sinkhorn", p=2, debias=False, backend="tensorized")`` whose
cost |x - y|^2 / 2 and blur = sqrt(eps * max|x - y|^2 / 2) give the same entropic problem; its
eps-annealing ``scaling`` is set so that it also runs about the same number of iterations. All
methods run with a fixed iteration count (recot ``tol=0``, POT ``stopThr=0``).

Measurement. For each problem, one fresh subprocess times every method side by side: one warm-up run
each, then ``--repeats`` rounds that run each method once in turn (median per method), so that a change
of load on the shared machine hits all methods alike. Another fresh subprocess per method measures its
peak memory: the peak resident set size during one run
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``) minus the resident size before the run,
with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors go back to the OS and RSS follows the live
tensors. Inputs are allocated before the baseline; outputs and autograd graphs count. Ratios are
time / time of POT on the same problem and pass, for wall-clock time and for the process's CPU time
(``time.process_time``); on a shared machine with one thread per process (``--threads 1``) the CPU time
is the measure least disturbed by other jobs. Both anchors and recot use the same torch build and
thread count.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This file is named ot.py: drop its own folder from the path so that ``import ot`` finds POT.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------------------------- problems


def make_points(case: str, dtype_name: str = "float32"):
    import torch

    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, dtype_name)
    if case.startswith("a"):
        d = int(case[1:])
        return torch.rand(1, 1000, d, generator=g, dtype=dtype), torch.rand(1, 1000, d, generator=g, dtype=dtype)
    if case == "g":
        x = torch.randn(1, GOT_N, 64, generator=g, dtype=dtype)
        return x, x[:, torch.randperm(GOT_N, generator=g)[:300]].clone()
    return torch.rand(64, 128, 32, generator=g, dtype=dtype), torch.rand(64, 128, 32, generator=g, dtype=dtype)


GOT_N = 30000


def normalized_cost(x, y):
    from recot.ot import sq_euclidean

    c = sq_euclidean(x, y)
    return c / c.detach().amax((-2, -1), keepdim=True)


def marginal_error(plan, n, m):
    p = plan.detach().double()
    return float(((p.sum(-1) - 1 / n).abs().sum(-1) + (p.sum(-2) - 1 / m).abs().sum(-1)).mean())


def run_recot(x, y, *, eps, iters, grad, backward, eps_scaling=None):
    from recot.ot import sinkhorn

    x = x.clone().requires_grad_(backward)
    res = sinkhorn(normalized_cost(x, y), eps=eps, max_iter=iters, tol=0, grad=grad, eps_scaling=eps_scaling)
    if backward:
        res.value.sum().backward()
    return res.value.detach().mean().item(), res.plan


def run_pot(x, y, *, eps, iters, backward, method="sinkhorn_log"):
    import ot
    import torch

    x = x.clone().requires_grad_(backward)
    total, plans = 0.0, []
    n, m = x.shape[1], y.shape[1]
    a = torch.full((n,), 1 / n, dtype=x.dtype)
    b = torch.full((m,), 1 / m, dtype=x.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(x.shape[0]):  # POT solves one problem per call
            c = normalized_cost(x[k], y[k])
            if method == "sinkhorn_log":
                p = ot.bregman.sinkhorn_log(a, b, c, eps, numItermax=iters, stopThr=0)
            else:
                p = ot.sinkhorn(a, b, c, eps, numItermax=iters, stopThr=0)
            total = total + (c * p).sum()
            plans.append(p.detach())
    if backward:
        total.backward()
    return float(total) / x.shape[0], torch.stack(plans)


def geomloss_setup(x, y, eps, iters):
    """blur and scaling so that SamplesLoss solves our problem with ~``iters`` iterations."""
    import torch

    c = torch.cdist(x, y) ** 2
    blur = math.sqrt(eps * float(c.max()) / 2)  # GeomLoss: cost |x-y|^2/2, epsilon = blur^2
    diameter = float(torch.cdist(torch.cat([x, y], 1), torch.cat([x, y], 1)).max())
    scaling = math.exp(-(math.log(diameter) - math.log(blur)) / max(iters - 2, 1))
    return blur, diameter, scaling


def run_geomloss(x, y, *, eps, iters, backward):
    from geomloss import SamplesLoss

    blur, diameter, scaling = geomloss_setup(x, y, eps, iters)
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, diameter=diameter, debias=False, backend="tensorized")
    x = x.clone().requires_grad_(backward)
    val = loss(x, y)
    if backward:
        val.sum().backward()
    return float(val.detach().mean()), None


def run_greenkhorn_case(x, y, *, eps, method):
    from recot.ot import greenkhorn, sinkhorn

    c = normalized_cost(x, y)
    if method == "sinkhorn":
        res = sinkhorn(c, eps=eps, tol=1e-2, max_iter=5000, check_every=5, grad="envelope")
    elif method == "greenkhorn-1-probe":  # one-coordinate steps are too slow to converge here: time 200 steps
        res = greenkhorn(c, eps=eps, tol=0, max_iter=GK_PROBE, grad="envelope")
    else:
        block = int(method.split("-")[1])
        res = greenkhorn(c, eps=eps, tol=1e-2, max_iter=100000, block=block, grad="envelope", check_every=50)
    return res.value.mean().item(), res


GK_PROBE = 200

# ---------------------------------------------------------------------------------------------- child


def _runner(spec: dict, x, y):
    kind = spec["method"]
    if kind.startswith("recot"):
        return lambda: run_recot(x, y, eps=spec["eps"], iters=spec["iters"], grad=spec["grad"],
                                 backward=spec["backward"], eps_scaling=spec.get("eps_scaling"))
    if kind.startswith("POT"):
        return lambda: run_pot(x, y, eps=spec["eps"], iters=spec["iters"], backward=spec["backward"],
                               method="sinkhorn" if "linear" in kind else "sinkhorn_log")
    if kind.startswith("GeomLoss"):
        return lambda: run_geomloss(x, y, eps=spec["eps"], iters=spec["iters"], backward=spec["backward"])
    return lambda: run_greenkhorn_case(x, y, eps=spec["eps"], method=spec["solver"])


def _summary(spec: dict, times, cpu, value, extra) -> dict:
    import torch

    out = dict(time_s=statistics.median(times), cpu_s=statistics.median(cpu), value=value)
    if spec["method"].startswith("GK"):
        out.update(n_iter=int(extra.n_iter.max()), err=float(extra.err.max()))
    elif extra is not None:
        out.update(err=marginal_error(extra, extra.shape[-2], extra.shape[-1]), finite=bool(torch.isfinite(extra).all()))
    return out


def child(job: dict):
    """``job["measure"] == "memory"``: peak memory of one run of ``job["spec"]``. ``"time"``: all of
    ``job["specs"]`` (same problem) timed in interleaved rounds, so that a change of load on the
    machine hits every method alike."""
    import torch

    global GOT_N
    torch.set_num_threads(job["threads"])
    GOT_N = job.get("got_n", GOT_N)
    first = job["spec"] if job["measure"] == "memory" else job["specs"][0]
    x, y = make_points(first["case"], first.get("dtype", "float32"))
    if job["measure"] == "memory":
        run = _runner(job["spec"], x, y)
        gc.collect()
        rss0 = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        run()
        return {"peak_mib": (_status_kib("VmHWM") - rss0) / 1024}
    runs = [_runner(spec, x, y) for spec in job["specs"]]
    last = [run() for run in runs] if job.get("warmup", True) else [None] * len(runs)
    times, cpu = [[] for _ in runs], [[] for _ in runs]
    for _ in range(job["repeats"]):
        for k, run in enumerate(runs):
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            last[k] = run()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return [_summary(spec, t, c, *res) for spec, t, c, res in zip(job["specs"], times, cpu, last)]


def _status_kib(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(key)


# ---------------------------------------------------------------------------------------------- parent


def run_child(job: dict, timeout: float):
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]), PYTHONWARNINGS="ignore")
    if job["measure"] == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f}s"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(specs: list, base: dict, args, memory: bool = True) -> list:
    """Time ``specs`` (one problem) side by side in one process, then each one's memory in its own."""
    timed = run_child(dict(base, measure="time", specs=specs), args.timeout)
    if isinstance(timed, dict):  # the whole child failed
        timed = [dict(timed) for _ in specs]
    for spec, out in zip(specs, timed):
        if memory:
            out.update(run_child(dict(base, measure="memory", spec=spec), args.timeout))
    return timed


def peak_mib(spec: dict, base: dict, args):
    return run_child(dict(base, measure="memory", spec=spec), args.timeout).get("peak_mib")


def fmt(v, digits=3):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def table(rows, cols):
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fn(r) for _, fn in cols) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 repeat, skip the slowest points")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per problem (default 5, quick 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per subprocess")
    p.add_argument("--only", default="a,b,c,m,g", help="comma list of sections: a,b,c,m,g")
    p.add_argument("--json", default=None, help="also write all measurements to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    import geomloss
    import ot
    import torch

    global GOT_N
    repeats = args.repeats or (1 if args.quick else 5)
    if args.quick:
        GOT_N = 10000
    base = dict(threads=args.threads, repeats=repeats, got_n=GOT_N)
    sections = set(args.only.split(","))
    results = {}
    print(f"# recot.ot benchmark, {datetime.date.today()}, torch {torch.__version__}, POT {ot.__version__}, "
          f"GeomLoss {geomloss.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, repeats {repeats}, "
          f"load average at the start {os.getloadavg()[0]:.2f} (1 min)\n")

    methods = [("recot unroll", dict(grad="unroll")), ("recot envelope", dict(grad="envelope")),
               ("recot implicit", dict(grad="implicit")), ("POT sinkhorn_log (loop)", {}), ("GeomLoss", {})]
    labels = {"a2": "(a) 1000x1000, 2-D", "a16": "(a) 1000x1000, 16-D", "b": "(b) 64 x 128x128, 32-D"}
    speed_rows = []
    for case in [c for c in ("a2", "a16", "b") if c[0] in sections]:
        for backward in (False, True):
            # the forward work is the same in every grad mode: time the forward once, in unroll mode
            names = [(n, kw) for n, kw in methods if backward or n not in ("recot envelope", "recot implicit")]
            specs = [dict(case=case, method=n, eps=0.05, iters=100, backward=backward, **kw) for n, kw in names]
            rows = [dict(problem=labels[case], pass_="fwd+bwd" if backward else "fwd", method=spec["method"], **r)
                    for spec, r in zip(specs, measure(specs, base, args))]
            pot = next((r for r in rows if r["method"].startswith("POT")), {})
            for r in rows:
                r["ratio"] = r["time_s"] / pot["time_s"] if "time_s" in r and "time_s" in pot else None
                r["cpu_ratio"] = r["cpu_s"] / pot["cpu_s"] if "cpu_s" in r and "cpu_s" in pot else None
                print(f"  {r}", file=sys.stderr, flush=True)
            speed_rows += rows
    results["speed"] = speed_rows
    if speed_rows:
        print("## Speed and memory: 100 iterations, eps 0.05 of the normalized cost, float32\n")
        print(table(speed_rows, [
            ("problem", lambda r: r["problem"]), ("pass", lambda r: r["pass_"]), ("method", lambda r: r["method"]),
            ("wall (s)", lambda r: fmt(r.get("time_s")) if "error" not in r else r["error"]),
            ("wall / POT", lambda r: fmt(r.get("ratio"), 2)), ("CPU (s)", lambda r: fmt(r.get("cpu_s"))),
            ("CPU / POT", lambda r: fmt(r.get("cpu_ratio"), 2)), ("peak MiB", lambda r: fmt(r.get("peak_mib"), 3)),
            ("mean <C,P>", lambda r: fmt(r.get("value"), 5) if not r["method"].startswith("GeomLoss") else
             f"(OT_eps {fmt(r.get('value'), 4)})"),
            ("marginal err", lambda r: fmt(r.get("err"), 2)),
        ]))
        print()

    if "c" in sections:
        names = [("recot", dict(grad="envelope")), ("recot eps_scaling=0.5", dict(grad="envelope", eps_scaling=0.5)),
                 ("POT sinkhorn_log (loop)", {}), ("POT sinkhorn, linear domain (loop)", {}), ("GeomLoss", {})]
        specs = [dict(case="b", method=n, eps=1e-3, iters=1000, backward=False, **kw) for n, kw in names]
        once = dict(base, repeats=1, warmup=False)  # a stability check: one run each
        rows = [dict(method=spec["method"], **r) for spec, r in zip(specs, measure(specs, once, args, memory=False))]
        for r in rows:
            print(f"  (c) {r}", file=sys.stderr, flush=True)
        results["stability"] = rows
        print("## (c) float32, eps 1e-3 of the normalized cost, 64 x 128x128, 1000 iterations, forward\n")
        print(table(rows, [
            ("method", lambda r: r["method"]),
            ("wall (s)", lambda r: fmt(r.get("time_s")) if "error" not in r else r["error"]),
            ("CPU (s)", lambda r: fmt(r.get("cpu_s"))),
            ("finite plan", lambda r: fmt(r.get("finite"))), ("marginal err (mean L1)", lambda r: fmt(r.get("err"), 2)),
            ("mean <C,P>", lambda r: fmt(r.get("value"), 5) if not r["method"].startswith("GeomLoss") else
             f"(OT_eps {fmt(r.get('value'), 4)})"),
        ]))
        print("\nrecot with eps_scaling runs its annealing stages (10 iterations each) before the 1000 final ones.\n")

    if "m" in sections:
        rows = []
        for name, kw in [("recot unroll", dict(grad="unroll")), ("recot envelope", dict(grad="envelope")),
                         ("recot implicit", dict(grad="implicit")), ("POT sinkhorn_log (loop)", {})]:
            row = dict(method=name)
            for iters in (10, 100, 1000):
                if name.startswith("POT") and iters == 1000:
                    row[iters] = None  # about 10 GB (it grows linearly: see 10 -> 100)
                    continue
                row[iters] = peak_mib(dict(case="b", method=name, eps=0.05, iters=iters, backward=True, **kw), base, args)
                print(f"  (m) {name} {iters}: {row[iters]}", file=sys.stderr, flush=True)
            rows.append(row)
        results["memory"] = rows
        print("## (m) peak memory (MiB) of (b) forward+backward as the iterations grow\n")
        print(table(rows, [("method", lambda r: r["method"])] + [(f"{i} it", (lambda i: lambda r: fmt(r[i], 3))(i))
                                                                for i in (10, 100, 1000)]))
        print()

    if "g" in sections:
        solvers = ("sinkhorn", "greenkhorn-1-probe", "greenkhorn-300", "greenkhorn-1000")
        specs = [dict(case="g", method="GK " + s_, solver=s_, eps=0.01, iters=0, backward=False) for s_ in solvers]
        rows = [dict(solver=spec["solver"], **r)
                for spec, r in zip(specs, measure(specs, dict(base, repeats=1, warmup=False), args, memory=False))]
        for r in rows:
            print(f"  (g) {r}", file=sys.stderr, flush=True)
        results["greenkhorn"] = rows
        print(f"## (g) GOTNet scale: N = {GOT_N} points to K = 300 clusters, d = 64, eps 0.01, "
              "until the L1 marginal error is <= 1e-2\n")
        print(table(rows, [
            ("solver", lambda r: r["solver"].replace("greenkhorn-1-probe", f"greenkhorn, block 1 ({GK_PROBE} steps only)")
             .replace("greenkhorn-", "greenkhorn, block ")),
            ("wall (s)", lambda r: fmt(r.get("time_s")) if "error" not in r else r["error"]),
            ("CPU (s)", lambda r: fmt(r.get("cpu_s"))),
            ("iterations / steps", lambda r: fmt(r.get("n_iter"))), ("L1 marginal err", lambda r: fmt(r.get("err"), 2)),
            ("CPU ms per iteration / step", lambda r: fmt(1e3 * r["cpu_s"] / r["n_iter"], 3) if r.get("n_iter") else "—"),
        ]))
        print()
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
