"""Aggregations that work on padded sets: one implementation serves PyG batches, dense sets and CNN maps."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch_geometric.nn.aggr import Aggregation
from torch_geometric.utils import to_dense_batch


def index_from_ptr(ptr: Tensor) -> Tensor:
    """CSR pointers ``(B + 1,)`` -> element-to-set index ``(ptr[-1],)``."""
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=ptr.device), ptr.diff())


class SetAggregation(Aggregation):
    """Base of recot's set poolings: subclasses implement :meth:`dense` on padded sets.

    ``forward(x, index, ptr, dim_size)`` (PyG's signature, ``x: (num_elements, D)``, ``index`` sorted) pads the
    sets with :func:`torch_geometric.utils.to_dense_batch` (no Python loop over sets) and calls
    ``dense(x: (B, N, D), mask: (B, N)) -> (B, F)``. Sets with no element (``dim_size`` larger than the last index)
    are all padding; every subclass returns a defined, finite vector for them. :meth:`image` pools CNN feature
    maps ``(B, C, H, W) -> (B, C)`` over the ``H * W`` positions.
    """

    def forward(self, x: Tensor, index: Optional[Tensor] = None, ptr: Optional[Tensor] = None,
                dim_size: Optional[int] = None, dim: int = -2, max_num_elements: Optional[int] = None) -> Tensor:
        if index is None and ptr is not None:
            index = index_from_ptr(ptr)
        self.assert_two_dimensional_input(x, dim)
        self.assert_sorted_index(index)
        counts = torch.bincount(index, minlength=dim_size)
        # Sets are padded within size buckets (1, 2, 3-4, 5-8, ...): padding costs at most 2x instead of max/mean
        # (16x for a PROTEINS batch), for a loop over a few buckets, not over sets.
        bucket = torch.ceil(torch.log2(counts.clamp_min(1).to(torch.float32))).long()
        if max_num_elements is not None or bool((bucket == bucket[0]).all()):
            dense, mask = self.to_dense_batch(x, index, ptr, dim_size, dim, max_num_elements=max_num_elements)
            return self.dense(dense, mask)
        outs, order = [], []
        rank = torch.empty_like(counts)
        for b in torch.unique(bucket).tolist():
            sets = torch.nonzero(bucket == b).flatten()
            rank[sets] = torch.arange(sets.numel(), device=index.device)
            members = torch.nonzero(bucket.index_select(0, index) == b).flatten()
            local = rank.index_select(0, index.index_select(0, members))
            dense, mask = to_dense_batch(x.index_select(0, members), local, batch_size=sets.numel())
            outs.append(self.dense(dense, mask))
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
