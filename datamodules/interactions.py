"""Implicit-feedback interaction data: loading, splitting, BPR sampling and full-ranking evaluation batches.

Protocol (LightGCN, He et al. SIGIR'20; NGCF, Wang et al. SIGIR'19): a given train/test split is used as is;
otherwise each user's interactions are split 80/20 at random (seeded). Validation is ``valid.txt`` when the folder has
one, else 10% of each user's training interactions. Training samples one (user, positive, negative) triple per
training interaction and epoch, users uniformly, as LightGCN's sampler does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from datamodules.base import ResumableEpochs, SeededDataModule
from datamodules.download import ensure_dataset
from datamodules.errors import DataFormatError, missing_file
from datamodules.readers import (LIGHTGCN_FORMAT, MOVIELENS_FILES, read_id_list, read_lightgcn, read_movielens,
                                 read_table, resolve_data_dir)
from datamodules.splits import csr_pairs, k_core, per_user_holdout, remap, to_csr
from datamodules.synthetic import SyntheticSpec, planted_interactions

# Where the public LightGCN-format splits live, for the missing-file message.
KNOWN_SOURCES = {
    "gowalla": "https://github.com/kuandeng/LightGCN/tree/master/Data/gowalla",
    "yelp2018": "https://github.com/kuandeng/LightGCN/tree/master/Data/yelp2018",
    "amazon-book": "https://github.com/kuandeng/LightGCN/tree/master/Data/amazon-book",
    "ml-100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "ml-1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    "ml-20m": "https://files.grouplens.org/datasets/movielens/ml-20m.zip",
    # the original ML-1M ratings for the paper protocol (../shared/data/ml-1m holds a LightGCN-format split instead)
    "ml-1m-ratings": "https://files.grouplens.org/datasets/movielens/ml-1m.zip (its ml-1m/ratings.dat)",
}
# The ratings file a missing MovieLens folder is reported by (u.data when the name is not known).
MOVIELENS_FILE_OF = {"ml-1m": "ratings.dat", "ml-1m-ratings": "ratings.dat", "ml-10m": "ratings.dat",
                     "ml-20m": "ratings.csv"}


@dataclass
class TableSpec:
    """A generic delimited interaction file: which columns hold user, item and (optionally) rating."""

    file: str = "interactions.csv"
    sep: str = ","
    user_col: int = 0
    item_col: int = 1
    rating_col: Optional[int] = None
    header: bool = True


@dataclass
class InteractionData:
    """A split interaction set. Matrices are binary ``(num_users, num_items)`` scipy CSR with sorted indices."""

    name: str
    train: sp.csr_matrix
    val: sp.csr_matrix
    test: sp.csr_matrix
    user_ids: Optional[np.ndarray] = None  # original id of each user index, when ids were remapped or listed
    item_ids: Optional[np.ndarray] = None
    _adjacency: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def num_users(self) -> int:
        return self.train.shape[0]

    @property
    def num_items(self) -> int:
        return self.train.shape[1]

    @property
    def adjacency(self) -> torch.Tensor:
        """Normalised bipartite adjacency ``D^-1/2 A D^-1/2`` of the training graph, ``(U + I, U + I)`` sparse CSR."""
        if self._adjacency is None:
            from recot.nn.sparse import normalized_adjacency
            users, items = csr_pairs(self.train)
            self._adjacency = normalized_adjacency(torch.from_numpy(users), torch.from_numpy(items),
                                                   self.num_users, self.num_items)
        return self._adjacency

    def stats(self) -> dict:
        n_train, n_val, n_test = self.train.nnz, self.val.nnz, self.test.nnz
        return {"dataset": self.name, "users": self.num_users, "items": self.num_items, "train": n_train,
                "val": n_val, "test": n_test,
                "density": (n_train + n_val + n_test) / max(1, self.num_users * self.num_items)}


def load_interactions(dataset: str = "synthetic", data_dir: Optional[str] = None, *,
                      format: str = "auto", split: str = "auto", test_ratio: float = 0.2, val_ratio: float = 0.1,
                      rating_threshold: Optional[float] = None, k_core_min: int = 0,
                      table: Optional[TableSpec] = None, synthetic: Optional[SyntheticSpec] = None,
                      seed: int = 2020, download: bool = True) -> InteractionData:
    """Load and split an interaction data set (see the module docstring for the protocol).

    A data set with a public source (``datamodules.download.SOURCES``: gowalla, yelp2018, amazon-book, ml-1m, ml-100k)
    whose files are missing under ``data_dir`` is downloaded there first and verified, unless ``download`` is False.
    """
    rng = np.random.default_rng(seed)
    if format == "synthetic" or (format == "auto" and dataset == "synthetic"):
        spec = synthetic or SyntheticSpec()
        users, items = planted_interactions(spec)
        return _random_split("synthetic", users, items, spec.num_users, spec.num_items, test_ratio, val_ratio, rng)

    path = Path(dataset).expanduser()
    if not path.exists():
        path = fetch_if_missing(dataset, data_dir, download)
    fmt = _detect_format(path) if format == "auto" else format
    name = path.stem if path.is_file() else path.name

    if fmt == "lightgcn":
        return _load_lightgcn(path, name, split, test_ratio, val_ratio, rng)
    if fmt not in ("movielens", "table"):
        raise ValueError(f"format must be one of auto, lightgcn, movielens, table, synthetic; got {format!r}")
    users, items, ratings = read_ratings(path, fmt, table)

    if rating_threshold is not None:
        if ratings is None:
            raise ValueError("rating_threshold needs a rating column (table.rating_col)")
        keep = ratings >= rating_threshold
        users, items = users[keep], items[keep]
    keep = k_core(users, items, k_core_min)
    users, items = users[keep], items[keep]
    if users.size == 0:
        raise DataFormatError(path, "no interactions left after rating threshold / k-core filtering")
    users, user_ids = remap(users)
    items, item_ids = remap(items)
    data = _random_split(name, users, items, user_ids.size, item_ids.size, test_ratio, val_ratio, rng)
    data.user_ids, data.item_ids = user_ids, item_ids
    return data


def read_ratings(path: Path, fmt: str, table: Optional[TableSpec] = None
                 ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Raw ``(users, items, ratings)`` (ids as in the file; ratings None for a table without a rating column) of a
    MovieLens ratings file (``fmt="movielens"``: ``path`` is the file or its folder) or a delimited table."""
    name = path.stem if path.is_file() else path.name
    if fmt == "movielens":
        file = path if path.is_file() else next((path / f for f in MOVIELENS_FILES if (path / f).is_file()), None)
        if file is None:
            raise missing_file(path / MOVIELENS_FILE_OF.get(name, "u.data"),
                               "a MovieLens ratings file: " + ", ".join(MOVIELENS_FILES),
                               hint=_source_hint(name) + " Set data_dir (or $RECOT_DATA) to the folder that holds it.")
        return read_movielens(file)
    spec = table or TableSpec()
    file = path if path.is_file() else path / spec.file
    cols = [spec.user_col, spec.item_col] + ([spec.rating_col] if spec.rating_col is not None else [])
    arr = read_table(file, sep=spec.sep, columns=cols, header=spec.header)
    ratings = arr[:, 2] if spec.rating_col is not None else None
    return arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), ratings


def fetch_if_missing(dataset: str, data_dir: Optional[str], download: bool = True) -> Path:
    """``<data_dir>/<dataset>``, downloaded and verified first when it is a public data set whose files are missing."""
    path = resolve_data_dir(data_dir) / dataset
    ensure_dataset(dataset, path, download=download, hint=_source_hint(dataset))
    return path


def _detect_format(path: Path) -> str:
    if path.is_file():
        return "movielens" if path.name in MOVIELENS_FILES else "table"
    if path.is_dir():
        if any((path / f).is_file() for f in ("train.txt", "test.txt")):
            return "lightgcn"
        if any((path / f).is_file() for f in MOVIELENS_FILES):
            return "movielens"
        raise DataFormatError(path, "no interaction files found",
                              expected="LightGCN train.txt/test.txt, or a MovieLens " + "/".join(MOVIELENS_FILES),
                              hint=_source_hint(path.name))
    raise missing_file(path, "a data folder (LightGCN train.txt/test.txt or MovieLens ratings)",
                       hint=_source_hint(path.name) + " Set data_dir (or $RECOT_DATA) to the folder that holds it.")


def _source_hint(name: str) -> str:
    url = KNOWN_SOURCES.get(name)
    return f"Get '{name}' from {url}." if url else ""


def _load_lightgcn(path: Path, name: str, split: str, test_ratio: float, val_ratio: float,
                   rng: np.random.Generator) -> InteractionData:
    for required in ("train.txt", "test.txt"):
        if not (path / required).is_file():
            raise missing_file(path / required, LIGHTGCN_FORMAT,
                               hint=f"The LightGCN format needs train.txt and test.txt in {path}. "
                                    + _source_hint(name))
    user_ids, item_ids = read_id_list(path / "user_list.txt"), read_id_list(path / "item_list.txt")
    n_u = None if user_ids is None else user_ids.size
    n_i = None if item_ids is None else item_ids.size
    parts = {f: read_lightgcn(path / f"{f}.txt", num_users=n_u, num_items=n_i)
             for f in ("train", "valid", "test") if (path / f"{f}.txt").is_file()}
    num_users = n_u or 1 + max(int(u.max()) for u, _ in parts.values())
    num_items = n_i or 1 + max(int(i.max()) for _, i in parts.values())
    if split == "random":
        users = np.concatenate([u for u, _ in parts.values()])
        items = np.concatenate([i for _, i in parts.values()])
        data = _random_split(name, users, items, num_users, num_items, test_ratio, val_ratio, rng)
    elif split in ("auto", "given"):
        train_u, train_i = parts["train"]
        if "valid" in parts:
            val_u, val_i = parts["valid"]
        else:
            held = per_user_holdout(train_u, val_ratio, rng)
            val_u, val_i = train_u[held], train_i[held]
            train_u, train_i = train_u[~held], train_i[~held]
        test_u, test_i = parts["test"]
        data = InteractionData(name, to_csr(train_u, train_i, num_users, num_items),
                               to_csr(val_u, val_i, num_users, num_items), to_csr(test_u, test_i, num_users, num_items))
    else:
        raise ValueError(f"split must be 'auto', 'given' or 'random', got {split!r}")
    data.user_ids, data.item_ids = user_ids, item_ids
    return data


def _random_split(name: str, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int,
                  test_ratio: float, val_ratio: float, rng: np.random.Generator) -> InteractionData:
    full = to_csr(users, items, num_users, num_items)  # drops duplicate pairs before splitting
    users, items = csr_pairs(full)
    test = per_user_holdout(users, test_ratio, rng)
    rest_u, rest_i = users[~test], items[~test]
    val = per_user_holdout(rest_u, val_ratio, rng)
    return InteractionData(name, to_csr(rest_u[~val], rest_i[~val], num_users, num_items),
                           to_csr(rest_u[val], rest_i[val], num_users, num_items),
                           to_csr(users[test], items[test], num_users, num_items))


class BPRBatches(ResumableEpochs):
    """Training batches of (user, positive, negatives) triples, one epoch per ``iter()``.

    Per epoch, ``len(train)`` triples are drawn: user uniformly among users with training items, positive uniformly
    from the user's items, ``num_negatives`` negatives uniformly from the items the user has not interacted with
    (rejection sampling). All randomness comes from ``generator``; under DDP every rank draws the same epoch and keeps
    its own equal-sized shard, so the sample stream does not depend on the number of processes' timing.

    Batches are dicts ``users (B,)``, ``pos (B,)``, ``neg (B, num_negatives)`` of int64.

    Resumable mid-epoch (:class:`datamodules.base.ResumableEpochs`, saved in checkpoints by the fit loop).
    """

    def __init__(self, train: sp.csr_matrix, batch_size: int, num_negatives: int, generator: torch.Generator,
                 rank: int = 0, world_size: int = 1, position: Optional[Callable[[], tuple[int, int]]] = None):
        super().__init__(generator, position)
        self.num_items = train.shape[1]
        self.indptr = torch.from_numpy(train.indptr.astype(np.int64))
        self.indices = torch.from_numpy(train.indices.astype(np.int64))
        deg = self.indptr[1:] - self.indptr[:-1]
        # users who interacted with every item have no negative to sample
        self.users = torch.nonzero((deg > 0) & (deg < self.num_items)).flatten()
        if self.users.numel() == 0:
            raise ValueError("no user has a training item (and a non-interacted item) to sample from")
        user_of = torch.repeat_interleave(torch.arange(deg.numel()), deg)
        self.keys = user_of * self.num_items + self.indices  # sorted: CSR rows in order, sorted columns
        self.num_samples = int(train.nnz) // world_size
        self.batch_size, self.num_negatives = batch_size, num_negatives
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        g = self.generator
        users = self.users[torch.randint(self.users.numel(), (n,), generator=g)]
        start, deg = self.indptr[users], self.indptr[users + 1] - self.indptr[users]
        pos = self.indices[start + (torch.rand(n, generator=g) * deg).long().clamp_max(deg - 1)]
        neg = torch.randint(self.num_items, (n, self.num_negatives), generator=g)
        bad = self.is_positive(users[:, None], neg)
        while bad.any():
            neg[bad] = torch.randint(self.num_items, (int(bad.sum()),), generator=g)
            bad = self.is_positive(users[:, None], neg)
        return {"users": users, "pos": pos, "neg": neg}

    def is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        q = users * self.num_items + items
        idx = torch.searchsorted(self.keys, q).clamp_max(self.keys.numel() - 1)
        return self.keys[idx] == q

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        skip = self.start_epoch()
        full = self.sample(self.num_samples * self.world_size)
        shard = {k: v[self.rank::self.world_size] for k, v in full.items()}
        for s in range(skip * self.batch_size, self.num_samples, self.batch_size):
            yield {k: v[s:s + self.batch_size] for k, v in shard.items()}


class UserBatches:
    """Evaluation batches over users for full ranking: ``users (B,)``, ``target (B, I)`` bool (held-out items) and
    ``exclude (B, I)`` bool (items the user saw in training, and in validation at test time).

    Only users with at least one target item are visited (the others are skipped by the metrics anyway). Under DDP
    each rank takes every ``world_size``-th user, without the padding a DistributedSampler would add, so that metric
    sums over ranks equal the single-process ones.
    """

    def __init__(self, target: Optional[sp.csr_matrix], exclude: Sequence[sp.csr_matrix], batch_size: int,
                 rank: int = 0, world_size: int = 1, users: Optional[np.ndarray] = None):
        self.target = target
        self.exclude = sp.csr_matrix(sum(exclude)) if exclude else None
        if users is None:
            users = np.flatnonzero(np.diff(target.indptr) > 0) if target is not None else np.arange(exclude[0].shape[0])
        self.users = users[rank::world_size]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(self.users.size / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for s in range(0, self.users.size, self.batch_size):
            users = self.users[s:s + self.batch_size]
            batch = {"users": torch.from_numpy(users.astype(np.int64))}
            if self.target is not None:
                batch["target"] = _dense_rows(self.target, users)
            if self.exclude is not None:
                batch["exclude"] = _dense_rows(self.exclude, users)
            yield batch


def _dense_rows(mat: sp.csr_matrix, rows: np.ndarray) -> torch.Tensor:
    sub = mat[rows]
    out = torch.zeros(rows.size, mat.shape[1], dtype=torch.bool)
    r = np.repeat(np.arange(rows.size), np.diff(sub.indptr))
    out[torch.from_numpy(r), torch.from_numpy(sub.indices.astype(np.int64))] = True
    return out


class InteractionDataModule(SeededDataModule):
    """Implicit-feedback recommendation data for BPR training and full-ranking evaluation.

    Args:
        dataset: ``"synthetic"``, a folder name under ``data_dir`` (``gowalla``, ``ml-100k``, ...) or a path.
        data_dir: folder holding the data sets (default ``$RECOT_DATA``, then ``./data``).
        format: ``auto`` (detected from the files), ``lightgcn``, ``movielens``, ``table`` or ``synthetic``.
        split: ``auto``/``given`` uses train/test files where the format has them, ``random`` re-splits per user.
        test_ratio: per-user test share for random splits (0.2 = the papers' 80/20).
        val_ratio: per-user share of training interactions held out for validation when no ``valid.txt`` exists.
        rating_threshold: keep ratings >= this as positives (MovieLens / table data); None keeps all.
        k_core: iterative k-core filtering of users and items (0 = off).
        table: column mapping for ``format: table``.
        synthetic: generator settings for ``dataset: synthetic``.
        batch_size: training triples per batch.
        eval_batch_size: users per full-ranking evaluation batch.
        num_negatives: negatives per positive (1 for BPR; 4 for NeuMF's BCE).
        seed: seed of the split and of the sampler; None = the run's ``seed_everything`` seed.
        download: fetch a missing public data set (gowalla, yelp2018, amazon-book, ml-1m, ml-100k) into ``data_dir``
            and verify its checksums; ``RECOT_OFFLINE=1`` turns downloads off everywhere.
    """

    def __init__(self, dataset: str = "synthetic", data_dir: Optional[str] = None,
                 format: Literal["auto", "lightgcn", "movielens", "table", "synthetic"] = "auto",
                 split: Literal["auto", "given", "random"] = "auto", test_ratio: float = 0.2, val_ratio: float = 0.1,
                 rating_threshold: Optional[float] = None, k_core: int = 0, table: Optional[TableSpec] = None,
                 synthetic: Optional[SyntheticSpec] = None, batch_size: int = 2048, eval_batch_size: int = 1024,
                 num_negatives: int = 1, seed: Optional[int] = None, download: bool = True):
        super().__init__()
        self.save_hyperparameters()
        # the live arguments: under the CLI, hparams hold the raw config (dicts), not the dataclasses
        self.args = dict(dataset=dataset, data_dir=data_dir, format=format, split=split, test_ratio=test_ratio,
                         val_ratio=val_ratio, rating_threshold=rating_threshold, k_core_min=k_core, table=table,
                         synthetic=synthetic, download=download)
        self.batch_size, self.eval_batch_size, self.num_negatives = batch_size, eval_batch_size, num_negatives
        self.seed = seed
        self.data: Optional[InteractionData] = None

    def load(self, seed: int) -> InteractionData:
        return load_interactions(**self.args, seed=seed)

    def describe(self) -> str:
        s = self.data.stats()
        return (f"[recot] {s['dataset']}: {s['users']:,} users, {s['items']:,} items, "
                f"{s['train']:,} train / {s['val']:,} val / {s['test']:,} test interactions, density {s['density']:.5f}")

    def train_dataloader(self) -> BPRBatches:
        return BPRBatches(self.data.train, self.batch_size, self.num_negatives, self.generator,
                          *self._rank_world(), position=self._train_position)

    def val_dataloader(self) -> UserBatches:
        return UserBatches(self.data.val, [self.data.train], self.eval_batch_size, *self._rank_world())

    def test_dataloader(self) -> UserBatches:
        return UserBatches(self.data.test, [self.data.train, self.data.val], self.eval_batch_size,
                           *self._rank_world())

    def predict_dataloader(self) -> UserBatches:
        """All users; training items are excluded from their recommendations."""
        return UserBatches(None, [self.data.train], self.eval_batch_size, *self._rank_world(),
                           users=np.arange(self.data.num_users))
