"""Multi-instance learning bags: MATLAB and CSV readers, a synthetic generator, k-fold CV over bags.

Formats (``<data_dir>/mil/<file>``):

* MATLAB, flat (the MIL-Data-2002 distribution of MUSK1 / Elephant / Fox / Tiger): ``features`` (instances x
  dims, dense or sparse), ``labels`` (1 x instances, the bag label repeated on its instances, +-1 or 0/1),
  ``bag_ids`` (1 x instances);
* MATLAB, cell (the ROT pooling code's Messidor / Component / Function loader): ``data``, a cell array with one row
  per bag ``{instances x (dims + 1) matrix whose last column is the instance label, bag label}``;
* CSV: one instance per line ``bag_id,label,f1,...,fD`` (an optional header line), the label constant within a bag;
* ``dataset: synthetic``: bags of Gaussian instances; a bag is positive iff it holds a key instance.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import scipy.io
import scipy.sparse as sp
import torch
from torch_geometric.data import Data

from datamodules.errors import DataFormatError, missing_file
from datamodules.folds import FoldDataModule
from datamodules.readers import resolve_data_dir

KNOWN_BAGS = {
    "musk1": "musk1norm_matlab.mat", "musk2": "musk2norm_matlab.mat", "elephant": "elephant_100x100_matlab.mat",
    "fox": "fox_100x100_matlab.mat", "tiger": "tiger_100x100_matlab.mat",
    "messidor": "messidor.mat", "component": "component.mat", "function": "function.mat", "process": "process.mat",
}
MAT_FORMAT = ("a MATLAB file with 'features' (instances x dims), 'labels' (1 x instances) and 'bag_ids' "
              "(1 x instances), or with a cell array 'data' of {instances x (dims + 1) matrix, bag label} rows")
CSV_FORMAT = "one instance per line: bag_id,label,f1,...,fD (numbers; an optional header line)"


@dataclass
class Bags:
    """Bags as ``(instances, dims)`` float arrays with 0-based integer labels."""

    name: str
    bags: list[np.ndarray]
    labels: np.ndarray

    @property
    def num_features(self) -> int:
        return self.bags[0].shape[1]


@dataclass
class SyntheticBags:
    """Generator of ``dataset: synthetic``: ``num_bags`` bags of ``min_size..max_size`` instances drawn from
    N(0, I_dim); a positive bag (half of them) has ``key_instances`` of its instances replaced by key instances drawn
    from N(shift * e_1, I)."""

    num_bags: int = 200
    dim: int = 16
    min_size: int = 3
    max_size: int = 12
    key_instances: int = 1
    shift: float = 6.0
    seed: int = 0


def _binary_labels(values: np.ndarray) -> np.ndarray:
    """+-1 or 0/1 or any labels -> 0..C-1 (sorted)."""
    _, inverse = np.unique(values, return_inverse=True)
    return inverse.astype(np.int64)


def read_mil_mat(path: Path) -> Bags:
    """A MATLAB MIL file, flat or cell layout (see the module docstring)."""
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as err:
        raise DataFormatError(path, f"not a readable MATLAB file ({err})", expected=MAT_FORMAT) from err
    if {"features", "labels", "bag_ids"} <= mat.keys():
        return _flat_bags(path, mat)
    if "data" in mat:
        return _cell_bags(path, mat["data"])
    found = sorted(k for k in mat if not k.startswith("__"))
    raise DataFormatError(path, f"unknown MIL layout (variables: {found})", expected=MAT_FORMAT)


def _dense(a) -> np.ndarray:
    return np.asarray(a.toarray() if sp.issparse(a) else a, dtype=np.float64)


def _flat_bags(path: Path, mat: dict) -> Bags:
    features = _dense(mat["features"])
    labels = _dense(mat["labels"]).ravel()
    bag_ids = np.asarray(mat["bag_ids"]).astype(np.int64).ravel()
    if not (features.shape[0] == labels.size == bag_ids.size):
        raise DataFormatError(path, f"'features' has {features.shape[0]} rows, 'labels' {labels.size} and 'bag_ids' "
                                    f"{bag_ids.size} entries", expected=MAT_FORMAT)
    ids, first = np.unique(bag_ids, return_index=True)
    bags, bag_labels = [], []
    for bag in ids[np.argsort(first)]:  # bags in file order
        rows = bag_ids == bag
        if np.unique(labels[rows]).size != 1:
            raise DataFormatError(path, f"bag {bag} has instances with different labels",
                                  expected="the bag label repeated on each of its instances")
        bags.append(features[rows])
        bag_labels.append(labels[rows][0])
    return Bags(path.stem, bags, _binary_labels(np.asarray(bag_labels)))


def _cell_bags(path: Path, cells: np.ndarray) -> Bags:
    if cells.ndim != 2 or cells.shape[1] < 2:
        raise DataFormatError(path, f"'data' has shape {cells.shape}", expected=MAT_FORMAT)
    bags = [_dense(cells[i, 0])[:, :-1] for i in range(cells.shape[0])]  # last column: instance labels
    labels = np.array([float(np.asarray(cells[i, 1]).ravel()[0]) for i in range(cells.shape[0])])
    if len({b.shape[1] for b in bags}) != 1:
        raise DataFormatError(path, "bags have different numbers of features", expected=MAT_FORMAT)
    return Bags(path.stem, bags, _binary_labels(labels))


def read_mil_csv(path: Path) -> Bags:
    """A CSV MIL file (see the module docstring)."""
    lines = path.read_text().splitlines()
    start = 0
    if lines and not _numeric(lines[0].split(",")[1:]):
        start = 1  # header (bag ids may be names, so only the label and features decide)
    rows, ids, labels = [], [], []
    for number, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) < 3 or not _numeric(fields[1:]):
            raise DataFormatError(path, f"bad line {line[:60]!r}", line=number, expected=CSV_FORMAT)
        ids.append(fields[0].strip())
        labels.append(float(fields[1]))
        rows.append([float(v) for v in fields[2:]])
    if not rows:
        raise DataFormatError(path, "no instances", expected=CSV_FORMAT)
    if len({len(r) for r in rows}) != 1:
        raise DataFormatError(path, "lines have different numbers of features", expected=CSV_FORMAT)
    features, labels, ids = np.asarray(rows), np.asarray(labels), np.asarray(ids)
    order = list(dict.fromkeys(ids.tolist()))
    bags, bag_labels = [], []
    for bag in order:
        rows_of = ids == bag
        if np.unique(labels[rows_of]).size != 1:
            raise DataFormatError(path, f"bag {bag!r} has instances with different labels", expected=CSV_FORMAT)
        bags.append(features[rows_of])
        bag_labels.append(labels[rows_of][0])
    return Bags(path.stem, bags, _binary_labels(np.asarray(bag_labels)))


def _numeric(fields) -> bool:
    try:
        [float(f) for f in fields]
        return True
    except ValueError:
        return False


def synthetic_bags(spec: SyntheticBags) -> Bags:
    """Bags per :class:`SyntheticBags`: label 1 iff the bag holds a key instance."""
    rng = np.random.default_rng(spec.seed)
    bags, labels = [], np.arange(spec.num_bags) % 2
    key = np.zeros(spec.dim)
    key[0] = spec.shift
    for label in labels:
        bag = rng.standard_normal((int(rng.integers(spec.min_size, spec.max_size + 1)), spec.dim))
        if label:
            k = min(spec.key_instances, len(bag))
            bag[rng.choice(len(bag), k, replace=False)] = key + rng.standard_normal((k, spec.dim))
        bags.append(bag)
    return Bags("synthetic", bags, labels.astype(np.int64))


def load_bags(dataset: str, data_dir: Optional[str] = None, file: Optional[str] = None,
              synthetic: Optional[SyntheticBags] = None) -> Bags:
    """Bags of ``dataset`` (a known name, ``synthetic``, or any name with ``file``) from ``<data_dir>/mil/``."""
    if dataset == "synthetic":
        return synthetic_bags(synthetic or SyntheticBags())
    name = file or KNOWN_BAGS.get(dataset.lower())
    if name is None:
        raise DataFormatError(dataset, "unknown MIL data set", expected=f"one of {sorted(KNOWN_BAGS)}, 'synthetic', "
                                                                       "or a file name given by 'file'")
    path = Path(name) if Path(name).is_absolute() else resolve_data_dir(data_dir) / "mil" / name
    if not path.is_file():
        raise missing_file(path, MAT_FORMAT if path.suffix == ".mat" else CSV_FORMAT,
                           hint="Set data_dir (or $RECOT_DATA) to the folder holding mil/.")
    bags = read_mil_mat(path) if path.suffix.lower() == ".mat" else read_mil_csv(path)
    bags.name = dataset.lower()
    return bags


class MILDataModule(FoldDataModule):
    """Multi-instance learning bags, one fold of a stratified k-fold CV over bags per run.

    Args:
        dataset: ``musk1``, ``elephant``, ``fox``, ``tiger``, ``messidor``, ``component``, ``function`` (files in
            ``<data_dir>/mil/``, see ``KNOWN_BAGS``), ``synthetic``, or any name together with ``file``.
        data_dir: folder holding ``mil/`` (default ``$RECOT_DATA``, then ``./data``).
        file: file name under ``<data_dir>/mil/`` (or an absolute path), ``.mat`` or ``.csv``.
        standardize: z-score the features with the mean / std of the training fold's instances.
        synthetic: generator settings for ``dataset: synthetic``.
        Fold arguments as :class:`datamodules.folds.FoldDataModule` (Ilse et al.: 10-fold CV; ROT paper: 5-fold;
        batch size 128).
    """

    def __init__(self, dataset: str = "musk1", data_dir: Optional[str] = None, file: Optional[str] = None,
                 standardize: bool = True, synthetic: Optional[SyntheticBags] = None, fold: int = 0,
                 num_folds: int = 10, val_fraction: float = 0.1, split_seed: int = 0, batch_size: int = 128,
                 eval_batch_size: int = 64):
        super().__init__(fold, num_folds, val_fraction, split_seed, batch_size, eval_batch_size)
        self.save_hyperparameters()
        self.dataset, self.data_dir, self.file, self.standardize = dataset, data_dir, file, standardize
        self.synthetic = synthetic

    @property
    def name(self) -> str:
        return self.dataset.lower()

    def load(self):
        synthetic = self.synthetic
        if isinstance(synthetic, dict):  # the raw config under some CLI paths
            synthetic = SyntheticBags(**synthetic)
        bags = load_bags(self.dataset, self.data_dir, self.file, synthetic)
        self.num_features = bags.num_features
        return bags, bags.labels

    def prepare_split(self, items: Bags, train, val, test):
        mean, std = 0.0, 1.0
        if self.standardize:
            stacked = np.concatenate([items.bags[i] for i in train])
            mean, std = stacked.mean(0), stacked.std(0)
            std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)  # constant columns stay 0

        def data(i: int) -> Data:
            x = torch.as_tensor((items.bags[i] - mean) / std, dtype=torch.float32)
            return Data(x=x, y=torch.tensor([items.labels[i]]), num_nodes=x.shape[0])

        return {k: [data(i) for i in v] for k, v in (("train", train), ("val", val), ("test", test))}
