r"""LCN-Sinkhorn (Klicpera/Gasteiger, Lienen & Günnemann, ICML 2021, Sec. 4, Eq. 6): Sinkhorn with the locally
corrected Nyström kernel

.. math::
    K_{LCN} = K_{Nys} - K^{sp}_{Nys} + K^{sp},

the Nyström approximation (:mod:`recot.ot.nystrom`, long-range interactions) whose entries on the neighbour pairs
(:mod:`recot.ot.neighbours`, short-range interactions) are replaced by the exact kernel. Every iteration uses one
low-rank and one sparse product, O(n (l + k)); no ``n x m`` matrix is formed.

The correction :math:`K^{sp} - K^{sp}_{Nys}` is computed once in float64 and stored as a signed log, so that the
small differences of two nearly equal kernels do not vanish in float32. With k-means neighbours the pattern is a
union of dense cluster blocks and :math:`K^{sp}_{Nys}` is one float64 matrix product per block of the max-shifted
factors (batched GEMMs, :func:`_block_nystrom`); other entries take a max-shifted signed sum over the ``l``
landmarks per entry (:func:`lcn_correction`). As the paper recommends, the landmarks (Nyström) and the clusters
(neighbours) are separate clusterings.

The kernel is :math:`e^{-C/\varepsilon}` with :math:`C = \|x - y\|^2` (Gaussian, ``cost="sq_euclidean"``) or
:math:`\|x - y\|` (Laplacian, ``"euclidean"``, the official GTN's); the correction does not depend on the cost (it
takes the log-factors and the exact log-kernel on the pattern), so both paths serve both kernels.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .cost import check_point_cost
from .factored import FactoredKernel, SparsePattern, nan_to_neg, pair_costs, signed_log, solve_points
from .utils import neg
from .neighbours import neighbour_pattern
from .nystrom import landmarks_of, nystrom_factors
from .result import OTResult

__all__ = ["lcn_correction", "lcn_kernel", "lcn_sinkhorn"]


def lcn_correction(log_u: Tensor, log_w: Tensor, sign_w: Tensor, log_k: Tensor, pattern: SparsePattern,
                   chunk: int = 2**16, path: str = "auto") -> Tuple[Tensor, Tensor]:
    r"""``(log|D|, sign D)`` of :math:`D = K^{sp} - K^{sp}_{Nys}` on ``pattern``'s entries (``log_k: (nnz,)`` the
    exact log-kernel there), in float64.

    ``path="entries"``: per entry, a max-shifted signed sum over the ``l`` landmarks, in blocks of ``chunk``
    entries (``chunk x l`` memory; any pattern). ``path="blocks"``: :math:`K^{sp}_{Nys}` by dense block products
    (:func:`_block_nystrom`): a k-means pattern is a union of dense cluster blocks, so one float64 GEMM per block
    replaces the gather and the per-entry reduction (about 10-50x faster at 1e5 points); entries the blocks do not
    cover efficiently, or whose max-shift bound fails, go the per-entry way. ``"auto"``: blocks once the pattern
    has at least ``2**22`` entry-landmark terms. Both paths agree to float64 rounding (tested).
    """
    if path not in ("auto", "blocks", "entries"):
        raise ValueError(f"path must be 'auto', 'blocks' or 'entries', got {path!r}")
    B, n, m = pattern.shape
    lu = log_u.reshape(B * n, -1).double()
    lw = log_w.transpose(-1, -2).reshape(B * m, -1).double()
    sw = sign_w.transpose(-1, -2).reshape(B * m, -1).double()
    if pattern.nnz == 0:
        return log_k.new_zeros(0), log_k.new_zeros(0)
    if path == "entries" or (path == "auto" and pattern.nnz * lu.shape[-1] < 2**22):
        return _correction_entries(lu, lw, sw, log_k, pattern.rows, pattern.cols, chunk)
    log_d, sign_d, todo = _correction_blocks(lu, lw, sw, log_k.double(), pattern)
    rest = todo.nonzero()[:, 0]  # entries left to the per-entry path
    if rest.numel():
        lr, sr = _correction_entries(lu, lw, sw, log_k[rest], pattern.rows[rest], pattern.cols[rest], chunk)
        log_d, sign_d = log_d.index_put((rest,), lr.double()), sign_d.index_put((rest,), sr.double())
    return log_d.to(log_k.dtype), sign_d.to(log_k.dtype)


def _signed_log_diff(lk: Tensor, log_nys: Tensor, sign_nys: Tensor) -> Tuple[Tensor, Tensor]:
    r""":math:`\log|e^{lk} - \sigma e^{\ell}|` and its sign, shifted by the larger of the two logs."""
    hi = torch.maximum(lk, log_nys)
    diff = (lk - hi).exp() - sign_nys * (log_nys - hi).exp()
    return nan_to_neg(hi + diff.abs().log()), torch.where(diff < 0, -torch.ones_like(diff), torch.ones_like(diff))


def _correction_entries(lu: Tensor, lw: Tensor, sw: Tensor, log_k: Tensor, rows: Tensor, cols: Tensor,
                        chunk: int) -> Tuple[Tensor, Tensor]:
    """The reference path: ``lu (Bn, l)``, ``lw``/``sw (Bm, l)`` float64; one max-shifted sum per entry."""
    logs, signs = [], []
    for s in range(0, rows.numel(), chunk):
        r, c = rows[s:s + chunk], cols[s:s + chunk]
        t = lu[r] + lw[c]  # (chunk, l)
        top = t.amax(-1)
        nys = (sw[c] * (t - top[:, None]).exp()).sum(-1)  # K_Nys = e^top * nys
        ln, sn = signed_log(nys)
        ld, sd = _signed_log_diff(log_k[s:s + chunk].double(), top + ln, sn)
        logs.append(ld), signs.append(sd)
    return torch.cat(logs).to(log_k.dtype), torch.cat(signs).to(log_k.dtype)


_SAFE = 1e-256  # about e^-590; float64 is exact down to about e^-708: see _correction_blocks


def _correction_blocks(lu: Tensor, lw: Tensor, sw: Tensor, log_k: Tensor, pattern: SparsePattern
                       ) -> Tuple[Tensor, Tensor, Tensor]:
    r"""The block path of :func:`lcn_correction`: ``(log|D|, sign D, todo)`` in float64, ``todo`` (bool) marking
    the entries left to the per-entry path.

    Stability: with the row shifts :math:`a_i = \max_k \log U_{ik}` and the column shifts
    :math:`b_j = \max_k \log|W_{kj}|`, :math:`K_{Nys,ij} = e^{a_i + b_j} G_{ij}`, :math:`G = \hat U \hat W`,
    where every factor entry is at most 1 in magnitude. A term of :math:`G_{ij}` loses precision only below
    about :math:`e^{-708}` (float64 subnormals). If :math:`|G_{ij}| \ge e^{-590}`, its largest term is at least
    :math:`e^{-590}/l > e^{-600}`, so the terms that lost precision are below :math:`e^{-108}` of it: the sum is as
    accurate as the per-entry max-shifted sum. Entries with a smaller :math:`|G_{ij}|` (or in no block) go the
    per-entry way. :math:`D = e^{h} (e^{\log K - h} - e^{a_i + b_j - h} G_{ij})` with
    :math:`h = \max(\log K, a_i + b_j)`: both terms are at most ``l`` in magnitude.
    """
    a, b = lu.amax(-1), lw.amax(-1)
    u_hat = (lu - a[:, None]).exp()  # a row/column without any finite factor gives G = NaN or 0: todo
    w_hat = sw * (lw - b[:, None]).exp()
    gram = _block_nystrom(u_hat, w_hat, pattern)  # (nnz,), 0 where not covered
    todo = ~(gram.abs() >= _SAFE)
    shift = a[pattern.rows] + b[pattern.cols]
    hi = torch.maximum(log_k, shift)
    diff = (log_k - hi).exp() - (shift - hi).exp() * gram
    return nan_to_neg(hi + diff.abs().log()), torch.where(diff < 0, -1.0, 1.0).to(diff), todo


def _size_class(s: Tensor) -> Tensor:
    """Padded block size: ``s`` rounded up to a multiple of 2^(floor(log2 s) - 2) (at most 25% padding)."""
    step = (2 ** (torch.log2(s.double()).floor() - 2)).clamp_min(1).long()
    return (s + step - 1) // step * step


def _block_nystrom(u_hat: Tensor, w_hat: Tensor, pattern: SparsePattern, max_block: int = 2**22,
                   max_waste: float = 2.0) -> Tensor:
    r""":math:`(\hat U \hat W)_{ij}` on ``pattern``'s entries by dense block products: ``u_hat (Bn, l)``,
    ``w_hat (Bm, l)`` -> ``(nnz,)`` (0 where not computed).

    Rows are grouped by their first column (CSR order), columns by the group of their first row: with k-means
    neighbours every row of cluster ``c`` has exactly the columns of cluster ``c``, so a group is a cluster block.
    Entries whose column belongs to another group, and groups whose block has more than ``max_waste`` times
    their entries (e.g. a union of several clusterings), are left out (0). O(nnz + (n + m) log(n + m)) besides
    the products: no sort of the entries.
    Groups of similar size are padded to one size and multiplied by one batched GEMM (``max_block`` float64
    numbers per GEMM).
    """
    B, n, m = pattern.shape
    rows, cols = pattern.rows, pattern.cols
    nnz, dev = rows.numel(), rows.device
    first = torch.full((B * n,), -1, dtype=torch.long, device=dev).scatter_reduce(
        0, rows, cols, reduce="amin", include_self=False)
    _, row_group = torch.unique(first, return_inverse=True)  # rows without entries share one unused group
    group = row_group[rows]  # (nnz,)
    n_groups = int(row_group.max()) + 1
    # columns: each belongs to the group of the first row holding it; an entry of another group (a column shared
    # by several groups, e.g. several clusterings or a nearest-neighbour fix-up) is left to the per-entry path
    first_row = torch.full((B * m,), B * n, dtype=torch.long, device=dev).scatter_reduce(
        0, cols, rows, reduce="amin", include_self=True)
    has_c = first_row < B * n
    col_group = torch.where(has_c, row_group[first_row.clamp_max(B * n - 1)], -1)
    owned = col_group[cols] == group
    ucol = has_c.nonzero()[:, 0]
    ucol = ucol[torch.argsort(col_group[ucol] * (B * m) + ucol)]
    n_cols = torch.bincount(col_group[ucol], minlength=n_groups)
    col_start = n_cols.cumsum(0) - n_cols
    crank = torch.zeros(B * m, dtype=torch.long, device=dev)
    crank[ucol] = torch.arange(ucol.numel(), device=dev)
    # local row of every entry: the rank of its row among its group's rows
    has = torch.zeros(B * n, dtype=torch.bool, device=dev).index_fill_(0, rows, True)
    grp_rows = has.nonzero()[:, 0]
    grp_rows = grp_rows[torch.argsort(row_group[grp_rows] * (B * n) + grp_rows)]
    n_rows = torch.bincount(row_group[grp_rows], minlength=n_groups)
    row_start = n_rows.cumsum(0) - n_rows
    n_entries = torch.bincount(group[owned], minlength=n_groups)
    dense = (n_entries > 0) & (n_rows * n_cols <= max_waste * n_entries)
    rc, cc = _size_class(n_rows.clamp_min(1)), _size_class(n_cols.clamp_min(1))
    u_pad = torch.cat([u_hat, u_hat.new_zeros(1, u_hat.shape[1])])  # index B n / B m: a zero row for padding
    w_pad = torch.cat([w_hat, w_hat.new_zeros(1, w_hat.shape[1])])
    # groups sorted by size class; the padded blocks of all groups, one after the other, form one flat buffer
    dense_groups = dense.nonzero()[:, 0]
    cls = (rc * (cc.max() + 1) + cc)[dense_groups]
    gsorted = dense_groups[torch.argsort(cls * n_groups + dense_groups)]
    size = rc[gsorted] * cc[gsorted]
    offset = torch.zeros(n_groups, dtype=torch.long, device=dev)
    offset[gsorted] = size.cumsum(0) - size
    _, counts = torch.unique_consecutive(cls.sort().values, return_counts=True)
    l, g0, parts = u_hat.shape[1], 0, []
    for count in counts.tolist():
        R, C = int(rc[gsorted[g0]]), int(cc[gsorted[g0]])
        step = max(1, max_block // (R * C + (R + C) * l))
        for s in range(g0, g0 + count, step):
            g = gsorted[s:min(s + step, g0 + count)]
            t = torch.arange(R, device=dev)
            ri = row_start[g][:, None] + t
            ri = torch.where(t < n_rows[g][:, None], grp_rows[ri.clamp_max(grp_rows.numel() - 1)], B * n)
            t = torch.arange(C, device=dev)
            ci = col_start[g][:, None] + t
            ci = torch.where(t < n_cols[g][:, None], ucol[ci.clamp_max(ucol.numel() - 1)], B * m)
            blocks = torch.bmm(u_pad[ri], w_pad[ci].transpose(-1, -2))  # (G, R, C)
            parts.append(blocks.reshape(-1))
        g0 += count
    if not parts:
        return u_hat.new_zeros(nnz)
    buffer = torch.cat(parts)
    # per row: where its block row starts in the buffer, less its group's first union column
    row_g = row_group[grp_rows]
    base = torch.full((B * n,), -1, dtype=torch.long, device=dev)
    base[grp_rows] = torch.where(dense[row_g], offset[row_g] + (torch.arange(grp_rows.numel(), device=dev)
                                 - row_start[row_g]) * cc[row_g] - col_start[row_g], -1 - nnz)
    flat = torch.where(owned, base[rows] + crank[cols], -1)
    return torch.where(flat >= 0, buffer[flat.clamp_min(0)], 0.0)


def lcn_kernel(x: Tensor, y: Tensor, z: Tensor, pattern: SparsePattern, eps: float, rcond: float = 1e-10,
               cost: str = "sq_euclidean") -> FactoredKernel:
    r""":math:`K_{LCN}` of ``x: (B, n, d)``, ``y: (B, m, d)``, landmarks ``z: (B, l, d)``, neighbours ``pattern``,
    for the kernel :math:`e^{-C/\varepsilon}` of ``cost`` (:data:`recot.ot.cost.POINT_COSTS`)."""
    log_u, log_w, sign_w = nystrom_factors(x, y, z, eps, rcond, cost)
    log_k = pair_costs(x, y, pattern, cost) / (-eps)
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
    cost: str = "sq_euclidean",
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

    Args as :func:`recot.ot.sparse.sparse_sinkhorn` (the neighbours, ``cost``) and :func:`recot.ot.nystrom.nystrom_sinkhorn`
    (``landmarks``, ``rcond``); ``cluster_init`` initialises both clusterings.

    Returns:
        :class:`OTResult` with a :class:`recot.ot.factored.FactoredPlan` (rank ``l`` plus the sparse correction)
        and the exact-cost value :math:`\langle C, P_{LCN}\rangle`.
    """
    check_point_cost(cost)

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
                        kernel=lambda xc, yc, s: lcn_kernel(xc, yc, s[0], s[1], eps, rcond, cost), grad=grad,
                        max_iter=max_iter, tol=tol, check_every=check_every, absorb_threshold=absorb_threshold,
                        init=init, cost=cost)
