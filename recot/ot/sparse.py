r"""Sparse Sinkhorn (Klicpera/Gasteiger, Lienen & Günnemann, ICML 2021, Sec. 3): the Gibbs kernel kept on
neighbour pairs only.

.. math::
    K^{sp}_{ij} = \begin{cases} e^{-C(x_i, y_j)/\varepsilon} & x_i, y_j \text{ near (same k-means cluster / LSH
    bucket)} \\ 0 & \text{otherwise,} \end{cases}

with :math:`C = \|x_i - y_j\|^2` (``cost="sq_euclidean"``, Gaussian kernel) or :math:`\|x_i - y_j\|`
(``"euclidean"``, Laplacian kernel, the official GTN's), then Sinkhorn on :math:`K^{sp}` (the poster's :math:`\bar P^{sp} = \mathrm{diag}(\bar s) K^{sp}\mathrm{diag}(\bar t)`):
O(nnz) per iteration, O(n log n) overall with O(n / k) clusters of size k. The kernel is a CSR matrix (torch's
sparse format) over the whole batch, block-diagonal in the problems (:class:`recot.ot.factored.SparsePattern`).

    >>> res = sparse_sinkhorn(x, y, eps=0.05, method="kmeans", n_clusters=64)
    >>> res.value, res.converged, res.plan.matmul(z)        # the plan stays sparse
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .cost import check_point_cost
from .factored import FactoredKernel, SparsePattern, pair_costs, solve_points
from .neighbours import neighbour_pattern
from .result import OTResult

__all__ = ["sparse_kernel", "sparse_sinkhorn"]


def sparse_kernel(x: Tensor, y: Tensor, pattern: SparsePattern, eps: float, cost: str = "sq_euclidean"
                  ) -> FactoredKernel:
    r"""The exact kernel :math:`e^{-C(x_i, y_j)/\varepsilon}` on ``pattern``'s entries, in log form (``cost``:
    ``"sq_euclidean"`` Gaussian, ``"euclidean"`` Laplacian)."""
    return FactoredKernel(pattern.shape, pattern=pattern, log_s=pair_costs(x, y, pattern, cost) / (-eps))


def sparse_sinkhorn(
    x: Tensor,
    y: Tensor,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    *,
    eps: float,
    cost: str = "sq_euclidean",
    mask_a: Optional[Tensor] = None,
    mask_b: Optional[Tensor] = None,
    method: str = "kmeans",
    n_clusters: int = 16,
    n_hashes: int = 1,
    n_bands: int = 1,
    pattern: Optional[SparsePattern] = None,
    cluster_init: str = "kmeans++",
    kmeans_iter: int = 10,
    fit_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    grad: str = "unroll",
    check_every: int = 10,
    absorb_threshold: float = 10.0,
    init: Optional[Tuple[Tensor, Tensor]] = None,
) -> OTResult:
    r"""Balanced entropic OT between point clouds with the sparse kernel :math:`K^{sp}` (module docstring).

    Args:
        x: ``(*batch, n, d)``, y: ``(*batch, m, d)`` points.
        cost: ``"sq_euclidean"`` :math:`\|x_i - y_j\|^2` (Gaussian kernel) or ``"euclidean"``
            :math:`\|x_i - y_j\|` (Laplacian kernel).
        a, b: ``(*batch, n)``, ``(*batch, m)`` weights (None: uniform over real points), equal mass.
        eps: entropic regularisation (absolute, in units of the cost).
        mask_a, mask_b: bool, True = real point.
        method, n_clusters, n_hashes, n_bands, cluster_init, kmeans_iter, fit_size, generator: the neighbours
            (:func:`recot.ot.neighbours.neighbour_pattern`): ``"kmeans"`` clusters of both clouds together,
            ``"crosspolytope"`` / ``"hyperplane"`` LSH, ``"all"`` every pair (then the solver equals
            :func:`recot.ot.sinkhorn`). ``pattern``: a precomputed pattern of the flattened batch (overrides).
        max_iter, tol, check_every, init: as :func:`recot.ot.sinkhorn` (``init`` = warm-start potentials ``(f, g)``).
        grad: ``"unroll"`` or ``"envelope"`` (analytic gradients, :func:`recot.ot.factored.solve_points`).
        absorb_threshold: float32 stabilisation (:mod:`recot.ot.factored`).

    Returns:
        :class:`OTResult`: ``plan`` a :class:`recot.ot.factored.FactoredPlan` over the flattened batch (sparse
        values on ``plan.pattern``; ``plan.to_dense()`` for small problems), ``value`` the exact-cost transport cost
        :math:`\sum_{(i,j) \in N} P_{ij} C(x_i, y_j)`, potentials ``f, g`` (:math:`P_{ij} = e^{(f_i + g_j -
        C_{ij})/\varepsilon}` on the pattern), ``n_iter``, ``err`` (L1 marginal error), ``converged``.
    """
    check_point_cost(cost)

    def structure(xc, yc, ma, mb, center):
        if pattern is not None:
            return pattern.to(xc.device)
        return neighbour_pattern(xc, yc, method=method, n_clusters=n_clusters, n_hashes=n_hashes, n_bands=n_bands,
                                 mask_x=ma, mask_y=mb, kmeans_iter=kmeans_iter, init=cluster_init,
                                 fit_size=fit_size, generator=generator)

    return solve_points(x, y, a, b, eps=eps, mask_a=mask_a, mask_b=mask_b, structure=structure,
                        kernel=lambda xc, yc, p: sparse_kernel(xc, yc, p, eps, cost), grad=grad, max_iter=max_iter,
                        tol=tol, check_every=check_every, absorb_threshold=absorb_threshold, init=init, cost=cost)
