"""User interaction vectors under strong generalization (Marlin 2004; Liang et al. WWW'18; SinkhornCF Sec. 3.2.1).

Protocol:

1. Positives: explicit ratings ``>= rating_threshold`` (4 by default: SinkhornCF's ML-20M / Netflix rule). Data that are
   already implicit (LightGCN txt, e.g. ``ml-1m`` which is binarised at >= 3; synthetic) are used as they are: every
   listed pair is a positive and the threshold does not apply.
2. Optional sampled subset (the paper's ML-20M-S): ``subsample_users`` users drawn at random, then their
   ``subsample_items`` most popular items.
3. Users with at least ``min_positives`` (5) positives are kept.
4. Users are split at random into training, validation (``num_val_users``) and test users (``num_test_users``).
   Items never seen by a training user are dropped (the model has no output unit for them).
5. For each validation / test user, ``floor(holdout_ratio * n)`` (20%) of the n positives, drawn at random, are held
   out for the metrics; the rest (80%) is the fold-in input. Training users are used whole.

All randomness comes from ``seed``. User rows are kept as scipy CSR and densified one batch at a time. Batches are
dicts: training ``users (B,)``, ``x (B, I)`` float; evaluation also ``target (B, I)`` bool (held-out items), with
``x`` the fold-in vector, whose items the metrics exclude from the ranking.

Transductive models (MF / NeuMF, one vector per user) need the fold-in part of the validation and test users while
training: ``fold_in_training=True`` adds those rows to the training batches (their held-out parts are never seen).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional

import numpy as np
import scipy.sparse as sp
import torch

from datamodules.base import ResumableEpochs, SeededDataModule
from datamodules.errors import DataFormatError, missing_file
from datamodules.interactions import (MOVIELENS_FILE_OF, TableSpec, _dense_rows, _detect_format, _source_hint,
                                      fetch_if_missing, read_ratings)
from datamodules.netflix import read_netflix
from datamodules.readers import LIGHTGCN_FORMAT, read_id_list, read_lightgcn
from datamodules.splits import per_user_holdout, remap, to_csr
from datamodules.synthetic import SyntheticSpec, planted_interactions

Format = Literal["auto", "movielens", "lightgcn", "table", "netflix", "synthetic"]


@dataclass
class UserVectorData:
    """Strong-generalization split. All matrices are binary ``(num_users, num_items)`` scipy CSR over one user index:
    ``train`` holds the training users' rows, ``fold_in`` / ``held_out`` the validation and test users' two parts."""

    name: str
    train: sp.csr_matrix
    fold_in: sp.csr_matrix
    held_out: sp.csr_matrix
    train_users: np.ndarray
    val_users: np.ndarray
    test_users: np.ndarray
    user_ids: Optional[np.ndarray] = None  # original id of each user / item index
    item_ids: Optional[np.ndarray] = None

    @property
    def num_users(self) -> int:
        return self.train.shape[0]

    @property
    def num_items(self) -> int:
        return self.train.shape[1]

    def stats(self) -> dict:
        return {"dataset": self.name, "users": self.num_users, "items": self.num_items,
                "train_users": self.train_users.size, "val_users": self.val_users.size,
                "test_users": self.test_users.size, "interactions": self.train.nnz + self.fold_in.nnz
                + self.held_out.nnz, "fold_in": self.fold_in.nnz, "held_out": self.held_out.nnz}


def read_positives(dataset: str, data_dir: Optional[str] = None, *, format: Format = "auto",
                   rating_threshold: Optional[float] = 4.0, table: Optional[TableSpec] = None,
                   synthetic: Optional[SyntheticSpec] = None,
                   download: bool = True) -> tuple[str, np.ndarray, np.ndarray]:
    """``(name, users, items)``: the positive pairs of a data set, ids as in its files (step 1 of the protocol)."""
    if format == "synthetic" or (format == "auto" and dataset == "synthetic"):
        users, items = planted_interactions(synthetic or SyntheticSpec())
        return "synthetic", users, items
    path = Path(dataset).expanduser()
    if not path.exists():
        path = fetch_if_missing(dataset, data_dir, download)
    name = path.stem if path.is_file() else path.name
    if format == "auto":
        if path.is_dir() and (any(path.glob("combined_data_*.txt")) or (path / "training_set").is_dir()):
            format = "netflix"
        elif not path.exists() and name == "netflix":
            format = "netflix"
        elif not path.exists() and name in MOVIELENS_FILE_OF:
            format = "movielens"
        else:
            format = _detect_format(path)
    ratings = None
    if format == "lightgcn":
        files = [path / f for f in ("train.txt", "valid.txt", "test.txt") if (path / f).is_file()]
        if not files:
            raise missing_file(path / "train.txt", LIGHTGCN_FORMAT, hint=_source_hint(name))
        id_list = read_id_list(path / "user_list.txt"), read_id_list(path / "item_list.txt")
        sizes = [None if ids is None else ids.size for ids in id_list]
        parts = [read_lightgcn(f, num_users=sizes[0], num_items=sizes[1], allow_empty_users=True) for f in files]
        users, items = np.concatenate([u for u, _ in parts]), np.concatenate([i for _, i in parts])
    elif format in ("movielens", "table"):
        users, items, ratings = read_ratings(path, format, table)
    elif format == "netflix":
        users, items, ratings = read_netflix(path)
    else:
        raise ValueError(f"format must be one of auto, movielens, lightgcn, table, netflix, synthetic; got {format!r}")
    if ratings is not None and rating_threshold is not None:
        keep = ratings >= rating_threshold
        users, items = users[keep], items[keep]
    if users.size == 0:
        raise DataFormatError(path, f"no positive interactions (ratings >= {rating_threshold})")
    return name, users, items


def subsample(users: np.ndarray, items: np.ndarray, num_users: Optional[int], num_items: Optional[int],
              rng: np.random.Generator) -> np.ndarray:
    """Mask of the pairs kept by the sampled-subset option: ``num_users`` random users, then the ``num_items`` items
    most popular among them (ties by item id). None leaves that side whole."""
    keep = np.ones(users.size, dtype=bool)
    if num_users is not None:
        all_users = np.unique(users)
        chosen = rng.choice(all_users, size=min(num_users, all_users.size), replace=False)
        keep &= np.isin(users, chosen)
    if num_items is not None:
        ids, counts = np.unique(items[keep], return_counts=True)
        top = ids[np.lexsort((ids, -counts))[:num_items]]
        keep &= np.isin(items, top)
    return keep


def load_user_vectors(dataset: str = "synthetic", data_dir: Optional[str] = None, *, format: Format = "auto",
                      rating_threshold: Optional[float] = 4.0, min_positives: int = 5, num_val_users: int = 100,
                      num_test_users: int = 100, holdout_ratio: float = 0.2, subsample_users: Optional[int] = None,
                      subsample_items: Optional[int] = None, table: Optional[TableSpec] = None,
                      synthetic: Optional[SyntheticSpec] = None, seed: int = 98765,
                      download: bool = True) -> UserVectorData:
    """Load a data set and split it for strong generalization (see the module docstring)."""
    rng = np.random.default_rng(seed)
    name, users, items = read_positives(dataset, data_dir, format=format, rating_threshold=rating_threshold,
                                        table=table, synthetic=synthetic, download=download)
    pairs = np.unique(np.stack([users, items], 1), axis=0)  # one positive per (user, item)
    users, items = pairs[:, 0], pairs[:, 1]
    if subsample_users is not None or subsample_items is not None:
        keep = subsample(users, items, subsample_users, subsample_items, rng)
        users, items = users[keep], items[keep]
    ids, counts = np.unique(users, return_counts=True)
    keep = np.isin(users, ids[counts >= min_positives])
    users, items = users[keep], items[keep]
    users, user_ids = remap(users)
    num_users = user_ids.size
    if num_val_users < 0 or num_test_users < 0 or num_val_users + num_test_users >= num_users:
        raise ValueError(f"{name}: {num_users} users with >= {min_positives} positives cannot give "
                         f"{num_val_users} validation + {num_test_users} test users and keep training users")
    perm = rng.permutation(num_users)
    n_train = num_users - num_val_users - num_test_users
    train_users = np.sort(perm[:n_train])
    val_users = np.sort(perm[n_train:n_train + num_val_users])
    test_users = np.sort(perm[n_train + num_val_users:])
    is_train = np.zeros(num_users, dtype=bool)
    is_train[train_users] = True
    seen = np.unique(items[is_train[users]])  # items some training user has: the model's output units
    keep = np.isin(items, seen)
    users, items = users[keep], items[keep]
    items, item_ids = remap(items)
    num_items = item_ids.size
    train_pairs = is_train[users]
    held = np.zeros(users.size, dtype=bool)
    held[~train_pairs] = per_user_holdout(users[~train_pairs], holdout_ratio, rng)
    fold = ~train_pairs & ~held
    return UserVectorData(
        name, to_csr(users[train_pairs], items[train_pairs], num_users, num_items),
        to_csr(users[fold], items[fold], num_users, num_items), to_csr(users[held], items[held], num_users, num_items),
        train_users, val_users, test_users, user_ids=user_ids, item_ids=item_ids)


class RowBatches(ResumableEpochs):
    """Shuffled training batches of user rows ``{"users": (B,), "x": (B, I) float32}``, one epoch per ``iter()``.

    The order of each epoch is drawn from ``generator``; under DDP every rank draws the same permutation and keeps
    every ``world_size``-th user. Resumable mid-epoch (:class:`datamodules.base.ResumableEpochs`).
    """

    def __init__(self, matrix: sp.csr_matrix, users: np.ndarray, batch_size: int, generator: torch.Generator,
                 rank: int = 0, world_size: int = 1, position: Optional[Callable[[], tuple[int, int]]] = None):
        super().__init__(generator, position)
        if users.size == 0:
            raise ValueError("no training users")
        self.matrix, self.users, self.batch_size = matrix, users, batch_size
        self.rank, self.world_size = rank, world_size
        self.num_rows = users.size // world_size if world_size > 1 else users.size

    def __len__(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        skip = self.start_epoch()
        order = self.users[torch.randperm(self.users.size, generator=self.generator).numpy()]
        shard = order[self.rank::self.world_size][: self.num_rows]
        for s in range(skip * self.batch_size, shard.size, self.batch_size):
            users = shard[s:s + self.batch_size]
            yield {"users": torch.from_numpy(users.astype(np.int64)), "x": _dense_rows(self.matrix, users).float()}


class FoldInBatches:
    """Evaluation batches ``{"users", "x" (fold-in, float32), "target" (held-out, bool)}`` over ``users`` that have
    held-out items (``target=None``: all ``users``, for predict); ``rank::world_size`` sharding without padding."""

    def __init__(self, fold_in: sp.csr_matrix, target: Optional[sp.csr_matrix], users: np.ndarray, batch_size: int,
                 rank: int = 0, world_size: int = 1):
        if target is not None:
            users = users[np.diff(target.indptr)[users] > 0]
        self.fold_in, self.target, self.users, self.batch_size = fold_in, target, users[rank::world_size], batch_size

    def __len__(self) -> int:
        return math.ceil(self.users.size / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for s in range(0, self.users.size, self.batch_size):
            users = self.users[s:s + self.batch_size]
            batch = {"users": torch.from_numpy(users.astype(np.int64)), "x": _dense_rows(self.fold_in, users).float()}
            if self.target is not None:
                batch["target"] = _dense_rows(self.target, users)
            yield batch


class UserVectorDataModule(SeededDataModule):
    """User vectors for autoencoder-style recommenders under strong generalization (module docstring).

    Args:
        dataset: ``synthetic``, a folder under ``data_dir`` (``ml-100k``, ``ml-1m``, ``ml-20m``, ``netflix``) or a path.
        data_dir: folder holding the data sets (default ``$RECOT_DATA``, then ``./data``).
        format: ``auto`` (from the files), ``movielens``, ``lightgcn`` (all of train/valid/test.txt merged as the
            users' histories), ``table``, ``netflix`` or ``synthetic``.
        rating_threshold: ratings ``>=`` this are positives (None: every rating); not applied to implicit data.
        min_positives: users with fewer positives are dropped (5).
        num_val_users, num_test_users: held-out users (paper: 10,000 each on ML-20M, 40,000 on Netflix, 500 on
            ML-20M-S).
        holdout_ratio: share of each validation / test user's positives held out for the metrics (0.2).
        subsample_users, subsample_items: the sampled-subset option (ML-20M-S); None = whole.
        table: column mapping for ``format: table``.
        synthetic: generator settings for ``dataset: synthetic``.
        fold_in_training: also train on the validation / test users' fold-in rows (transductive models).
        batch_size: users per training batch (500 for SinkhornCF / Mult-VAE, 200 in the loss comparison).
        eval_batch_size: users per evaluation batch.
        seed: seed of the split and of the batch order; None = the run's ``seed_everything`` seed.
        download: fetch a missing public data set (ml-100k, ml-1m) into ``data_dir``.
    """

    def __init__(self, dataset: str = "synthetic", data_dir: Optional[str] = None, format: Format = "auto",
                 rating_threshold: Optional[float] = 4.0, min_positives: int = 5, num_val_users: int = 100,
                 num_test_users: int = 100, holdout_ratio: float = 0.2, subsample_users: Optional[int] = None,
                 subsample_items: Optional[int] = None, table: Optional[TableSpec] = None,
                 synthetic: Optional[SyntheticSpec] = None, fold_in_training: bool = False, batch_size: int = 500,
                 eval_batch_size: int = 1000, seed: Optional[int] = None, download: bool = True):
        super().__init__()
        self.save_hyperparameters()
        self.args = dict(dataset=dataset, data_dir=data_dir, format=format, rating_threshold=rating_threshold,
                         min_positives=min_positives, num_val_users=num_val_users, num_test_users=num_test_users,
                         holdout_ratio=holdout_ratio, subsample_users=subsample_users,
                         subsample_items=subsample_items, table=table, synthetic=synthetic, download=download)
        self.fold_in_training = fold_in_training
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.data: Optional[UserVectorData] = None

    def load(self, seed: int) -> UserVectorData:
        return load_user_vectors(**self.args, seed=seed)

    def describe(self) -> str:
        s = self.data.stats()
        return (f"[recot] {s['dataset']}: {s['users']:,} users ({s['train_users']:,} train / {s['val_users']:,} val / "
                f"{s['test_users']:,} test), {s['items']:,} items, {s['interactions']:,} positives "
                f"({s['held_out']:,} held out)")

    @property
    def training_users(self) -> np.ndarray:
        """Users whose rows the model is trained on (training users, plus held-out users' fold-in rows if asked)."""
        d = self.data
        if not self.fold_in_training:
            return d.train_users
        return np.sort(np.concatenate([d.train_users, d.val_users, d.test_users]))

    def train_dataloader(self) -> RowBatches:
        d = self.data
        matrix = d.train + d.fold_in if self.fold_in_training else d.train
        return RowBatches(sp.csr_matrix(matrix), self.training_users, self.batch_size, self.generator,
                          *self._rank_world(), position=self._train_position)

    def val_dataloader(self) -> FoldInBatches:
        d = self.data
        return FoldInBatches(d.fold_in, d.held_out, d.val_users, self.eval_batch_size, *self._rank_world())

    def test_dataloader(self) -> FoldInBatches:
        d = self.data
        return FoldInBatches(d.fold_in, d.held_out, d.test_users, self.eval_batch_size, *self._rank_world())

    def predict_dataloader(self) -> FoldInBatches:
        """Recommendations for the validation and test users from their fold-in items."""
        d = self.data
        users = np.sort(np.concatenate([d.val_users, d.test_users]))
        return FoldInBatches(d.fold_in, None, users, self.eval_batch_size, *self._rank_world())
