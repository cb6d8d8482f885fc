"""Aggregations that work on padded sets: one implementation serves PyG batches, dense sets and CNN maps."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn.aggr import Aggregation


def index_from_ptr(ptr: Tensor) -> Tensor:
    """CSR pointers ``(B + 1,)`` -> element-to-set index ``(ptr[-1],)``."""
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=ptr.device), ptr.diff())


def size_buckets(counts: Tensor, overhead: float) -> Tensor:
    """Group sets by size for padding: bucket id per set ``(B,)``, buckets numbered by increasing size.

    A bucket pads its sets to its largest size. The buckets minimise ``padded elements + overhead * buckets``
    exactly, by dynamic programming over the distinct sizes (sorted, so every bucket is a range of sizes):
    ``overhead`` is the fixed cost of one more bucket (its per-call work) in units of one padded element.
    ``overhead = 0`` pads each distinct size alone, ``inf`` pads everything to the largest set.
    """
    sizes = counts.clamp_min(1).cpu().numpy()
    distinct, inverse, per_size = np.unique(sizes, return_inverse=True, return_counts=True)
    if distinct.size <= 1 or overhead == float("inf"):
        return torch.zeros_like(counts)
    below = np.concatenate([[0], np.cumsum(per_size)])  # sets of the first j distinct sizes
    best, start = np.zeros(distinct.size + 1), np.zeros(distinct.size + 1, dtype=np.int64)
    for j in range(1, distinct.size + 1):  # best split of the j smallest distinct sizes; the last bucket starts at i
        cand = best[:j] + overhead + (below[j] - below[:j]) * float(distinct[j - 1])
        start[j] = int(np.argmin(cand))
        best[j] = cand[start[j]]
    of_size, j, b = np.empty(distinct.size, dtype=np.int64), distinct.size, 0
    while j > 0:
        of_size[start[j]:j], j, b = b, start[j], b + 1
    return torch.from_numpy(b - 1 - of_size[inverse]).to(counts.device)


class SetAggregation(Aggregation):
    """Base of recot's set poolings: subclasses implement :meth:`dense` on padded sets.

    ``forward(x, index, ptr, dim_size)`` (PyG's signature, ``x: (num_elements, D)``, ``index`` sorted) pads the
    sets with :func:`torch_geometric.utils.to_dense_batch` (no Python loop over sets) and calls
    ``dense(x: (B, N, D), mask: (B, N)) -> (B, F)``, once per size bucket (:func:`size_buckets`; the class
    attribute ``bucket_overhead`` is a bucket's fixed cost in padded elements). Sets with no element (``dim_size`` larger than the last index)
    are all padding; every subclass returns a defined, finite vector for them. :meth:`image` pools CNN feature
    maps ``(B, C, H, W) -> (B, C)`` over the ``H * W`` positions.
    """

    bucket_overhead: float = 256.0

    def forward(self, x: Tensor, index: Optional[Tensor] = None, ptr: Optional[Tensor] = None,
                dim_size: Optional[int] = None, dim: int = -2, max_num_elements: Optional[int] = None) -> Tensor:
        if index is None and ptr is not None:
            index = index_from_ptr(ptr)
        self.assert_two_dimensional_input(x, dim)
        self.assert_sorted_index(index)
        counts = torch.bincount(index, minlength=dim_size)
        # Padding every set to the largest costs max/mean (16x for a PROTEINS batch); buckets of similar sizes cut
        # that, for a loop over a few buckets (not over sets) whose per-call cost the cost model weighs.
        bucket = size_buckets(counts, self.bucket_overhead) if max_num_elements is None else None
        if bucket is None or bool((bucket == bucket[0]).all()):
            dense, mask = self.to_dense_batch(x, index, ptr, dim_size, dim, max_num_elements=max_num_elements)
            return self.dense(dense, mask)
        # One gather per bucket from x with a zero row appended for the padding (cheaper than to_dense_batch's
        # scatter, forward and backward).
        start = torch.cumsum(counts, 0) - counts
        x_ext = torch.cat([x, x.new_zeros(1, x.shape[-1])])
        outs, order = [], []
        for b in range(int(bucket.max()) + 1):
            sets = torch.nonzero(bucket == b).flatten()
            if sets.numel() == 0:
                continue
            size = counts.index_select(0, sets)
            pos = torch.arange(int(size.max().clamp_min(1)), device=x.device)
            mask = pos < size[:, None]
            rows = torch.where(mask, start.index_select(0, sets)[:, None] + pos, x.shape[0])
            outs.append(self.dense(x_ext.index_select(0, rows.flatten()).view(*rows.shape, -1), mask))
            order.append(sets)
        return torch.cat(outs).index_select(0, torch.argsort(torch.cat(order)))

    def dense(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """Pool padded sets ``x: (B, N, D)`` with ``mask: (B, N)`` (True = real element; None = all real)."""
        raise NotImplementedError

    def image(self, x: Tensor) -> Tensor:
        """Pool a CNN feature map ``(B, C, H, W) -> (B, C)``: each position is a sample with C features."""
        if x.dim() != 4:
            raise ValueError(f"image pooling expects (B, C, H, W), got shape {tuple(x.shape)}")
        return self.dense(x.flatten(2).transpose(1, 2), None)


def masked_softmax(scores: Tensor, mask: Optional[Tensor], dim: int = -1) -> Tensor:
    """Softmax over real elements; a row with no real element gives zeros (never NaN)."""
    if mask is None:
        return torch.softmax(scores, dim)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim) * mask.to(scores.dtype)


class AttentionScore(nn.Module):
    r"""Ilse et al. (2018) attention logits, ``(..., D) -> (..., 1)``: :math:`w^\top\tanh(Vx)`, or gated
    :math:`w^\top(\tanh(Vx)\odot\sigma(Ux))`; no biases, as in their Eqs. 9-10."""

    def __init__(self, in_channels: int, hidden_channels: int = 128, gated: bool = False):
        super().__init__()
        self.V = nn.Linear(in_channels, hidden_channels, bias=False)
        self.U = nn.Linear(in_channels, hidden_channels, bias=False) if gated else None
        self.w = nn.Linear(hidden_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.V(x))
        if self.U is not None:
            h = h * torch.sigmoid(self.U(x))
        return self.w(h)
