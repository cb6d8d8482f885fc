"""TU graph classification data (Morris et al. 2020) through ``torch_geometric.datasets.TUDataset``.

The raw TU files are read from ``<data_dir>/TU/<NAME>/raw/`` and never written to: they are linked into
``<cache_dir>/TU/<NAME>/raw/`` and PyG's ``processed/`` folder is created there (``cache_dir`` defaults to
``$RECOT_CACHE``, then ``./data/cache``). Node features are the one-hot node labels where the data has them, else
the one-hot node degree (the GIN protocol for the social networks IMDB / COLLAB / REDDIT).
"""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch_geometric.datasets import TUDataset
from torch_geometric.transforms import Constant, OneHotDegree
from torch_geometric.utils import degree

from datamodules.errors import DataFormatError, missing_file
from datamodules.folds import FoldDataModule, resolve_cache_dir
from datamodules.readers import resolve_data_dir

TU_FORMAT = ("raw TU files <NAME>_A.txt (edges 'row, col', 1-based node ids), <NAME>_graph_indicator.txt (graph id "
             "per node), <NAME>_graph_labels.txt (label per graph), optionally <NAME>_node_labels.txt "
             "(https://chrsmrrs.github.io/datasets/docs/format/)")
REQUIRED = ("A", "graph_indicator", "graph_labels")


class _LocalTU(TUDataset):
    """TUDataset that never downloads: the raw files must be there."""

    def download(self) -> None:
        raise missing_file(Path(self.raw_dir) / f"{self.name}_A.txt", TU_FORMAT)


@contextmanager
def _locked(path: Path):
    """Serialise linking and processing of one cache folder across processes (parallel test workers, folds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tu_name(dataset: str) -> str:
    """``mutag`` -> ``MUTAG``, ``reddit-multi-5k`` -> ``REDDIT-MULTI-5K`` (TU folder names are upper case)."""
    return dataset.upper()


def tu_source(dataset: str, data_dir: Optional[str] = None) -> Path:
    """The raw folder ``<data_dir>/TU/<NAME>/raw`` after checking the required files are there."""
    name = tu_name(dataset)
    raw = resolve_data_dir(data_dir) / "TU" / name / "raw"
    for part in REQUIRED:
        if not (raw / f"{name}_{part}.txt").is_file():
            raise missing_file(raw / f"{name}_{part}.txt", TU_FORMAT,
                               hint=f"Set data_dir (or $RECOT_DATA) to the folder holding TU/{name}/raw/.")
    return raw


def load_tu(dataset: str, data_dir: Optional[str] = None, cache_dir: Optional[str] = None) -> TUDataset:
    """The TU data set ``dataset`` as a PyG ``TUDataset`` rooted in the cache, processed on first use."""
    return load_tu_folder(tu_source(dataset, data_dir), tu_name(dataset), resolve_cache_dir(cache_dir) / "TU")


def load_tu_folder(source: Path, name: str, root: Path) -> TUDataset:
    """Raw TU files ``<source>/<name>_*.txt`` linked into ``<root>/<name>/raw`` and processed there by PyG."""
    source = source.resolve()
    raw = root / name / "raw"
    with _locked(root / f"{name}.lock"):
        raw.mkdir(parents=True, exist_ok=True)
        for src in sorted(source.glob(f"{name}_*.txt")):
            link = raw / src.name
            if link.is_symlink() and link.resolve() == src:
                continue
            if link.exists() or link.is_symlink():
                link.unlink()
            link.symlink_to(src)
        try:
            return _LocalTU(str(root), name)
        except DataFormatError:
            raise
        except Exception as err:  # PyG's reader fails with bare parsing/index errors
            raise DataFormatError(source, f"could not read the TU files: {type(err).__name__}: {err}",
                                  expected=TU_FORMAT) from err


def max_degree(dataset) -> int:
    return max(int(degree(d.edge_index[0], d.num_nodes).max()) if d.edge_index.numel() else 0 for d in dataset)


def with_node_features(dataset, node_features: str, max_deg: Optional[int] = None):
    """Attach the node-feature transform; returns ``(dataset, num_features)``."""
    has_labels = dataset.num_node_features > 0
    if node_features == "auto":
        node_features = "labels" if has_labels else "degree"
    if node_features == "labels":
        if not has_labels:
            raise DataFormatError(dataset.raw_dir, "node_features='labels' but the data set has no node labels",
                                  expected="a <NAME>_node_labels.txt file, or node_features 'degree'/'constant'")
        return dataset, dataset.num_node_features
    if node_features == "degree":
        top = max_degree(dataset) if max_deg is None else max_deg
        dataset.transform = OneHotDegree(top, cat=False)
        return dataset, top + 1
    if node_features == "constant":
        dataset.transform = Constant(1.0, cat=False)
        return dataset, 1
    raise ValueError(f"node_features must be 'auto', 'labels', 'degree' or 'constant', got {node_features!r}")


class TUGraphDataModule(FoldDataModule):
    """Graph classification on a TU data set, one fold of a stratified k-fold CV per run.

    Args:
        dataset: ``mutag``, ``proteins``, ``nci1``, ``imdb-binary``, ``imdb-multi``, ``collab``, ``reddit-binary``,
            ``reddit-multi-5k`` or any other TU name (case-insensitive).
        data_dir: folder holding ``TU/<NAME>/raw/`` (default ``$RECOT_DATA``, then ``./data``); never written.
        cache_dir: where the linked raw files and PyG's ``processed/`` go (default ``$RECOT_CACHE``, ``./data/cache``).
        node_features: ``auto`` (labels, else degree), ``labels``, ``degree`` (one-hot, up to ``max_degree``, default
            the data's maximum) or ``constant``.
        Fold arguments as :class:`datamodules.folds.FoldDataModule`.
    """

    def __init__(self, dataset: str = "mutag", data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 node_features: Literal["auto", "labels", "degree", "constant"] = "auto",
                 max_degree: Optional[int] = None, fold: int = 0, num_folds: int = 10, val_fraction: float = 0.1,
                 split_seed: int = 0, batch_size: int = 32, eval_batch_size: int = 64):
        super().__init__(fold, num_folds, val_fraction, split_seed, batch_size, eval_batch_size)
        self.save_hyperparameters()
        self.dataset, self.data_dir, self.cache_dir = dataset, data_dir, cache_dir
        self.node_features, self.max_degree = node_features, max_degree

    @property
    def name(self) -> str:
        return self.dataset.lower()

    def load(self):
        data = load_tu(self.dataset, self.data_dir, self.cache_dir)
        data, self.num_features = with_node_features(data, self.node_features, self.max_degree)
        if data.y is None:
            raise DataFormatError(data.raw_dir, "no graph labels", expected=TU_FORMAT)
        return data, data.y.numpy().astype(np.int64)

    def prepare_split(self, items, train, val, test):
        # index_select keeps the dataset (and its transform); small data sets are materialised once
        return {k: list(items.index_select(torch.from_numpy(v))) for k, v in
                (("train", train), ("val", val), ("test", test))}


class TUGraphPretrainDataModule(TUGraphDataModule):
    """Every graph of a TU data set in every split, for unsupervised pre-training evaluated by cross-validation
    (:class:`recot.tasks.ContrastiveTask`: AD-GCL, then an SVM over the pooled embeddings with its own folds).

    Training batches are shuffled (seeded by ``split_seed``); validation and test batches hold all graphs in file
    order, labels included (the pre-training never reads them). Arguments as :class:`TUGraphDataModule` without
    the fold ones.
    """

    def __init__(self, dataset: str = "mutag", data_dir: Optional[str] = None, cache_dir: Optional[str] = None,
                 node_features: Literal["auto", "labels", "degree", "constant"] = "auto",
                 max_degree: Optional[int] = None, split_seed: int = 0, batch_size: int = 32,
                 eval_batch_size: int = 128):
        super().__init__(dataset, data_dir, cache_dir, node_features, max_degree, 0, 10, 0.0, split_seed, batch_size,
                         eval_batch_size)

    def prepare_split(self, items, train, val, test):
        every = list(items.index_select(torch.arange(len(items))))
        return {"train": every, "val": every, "test": every}

    def split_summary(self, train, val, test) -> str:
        return (f"every split holds all {len(self.splits['train'])} graphs (pre-training; the SVM evaluation makes its "
                f"own folds)")
