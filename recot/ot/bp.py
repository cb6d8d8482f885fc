r"""The bipartite-matching (BP) OT problem of GTN (Klicpera/Gasteiger, Lienen & Günnemann, ICML 2021, Sec. 6):
learnable unbalanced OT between two sets of node embeddings, with full, sparse, Nyström or LCN Sinkhorn.

Following Riesen & Bunke's BP matrix for graph edit distance, each graph gets one "epsilon" (deleted / inserted)
node per node of the other graph:

.. math::
    C_{BP} = \begin{bmatrix} C & C^{(p,\epsilon)} \\ C^{(\epsilon,q)} & C^{(\epsilon,\epsilon)} \end{bmatrix},\quad
    C^{(p,\epsilon)}_{ij} = \begin{cases} c_{i,\epsilon} & i = j \\ \infty & i \ne j \end{cases},\quad
    C^{(\epsilon,q)}_{ij} = \begin{cases} c_{\epsilon,j} & i = j \\ \infty & i \ne j \end{cases},\quad
    C^{(\epsilon,\epsilon)} = 0,

an ``(n + m) x (m + n)`` balanced problem with unit mass on every row and column: node ``i`` of the first graph is
matched to nodes of the second or deleted at cost :math:`c_{i,\epsilon}`, node ``j`` of the second is matched or
inserted at :math:`c_{\epsilon,j}` (GTN: scaled embedding norms, learnable). As :math:`\varepsilon \to 0` the value is
the BP (linear-assignment) edit cost. (The poster writes :math:`\infty` off the diagonals: those entries get an
exactly zero plan; the dense solver uses a large finite cost there so that :math:`0 \cdot \infty` never occurs.)

Layout: rows ``[0, n)`` are the first graph's nodes, rows ``[n, n + m)`` the epsilon nodes of the second graph's
nodes (row ``n + j`` inserts node ``j``); columns ``[0, m)`` the second graph's nodes, ``[m, m + n)`` the epsilon
nodes of the first (column ``m + i`` deletes node ``i``).

With the scalable solvers the BP kernel stays factored: :math:`e^{-C/\varepsilon}` of the node block is the sparse /
Nyström / LCN kernel, the zero-cost block :math:`e^0 = \mathbf 1\mathbf 1^\top` is one more rank, and the two
diagonal blocks are sparse entries; so the whole BP problem is one :class:`recot.ot.factored.FactoredKernel`.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .cost import check_point_cost, pairwise_cost
from .factored import FactoredKernel, SparsePattern, factored_sinkhorn, neg, pair_costs, sq_euclidean_factors
from .lcn import lcn_correction
from .neighbours import neighbour_pattern
from .nystrom import landmarks_of, nystrom_factors
from .result import OTResult
from .sinkhorn import sinkhorn

__all__ = ["BP_SOLVERS", "bp_cost_matrix", "bp_sinkhorn"]

BP_SOLVERS = ("full", "sparse", "nystrom", "lcn")


def _ones(B: int, k: int, device) -> Tensor:
    return torch.ones(B, k, dtype=torch.bool, device=device)


def bp_cost_matrix(cost: Tensor, del_cost: Tensor, ins_cost: Tensor, big: Union[float, Tensor]) -> Tensor:
    r"""Dense :math:`C_{BP}` ``(B, n + m, m + n)`` from ``cost (B, n, m)``, ``del_cost (B, n)``, ``ins_cost (B, m)``;
    ``big`` (``(B,)`` or a float) stands for :math:`\infty` off the diagonals of the deletion/insertion blocks."""
    B, n, m = cost.shape
    big = torch.as_tensor(big, dtype=cost.dtype, device=cost.device).reshape(-1, 1, 1).expand(B, 1, 1)
    eye_n = torch.eye(n, dtype=torch.bool, device=cost.device)
    eye_m = torch.eye(m, dtype=torch.bool, device=cost.device)
    upper = torch.where(eye_n, del_cost[:, :, None], big)  # (B, n, n): row i, epsilon column of node k
    lower = torch.where(eye_m, ins_cost[:, None, :], big)  # (B, m, m): epsilon row of node j', column j
    top = torch.cat([cost, upper], -1)
    bottom = torch.cat([lower, torch.zeros(B, m, n, dtype=cost.dtype, device=cost.device)], -1)
    return torch.cat([top, bottom], -2)


def bp_sinkhorn(
    x: Tensor,
    y: Tensor,
    del_cost: Tensor,
    ins_cost: Tensor,
    *,
    eps: Union[float, Tensor],
    mask_a: Optional[Tensor] = None,
    mask_b: Optional[Tensor] = None,
    solver: str = "full",
    dense_bp: bool = False,
    cost: str = "sq_euclidean",
    max_iter: int = 100,
    tol: float = 0.0,
    grad: str = "envelope",
    landmarks: int = 10,
    method: str = "kmeans",
    n_clusters: int = 10,
    n_hashes: int = 1,
    n_bands: int = 1,
    cluster_init: str = "farthest",
    kmeans_iter: int = 10,
    projections: Optional[Tensor] = None,
    absorb_threshold: float = 10.0,
) -> OTResult:
    r"""Entropic OT on the BP matrix between node embeddings ``x: (B, n, d)`` and ``y: (B, m, d)``.

    Args:
        del_cost: ``(B, n)`` deletion costs :math:`c_{i,\epsilon}`; ins_cost: ``(B, m)`` insertion costs.
        eps: regularisation, a float or one per problem ``(B,)`` (GTN scales it with the graph sizes).
        mask_a, mask_b: bool ``(B, n)``, ``(B, m)``, True = real node; padded nodes take no part.
        solver: ``"full"`` (the exact kernel), ``"sparse"`` (exact kernel on neighbour pairs), ``"nystrom"`` or
            ``"lcn"`` (low-rank approximations of the Gaussian or, with ``cost="euclidean"``, Laplacian kernel).
        dense_bp: with ``solver="full"``: solve the dense ``(n + m) x (m + n)`` matrix with :func:`recot.ot.sinkhorn`
            (GTN's ``full_bp``; any ``grad`` incl. ``"implicit"``). Otherwise the structured BP kernel (exact node
            block as a sparse block of all pairs, the diagonals, one rank for the zero block, as GTN's
            ``LogSinkhornBP``): the same problem, about 4x fewer entries and no exponential per iteration.
        cost: node cost :math:`C_{ij}`: ``"sq_euclidean"`` :math:`\|x_i - y_j\|^2` or ``"euclidean"``
            :math:`\|x_i - y_j\|` (the official GTN's).
        max_iter, tol, grad: of the solver (``tol=0``: exactly ``max_iter`` iterations, as GTN); ``grad``:
            ``"unroll"`` or ``"envelope"`` (analytic, :mod:`recot.ot.factored`).
        landmarks, method, n_clusters, n_hashes, n_bands, cluster_init, kmeans_iter, projections: of the
            approximations (:mod:`recot.ot.nystrom`, :mod:`recot.ot.neighbours`); ``cluster_init="farthest"`` makes
            them deterministic per problem, so a pair gives the same distance alone or in any batch.

    Returns:
        :class:`OTResult` with ``value = <C_BP, P>`` per problem (the matching cost, deletions and insertions
        included), the plan (dense ``(B, n + m, m + n)`` with ``dense_bp``, else a
        :class:`recot.ot.factored.FactoredPlan`), and the potentials of the BP problem.
    """
    if solver not in BP_SOLVERS:
        raise ValueError(f"solver must be one of {BP_SOLVERS}, got {solver!r}")
    check_point_cost(cost)
    B, n, d = x.shape
    m = y.shape[1]
    dev = x.device
    ma = _ones(B, n, dev) if mask_a is None else mask_a.bool()
    mb = _ones(B, m, dev) if mask_b is None else mask_b.bool()
    x = torch.where(ma[..., None], x, torch.zeros((), dtype=x.dtype, device=dev))
    y = torch.where(mb[..., None], y, torch.zeros((), dtype=y.dtype, device=dev))
    zero = torch.zeros((), dtype=x.dtype, device=dev)
    del_cost, ins_cost = torch.where(ma, del_cost, zero), torch.where(mb, ins_cost, zero)
    eps_b = torch.as_tensor(eps, dtype=x.dtype, device=dev).reshape(-1).expand(B)
    rows, cols = torch.cat([ma, mb], 1), torch.cat([mb, ma], 1)
    weights_r, weights_c = rows.to(x.dtype), cols.to(x.dtype)
    if solver == "full" and dense_bp:
        c = pairwise_cost(x, y, cost)
        real = (ma[..., :, None] & mb[..., None, :])
        scale = torch.maximum(c.detach().masked_fill(~real, 0).amax((-2, -1)),
                              torch.maximum(del_cost.detach().amax(-1), ins_cost.detach().amax(-1)))
        # "infinity": exp(-(big - f - g)/eps) underflows to an exact 0 (f + g is at most a few cost scales)
        big = 4 * scale + 200 * eps_b
        c_bp = bp_cost_matrix(c, del_cost, ins_cost, big.detach())
        res = sinkhorn(c_bp / eps_b[:, None, None], weights_r, weights_c, eps=1.0, mask_a=rows, mask_b=cols,
                       max_iter=max_iter, tol=tol, grad=grad)
        return OTResult(plan=res.plan, value=res.value * eps_b, f=res.f * eps_b[:, None], g=res.g * eps_b[:, None],
                        n_iter=res.n_iter, err=res.err, converged=res.converged)
    if grad not in ("unroll", "envelope"):
        raise ValueError(f"the factored BP solvers support grad 'unroll' or 'envelope', got {grad!r}")
    # center the node embeddings of each pair (the node cost is translation invariant; the deletion costs, which
    # are not, come in precomputed); the low-rank factors see the points scaled so that cost(x / root, y / root)
    # = cost(x, y) / eps (root = sqrt(eps) for the squared cost, eps for the Euclidean one): kernel eps = 1
    w = torch.cat([ma, mb], 1)[..., None].to(x.dtype)
    center = ((torch.cat([x, y], 1) * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)).detach()
    xc, yc = (x - center) * ma[..., None], (y - center) * mb[..., None]
    root = (eps_b if cost == "euclidean" else eps_b.sqrt())[:, None, None]
    with torch.no_grad():
        xd, yd = (xc / root).detach(), (yc / root).detach()
        pattern = z = None
        if solver in ("sparse", "lcn"):
            pattern = neighbour_pattern(xd, yd, method=method, n_clusters=n_clusters, n_hashes=n_hashes,
                                        n_bands=n_bands, mask_x=ma, mask_y=mb, kmeans_iter=kmeans_iter,
                                        init=cluster_init, projections=projections)
        elif solver == "full":
            pattern = neighbour_pattern(xd, yd, method="all", mask_x=ma, mask_y=mb)
        if solver in ("nystrom", "lcn"):
            z = landmarks_of(xd, yd, landmarks, ma, mb, kmeans_iter=kmeans_iter, init=cluster_init)
    node_cost = None if pattern is None else pair_costs(xc, yc, pattern, cost)  # live: the value's gradient

    def run(xc, yc, node_cost, del_cost, ins_cost):
        kernel, order = _bp_kernel(xc / root, yc / root, node_cost, del_cost, ins_cost, eps_b, ma, mb, z, pattern,
                                   cost)
        return factored_sinkhorn(kernel, weights_r, weights_c, mask_a=rows, mask_b=cols, max_iter=max_iter, tol=tol,
                                 absorb_threshold=absorb_threshold), order

    if grad == "unroll":
        (plan, phi, gamma, n_iter, err, *_), order = run(xc, yc, node_cost, del_cost, ins_cost)
    else:
        with torch.no_grad():
            d = lambda t: None if t is None else t.detach()  # noqa: E731
            (plan, phi, gamma, n_iter, err, *_), order = run(xc.detach(), yc.detach(), d(node_cost),
                                                             del_cost.detach(), ins_cost.detach())
    factors = lowrank = None
    if z is not None and cost == "sq_euclidean":  # the plan sees the squared cost through its factors
        fx, fy = sq_euclidean_factors(xc, yc)
        fx = torch.cat([fx, fx.new_zeros(B, m, fx.shape[-1])], 1)  # epsilon rows/columns: no node cost
        fy = torch.cat([fy, fy.new_zeros(B, n, fy.shape[-1])], 1)
        factors = (fx, fy)
    elif z is not None:  # Euclidean: the node block of the low-rank plan, exact and chunked (lowrank_point_cost)
        lowrank = (xc, yc, cost)
    # per sparse entry: the node cost (unless the factors carry it), c_del / c_ins on the diagonals
    node_extra = x.new_zeros(0) if pattern is None else (
        torch.zeros_like(node_cost) if factors is not None else node_cost)
    extra = torch.cat([node_extra, del_cost[ma], ins_cost[mb]])[order]
    value = plan.cost(factors, extra, lowrank)
    return OTResult(plan=plan, value=value, f=phi * eps_b[:, None], g=gamma * eps_b[:, None], n_iter=n_iter,
                    err=err, converged=err <= tol)


def _bp_kernel(xs: Tensor, ys: Tensor, node_cost: Optional[Tensor], del_cost: Tensor, ins_cost: Tensor,
               eps_b: Tensor, ma: Tensor, mb: Tensor, z: Optional[Tensor], pattern: Optional[SparsePattern],
               cost: str = "sq_euclidean") -> Tuple[FactoredKernel, Tensor]:
    """The factored BP kernel (real nodes only) and the CSR order of its sparse entries, listed as node-block entries,
    then deletions (real nodes of ``x``), then insertions (real nodes of ``y``). ``xs, ys``: points scaled so that
    ``cost(xs, ys) = cost(x, y) / eps`` (Nyström factors with kernel eps 1); ``node_cost`` on ``pattern``'s
    entries, unscaled."""
    B, n, _ = xs.shape
    m = ys.shape[1]
    N, M = n + m, m + n
    dev, dt = xs.device, xs.dtype
    lo = neg(dt)
    # low rank: the node block (Nystrom/LCN) plus one rank for the zero-cost epsilon-epsilon block
    if z is not None:
        log_u, log_w, sign_w = nystrom_factors(xs, ys, z, 1.0, cost=cost)
    else:
        log_u = xs.new_zeros(B, n, 0)
        log_w, sign_w = xs.new_zeros(B, 0, m), xs.new_zeros(B, 0, m)
    l = log_u.shape[-1]
    u_top = torch.cat([log_u, torch.full((B, n, 1), lo, dtype=dt, device=dev)], -1)
    u_bot = torch.cat([torch.full((B, m, l), lo, dtype=dt, device=dev), torch.zeros(B, m, 1, dtype=dt, device=dev)],
                      -1)
    w_top = torch.cat([log_w, torch.full((B, l, n), lo, dtype=dt, device=dev)], -1)
    w_bot = torch.cat([torch.full((B, 1, m), lo, dtype=dt, device=dev), torch.zeros(B, 1, n, dtype=dt, device=dev)],
                      -1)
    s_top = torch.cat([sign_w, torch.ones(B, l, n, dtype=dt, device=dev)], -1)
    log_u_bp, log_w_bp = torch.cat([u_top, u_bot], 1), torch.cat([w_top, w_bot], 1)
    sign_w_bp = torch.cat([s_top, torch.ones(B, 1, M, dtype=dt, device=dev)], 1)
    # sparse: node-block entries (exact kernel or LCN correction), then the deletion and insertion diagonals
    bi, ii, jj, logs, signs = [], [], [], [], []
    if pattern is not None:
        b, i, j = pattern.local()
        log_k = node_cost / (-eps_b[b])
        if z is not None:
            log_k, sign = lcn_correction(log_u, log_w, sign_w, log_k, pattern)
        else:
            sign = torch.ones_like(log_k)
        bi.append(b), ii.append(i), jj.append(j), logs.append(log_k), signs.append(sign)
    bn, nn_ = ma.nonzero(as_tuple=True)
    bm, mm_ = mb.nonzero(as_tuple=True)
    bi += [bn, bm]
    ii += [nn_, n + mm_]
    jj += [m + nn_, mm_]
    logs += [-(del_cost / eps_b[:, None])[ma], -(ins_cost / eps_b[:, None])[mb]]
    signs += [torch.ones(bn.numel(), dtype=dt, device=dev), torch.ones(bm.numel(), dtype=dt, device=dev)]
    rows = torch.cat(bi) * N + torch.cat(ii)
    cols = torch.cat(bi) * M + torch.cat(jj)
    order = torch.argsort(rows * M + cols)  # CSR order (entries are distinct by construction)
    bp_pattern = SparsePattern(rows[order], cols[order], (B, N, M))
    log_s, sign_s = torch.cat(logs)[order], torch.cat(signs)[order]
    kernel = FactoredKernel((B, N, M), log_u=log_u_bp, log_w=log_w_bp, sign_w=sign_w_bp, pattern=bp_pattern,
                            log_s=log_s, sign_s=None if pattern is None or z is None else sign_s)
    return kernel, order
