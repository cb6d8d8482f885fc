r"""Batched cost matrices between point clouds and their scaling.

All functions take ``x: (*batch, n, d)`` and ``y: (*batch, m, d)`` (batch dims broadcast) and return
``(*batch, n, m)``.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["POINT_COSTS", "check_point_cost", "cosine_cost", "cost_scale", "dot_cost", "euclidean", "normalize_cost", "pairwise_cost",
           "sq_euclidean", "sq_to_cost"]

# the point costs of the scalable solvers (recot.ot.sparse / nystrom / lcn / bp): kernel exp(-C/eps) is Gaussian
# for "sq_euclidean" and Laplacian for "euclidean"
POINT_COSTS = ("sq_euclidean", "euclidean")

_SMOOTH = 1e-12  # sqrt(d^2 + 1e-12): a finite gradient (0) where two points coincide


def sq_euclidean(x: Tensor, y: Tensor) -> Tensor:
    r"""Squared Euclidean cost :math:`C_{ij} = \|x_i - y_j\|_2^2`, clamped at 0.

    Uses :math:`\|x\|^2 + \|y\|^2 - 2\langle x, y\rangle` (one matmul, no ``(n, m, d)`` tensor); the
    clamp removes the small negative values that cancellation leaves on near-duplicate points.
    """
    xx = (x * x).sum(-1)[..., :, None]
    yy = (y * y).sum(-1)[..., None, :]
    if x.dim() == y.dim() == 3 and x.shape[0] == y.shape[0]:  # one fused pass over the (n, m) output
        return torch.baddbmm(xx + yy, x, y.transpose(-1, -2), alpha=-2).clamp_min(0)
    return (xx + yy - 2 * x @ y.transpose(-1, -2)).clamp_min(0)


def check_point_cost(cost: str) -> str:
    """``cost`` if it is one of :data:`POINT_COSTS`, else one ValueError naming them."""
    if cost not in POINT_COSTS:
        raise ValueError(f"cost must be one of {POINT_COSTS}, got {cost!r}")
    return cost


def sq_to_cost(sq: Tensor, cost: str = "sq_euclidean") -> Tensor:
    r"""The point cost from squared distances: ``"sq_euclidean"`` :math:`d^2` (unchanged) or ``"euclidean"``
    :math:`\sqrt{d^2 + 10^{-12}}` (smoothed so that coinciding points get gradient 0, not NaN). Any shape."""
    return sq if check_point_cost(cost) == "sq_euclidean" else (sq + _SMOOTH).sqrt()


def euclidean(x: Tensor, y: Tensor) -> Tensor:
    r"""Euclidean cost :math:`C_{ij} = \|x_i - y_j\|_2` (smoothed at 0, :func:`sq_to_cost`)."""
    return sq_to_cost(sq_euclidean(x, y), "euclidean")


def cosine_cost(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    r"""Cosine cost :math:`C_{ij} = 1 - S_{ij}`, :math:`S_{ij} = \cos(x_i, y_j) \in [-1, 1]` (SinkhornCF)."""
    return 1 - F.normalize(x, dim=-1, eps=eps) @ F.normalize(y, dim=-1, eps=eps).transpose(-1, -2)


def dot_cost(x: Tensor, y: Tensor) -> Tensor:
    r"""Negative dot product :math:`C_{ij} = -\langle x_i, y_j\rangle` (GOTNet's similarity cost)."""
    return -(x @ y.transpose(-1, -2))


_COSTS = {
    "sq_euclidean": sq_euclidean,
    "euclidean": euclidean,
    "half_sq_euclidean": lambda x, y: 0.5 * sq_euclidean(x, y),
    "cosine": cosine_cost,
    "dot": dot_cost,
}

CostFn = Union[str, Callable[[Tensor, Tensor], Tensor]]


def pairwise_cost(x: Tensor, y: Tensor, cost: CostFn = "sq_euclidean") -> Tensor:
    """Cost by name (``"sq_euclidean"``, ``"euclidean"``, ``"half_sq_euclidean"`` = GeomLoss' ``p=2``, ``"cosine"``,
    ``"dot"``) or by a callable ``cost(x, y) -> (*batch, n, m)``."""
    if callable(cost):
        return cost(x, y)
    try:
        return _COSTS[cost](x, y)
    except KeyError:
        raise ValueError(f"unknown cost {cost!r}; expected one of {sorted(_COSTS)} or a callable") from None


def _masked(cost: Tensor, mask_a: Optional[Tensor], mask_b: Optional[Tensor]) -> Optional[Tensor]:
    if mask_a is None and mask_b is None:
        return None
    n, m = cost.shape[-2:]
    ma = torch.ones(cost.shape[:-1], dtype=torch.bool, device=cost.device) if mask_a is None else mask_a.bool()
    mb = torch.ones((*cost.shape[:-2], m), dtype=torch.bool, device=cost.device) if mask_b is None else mask_b.bool()
    return ma[..., :, None] & mb[..., None, :]


def cost_scale(
    cost: Tensor, mode: str = "max", mask_a: Optional[Tensor] = None, mask_b: Optional[Tensor] = None
) -> Tensor:
    r"""Per-problem scale ``(*batch,)`` of a cost over its real entries: ``"max"`` :math:`\max|C|`,
    ``"mean"`` :math:`\operatorname{mean}|C|`. Guarded to be positive (1 for an all-zero/empty cost)."""
    mask2d = _masked(cost, mask_a, mask_b)
    c = cost.abs()
    if mask2d is not None:
        c = c.masked_fill(~mask2d, 0)
    if mode == "max":
        s = c.amax((-2, -1))
    elif mode == "mean":
        cnt = c[..., 0, 0].new_tensor(c.shape[-2] * c.shape[-1]) if mask2d is None else mask2d.sum((-2, -1))
        s = c.sum((-2, -1)) / cnt.clamp_min(1)
    else:
        raise ValueError(f"mode must be 'max' or 'mean', got {mode!r}")
    return torch.where(s > 0, s, torch.ones_like(s))


def normalize_cost(
    cost: Tensor,
    mode: Optional[str] = "max",
    mask_a: Optional[Tensor] = None,
    mask_b: Optional[Tensor] = None,
    detach: bool = True,
) -> Tensor:
    r"""Scale each problem's cost so that an ``eps`` is relative to the cost scale.

    ``mode="max"``: :math:`C/\max|C|` (in :math:`[-1, 1]`, :math:`[0, 1]` for nonnegative costs);
    ``"mean"``: :math:`C/\operatorname{mean}|C|`; ``"minmax"``: :math:`(C - \min C)/(\max C - \min C)`
    (a per-problem shift, which leaves *balanced* plans unchanged); None: unchanged. Statistics use
    real entries only. With ``detach=True`` (default) the scale is a constant in backward, so the
    normalization only rescales gradients instead of adding a term through the max/mean.
    """
    if mode is None:
        return cost
    if mode == "minmax":
        mask2d = _masked(cost, mask_a, mask_b)
        big = torch.finfo(cost.dtype).max
        hi = cost if mask2d is None else cost.masked_fill(~mask2d, -big)
        lo = cost if mask2d is None else cost.masked_fill(~mask2d, big)
        cmax, cmin = hi.amax((-2, -1)), lo.amin((-2, -1))
        span = cmax - cmin
        span = torch.where(span > 0, span, torch.ones_like(span))
        if detach:
            cmin, span = cmin.detach(), span.detach()
        return (cost - cmin[..., None, None]) / span[..., None, None]
    s = cost_scale(cost, mode, mask_a, mask_b)
    if detach:
        s = s.detach()
    return cost / s[..., None, None]
