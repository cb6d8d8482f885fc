r"""Nyström Sinkhorn (Williams & Seeger 2001; Altschuler et al. 2019; Klicpera/Gasteiger, Lienen & Günnemann,
ICML 2021, Sec. 4): Sinkhorn with the low-rank kernel

.. math::
    K_{Nys} = U A^{-1} V, \quad U_{ik} = e^{-C(x_i, z_k)/\varepsilon}, \quad
    A_{kl} = e^{-C(z_k, z_l)/\varepsilon}, \quad V_{kj} = e^{-C(z_k, y_j)/\varepsilon}

with ``l`` landmarks :math:`z` (k-means centroids of both clouds together) and :math:`C = \|x - y\|^2` (Gaussian
kernel, ``cost="sq_euclidean"``) or :math:`\|x - y\|` (Laplacian kernel, ``"euclidean"``, the official GTN's; both
kernels are positive definite, so :math:`A` is PSD). Every iteration is two products with
``(n, l)`` and ``(l, m)`` factors: O((n + m) l).

Numerics: :math:`U` stays in log form; :math:`W = A^{+} V` is formed once in float64 with each column of :math:`V`
scaled by its largest entry and stored as ``log|W|`` and a sign (:math:`W` has mixed signs); :math:`A^{+}` is the
eigen-decomposition pseudo-inverse (eigenvalues below ``rcond`` times the largest are dropped), because landmarks
closer than :math:`\sqrt\varepsilon` make :math:`A` numerically singular. A row whose approximate kernel sum is
:math:`\le 0` (possible: :math:`K_{Nys}` is not entrywise positive) is handled as :mod:`recot.ot.factored` says.
Landmarks carry no gradient (a discrete choice); gradients flow through :math:`U` and :math:`V` to the points.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .cost import check_point_cost, pairwise_cost
from .factored import FactoredKernel, nan_to_neg, signed_log, solve_points
from .neighbours import kmeans
from .result import OTResult

__all__ = ["nystrom_factors", "nystrom_kernel", "nystrom_sinkhorn", "landmarks_of"]


def landmarks_of(x: Tensor, y: Tensor, landmarks: Union[int, Tensor], mask_x: Optional[Tensor] = None,
                 mask_y: Optional[Tensor] = None, *, kmeans_iter: int = 10, init: str = "kmeans++",
                 generator: Optional[torch.Generator] = None, fit_size: Optional[int] = None) -> Tensor:
    """Landmarks ``(B, l, d)``: the k-means centroids of both clouds together, or the given tensor."""
    if isinstance(landmarks, Tensor):
        return landmarks.to(x).expand(x.shape[0], *landmarks.shape[-2:])
    mask = None
    if mask_x is not None or mask_y is not None:
        ones = lambda t: torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)  # noqa: E731
        mask = torch.cat([ones(x) if mask_x is None else mask_x, ones(y) if mask_y is None else mask_y], 1)
    centroids, _ = kmeans(torch.cat([x, y], 1), int(landmarks), mask=mask, n_iter=kmeans_iter, init=init,
                          generator=generator, fit_size=fit_size)
    return centroids


def _pinv_psd(a: Tensor, rcond: float) -> Tensor:
    """Pseudo-inverse of symmetric PSD ``(B, l, l)`` by eigen-decomposition (no batched LU: see DESIGN.md)."""
    evals, evecs = torch.linalg.eigh(0.5 * (a + a.transpose(-1, -2)))
    keep = evals > rcond * evals.amax(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    inv = torch.where(keep, 1 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    return (evecs * inv[..., None, :]) @ evecs.transpose(-1, -2)


def nystrom_factors(x: Tensor, y: Tensor, z: Tensor, eps: float, rcond: float = 1e-10, cost: str = "sq_euclidean"
                    ) -> Tuple[Tensor, Tensor, Tensor]:
    r"""``(log U (B, n, l), log|W| (B, l, m), sign W)`` of :math:`K_{Nys} = U W`, :math:`W = A^{+} V`.

    ``z: (B, l, d)`` landmarks (treated as constants). ``U`` and ``W`` are differentiable in ``x`` and ``y``.
    ``cost``: :data:`recot.ot.cost.POINT_COSTS`.
    """
    z = z.detach()
    log_u = pairwise_cost(x, z, check_point_cost(cost)) / (-eps)
    log_v = (pairwise_cost(z, y, cost) / (-eps)).double()
    a_inv = _pinv_psd((pairwise_cost(z, z, cost).double() / (-eps)).exp(), rcond)
    top = log_v.amax(-2, keepdim=True)  # per column: W_:j = e^{top_j} A^+ e^{log V_:j - top_j}
    w = a_inv @ (log_v - top).exp()
    log_w, sign = signed_log(w)
    return log_u, nan_to_neg(log_w + top).to(x.dtype), sign.to(x.dtype)


def nystrom_kernel(x: Tensor, y: Tensor, z: Tensor, eps: float, rcond: float = 1e-10, cost: str = "sq_euclidean"
                   ) -> FactoredKernel:
    log_u, log_w, sign_w = nystrom_factors(x, y, z, eps, rcond, cost)
    return FactoredKernel((x.shape[0], x.shape[1], y.shape[1]), log_u=log_u, log_w=log_w, sign_w=sign_w)


def nystrom_sinkhorn(
    x: Tensor,
    y: Tensor,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    *,
    eps: float,
    cost: str = "sq_euclidean",
    mask_a: Optional[Tensor] = None,
    mask_b: Optional[Tensor] = None,
    landmarks: Union[int, Tensor] = 32,
    landmark_init: str = "kmeans++",
    kmeans_iter: int = 10,
    fit_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    rcond: float = 1e-10,
    max_iter: int = 1000,
    tol: float = 1e-6,
    grad: str = "unroll",
    check_every: int = 10,
    absorb_threshold: float = 10.0,
    init: Optional[Tuple[Tensor, Tensor]] = None,
) -> OTResult:
    r"""Balanced entropic OT between point clouds with the Nyström kernel :math:`K_{Nys}` (module docstring).

    Args as :func:`recot.ot.sparse.sparse_sinkhorn` (incl. ``cost``), plus ``landmarks``: their number ``l`` (k-means centroids of
    both clouds, ``landmark_init``/``kmeans_iter``/``fit_size``/``generator`` of :func:`recot.ot.neighbours.kmeans`)
    or the landmarks themselves ``(*batch, l, d)`` / ``(l, d)``; ``rcond`` of the pseudo-inverse of :math:`A`.

    Returns:
        :class:`OTResult` with a :class:`recot.ot.factored.FactoredPlan` (rank ``l``) and the exact-cost value
        :math:`\langle C, P_{Nys}\rangle`.
    """
    check_point_cost(cost)

    def structure(xc, yc, ma, mb, center):
        z = landmarks
        if isinstance(z, Tensor):  # landmarks live in the caller's frame: shift them like the points
            z = z.to(xc).reshape(-1, *z.shape[-2:]).expand(xc.shape[0], *z.shape[-2:]) - center
        return landmarks_of(xc, yc, z, ma, mb, kmeans_iter=kmeans_iter, init=landmark_init, generator=generator,
                            fit_size=fit_size)

    return solve_points(x, y, a, b, eps=eps, mask_a=mask_a, mask_b=mask_b, structure=structure,
                        kernel=lambda xc, yc, z: nystrom_kernel(xc, yc, z, eps, rcond, cost), grad=grad,
                        max_iter=max_iter, tol=tol, check_every=check_every, absorb_threshold=absorb_threshold,
                        init=init, cost=cost)

