"""Graph-pair distance regression data (GTN, Klicpera/Gasteiger, Lienen & Günnemann, ICML 2021): pairs of graphs and
their graph edit distance (or another graph distance), for :class:`recot.tasks.GraphDistanceTask`.

Sources (``dataset``):

* ``aids30``, ``pref_att`` (exact GED) and ``pref_att_200`` (Pyramid-Match distance): GTN's collections, read from
  ``<data_dir>/ged/<name>_{train,val,test}.npz`` (the re-encoded layout of ``../shared/data/MANIFEST.md``, section 7:
  ``dists`` ``[G, G]``, ``node_ptr``, ``node_attr``, ``edge_ptr``, ``edge_index``, optionally ``edge_attr``). Each
  split holds its graphs and the distances of all its pairs; training, validation and test use all pairs
  ``i < j`` within their split, as the paper.
* ``aids700nef``, ``linux``: PyG's ``GEDDataset`` layout, ``<data_dir>/GED/raw/<NAME>/{train,test}/*.gexf`` and
  ``<data_dir>/GED/raw/<NAME>/ged.pickle`` (linked into ``<cache_dir>/GED``, processed there by PyG). GTN's protocol:
  graphs 0..599 of the training set train (pairs ``i < j``), 600..799 validate (pairs with one graph there), test
  graphs are paired with all 800. Target: PyG's ``norm_ged`` (or ``ged`` / ``similarity = exp(-norm_ged)``).
* ``synthetic``: random small labelled graphs and randomly edited copies (:class:`SyntheticGED`), with the exact GED
  from networkx (GTN's costs: node substitution 0/1 by label, node and edge insertion/deletion 2), computed on the
  fly (nothing is cached).

Nodes are one-hot encoded by their label code (size: the largest code of all splits + 1; LINUX has no labels: its
one-hot degree), edges likewise when they have labels. A batch is ``(g1, g2, y)``: two PyG batches of equal size
and the targets ``(B,)``.
"""
from __future__ import annotations

import fcntl
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import lightning as L
import networkx as nx
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Batch, Data

from datamodules.base import ShuffleState
from datamodules.errors import DataFormatError, missing_file
from datamodules.folds import resolve_cache_dir
from datamodules.readers import resolve_data_dir

SPLITS = ("train", "val", "test")
NPZ_FILES = {"aids30": "aids30_ged", "pref_att": "pref_att_ged", "pref_att_200": "pref_att_200_pm"}
PYG_NAMES = {"aids700nef": "AIDS700nef", "linux": "LINUX"}
NPZ_FORMAT = ("npz with dists [G, G], node_ptr [G+1], node_attr [N, 1], edge_ptr [G+1], edge_index [E, 2] "
              "(local node ids), optional edge_attr [E, 1] (../shared/data/MANIFEST.md, section 7)")
PYG_FORMAT = ("PyG GEDDataset raw files: GED/raw/<NAME>/train/*.gexf, GED/raw/<NAME>/test/*.gexf and "
              "GED/raw/<NAME>/ged.pickle (torch_geometric.datasets.GEDDataset's raw layout)")


@dataclass
class RawGraph:
    """One graph before encoding: integer node labels ``(n,)``, directed edges ``(2, E)`` (both directions), edge
    labels ``(E,)`` or None."""

    labels: np.ndarray
    edges: np.ndarray
    edge_labels: Optional[np.ndarray] = None


@dataclass
class Split:
    """A split: its graphs and the pairs ``(P, 2)`` (indices into ``graphs``) with their targets ``(P,)``."""

    graphs: list
    pairs: np.ndarray
    targets: np.ndarray


# ------------------------------------------------------------------------------------------------ readers


def read_npz_split(path: Path) -> tuple[list[RawGraph], np.ndarray]:
    """Graphs and the all-pairs distance matrix of one GTN split file."""
    if not path.is_file():
        raise missing_file(path, NPZ_FORMAT, hint="Set data_dir (or $RECOT_DATA) to the folder holding ged/.")
    try:
        d = np.load(path, allow_pickle=False)
        arrays = {k: d[k] for k in d.files}
    except Exception as err:  # a truncated or non-npz file
        raise DataFormatError(path, f"could not read the npz file: {type(err).__name__}: {err}",
                              expected=NPZ_FORMAT) from err
    for key in ("dists", "node_ptr", "node_attr", "edge_ptr", "edge_index"):
        if key not in arrays:
            raise DataFormatError(path, f"array {key!r} is missing", expected=NPZ_FORMAT)
    dists, node_ptr, edge_ptr = arrays["dists"], arrays["node_ptr"].astype(np.int64), arrays["edge_ptr"].astype(
        np.int64)
    G = dists.shape[0]
    if dists.shape != (G, G) or node_ptr.shape != (G + 1,) or edge_ptr.shape != (G + 1,):
        raise DataFormatError(path, f"inconsistent shapes: dists {dists.shape}, node_ptr {node_ptr.shape}, "
                                    f"edge_ptr {edge_ptr.shape}", expected=NPZ_FORMAT)
    labels, edges = arrays["node_attr"].reshape(-1).astype(np.int64), arrays["edge_index"].astype(np.int64)
    edge_labels = arrays["edge_attr"].reshape(-1).astype(np.int64) if "edge_attr" in arrays else None
    if node_ptr[-1] != labels.size or edge_ptr[-1] != edges.shape[0]:
        raise DataFormatError(path, "node_ptr / edge_ptr do not cover node_attr / edge_index", expected=NPZ_FORMAT)
    graphs = []
    for i in range(G):
        n = node_ptr[i + 1] - node_ptr[i]
        e = edges[edge_ptr[i]:edge_ptr[i + 1]].T
        if e.size and (e.min() < 0 or e.max() >= n):
            raise DataFormatError(path, f"graph {i}: edge_index out of range for {n} nodes", expected=NPZ_FORMAT)
        graphs.append(RawGraph(labels[node_ptr[i]:node_ptr[i + 1]], e,
                               None if edge_labels is None else edge_labels[edge_ptr[i]:edge_ptr[i + 1]]))
    return graphs, dists.astype(np.float64)


def all_pairs(dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` and their distances (the paper's protocol)."""
    i, j = np.triu_indices(dists.shape[0], k=1)
    return np.stack([i, j], 1), dists[i, j]


def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "w")
    fcntl.flock(fh, fcntl.LOCK_EX)
    return fh


def load_pyg_ged(name: str, data_dir: Optional[str], cache_dir: Optional[str], target: str):
    """PyG's GEDDataset (``AIDS700nef``/``LINUX``) -> ``({split: (graphs, pairs, targets)})`` with GTN's protocol."""
    pyg = PYG_NAMES[name]
    raw = resolve_data_dir(data_dir) / "GED" / "raw" / pyg
    for part in ("train", "test", "ged.pickle"):
        if not (raw / part).exists():
            raise missing_file(raw / part, PYG_FORMAT,
                               hint=f"Set data_dir (or $RECOT_DATA) to the folder holding GED/raw/{pyg}/.")
    from torch_geometric.datasets import GEDDataset

    root = resolve_cache_dir(cache_dir) / "GED"
    lock = _locked(root / f"{pyg}.lock")
    try:
        link = root / "raw" / pyg
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(raw.resolve(), target_is_directory=True)
        trainval, test = GEDDataset(str(root), pyg, train=True), GEDDataset(str(root), pyg, train=False)
    except Exception as err:
        raise DataFormatError(raw, f"could not read the GED files: {type(err).__name__}: {err}",
                              expected=PYG_FORMAT) from err
    finally:
        lock.close()
    dist = {"ged": trainval.ged, "norm_ged": trainval.norm_ged,
            "similarity": torch.exp(-trainval.norm_ged)}[target].numpy().astype(np.float64)
    graphs = []
    for data in list(trainval) + list(test):
        e = data.edge_index.numpy()
        if data.x is not None:
            labels = data.x.argmax(-1).numpy()
        else:  # LINUX: no labels, the degree as GTN does
            labels = np.bincount(e[0], minlength=int(data.num_nodes))
        graphs.append(RawGraph(labels.astype(np.int64), e.astype(np.int64)))
    n_tv = len(trainval)
    n_train = int(round(0.75 * n_tv))  # GTN: 600 of 800
    pairs = {"train": np.array(list(itertools.combinations(range(n_train), 2))),
             "val": np.array([(i, j) for j in range(n_train, n_tv) for i in range(j)]),
             "test": np.array([(i, j) for i in range(n_tv) for j in range(n_tv, len(graphs))])}
    return {s: (graphs, p, dist[p[:, 0], p[:, 1]]) for s, p in pairs.items()}


# ------------------------------------------------------------------------------------------------ synthetic


GED_COSTS = dict(node_subst=1.0, node_indel=2.0, edge_indel=2.0)


def exact_ged(a: RawGraph, b: RawGraph, node_indel: float = 2.0, edge_indel: float = 2.0,
              timeout: Optional[float] = None) -> float:
    """Exact GED by networkx (GTN's costs: node substitution 0/1 by label, insertion/deletion ``node_indel``, edge
    insertion/deletion ``edge_indel``; unlabelled edges). Exponential: graphs up to ~10 nodes."""
    def to_nx(g: RawGraph):
        h = nx.Graph()
        h.add_nodes_from((i, {"label": int(lab)}) for i, lab in enumerate(g.labels))
        h.add_edges_from(map(tuple, g.edges.T.tolist()))
        return h

    return float(nx.graph_edit_distance(
        to_nx(a), to_nx(b), node_subst_cost=lambda u, v: float(u["label"] != v["label"]),
        node_del_cost=lambda u: node_indel, node_ins_cost=lambda u: node_indel,
        edge_del_cost=lambda e: edge_indel, edge_ins_cost=lambda e: edge_indel, timeout=timeout))


@dataclass
class SyntheticGED:
    """Random graphs for tests and smoke runs: per split ``base_graphs`` random graphs (``min_nodes..max_nodes``
    nodes, edge probability ``edge_prob``, ``num_labels`` uniform labels) plus ``copies`` randomly edited copies of
    each (1..``max_edits`` edits: relabel a node, add/remove an edge, add/remove a node), all pairs with the exact GED.
    Keep ``max_nodes`` small: the exact GED is exponential (networkx; ~40 ms per pair at 6 nodes)."""

    base_graphs: int = 3
    copies: int = 3
    min_nodes: int = 3
    max_nodes: int = 6
    edge_prob: float = 0.4
    num_labels: int = 3
    max_edits: int = 3
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.min_nodes <= self.max_nodes <= 10:
            raise ValueError(f"synthetic graphs need 1 <= min_nodes <= max_nodes <= 10 (exact GED), got "
                             f"{self.min_nodes}..{self.max_nodes}")

    def _random(self, rng) -> RawGraph:
        n = int(rng.integers(self.min_nodes, self.max_nodes + 1))
        iu = np.array(np.triu_indices(n, 1))
        keep = rng.random(iu.shape[1]) < self.edge_prob
        return _graph(rng.integers(0, self.num_labels, n), iu[:, keep])

    def _edit(self, g: RawGraph, rng) -> RawGraph:
        labels, und = g.labels.copy(), set(map(tuple, g.edges.T[g.edges[0] < g.edges[1]].tolist()))
        for _ in range(int(rng.integers(1, self.max_edits + 1))):
            op = rng.integers(0, 4)
            n = labels.size
            if op == 0 and n:
                labels[rng.integers(n)] = rng.integers(self.num_labels)
            elif op == 1 and n >= 2:
                i, j = sorted(rng.choice(n, 2, replace=False).tolist())
                und ^= {(i, j)}
            elif op == 2 and n < self.max_nodes:
                labels = np.append(labels, rng.integers(self.num_labels))
                if n:
                    und.add((int(rng.integers(n)), n))
            elif op == 3 and n > self.min_nodes:
                k = int(rng.integers(n))
                labels = np.delete(labels, k)
                und = {(i - (i > k), j - (j > k)) for i, j in und if k not in (i, j)}
        return _graph(labels, np.array(sorted(und), dtype=np.int64).reshape(-1, 2).T)

    def split(self, index: int) -> tuple[list[RawGraph], np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        graphs = []
        for _ in range(self.base_graphs):
            base = self._random(rng)
            graphs += [base] + [self._edit(base, rng) for _ in range(self.copies)]
        G = len(graphs)
        dists = np.zeros((G, G))
        for i, j in itertools.combinations(range(G), 2):
            dists[i, j] = dists[j, i] = exact_ged(graphs[i], graphs[j])
        return graphs, dists


def _graph(labels: np.ndarray, und: np.ndarray) -> RawGraph:
    und = und.reshape(2, -1).astype(np.int64)
    return RawGraph(np.asarray(labels, dtype=np.int64), np.concatenate([und, und[::-1]], 1))


# ------------------------------------------------------------------------------------------------ datasets


class GraphPairs(Dataset):
    """Pairs of encoded graphs: item ``k`` is ``(graphs[p0], graphs[p1], target)``."""

    def __init__(self, graphs: list[Data], pairs: np.ndarray, targets: np.ndarray):
        self.graphs, self.pairs = graphs, torch.as_tensor(pairs, dtype=torch.long)
        self.targets = torch.as_tensor(targets, dtype=torch.float32)

    def __len__(self) -> int:
        return int(self.pairs.shape[0])

    def __getitem__(self, k: int):
        i, j = self.pairs[k].tolist()
        return self.graphs[i], self.graphs[j], self.targets[k]


def collate_pairs(items):
    g1, g2, y = zip(*items)
    return Batch.from_data_list(list(g1)), Batch.from_data_list(list(g2)), torch.stack(list(y))


def encode(g: RawGraph, num_node_features: int, num_edge_features: int) -> Data:
    x = F.one_hot(torch.as_tensor(g.labels, dtype=torch.long), num_node_features).float()
    data = Data(x=x, edge_index=torch.as_tensor(g.edges, dtype=torch.long).reshape(2, -1), num_nodes=len(g.labels))
    if num_edge_features:
        data.edge_attr = F.one_hot(torch.as_tensor(g.edge_labels, dtype=torch.long), num_edge_features).float()
    return data


class GEDDataModule(ShuffleState, L.LightningDataModule):
    """Graph pairs with distances (module docstring) for :class:`recot.tasks.GraphDistanceTask`.

    Args:
        dataset: ``aids30``, ``pref_att``, ``pref_att_200``, ``aids700nef``, ``linux`` or ``synthetic``.
        data_dir: folder holding ``ged/`` (GTN's npz files) or ``GED/raw/`` (PyG); never written.
        cache_dir: PyG's processed files (``aids700nef``/``linux``; default ``$RECOT_CACHE``, ``./data/cache``).
        batch_size, eval_batch_size: pairs per batch (GTN: 100; 200 for Pref. att. 200).
        max_pairs: if set, a fixed random subset of at most this many training pairs (``pair_seed``): a smaller
            budget than the paper's all pairs, for smoke runs and the 2-core CPU. max_eval_pairs: the same for the
            validation and test pairs (default: ``max_pairs``).
        target: for the PyG data sets: ``norm_ged`` (GTN), ``ged`` or ``similarity``.
        synthetic: the generator of ``dataset: synthetic``.
        shuffle_seed: seed of the training order (its generator state is saved for exact resume).

    After ``setup``: ``num_node_features``, ``num_edge_features``, ``dist_scale`` (mean training distance per node,
    GTN's :math:`\\bar D`) and ``avg_degree`` of the training graphs.
    """

    def __init__(self, dataset: Literal["aids30", "pref_att", "pref_att_200", "aids700nef", "linux",
                                        "synthetic"] = "aids30",
                 data_dir: Optional[str] = None, cache_dir: Optional[str] = None, batch_size: int = 100,
                 eval_batch_size: int = 200, max_pairs: Optional[int] = None, max_eval_pairs: Optional[int] = None,
                 pair_seed: int = 0,
                 target: Literal["norm_ged", "ged", "similarity"] = "norm_ged",
                 synthetic: SyntheticGED = SyntheticGED(), shuffle_seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        valid = (*NPZ_FILES, *PYG_NAMES, "synthetic")
        if dataset.lower() not in valid:
            raise ValueError(f"dataset must be one of {valid}, got {dataset!r}")
        self.dataset, self.data_dir, self.cache_dir = dataset.lower(), data_dir, cache_dir
        self.batch_size, self.eval_batch_size, self.max_pairs, self.pair_seed = (batch_size, eval_batch_size,
                                                                                  max_pairs, pair_seed)
        self.max_eval_pairs = max_pairs if max_eval_pairs is None else max_eval_pairs
        self.target, self.synthetic = target, synthetic
        self.splits: Optional[dict[str, GraphPairs]] = None
        self.generator = torch.Generator().manual_seed(shuffle_seed)
        self._pending_state: Optional[dict] = None
        self.num_node_features = self.num_edge_features = None
        self.dist_scale = self.avg_degree = None

    @property
    def name(self) -> str:
        return self.dataset

    def _raw_splits(self) -> dict[str, tuple[list[RawGraph], np.ndarray, np.ndarray]]:
        if self.dataset in NPZ_FILES:
            folder = resolve_data_dir(self.data_dir) / "ged"
            out = {}
            for s in SPLITS:
                graphs, dists = read_npz_split(folder / f"{NPZ_FILES[self.dataset]}_{s}.npz")
                out[s] = (graphs, *all_pairs(dists))
            return out
        if self.dataset in PYG_NAMES:
            return load_pyg_ged(self.dataset, self.data_dir, self.cache_dir, self.target)
        out = {}
        for k, s in enumerate(SPLITS):
            graphs, dists = self.synthetic.split(k)
            out[s] = (graphs, *all_pairs(dists))
        return out

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits is not None:
            return
        raw = self._raw_splits()
        all_graphs = [g for graphs, _, _ in raw.values() for g in graphs]
        self.num_node_features = int(max(int(g.labels.max()) for g in all_graphs if g.labels.size)) + 1
        labelled = [g for g in all_graphs if g.edge_labels is not None and g.edge_labels.size]
        self.num_edge_features = int(max(int(g.edge_labels.max()) for g in labelled)) + 1 if labelled else 0
        self.splits = {}
        rng = np.random.default_rng(self.pair_seed)
        for s, (graphs, pairs, targets) in raw.items():
            limit = self.max_pairs if s == "train" else self.max_eval_pairs
            if limit is not None and len(pairs) > limit:
                keep = np.sort(rng.choice(len(pairs), limit, replace=False))
                pairs, targets = pairs[keep], targets[keep]
            encoded = [encode(g, self.num_node_features, self.num_edge_features) for g in graphs]
            self.splits[s] = GraphPairs(encoded, pairs, targets)
        train_graphs, train_pairs, train_targets = raw["train"][0], self.splits["train"].pairs.numpy(), \
            self.splits["train"].targets.numpy()
        sizes = np.array([g.labels.size for g in train_graphs], dtype=np.float64)
        # GTN: mean target over the training pairs divided by the mean size of their graphs (extensive distances)
        self.dist_scale = float(np.mean(train_targets) / max(np.mean(sizes[train_pairs.reshape(-1)]), 1.0))
        if self.dist_scale <= 0:
            self.dist_scale = 1.0
        self.avg_degree = float(np.mean([g.edges.shape[1] / max(g.labels.size, 1) for g in train_graphs]))
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)
        rank_zero_info(f"[recot] {self.dataset}: " + ", ".join(f"{s} {len(p)} pairs" for s, p in self.splits.items())
                       + f"; {self.num_node_features} node / {self.num_edge_features} edge features, mean distance "
                         f"per node {self.dist_scale:.4g}, average degree {self.avg_degree:.3g}")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True, generator=self.generator,
                          collate_fn=collate_pairs)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=self.eval_batch_size, collate_fn=collate_pairs)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=self.eval_batch_size, collate_fn=collate_pairs)
