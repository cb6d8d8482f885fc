"""Old code against new: the ROT layers of two checkouts timed side by side in one process (interleaved, process CPU
time, one thread), pooling alone and the whole GraphClassifier on one PROTEINS batch, with mean pooling as the unit.

    git worktree add /tmp/recot-old <commit>                  # the code to compare against
    python benchmarks/rotp_ab.py --old /tmp/recot-old --repeats 15

Both checkouts' ``recot`` packages are imported in turn (the older first, then this one), so a change can be timed
without the machine's speed drifting between two runs. Prints medians and minima in ms and the ratio to mean pooling.
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("ROTPoolingS", "ROTPoolingBE", "ROTPoolingBQ")


def load(path: Path):
    """``(recot.nn.aggr, recot.nn.classifiers, datamodules)`` of the checkout at ``path``."""
    for name in [n for n in sys.modules if n.split(".")[0] in ("recot", "datamodules")]:
        del sys.modules[name]
    sys.path.insert(0, str(path))
    try:
        return tuple(importlib.import_module(m) for m in ("recot.nn.aggr", "recot.nn.classifiers", "datamodules"))
    finally:
        sys.path.remove(str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="path of the checkout to compare against")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--data_dir", default=os.environ.get("RECOT_DATA") or str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    old, new = load(Path(args.old).resolve()), load(REPO)
    from torch_geometric.nn.aggr import MeanAggregation
    from torch_geometric.nn.models import GIN

    dm = new[2].TUGraphDataModule("proteins", data_dir=args.data_dir, batch_size=128)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    with torch.no_grad():
        feats = torch.relu(GIN(dm.num_features, 32, 5, norm="batch_norm")(batch.x, batch.edge_index))
    cands = {"mean": (MeanAggregation(), new[1].GraphClassifier(MeanAggregation(), 32))}
    for tag, (aggr, clf, _) in (("old", old), ("new", new)):
        for layer in LAYERS:
            torch.manual_seed(0)
            cands[f"{tag} {layer}"] = (getattr(aggr, layer)(num_modules=4),
                                       clf.GraphClassifier(getattr(aggr, layer)(num_modules=4), 32))
    for _, model in cands.values():
        model.build(dm.num_features, dm.num_classes)

    def pool_step(pool):
        x = feats.clone().requires_grad_()
        pool(x, batch.batch, dim_size=batch.num_graphs).sum().backward()

    def model_step(model):
        model.zero_grad()
        model(batch).sum().backward()

    times = {k: ([], []) for k in cands}
    for rep in range(args.repeats + 2):  # two warm-up rounds
        for name, (pool, model) in cands.items():
            for i, (fn, obj) in enumerate(((pool_step, pool), (model_step, model))):
                start = time.process_time()
                fn(obj)
                if rep >= 2:
                    times[name][i].append(1000 * (time.process_time() - start))
    unit = statistics.median(times["mean"][1])
    print(f"old = {args.old}; process CPU ms, median (min) of {args.repeats}; whole model x mean pooling's median")
    print("| layer | pooling alone | whole model | x mean |\n|---|---:|---:|---:|")
    for name, (pool, model) in times.items():
        med = statistics.median(model)
        print(f"| {name} | {statistics.median(pool):.1f} ({min(pool):.1f}) | {med:.1f} ({min(model):.1f}) | "
              f"{med / unit:.2f} |")


if __name__ == "__main__":
    main()
