"""Milliseconds per PROTEINS batch (128 graphs), forward + backward, of each pooling, side by side in one process.

    python benchmarks/rotp_speed.py                       # ../shared/data or $RECOT_DATA; one torch thread
    python benchmarks/rotp_speed.py --repeats 30 --threads 2
    python benchmarks/rotp_speed.py --compile --clock cpu       # + the ROT layers with compile_solver=True

Two timings per pooling: the pooling alone (on fixed GIN node embeddings that require grad: 32 features, ReLU'd) and
the whole GraphClassifier (5-layer GIN + pooling + MLP, the configs' model). Poolings run interleaved, repeat after
repeat, and the median is reported with the ratio to mean pooling from the same run (the issue's target: ROT pooling
with 4 modules at most 5x mean pooling). Writes ``benchmarks/out/rotp_speed.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def make_poolings(d: int, compiled: bool = False) -> dict:
    from torch_geometric.nn import MLP
    from torch_geometric.nn.aggr import (DeepSetsAggregation, MaxAggregation, MeanAggregation, Set2Set,
                                         SumAggregation)

    from recot.nn.aggr import (AttentionPooling, DynamicPooling, GatedAttentionPooling, GatedMixedPooling,
                               GNPPooling, MixedPooling, OTKPooling, ROTPoolingBE, ROTPoolingBQ, ROTPoolingS,
                               SWEPooling)
    return {
        "add": lambda: SumAggregation(), "mean": lambda: MeanAggregation(), "max": lambda: MaxAggregation(),
        "mixed": lambda: MixedPooling(), "gated mixed": lambda: GatedMixedPooling(d),
        "DeepSet": lambda: DeepSetsAggregation(MLP([d, d, d], norm=None), MLP([d, d, d], norm=None)),
        "Set2Set (3 steps)": lambda: Set2Set(d, 3), "attention": lambda: AttentionPooling(d),
        "gated attention": lambda: GatedAttentionPooling(d), "dynamic (3 it.)": lambda: DynamicPooling(3),
        "GNP": lambda: GNPPooling(), "OTK (4 refs)": lambda: OTKPooling(d, 4), "SWE (16x16)": lambda: SWEPooling(d),
        "ROTP_S (4 modules, K=5)": lambda: ROTPoolingS(num_modules=4),
        "ROTP_B-E (4 modules)": lambda: ROTPoolingBE(num_modules=4),
        "ROTP_B-Q (4 modules)": lambda: ROTPoolingBQ(num_modules=4),
    } | ({
        "ROTP_S, compiled": lambda: ROTPoolingS(num_modules=4, compile_solver=True),
        "ROTP_B-E, compiled": lambda: ROTPoolingBE(num_modules=4, compile_solver=True),
        "ROTP_B-Q, compiled": lambda: ROTPoolingBQ(num_modules=4, compile_solver=True),
    } if compiled else {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", default=os.environ.get("RECOT_DATA") or str(SHARED))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true",
                    help="also time the ROT layers with compile_solver=True (compiled in the warm-up rounds)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the process's CPU time (with --threads 1 the least disturbed by other jobs on the machine)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "rotp_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)

    from torch_geometric.nn.models import GIN

    from datamodules import TUGraphDataModule
    from recot.nn.classifiers import GraphClassifier

    dm = TUGraphDataModule("proteins", data_dir=args.data_dir, batch_size=128)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    sizes = torch.bincount(batch.batch)
    d = 32
    with torch.no_grad():  # realistic node embeddings: an (untrained) GIN's, ReLU'd
        feats = torch.relu(GIN(dm.num_features, d, 5, norm="batch_norm")(batch.x, batch.edge_index))
    builders = make_poolings(d, args.compile)
    alone, models = {}, {}
    for name, build in builders.items():
        alone[name] = build()
        models[name] = GraphClassifier(build(), d)
        models[name].build(dm.num_features, dm.num_classes)
    times = {name: {"pooling": [], "model": []} for name in builders}

    def step_pool(pool):
        x = feats.clone().requires_grad_()
        pool(x, batch.batch, dim_size=batch.num_graphs).sum().backward()

    def step_model(model):
        model(batch).sum().backward()

    for rep in range(args.repeats + 2):  # two warm-up rounds
        for name in builders:
            for kind, fn, obj in (("pooling", step_pool, alone[name]), ("model", step_model, models[name])):
                start = clock()
                fn(obj)
                if rep >= 2:
                    times[name][kind].append(1000 * (clock() - start))
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    print(f"PROTEINS batch: {batch.num_graphs} graphs, {batch.num_nodes} nodes (largest {int(sizes.max())}), "
          f"{d} features; {args.threads} thread(s), {args.clock} clock, median of {args.repeats}, {date.today()}")
    print("| pooling | pooling fwd+bwd (ms) | x mean | whole model fwd+bwd (ms) | x mean |")
    print("|---|---:|---:|---:|---:|")
    for name, m in med.items():
        print(f"| {name} | {m['pooling']:.2f} | {m['pooling'] / med['mean']['pooling']:.1f} | {m['model']:.1f} | "
              f"{m['model'] / med['mean']['model']:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": str(date.today()), "threads": args.threads, "repeats": args.repeats,
                                          "clock": args.clock,
                                          "graphs": batch.num_graphs, "nodes": batch.num_nodes,
                                          "median_ms": med}, indent=2))


if __name__ == "__main__":
    main()
