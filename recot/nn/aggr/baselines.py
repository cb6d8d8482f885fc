r"""Pooling baselines of the ROT pooling paper that PyG lacks (Xu & Cheng, Sec. 6 "baselines").

PyG's own are used for add / mean / max / Set2Set / DeepSet (``DeepSetsAggregation``). Here:

* :class:`MixedPooling`, :class:`GatedMixedPooling`: mixed and gated mean-max pooling (Lee et al. 2016; Eq. 11);
* :class:`AttentionPooling`, :class:`GatedAttentionPooling`: Ilse et al. (2018), on PyG's ``AttentionalAggregation``;
* :class:`DynamicPooling`: Yan et al. (2018), dynamic routing of attention weights;
* :class:`GNPPooling`: generalized norm pooling (Ko et al. 2021);
* :class:`OTKPooling`: the trainable OT embedding of Mialon et al. (2021), with :func:`recot.ot.sinkhorn`;
* :class:`SWEPooling`: pooling by sliced-Wasserstein embedding (Naderializadeh et al. 2021).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.aggr import Aggregation, AttentionalAggregation
from torch_geometric.utils import softmax as group_softmax

from recot.nn.aggr.base import AttentionScore, SetAggregation
from recot.ot import normalize_cost, sinkhorn, sq_euclidean


class MixedPooling(Aggregation):
    r"""Mixed mean-max pooling (Lee et al. 2016; Eq. 11): :math:`\omega\,\mathrm{mean}(X) + (1-\omega)\max(X)` with a
    learnable scalar :math:`\omega = \sigma(a)` (initially 0.5)."""

    def __init__(self):
        super().__init__()
        self.logit = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, index: Optional[Tensor] = None, ptr: Optional[Tensor] = None,
                dim_size: Optional[int] = None, dim: int = -2) -> Tensor:
        omega = torch.sigmoid(self.logit)
        return (omega * self.reduce(x, index, ptr, dim_size, dim, reduce="mean")
                + (1 - omega) * self.reduce(x, index, ptr, dim_size, dim, reduce="max"))


class GatedMixedPooling(Aggregation):
    r"""Gated mean-max pooling (Lee et al. 2016; Eq. 11 with :math:`\omega` a sigmoid of X): the gate
    :math:`\omega = \sigma(\sum_n w^\top x_n)` ties Lee et al.'s per-position gate weights so that it is
    permutation invariant."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.gate = nn.Linear(in_channels, 1, bias=False)

    def forward(self, x: Tensor, index: Optional[Tensor] = None, ptr: Optional[Tensor] = None,
                dim_size: Optional[int] = None, dim: int = -2) -> Tensor:
        omega = torch.sigmoid(self.reduce(self.gate(x), index, ptr, dim_size, dim, reduce="sum"))
        return (omega * self.reduce(x, index, ptr, dim_size, dim, reduce="mean")
                + (1 - omega) * self.reduce(x, index, ptr, dim_size, dim, reduce="max"))


class AttentionPooling(AttentionalAggregation):
    r"""Attention pooling (Ilse et al. 2018, Eq. 9): :math:`\sum_n a_n x_n`, :math:`a = \mathrm{softmax}(w^\top
    \tanh(VX))`, on PyG's :class:`~torch_geometric.nn.aggr.AttentionalAggregation`."""

    def __init__(self, in_channels: int, hidden_channels: int = 128):
        super().__init__(gate_nn=AttentionScore(in_channels, hidden_channels))


class GatedAttentionPooling(AttentionalAggregation):
    r"""Gated attention pooling (Ilse et al. 2018, Eq. 10): :math:`a = \mathrm{softmax}(w^\top(\tanh(VX)\odot
    \sigma(UX)))`."""

    def __init__(self, in_channels: int, hidden_channels: int = 128):
        super().__init__(gate_nn=AttentionScore(in_channels, hidden_channels, gated=True))


class DynamicPooling(Aggregation):
    r"""Dynamic pooling (Yan et al. 2018): attention logits refined by dynamic routing.

    Starting from :math:`b = 0`, each of ``iterations`` steps pools :math:`s = \sum_n \mathrm{softmax}(b)_n x_n`,
    squashes it, :math:`z = \frac{\|s\|^2}{1 + \|s\|^2}\frac{s}{\|s\|}`, and raises the logit of each element by its
    agreement :math:`b_n \mathrel{+}= \langle x_n, z\rangle`; the output is the final weighted sum. Parameter-free."""

    def __init__(self, iterations: int = 3):
        super().__init__()
        self.iterations = iterations

    def forward(self, x: Tensor, index: Optional[Tensor] = None, ptr: Optional[Tensor] = None,
                dim_size: Optional[int] = None, dim: int = -2) -> Tensor:
        self.assert_index_present(index)
        logits = x.new_zeros(x.shape[0], 1)
        for _ in range(self.iterations):
            s = self.reduce(group_softmax(logits, index, ptr, dim_size) * x, index, ptr, dim_size, dim)
            energy = s.pow(2).sum(-1, keepdim=True)
            z = energy.sqrt() / (1 + energy) * s  # = squash(s), finite at s = 0
            logits = logits + (x * z.index_select(0, index)).sum(-1, keepdim=True)
        return self.reduce(group_softmax(logits, index, ptr, dim_size) * x, index, ptr, dim_size, dim)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(iterations={self.iterations})"


class GNPPooling(SetAggregation):
    r"""Generalized norm pooling (Ko et al. 2021): :math:`\mathrm{GNP}(X)_d = \big(N^{-q}\sum_n |x_{nd}|^p\big)^{1/p}`
    with learnable :math:`p = 1 + \mathrm{softplus}(\cdot) \ge 1` and :math:`q` (mean: p = q = 1; sum: p = 1, q = 0;
    max: p -> inf). Signed inputs: :math:`\mathrm{GNP}(X^+) - \mathrm{GNP}(X^-)` (exact for non-negative X).
    Computed in the log domain."""

    def __init__(self, p: float = 2.0, q: float = 1.0, eps: float = 1e-6):
        super().__init__()
        if p <= 1:
            raise ValueError(f"GNPPooling: initial p must be > 1, got {p}")
        self.raw_p = nn.Parameter(torch.tensor(math.log(math.expm1(p - 1))))
        self.q = nn.Parameter(torch.tensor(float(q)))
        self.eps = eps

    def dense(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        p = 1 + F.softplus(self.raw_p)
        n = x.new_full(x.shape[:1], x.shape[1]) if mask is None else mask.sum(-1).to(x.dtype)
        log_n = n.clamp_min(1).log()[:, None]
        out = 0
        for sign in (1.0, -1.0):
            t = p * (F.relu(sign * x) + self.eps).log()
            if mask is not None:
                t = t.masked_fill(~mask[..., None], torch.finfo(x.dtype).min)
            out = out + sign * torch.exp((torch.logsumexp(t, -2) - self.q * log_n) / p)
        return out if mask is None else out * (n > 0).to(x.dtype)[:, None]


class OTKPooling(SetAggregation):
    r"""Optimal transport kernel embedding (Mialon et al. 2021), ``(B, N, D) -> (B, K * D)``.

    K learnable references :math:`z_k`; the entropic plan :math:`P` (uniform weights over the real elements and the
    references, squared Euclidean cost scaled by its max, :func:`recot.ot.sinkhorn` unrolled ``iterations`` times)
    transports the set onto them, and the embedding is :math:`\sqrt K\,(K P^\top X)` (each reference receives a convex
    combination of elements). Mialon et al.'s Gaussian-kernel feature map before the transport is left out (identity).
    """

    def __init__(self, in_channels: int, num_references: int = 4, eps: float = 0.1, iterations: int = 10):
        super().__init__()
        self.references = nn.Parameter(torch.randn(num_references, in_channels) / math.sqrt(in_channels))
        self.eps, self.iterations = eps, iterations

    def dense(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        k = self.references.shape[0]
        cost = normalize_cost(sq_euclidean(x, self.references.expand(x.shape[0], -1, -1)), mask_a=mask)
        plan = sinkhorn(cost, eps=self.eps, mask_a=mask, max_iter=self.iterations, tol=0).plan  # (B, N, K)
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0)
        pooled = k * plan.transpose(-1, -2) @ x
        return math.sqrt(k) * pooled.flatten(1)


class SWEPooling(SetAggregation):
    r"""Pooling by sliced-Wasserstein embedding (Naderializadeh et al. 2021), ``(B, N, D) -> (B, M * L)``.

    L learnable slices :math:`\theta_l` (unit vectors) and a learnable reference set of M points. For each slice the
    set's projections are sorted and their quantile function is read at M levels :math:`(k + 1/2)/M` by linear
    interpolation (sets of any size); the embedding is that minus the sorted reference projections (the Monge map to
    the reference, in 1-D). ``out_channels`` adds a linear map of the flattened embedding. The embedding of an
    empty set is 0.
    """

    def __init__(self, in_channels: int, num_slices: int = 16, num_references: int = 16,
                 out_channels: Optional[int] = None):
        super().__init__()
        self.slices = nn.Parameter(torch.randn(in_channels, num_slices))
        self.references = nn.Parameter(torch.randn(num_references, in_channels))
        self.out = nn.Linear(num_slices * num_references, out_channels) if out_channels else None

    def dense(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        theta = F.normalize(self.slices, dim=0)
        b, n, _ = x.shape
        m = self.references.shape[0]
        proj = x @ theta  # (B, N, L)
        count = x.new_full((b,), n) if mask is None else mask.sum(-1).to(x.dtype)
        if mask is not None:
            proj = proj.masked_fill(~mask[..., None], float("inf"))  # padding sorts last
        proj = proj.sort(dim=1).values
        levels = (torch.arange(m, device=x.device, dtype=x.dtype) + 0.5) / m
        pos = (levels[None, :] * count[:, None] - 0.5).clamp_min(0)  # (B, M) fractional ranks
        top = (count - 1).clamp_min(0)[:, None]
        lo, hi = pos.floor().minimum(top), pos.ceil().minimum(top)
        w = (pos - lo)[..., None]
        gather = lambda i: proj.gather(1, i.long()[..., None].expand(-1, -1, proj.shape[-1]))  # noqa: E731
        quantiles = torch.lerp(gather(lo), gather(hi), w)  # (B, M, L)
        embedding = quantiles - (self.references @ theta).sort(dim=0).values
        embedding = torch.where(count[:, None, None] > 0, embedding, torch.zeros_like(embedding)).flatten(1)
        return self.out(embedding) if self.out is not None else embedding
