"""``recot report RUN_DIR...``: the results of many runs as one table, grouped by method x dataset over seeds.

    recot report checkpoints/mf-ml-100k-s* checkpoints/lightgcn-ml-100k-s*      # Markdown on the terminal
    recot report checkpoints/ --paper --markdown results.md --csv results.csv   # every run below checkpoints/

Each run folder's ``results.json`` (written by :class:`recot.callbacks.ResultsWriter`) gives method, backbone, data
set, seed, epochs, seconds per epoch and the metrics; its ``config.yaml`` the learning rate and the config it came
from. Rows are grouped by (method, backbone, dataset); each metric is shown as mean +- sample standard deviation over
the group's runs (the std is omitted for a single run). ``--paper`` adds the papers' numbers from
``configs/paper_results.yaml`` beside the matching rows, with the gap (ours - paper).
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import yaml

PAPER_RESULTS = Path(__file__).resolve().parents[1] / "configs" / "paper_results.yaml"
GROUP_KEYS = ("method", "backbone", "dataset")


@dataclass
class Run:
    """One run folder: what ran, and its metrics (``val/*`` at the best epoch, ``test/*``)."""

    path: Path
    name: str
    method: str
    backbone: Optional[str]
    dataset: str
    seed: Optional[int]
    epochs: Optional[int]
    seconds_per_epoch: Optional[float]
    metrics: dict[str, float] = field(default_factory=dict)
    config: Optional[str] = None
    lr: Optional[float] = None

    @property
    def group(self) -> tuple:
        return self.method, self.backbone, self.dataset


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders: each path is a run folder (holding results.json) or a folder searched for them."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if (path / "results.json").is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p.parent for p in path.rglob("results.json"))
        else:
            raise SystemExit(f"recot report: {path} is not a run folder (no results.json) nor a folder of runs")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise SystemExit("recot report: no results.json under " + ", ".join(map(str, paths)))
    return unique


def load_run(path: Path) -> Run:
    file = path / "results.json"
    try:
        res = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"recot report: {file} is not valid JSON ({err})") from None
    missing = [k for k in ("method", "dataset") if not res.get(k)]
    if missing:
        raise SystemExit(f"recot report: {file} has no {', '.join(missing)} (expected a results.json written by "
                         f"`recot fit`)")
    metrics = {k: float(v) for part in ("val", "test") for k, v in (res.get(part) or {}).items()}
    run = Run(path=path, name=res.get("name") or path.name, method=res["method"], backbone=res.get("backbone"),
              dataset=res["dataset"], seed=res.get("seed"), epochs=res.get("epochs"),
              seconds_per_epoch=res.get("seconds_per_epoch"), metrics=metrics,
              config=(res.get("config") or [None])[-1])
    cfg_file = path / "config.yaml"
    if cfg_file.is_file():
        cfg = yaml.safe_load(cfg_file.read_text()) or {}
        opt = (((cfg.get("model") or {}).get("init_args") or {}).get("optimizer") or {})
        lr = (opt.get("init_args") or {}).get("lr") if isinstance(opt, dict) else None
        run.lr = float(lr) if lr is not None else None
        if run.seed is None:
            run.seed = cfg.get("seed_everything")
    return run


# --- statistics ------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (ddof = 1; None for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _metric_order(name: str) -> tuple:
    split, _, rest = name.partition("/")
    base, _, k = rest.partition("@")
    families = ["recall", "ndcg", "precision", "hit_rate"]
    return (split != "test", families.index(base) if base in families else len(families), base,
            int(k) if k.isdigit() else math.inf, name)


def select_metrics(runs: Sequence[Run], patterns: Optional[Sequence[str]]) -> list[str]:
    """The metric columns: names matching ``patterns`` (globs); by default every test metric, else every val one."""
    names = {m for r in runs for m in r.metrics}
    if not patterns:
        patterns = ["test/*"] if any(n.startswith("test/") for n in names) else ["val/*"]
    chosen = {n for n in names for p in patterns if fnmatch.fnmatchcase(n, p)}
    return sorted(chosen, key=_metric_order)


@dataclass
class Group:
    method: str
    backbone: Optional[str]
    dataset: str
    runs: list[Run]

    def stat(self, metric: str) -> Optional[tuple[float, Optional[float], int]]:
        values = [r.metrics[metric] for r in self.runs if metric in r.metrics]
        return (*mean_std(values), len(values)) if values else None

    def mean_of(self, attr: str) -> Optional[float]:
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return sum(values) / len(values) if values else None


def group_runs(runs: Sequence[Run]) -> list[Group]:
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1] or ""))
    return [Group(*key, runs=sorted(members, key=lambda r: (r.seed is None, r.seed or 0, r.name)))
            for key, members in ordered]


# --- the papers' numbers ---------------------------------------------------------------------------------
@dataclass
class PaperRow:
    source: str  # "<table id>: <table>, <page>"
    method: str
    backbone: Optional[str]
    dataset: str
    metrics: dict[str, float]


def load_paper_results(path: Path = PAPER_RESULTS) -> list[PaperRow]:
    if not path.is_file():
        raise SystemExit(f"recot report: {path} not found (the papers' numbers for --paper)")
    spec = yaml.safe_load(path.read_text()) or {}
    rows = []
    for table in spec.get("tables") or []:
        metrics = table["metrics"]
        source = f"{table['id']} ({table['table']}, {table['page']})"
        for entry in table["results"]:
            method, backbone, dataset, *values = entry
            if len(values) != len(metrics):
                raise SystemExit(f"recot report: {path}, table {table['id']}: row {entry} has {len(values)} values "
                                 f"for {len(metrics)} metrics {metrics}")
            rows.append(PaperRow(source, method, backbone, dataset, dict(zip(metrics, map(float, values)))))
    return rows


def paper_matches(group: Group, papers: Sequence[PaperRow]) -> list[PaperRow]:
    return [p for p in papers if (p.method, p.backbone, p.dataset) == (group.method, group.backbone, group.dataset)]


# --- formatting ----------------------------------------------------------------------------------------
def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _fmt_stat(stat: Optional[tuple[float, Optional[float], int]]) -> str:
    if stat is None:
        return "-"
    mean, std, _ = stat
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _short(metric: str) -> str:
    return metric.removeprefix("test/") if metric.startswith("test/") else metric


def _seeds(group: Group) -> str:
    seeds = [str(r.seed) for r in group.runs if r.seed is not None]
    return ",".join(seeds) if seeds else "-"


def summary_rows(groups: Sequence[Group], metrics: Sequence[str],
                 papers: Optional[Sequence[PaperRow]] = None) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the grouped table (one row per group, and per matching paper row with ``papers``)."""
    header = ["method", "backbone", "dataset", "runs", "seeds", "epochs", "s/epoch", *map(_short, metrics)]
    paper_metrics: list[str] = []
    if papers is not None:
        paper_metrics = sorted({m for g in groups for p in paper_matches(g, papers) for m in p.metrics
                                if m in metrics}, key=_metric_order)
        header += [f"{h} {_short(m)}" for m in paper_metrics for h in ("paper", "gap")] + ["paper source"]
    rows = []
    for g in groups:
        epochs, spe = g.mean_of("epochs"), g.mean_of("seconds_per_epoch")
        base = [g.method, g.backbone or "-", g.dataset, str(len(g.runs)), _seeds(g),
                "-" if epochs is None else f"{epochs:.4g}", "-" if spe is None else f"{spe:.2f}",
                *(_fmt_stat(g.stat(m)) for m in metrics)]
        matches = paper_matches(g, papers) if papers is not None else []
        if papers is None:
            rows.append(base)
        for p in matches or ([None] if papers is not None else []):
            extra = []
            for m in paper_metrics:
                ours, theirs = g.stat(m), (p.metrics.get(m) if p else None)
                gap = None if ours is None or theirs is None else ours[0] - theirs
                extra += [_fmt(theirs) or "-", "-" if gap is None else f"{gap:+.4f} ({100 * gap / theirs:+.1f}%)"]
            rows.append(base + extra + [p.source if p else "-"])
    return header, rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    align = ["---" if i < 3 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_summary_csv(path: Path, groups: Sequence[Group], metrics: Sequence[str]) -> None:
    """One row per group: mean and std of every metric as separate numeric columns."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "backbone", "dataset", "runs", "seeds", "epochs", "seconds_per_epoch",
                    *[f"{m}_{s}" for m in metrics for s in ("mean", "std")]])
        for g in groups:
            cells = []
            for m in metrics:
                stat = g.stat(m)
                cells += ["", ""] if stat is None else [repr(stat[0]), "" if stat[1] is None else repr(stat[1])]
            w.writerow([g.method, g.backbone or "", g.dataset, len(g.runs), _seeds(g).replace("-", ""),
                        g.mean_of("epochs") or "", g.mean_of("seconds_per_epoch") or "", *cells])


def write_runs_csv(path: Path, runs: Sequence[Run]) -> None:
    """One row per run, every metric (val and test)."""
    metrics = sorted({m for r in runs for m in r.metrics}, key=_metric_order)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "name", "method", "backbone", "dataset", "seed", "epochs", "seconds_per_epoch", "lr",
                    "config", *metrics])
        for r in runs:
            w.writerow([str(r.path), r.name, r.method, r.backbone or "", r.dataset, "" if r.seed is None else r.seed,
                        "" if r.epochs is None else r.epochs,
                        "" if r.seconds_per_epoch is None else repr(r.seconds_per_epoch),
                        "" if r.lr is None else r.lr, r.config or "",
                        *["" if m not in r.metrics else repr(r.metrics[m]) for m in metrics]])


# --- command line --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recot report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, or folders holding run folders")
    p.add_argument("--paper", action="store_true", help=f"add the papers' numbers and the gap ({PAPER_RESULTS.name})")
    p.add_argument("--paper_results", type=Path, default=PAPER_RESULTS, help="the papers' numbers (YAML)")
    p.add_argument("--metrics", nargs="+", metavar="GLOB",
                   help="metric columns, e.g. 'test/recall@20' 'test/ndcg@*' (default: every test metric)")
    p.add_argument("--markdown", type=Path, metavar="FILE", help="also write the Markdown table to FILE")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write the grouped table (mean and std columns) as CSV")
    p.add_argument("--runs_csv", type=Path, metavar="FILE", help="write one CSV row per run, every metric")
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    runs = [load_run(p) for p in find_runs(args.runs)]
    metrics = select_metrics(runs, args.metrics)
    if not metrics:
        raise SystemExit(f"recot report: no metric matches {args.metrics}; the runs have "
                         + ", ".join(sorted({m for r in runs for m in r.metrics})))
    groups = group_runs(runs)
    papers = load_paper_results(args.paper_results) if args.paper else None
    table = markdown(*summary_rows(groups, metrics, papers))
    sys.stdout.write(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.csv:
        write_summary_csv(args.csv, groups, metrics)
    if args.runs_csv:
        write_runs_csv(args.runs_csv, runs)


if __name__ == "__main__":
    main()
