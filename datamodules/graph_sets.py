"""Sets of graphs with a set label (drug-drug interaction style, Xu & Cheng Sec. 6.2), k-fold CV over sets.

Format of a real data set ``<data_dir>/ddi/<name>/``:

* ``graphs/``: the graph collection as raw TU files ``<NAME>_A.txt`` and ``<NAME>_graph_indicator.txt`` (required),
  ``<NAME>_node_labels.txt`` (optional), ``<NAME>`` = ``name`` upper-cased; graphs are numbered 0.. in the order of
  their ids in ``graph_indicator``;
* ``sets.csv``: a header line ``label,graphs``, then one set per line: its label and the 0-based ids of its member
  graphs separated by spaces, e.g. ``1,12 507`` (a drug pair) or ``0,3 8 41`` (a drug combination).

``dataset: synthetic`` builds sets from a TU data set (``synthetic.source``, read from ``<data_dir>/TU/``): random
sets of ``min_size..max_size`` graphs labelled by ``rule``: ``same`` (1 iff all members have the same graph class) or
``any`` (1 iff some member has class 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch_geometric.data import Data

from datamodules.errors import DataFormatError, missing_file
from datamodules.folds import FoldDataModule, resolve_cache_dir
from datamodules.readers import resolve_data_dir
from datamodules.tu import load_tu, load_tu_folder, with_node_features

SETS_FORMAT = "a header line 'label,graphs', then 'label,graph_id graph_id ...' per set (0-based graph ids)"
COLLECTION_FORMAT = ("graphs/<NAME>_A.txt (edges 'row, col', 1-based node ids) and graphs/<NAME>_graph_indicator.txt "
                     "(graph id per node), optionally graphs/<NAME>_node_labels.txt")


class GraphSet(Data):
    """One set of graphs: its members' nodes concatenated, ``member`` (node -> member), ``member_set`` (member -> set,
    all 0 here; batching offsets both, so in a batch they index graphs and sets globally)."""

    def __inc__(self, key, value, *args, **kwargs):
        if key == "member":
            return int(self.member_set.numel())
        if key == "member_set":
            return 1
        return super().__inc__(key, value, *args, **kwargs)


def make_graph_set(graphs: list[Data], label: int) -> GraphSet:
    sizes = [g.num_nodes for g in graphs]
    offsets = np.cumsum([0] + sizes[:-1])
    edge_index = torch.cat([g.edge_index + int(o) for g, o in zip(graphs, offsets)], dim=1)
    return GraphSet(x=torch.cat([g.x for g in graphs]), edge_index=edge_index,
                    member=torch.repeat_interleave(torch.arange(len(graphs)), torch.tensor(sizes)),
                    member_set=torch.zeros(len(graphs), dtype=torch.long), y=torch.tensor([label]),
                    num_nodes=int(sum(sizes)))


@dataclass
class SyntheticGraphSets:
    """Sets built from the TU data set ``source`` (see the module docstring)."""

    source: str = "mutag"
    num_sets: int = 400
    min_size: int = 2
    max_size: int = 2
    rule: Literal["same", "any"] = "same"
    seed: int = 0


def read_sets(path: Path, num_graphs: int) -> tuple[list[list[int]], np.ndarray]:
    if not path.is_file():
        raise missing_file(path, SETS_FORMAT)
    lines = path.read_text().splitlines()
    if not lines or lines[0].replace(" ", "").lower() != "label,graphs":
        raise DataFormatError(path, "missing header", line=1, expected=SETS_FORMAT)
    members, labels = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            label, ids = line.split(",", 1)
            ids = [int(v) for v in ids.split()]
            labels.append(int(label))
        except ValueError:
            raise DataFormatError(path, f"bad line {line[:60]!r}", line=number, expected=SETS_FORMAT) from None
        if not ids or min(ids) < 0 or max(ids) >= num_graphs:
            raise DataFormatError(path, f"graph ids must be in 0..{num_graphs - 1} (the collection's graphs), got "
                                        f"{ids}", line=number, expected=SETS_FORMAT)
        members.append(ids)
    if not members:
        raise DataFormatError(path, "no sets", expected=SETS_FORMAT)
    return members, np.unique(np.asarray(labels), return_inverse=True)[1]


def synthetic_sets(spec: SyntheticGraphSets, graph_labels: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    rng = np.random.default_rng(spec.seed)
    members, labels = [], []
    for _ in range(spec.num_sets):
        ids = rng.choice(graph_labels.size, int(rng.integers(spec.min_size, spec.max_size + 1)), replace=False)
        classes = graph_labels[ids]
        labels.append(int(np.unique(classes).size == 1) if spec.rule == "same" else int((classes == 1).any()))
        members.append(ids.tolist())
    return members, np.asarray(labels, dtype=np.int64)


class GraphSetDataModule(FoldDataModule):
    """Sets of graphs (DDI style), one fold of a stratified k-fold CV over sets per run.

    Args:
        dataset: a folder name under ``<data_dir>/ddi/`` (e.g. ``fears``, ``dibr-apnd``) or ``synthetic``.
        data_dir: folder holding ``ddi/`` (and ``TU/`` for synthetic sets); default ``$RECOT_DATA``, then ``./data``.
        cache_dir: where PyG processes the graph collection (default ``$RECOT_CACHE``, then ``./data/cache``).
        synthetic: settings of ``dataset: synthetic``.
        node_features: as :class:`datamodules.TUGraphDataModule`.
        Fold arguments as :class:`datamodules.folds.FoldDataModule` (the paper: batch size 32, 5 trials).
    """

    def __init__(self, dataset: str = "synthetic", data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 synthetic: Optional[SyntheticGraphSets] = None,
                 node_features: Literal["auto", "labels", "degree", "constant"] = "auto", fold: int = 0,
                 num_folds: int = 10, val_fraction: float = 0.1, split_seed: int = 0, batch_size: int = 32,
                 eval_batch_size: int = 64):
        super().__init__(fold, num_folds, val_fraction, split_seed, batch_size, eval_batch_size)
        self.save_hyperparameters()
        self.dataset, self.data_dir, self.cache_dir = dataset, data_dir, cache_dir
        self.synthetic, self.node_features = synthetic, node_features

    @property
    def name(self) -> str:
        if self.dataset == "synthetic":
            return f"synthetic-{self._spec().source.lower()}"
        return self.dataset.lower()

    def _spec(self) -> SyntheticGraphSets:
        spec = self.synthetic or SyntheticGraphSets()
        return SyntheticGraphSets(**spec) if isinstance(spec, dict) else spec

    def load(self):
        if self.dataset == "synthetic":
            spec = self._spec()
            graphs = load_tu(spec.source, self.data_dir, self.cache_dir)
            members, labels = synthetic_sets(spec, graphs.y.numpy())
        else:
            folder = resolve_data_dir(self.data_dir) / "ddi" / self.dataset
            name = self.dataset.upper()
            for part in ("A", "graph_indicator"):
                if not (folder / "graphs" / f"{name}_{part}.txt").is_file():
                    raise missing_file(folder / "graphs" / f"{name}_{part}.txt", COLLECTION_FORMAT,
                                       hint="Set data_dir (or $RECOT_DATA) to the folder holding ddi/.")
            graphs = load_tu_folder(folder / "graphs", name, resolve_cache_dir(self.cache_dir) / "ddi")
            members, labels = read_sets(folder / "sets.csv", len(graphs))
        graphs, self.num_features = with_node_features(graphs, self.node_features)
        cache = {}

        def graph(i: int) -> Data:
            if i not in cache:
                cache[i] = graphs[i]
            return cache[i]

        return [make_graph_set([graph(i) for i in ids], int(y)) for ids, y in zip(members, labels)], labels
