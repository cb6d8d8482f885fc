"""Vectorised split and filtering helpers on interaction lists ``(users, items)`` of int64 arrays."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def to_csr(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> sp.csr_matrix:
    """Binary user x item matrix with sorted column indices; duplicate pairs collapse to one."""
    mat = sp.csr_matrix((np.ones(users.size, dtype=np.float32), (users, items)), shape=(num_users, num_items))
    mat.sum_duplicates()
    mat.data[:] = 1.0
    mat.sort_indices()
    return mat


def csr_pairs(mat: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """The ``(users, items)`` pairs of a CSR matrix, user-major."""
    users = np.repeat(np.arange(mat.shape[0], dtype=np.int64), np.diff(mat.indptr))
    return users, mat.indices.astype(np.int64)


def per_user_holdout(users: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask choosing ``floor(ratio * n_u)`` random interactions of every user ``u`` (n_u of them).

    Rounding down leaves users with few interactions entirely in the kept part, as the LightGCN / LightGCN++ splits do.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"holdout ratio must be in [0, 1), got {ratio}")
    n = users.size
    order = rng.permutation(n)
    order = order[np.argsort(users[order], kind="stable")]  # random order within each user
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)
    take = np.floor(ratio * counts).astype(np.int64)
    mask = np.zeros(n, dtype=bool)
    mask[order] = rank < np.repeat(take, counts)
    return mask


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Mask of interactions kept by iterative k-core filtering (every kept user and item has >= k interactions)."""
    keep = np.ones(users.size, dtype=bool)
    if k <= 1:
        return keep
    while True:
        u_deg = np.bincount(users[keep], minlength=users.max() + 1)
        i_deg = np.bincount(items[keep], minlength=items.max() + 1)
        new = keep & (u_deg[users] >= k) & (i_deg[items] >= k)
        if new.sum() == keep.sum():
            return new
        keep = new


def remap(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous 0-based codes for arbitrary ids; returns ``(codes, original_ids)`` with ``original_ids[codes] == ids``."""
    original, codes = np.unique(ids, return_inverse=True)
    return codes.astype(np.int64), original
