"""``recot plot RUN_DIR...``: learning curves from the runs' CSV logs, and a transport plan heat map.

    recot plot checkpoints/lightgcn-ml-100k --out curves.png       # train loss, val Recall@20 / NDCG@20 per epoch
    recot plot checkpoints/mf-ml-100k checkpoints/lightgcn-ml-100k  # several runs overlaid
    recot plot --ot_example --out plan.png                         # the plan of a small recot.ot problem

Panels: the training loss, the validation Recall@20 and NDCG@20 (for tasks without them: every validation metric),
then every other quantity the runs log per epoch: the loss terms (``train/<term>``, e.g. GOTNet's OT losses), and
the methods' own logs (e.g. LT-OCF's learned times, GOTNet's cluster masses / entropies). Columns that differ only
by a trailing index (``ltocf/t1``, ``ltocf/t2``, ...) share one panel. Written as PNG with matplotlib's Agg backend.
"""
from __future__ import annotations

import argparse
import csv
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

MAIN_PANELS = ("train/loss", "val/recall@20", "val/ndcg@20")
SKIP = {"epoch", "step", "train/loss", "time/epoch_s"}
MAX_PANELS = 16


def read_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """``metric -> {epoch: value}`` from ``<run>/logs/csv/metrics.csv`` (the last value an epoch logged)."""
    path = Path(run_dir) / "logs" / "csv" / "metrics.csv"
    if not path.is_file():
        raise SystemExit(f"recot plot: {path} not found (a run folder written by `recot fit` with its CSV logger)")
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    with path.open(newline="") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), start=2):
            epoch = row.get("epoch")
            if not epoch:
                continue
            try:
                e = int(float(epoch))
            except ValueError:
                raise SystemExit(f"recot plot: {path}, line {lineno}: epoch '{epoch}' is not a number") from None
            for key, value in row.items():
                if key in ("epoch", "step") or value in (None, "") or key.startswith("test/"):
                    continue
                try:
                    curves[key][e] = float(value)
                except ValueError:
                    continue
    return dict(curves)


def _panel_key(metric: str) -> str:
    """``ltocf/t2`` -> ``ltocf/t*``, ``gotnet/mass_3`` -> ``gotnet/mass_*``: indexed series share a panel."""
    return re.sub(r"(?<=[A-Za-z_])\d+$", "*", metric)


def panels_for(runs: dict[str, dict[str, dict[int, float]]]) -> list[tuple[str, list[str]]]:
    """``[(title, [metric, ...]), ...]``: the main panels first, then one per group of extra quantities."""
    metrics = {m for curves in runs.values() for m in curves}
    panels: list[tuple[str, list[str]]] = [(m, [m]) for m in MAIN_PANELS if m in metrics]
    if not any(m.startswith("val/") for m in MAIN_PANELS if m in metrics):  # e.g. accuracy, RMSE
        panels += [(m, [m]) for m in sorted(metrics) if m.startswith("val/")][:4]
    extra: dict[str, list[str]] = defaultdict(list)
    for m in sorted(metrics):
        if m in SKIP or m.startswith("val/"):
            continue
        extra[_panel_key(m)].append(m)
    for key, members in sorted(extra.items()):  # an index shared by one column only (train/l2) is part of its name
        panels += [(key, members)] if len(members) > 1 else [(members[0], members)]
    return panels[:MAX_PANELS]


def plot_runs(run_dirs: Sequence[Path], out: Path, title: Optional[str] = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    runs = {_label(Path(d), run_dirs): read_curves(Path(d)) for d in run_dirs}
    panels = panels_for(runs)
    if not panels:
        raise SystemExit("recot plot: the CSV logs hold no per-epoch values yet: "
                         + ", ".join(str(d) for d in run_dirs))
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.1 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, metrics) in zip(axes.flat, panels):
        longest = max(len(curves.get(m) or ()) for curves in runs.values() for m in metrics)
        for r, (label, curves) in enumerate(runs.items()):
            for j, metric in enumerate(metrics):
                series = curves.get(metric)
                if not series:
                    continue
                epochs = sorted(series)
                line_label = label if len(metrics) == 1 else f"{label} {metric.rsplit('/', 1)[-1]}"
                ax.plot(epochs, [series[e] for e in epochs], marker="o" if longest < 30 else None, ms=3,
                        color=colors[r % len(colors)], alpha=1.0 if len(metrics) == 1 else 0.5 + 0.5 / (1 + j),
                        linestyle=["-", "--", ":", "-."][j % 4], label=line_label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(runs) > 1 or len(metrics) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _label(run_dir: Path, all_dirs: Sequence[Path]) -> str:
    names = [Path(d).resolve().name for d in all_dirs]
    return run_dir.resolve().name if names.count(run_dir.resolve().name) == 1 else str(run_dir)


def plot_ot_example(out: Path, n: int = 12, m: int = 16, eps: float = 0.01, seed: int = 0) -> Path:
    """Heat map of the entropic plan between two small 2-D point clouds (``recot.ot.sinkhorn``, squared Euclidean
    cost scaled to max 1): ``P: (n, m)``, rows and columns ordered by the first coordinate."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.ticker import MaxNLocator

    from recot.ot import normalize_cost, sinkhorn, sq_euclidean

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = torch.randn(m, 2, generator=g, dtype=torch.float64) * 0.6 + torch.tensor([1.5, 0.5], dtype=torch.float64)
    x, y = x[x[:, 0].argsort()], y[y[:, 0].argsort()]
    cost = normalize_cost(sq_euclidean(x, y))
    res = sinkhorn(cost, eps=eps)
    plan = res.plan.numpy()

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.5, 4))
    im = ax0.imshow(plan, cmap="magma_r", aspect="auto")
    ax0.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax0.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax0.set_xlabel("target point j")
    ax0.set_ylabel("source point i")
    ax0.set_title(f"plan P (eps={eps}): <C,P>={float(res.value):.3f}, "
                  f"{int(res.n_iter)} iterations, converged={bool(res.converged)}", fontsize=9)
    fig.colorbar(im, ax=ax0)
    ax1.scatter(x[:, 0], x[:, 1], c="tab:blue", label="source (uniform weights)")
    ax1.scatter(y[:, 0], y[:, 1], c="tab:orange", label="target (uniform weights)")
    top = plan.max()
    for i in range(n):
        for j in range(m):
            if plan[i, j] > 0.2 * top:
                ax1.plot([x[i, 0], y[j, 0]], [x[i, 1], y[j, 1]], color="k", alpha=float(plan[i, j] / top) * 0.8,
                         lw=1)
    ax1.legend(fontsize=8)
    ax1.set_title("matched mass (lines: P_ij > 20% of max P)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recot plot", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run folders (their logs/csv/metrics.csv)")
    p.add_argument("--out", type=Path, metavar="FILE.png",
                   help="output file (default: <RUN_DIR>/curves.png for one run, ./curves.png for several, "
                        "./ot_plan.png for --ot_example)")
    p.add_argument("--title", help="figure title")
    p.add_argument("--ot_example", action="store_true",
                   help="plot the transport plan of a small recot.ot.sinkhorn problem instead of learning curves")
    p.add_argument("--eps", type=float, default=0.01, help="--ot_example: entropic regularisation (cost max = 1)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.ot_example:
        out = plot_ot_example(args.out or Path("ot_plan.png"), eps=args.eps)
    else:
        if not args.runs:
            raise SystemExit("recot plot: give at least one RUN_DIR (or --ot_example)")
        out = args.out or (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
        out = plot_runs([Path(r) for r in args.runs], out, args.title)
    print(f"[recot] wrote {out}", flush=True)


if __name__ == "__main__":
    main()
