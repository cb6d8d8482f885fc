"""Stratified k-fold cross-validation over labelled items (graphs, bags, sets) and the data module they share.

A run is one fold: ``fold`` k of ``num_folds`` is the test set; a stratified ``val_fraction`` of the remaining items
selects the checkpoint; the rest trains. The same ``split_seed`` gives the same folds in every run, so the folds of
one configuration partition the data (``benchmarks/rotp_folds.py`` runs them all and reports mean +- std).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch_geometric.loader import DataLoader

from datamodules.base import ShuffleState
from recot.folds import stratified_folds


def fold_split(labels: np.ndarray, fold: int, num_folds: int, val_fraction: float,
               seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, val, test)`` sorted index arrays for ``fold``; validation is a stratified ``val_fraction`` of the
    items outside the test fold (at least one per class when ``val_fraction > 0``)."""
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in 0..{num_folds - 1}, got {fold}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    folds = stratified_folds(labels, num_folds, seed)
    test = np.flatnonzero(folds == fold)
    rest = np.flatnonzero(folds != fold)
    rng = np.random.default_rng(seed + 1 + fold)
    val = []
    for c in np.unique(labels[rest]):
        members = rng.permutation(rest[labels[rest] == c])
        take = 0 if val_fraction == 0 else max(1, int(round(val_fraction * members.size)))
        val.append(members[:min(take, members.size - 1)])
    val = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    train = np.setdiff1d(rest, val)
    return train, val, np.sort(test)


def resolve_cache_dir(cache_dir: Optional[str] = None) -> Path:
    """Where derived files go: the argument, else ``$RECOT_CACHE``, else ``./data/cache`` (git-ignored)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RECOT_CACHE")
    return Path(env).expanduser() if env else Path("data") / "cache"


class FoldDataModule(ShuffleState, L.LightningDataModule):
    """Base of the set/graph classification data modules: one CV fold, PyG loaders, exact-resume shuffling.

    Subclasses implement :meth:`load` returning ``(items, labels)`` (a list or PyG dataset of ``Data`` objects with a
    ``y``, and the labels as an int array) and may override :meth:`prepare_split` (e.g. to standardise features on the
    training fold). They set ``num_features``.

    Args:
        fold: the test fold (0..num_folds-1). num_folds: k of the stratified k-fold CV.
        val_fraction: stratified share of the non-test items used for validation (checkpoint selection).
        split_seed: seed of the folds (the same for every fold of a CV run). batch_size: training sets per batch.
        eval_batch_size: sets per validation/test batch.
    """

    def __init__(self, fold: int = 0, num_folds: int = 10, val_fraction: float = 0.1, split_seed: int = 0,
                 batch_size: int = 32, eval_batch_size: int = 64):
        super().__init__()
        self.fold, self.num_folds, self.val_fraction, self.split_seed = fold, num_folds, val_fraction, split_seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_features: Optional[int] = None
        self.num_classes: Optional[int] = None
        self.splits: Optional[dict[str, Sequence]] = None
        self.generator = torch.Generator().manual_seed(split_seed * 1000 + fold)
        self._pending_state: Optional[dict] = None

    @property
    def name(self) -> str:
        raise NotImplementedError

    def load(self):
        raise NotImplementedError

    def prepare_split(self, items, train: np.ndarray, val: np.ndarray, test: np.ndarray) -> dict[str, Sequence]:
        return {"train": _take(items, train), "val": _take(items, val), "test": _take(items, test)}

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits is not None:
            return
        items, labels = self.load()
        labels = np.asarray(labels)
        self.num_classes = int(labels.max()) + 1
        train, val, test = fold_split(labels, self.fold, self.num_folds, self.val_fraction, self.split_seed)
        self.splits = self.prepare_split(items, train, val, test)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)
        rank_zero_info(f"[recot] {self.name}: {labels.size} sets, {self.num_classes} classes, {self.num_features} "
                       f"features; {self.split_summary(train, val, test)}")

    def split_summary(self, train: np.ndarray, val: np.ndarray, test: np.ndarray) -> str:
        """The split part of the set-up log line."""
        return f"fold {self.fold}/{self.num_folds}: {train.size} train / {val.size} val / {test.size} test"

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True, generator=self.generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


def _take(items, index: np.ndarray):
    if hasattr(items, "index_select"):
        return items.index_select(torch.from_numpy(index))
    return [items[i] for i in index]
