"""Stratified k-fold assignment, shared by the cross-validated data modules (:mod:`datamodules.folds`) and the SVM
evaluation (:mod:`recot.svm`)."""
from __future__ import annotations

import numpy as np

__all__ = ["stratified_folds"]


def stratified_folds(labels: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """Fold id ``(n,)`` of every item: each class is shuffled and dealt round-robin, continuing where the previous
    class stopped, so folds differ in size by at most one and in class counts by at most one."""
    labels = np.asarray(labels)
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    if num_folds > labels.size:
        raise ValueError(f"num_folds={num_folds} exceeds the number of items ({labels.size})")
    rng = np.random.default_rng(seed)
    folds = np.empty(labels.size, dtype=np.int64)
    start = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        folds[members] = (start + np.arange(members.size)) % num_folds
        start = (start + members.size) % num_folds
    return folds
