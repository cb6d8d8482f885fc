r"""LCN-Sinkhorn (Klicpera/Gasteiger, Lienen & Günnemann, ICML 2021, Sec. 4, Eq. 6): Sinkhorn with the locally
corrected Nyström kernel

.. math::
    K_{LCN} = K_{Nys} - K^{sp}_{Nys} + K^{sp},

the Nyström approximation (:mod:`recot.ot.nystrom`, long-range interactions) whose entries on the neighbour pairs
(:mod:`recot.ot.neighbours`, short-range interactions) are replaced by the exact kernel. Every iteration uses one
low-rank and one sparse product, O(n (l + k)); no ``n x m`` matrix is formed.

The correction :math:`K^{sp} - K^{sp}_{Nys}` is computed once per entry in float64 as a signed log
(:math:`K^{sp}_{Nys,ij} = \sum_k U_{ik} W_{kj}` by a max-shifted signed sum over the ``l`` landmarks, in blocks of
entries), so that the small differences of two nearly equal kernels do not vanish in float32. As the paper
recommends, the landmarks (Nyström) and the clusters (neighbours) are separate clusterings.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .factored import FactoredKernel, SparsePattern, nan_to_neg, pair_sq_dists, solve_points
from .neighbours import neighbour_pattern
from .nystrom import landmarks_of, nystrom_factors
from .result import OTResult

__all__ = ["lcn_correction", "lcn_kernel", "lcn_sinkhorn"]


def lcn_correction(log_u: Tensor, log_w: Tensor, sign_w: Tensor, log_k: Tensor, pattern: SparsePattern,
                   chunk: int = 2**16) -> Tuple[Tensor, Tensor]:
    r"""``(log|D|, sign D)`` of :math:`D = K^{sp} - K^{sp}_{Nys}` on ``pattern``'s entries (``log_k: (nnz,)`` the
    exact log-kernel there), in float64 and blocks of ``chunk`` entries (``chunk x l`` memory)."""
    B, n, m = pattern.shape
    lu = log_u.reshape(B * n, -1).double()
    lw = log_w.transpose(-1, -2).reshape(B * m, -1).double()
    sw = sign_w.transpose(-1, -2).reshape(B * m, -1).double()
    logs, signs = [], []
    for s in range(0, max(pattern.nnz, 1), chunk):
        r, c = pattern.rows[s:s + chunk], pattern.cols[s:s + chunk]
        t = lu[r] + lw[c]  # (chunk, l)
        top = t.amax(-1)
        nys = (sw[c] * (t - top[:, None]).exp()).sum(-1)  # K_Nys = e^top * nys
        lk = log_k[s:s + chunk].double()
        hi = torch.maximum(lk, top)
        diff = (lk - hi).exp() - (top - hi).exp() * nys
        logs.append(nan_to_neg(hi + diff.abs().log()))
        signs.append(torch.where(diff < 0, -torch.ones_like(diff), torch.ones_like(diff)))
    if not logs:
        return log_k.new_zeros(0), log_k.new_zeros(0)
    return torch.cat(logs).to(log_k.dtype), torch.cat(signs).to(log_k.dtype)


def lcn_kernel(x: Tensor, y: Tensor, z: Tensor, pattern: SparsePattern, eps: float, rcond: float = 1e-10
               ) -> FactoredKernel:
    r""":math:`K_{LCN}` of ``x: (B, n, d)``, ``y: (B, m, d)``, landmarks ``z: (B, l, d)``, neighbours ``pattern``."""
    log_u, log_w, sign_w = nystrom_factors(x, y, z, eps, rcond)
    log_k = pair_sq_dists(x, y, pattern) / (-eps)
    log_s, sign_s = lcn_correction(log_u, log_w, sign_w, log_k, pattern)
    return FactoredKernel(pattern.shape, log_u=log_u, log_w=log_w, sign_w=sign_w, pattern=pattern, log_s=log_s,
                          sign_s=sign_s)


def lcn_sinkhorn(
    x: Tensor,
    y: Tensor,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    *,
    eps: float,
    mask_a: Optional[Tensor] = None,
    mask_b: Optional[Tensor] = None,
    landmarks: Union[int, Tensor] = 32,
    method: str = "kmeans",
    n_clusters: int = 16,
    n_hashes: int = 1,
    n_bands: int = 1,
    pattern: Optional[SparsePattern] = None,
    cluster_init: str = "kmeans++",
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
    r"""Balanced entropic OT between point clouds with the LCN kernel (module docstring).

    Args as :func:`recot.ot.sparse.sparse_sinkhorn` (the neighbours) and :func:`recot.ot.nystrom.nystrom_sinkhorn`
    (``landmarks``, ``rcond``); ``cluster_init`` initialises both clusterings.

    Returns:
        :class:`OTResult` with a :class:`recot.ot.factored.FactoredPlan` (rank ``l`` plus the sparse correction)
        and the exact-cost value :math:`\langle C, P_{LCN}\rangle`.
    """
    def structure(xc, yc, ma, mb, center):
        z = landmarks
        if isinstance(z, Tensor):
            z = z.to(xc).reshape(-1, *z.shape[-2:]).expand(xc.shape[0], *z.shape[-2:]) - center
        z = landmarks_of(xc, yc, z, ma, mb, kmeans_iter=kmeans_iter, init=cluster_init, generator=generator,
                         fit_size=fit_size)
        p = pattern.to(xc.device) if pattern is not None else neighbour_pattern(
            xc, yc, method=method, n_clusters=n_clusters, n_hashes=n_hashes, n_bands=n_bands, mask_x=ma, mask_y=mb,
            kmeans_iter=kmeans_iter, init=cluster_init, fit_size=fit_size, generator=generator)
        return z, p

    return solve_points(x, y, a, b, eps=eps, mask_a=mask_a, mask_b=mask_b, structure=structure,
                        kernel=lambda xc, yc, s: lcn_kernel(xc, yc, s[0], s[1], eps, rcond), grad=grad,
                        max_iter=max_iter, tol=tol, check_every=check_every, absorb_threshold=absorb_threshold,
                        init=init)
