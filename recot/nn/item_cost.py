"""Item-to-item transport cost of SinkhornCF: C = 1 - S with S the cosine similarity of item co-occurrence.

    S_ij = <x_i, x_j> / (||x_i|| ||x_j||)      x_i: the column of item i in the training users' matrix (Sec. 3.2.2)

Only the blocks ``C[I_1, I_k]`` a batch needs are ever formed. S itself is kept dense for small catalogues (fast
gathers) and as a sparse table of its nonzeros otherwise (optionally pruned to each item's most similar items), so a
large catalogue never holds an ``I x I`` matrix.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn


class ItemCosineCost(nn.Module):
    """Cost blocks ``C[rows, cols] = 1 - S[rows, cols]`` from a user x item training matrix.

    ``S_ii = 1`` for every item (moving mass onto the same item is free, even for an item no training user has);
    ``S_ij = 0`` for items that never co-occur, so their cost is the maximum, 1.

    Args:
        dense_limit: keep S as a dense ``(I, I)`` float32 table when ``I * I`` is at most this (default 2^26, i.e.
            up to 8,192 items, 256 MiB); above it, a sorted table of S's nonzeros looked up by binary search.
        max_neighbours: sparse storage only: keep, per item (row of S), its ``max_neighbours`` most similar items
            and itself; the others get similarity 0 (cost 1). None keeps every co-occurring pair (exact).
        chunk_items: rows of S computed at a time while building.

    Call it (or :meth:`block`) with ``rows (b, n)`` and ``cols (b, m)`` item ids (or ``cols=None`` for all items)
    -> ``(b, n, m)`` costs; the form :func:`recot.ot.topk_sinkhorn_loss` takes.
    """

    def __init__(self, dense_limit: int = 1 << 26, max_neighbours: Optional[int] = None, chunk_items: int = 1024):
        super().__init__()
        if max_neighbours is not None and max_neighbours < 1:
            raise ValueError(f"max_neighbours must be a positive number of items or None, got {max_neighbours}")
        self.dense_limit, self.max_neighbours, self.chunk_items = dense_limit, max_neighbours, chunk_items
        self.num_items: Optional[int] = None
        # derived from the data at every setup, so never stored in checkpoints
        self.register_buffer("dense", None, persistent=False)
        self.register_buffer("keys", None, persistent=False)
        self.register_buffer("values", None, persistent=False)

    @property
    def is_dense(self) -> bool:
        return self.dense is not None

    def fit(self, train: sp.spmatrix) -> "ItemCosineCost":
        """Build S from ``train: (U, I)`` (binary or weighted) interactions of the training users."""
        x = sp.csr_matrix(train, dtype=np.float64)
        num_items = x.shape[1]
        norms = np.sqrt(np.asarray(x.multiply(x).sum(0)).ravel())
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        xn = (x @ sp.diags(inv)).tocsc()
        xt = xn.T.tocsr()  # (I, U): one normalised item vector per row
        dense = num_items * num_items <= self.dense_limit
        table = np.zeros((num_items, num_items), dtype=np.float32) if dense else None
        keys, values = [], []
        for r0 in range(0, num_items, self.chunk_items):
            r1 = min(r0 + self.chunk_items, num_items)
            sim = np.clip((xt[r0:r1] @ xn).toarray(), 0.0, 1.0)  # (chunk, I)
            sim[np.arange(r1 - r0), np.arange(r0, r1)] = 1.0
            if dense:
                table[r0:r1] = sim
                continue
            if self.max_neighbours is not None and self.max_neighbours + 1 < num_items:
                # the diagonal (1) is always among the largest, so keep max_neighbours others besides it
                cut = np.argpartition(-sim, self.max_neighbours, axis=1)[:, self.max_neighbours + 1:]
                np.put_along_axis(sim, cut, 0.0, axis=1)
            r, c = np.nonzero(sim)
            keys.append((r + r0).astype(np.int64) * num_items + c)
            values.append(sim[r, c].astype(np.float32))
        self.num_items = num_items
        device = next((b.device for b in self.buffers() if b is not None), torch.device("cpu"))
        if dense:
            self.dense, self.keys, self.values = torch.from_numpy(table).to(device), None, None
        else:
            self.dense = None
            self.keys = torch.from_numpy(np.concatenate(keys)).to(device)  # sorted: rows in order, columns sorted
            self.values = torch.from_numpy(np.concatenate(values)).to(device)
        return self

    def similarity(self, rows: torch.Tensor, cols: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``S[rows, cols]``: ``rows (b, n)``, ``cols (b, m)`` or None (all items) -> ``(b, n, m)`` float32."""
        if self.num_items is None:
            raise RuntimeError("ItemCosineCost is not built: call fit(train) first")
        if cols is None:
            cols = torch.arange(self.num_items, device=rows.device).expand(rows.shape[0], -1)
        flat = rows.unsqueeze(-1) * self.num_items + cols.unsqueeze(-2)  # (b, n, m) flat (row, col) positions
        if self.is_dense:
            return self.dense.view(-1).take(flat)
        pos = torch.searchsorted(self.keys, flat).clamp_max(self.keys.numel() - 1)
        found = self.keys.take(pos) == flat
        return torch.where(found, self.values.take(pos), torch.zeros((), dtype=self.values.dtype, device=pos.device))

    def block(self, rows: torch.Tensor, cols: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Cost block ``C[rows, cols] = 1 - S[rows, cols]`` -> ``(b, n, m)``."""
        return 1.0 - self.similarity(rows, cols)

    forward = block
