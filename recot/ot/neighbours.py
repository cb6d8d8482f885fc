r"""Neighbour structures for the scalable Sinkhorn solvers: k-means clusters and landmarks, LSH buckets, pairs.

Sparse and LCN-Sinkhorn (Klicpera/Gasteiger, Lienen & Günnemann, ICML 2021, Sec. 3-4) keep the kernel only on
pairs of points that are "near": pairs whose points fall into the same cluster of a k-means clustering of both
point clouds together, or into the same bucket of a locality-sensitive hash (cross-polytope LSH, Andoni et al.
2015, or random hyperplanes, Charikar 2002). Several hash tables give the union of their pairs. Nyström uses the
k-means centroids as landmarks.

Every function is batched over problems ``(B, n, d)`` with bool masks (True = real point); structures are
computed without autograd (they are discrete choices, not functions to differentiate). A point whose bucket holds
no point of the other cloud is paired with its nearest neighbour there, so every real row and column of the
sparse kernel has an entry (otherwise the balanced problem would have no feasible plan).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .cost import sq_euclidean
from .factored import SparsePattern
from .kmeans import _init_centroids

__all__ = ["NEIGHBOUR_METHODS", "kmeans", "lsh_codes", "neighbour_pattern"]

NEIGHBOUR_METHODS = ("kmeans", "crosspolytope", "hyperplane", "all")

_CHUNK = 2**22  # distance entries per block: bounds the memory of assignments to ~16 MB (float32)


def _assign(points: Tensor, centroids: Tensor) -> Tensor:
    """Nearest centroid ``(B, N)`` of every point, in blocks of rows."""
    B, N, _ = points.shape
    k = centroids.shape[1]
    step = max(1, _CHUNK // max(k * B, 1))
    return torch.cat([sq_euclidean(points[:, s:s + step], centroids).argmin(-1) for s in range(0, N, step)], 1)


def _farthest_init(points: Tensor, k: int, mask: Optional[Tensor]) -> Tensor:
    """Deterministic farthest-point initialisation, independent per problem (start: the point farthest from the
    problem's mean). Used where results must not depend on a random stream or on the other problems of a batch."""
    B, N, d = points.shape
    w = torch.ones(B, N, dtype=points.dtype, device=points.device) if mask is None else mask.to(points.dtype)
    mean = (points * w[..., None]).sum(1, keepdim=True) / w.sum(1).clamp_min(1)[:, None, None]
    d2 = ((points - mean) ** 2).sum(-1)
    low = torch.finfo(points.dtype).min
    rows = torch.arange(B, device=points.device)
    idx = torch.empty(B, k, dtype=torch.long, device=points.device)
    for j in range(k):
        score = d2 if mask is None else d2.masked_fill(~mask, low)
        idx[:, j] = score.argmax(-1)
        new = ((points - points[rows, idx[:, j]][:, None]) ** 2).sum(-1)
        d2 = new if j == 0 else torch.minimum(d2, new)
    return points[rows[:, None], idx]


@torch.no_grad()
def kmeans(
    points: Tensor,
    k: int,
    *,
    mask: Optional[Tensor] = None,
    n_iter: int = 10,
    init: Union[str, Tensor] = "kmeans++",
    generator: Optional[torch.Generator] = None,
    fit_size: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    r"""Lloyd's k-means, batched and masked (no autograd).

    Args:
        points: ``(B, N, d)``; mask: ``(B, N)`` bool, True = real point.
        k: clusters per problem.
        n_iter: Lloyd iterations.
        init: ``"kmeans++"`` / ``"random"`` (:func:`recot.ot.kmeans._init_centroids`, drawn from ``generator``),
            ``"farthest"`` (deterministic, per problem) or centroids ``(B, k, d)``.
        fit_size: fit the centroids on at most this many random points per problem (then assign all points
            once): k-means on a sample, O(fit_size k d) per iteration instead of O(N k d).

    Returns:
        ``centroids (B, k, d)``, ``assign (B, N)`` (the nearest centroid; -1 on padding). An empty cluster keeps
        its previous centroid.
    """
    B, N, d = points.shape
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    fit, fit_mask = points, mask
    if fit_size is not None and N > fit_size:
        w = torch.ones(B, N, device=points.device) if mask is None else mask.float()
        take = int(min(fit_size, w.sum(-1).min().item()))
        if take >= k:
            idx = torch.multinomial(w, take, replacement=False, generator=generator)
            fit = points[torch.arange(B, device=points.device)[:, None], idx]
            fit_mask = None
    if isinstance(init, Tensor):
        centroids = init.to(points).expand(B, k, d).clone()
    elif init == "farthest":
        centroids = _farthest_init(fit, k, fit_mask)
    else:
        centroids = _init_centroids(fit, k, fit_mask, init, generator)
    w = None if fit_mask is None else fit_mask.to(points.dtype)
    for _ in range(n_iter):
        assign = _assign(fit, centroids)
        weight = torch.ones_like(assign, dtype=points.dtype) if w is None else w
        flat = (assign + k * torch.arange(B, device=points.device)[:, None]).reshape(-1)
        sums = torch.zeros(B * k, d, dtype=points.dtype, device=points.device).index_add_(
            0, flat, (fit * weight[..., None]).reshape(-1, d)).view(B, k, d)
        counts = torch.zeros(B * k, dtype=points.dtype, device=points.device).index_add_(
            0, flat, weight.reshape(-1)).view(B, k)
        centroids = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centroids)
    assign = _assign(points, centroids)
    if mask is not None:
        assign = assign.masked_fill(~mask, -1)
    return centroids, assign


@torch.no_grad()
def lsh_codes(points: Tensor, projections: Tensor, kind: str) -> Tensor:
    r"""LSH bucket of every point: ``(B, N, d)`` with ``projections: (bands, d, h)`` -> ``(B, N)`` codes.

    ``"crosspolytope"``: per band the index of the largest entry of :math:`[Rx, -Rx]` (:math:`2h` buckets;
    Andoni et al. 2015, with a Gaussian matrix for the random rotation); ``"hyperplane"``: per band the sign
    pattern of :math:`Rx` (:math:`2^h` buckets; Charikar 2002). Bands are concatenated into one code.
    """
    code = torch.zeros(points.shape[:2], dtype=torch.long, device=points.device)
    for r in projections.to(points):
        p = points @ r  # (B, N, h)
        if kind == "crosspolytope":
            c, base = torch.cat([p, -p], -1).argmax(-1), 2 * r.shape[-1]
        elif kind == "hyperplane":
            bits = 2 ** torch.arange(r.shape[-1], device=points.device)
            c, base = ((p > 0).long() * bits).sum(-1), 2 ** r.shape[-1]
        else:
            raise ValueError(f"unknown LSH kind {kind!r}; expected 'crosspolytope' or 'hyperplane'")
        code = code * base + c
    return code


def lsh_projections(d: int, n_buckets: int, kind: str, n_bands: int = 1, *, generator=None,
                    dtype=torch.float32) -> Tensor:
    """Random projections ``(n_bands, d, h)`` giving about ``n_buckets`` buckets per band."""
    if kind == "crosspolytope":
        h = max(1, n_buckets // 2)
    elif kind == "hyperplane":
        h = max(1, int(round(torch.log2(torch.tensor(float(max(n_buckets, 2)))).item())))
    else:
        raise ValueError(f"unknown LSH kind {kind!r}; expected 'crosspolytope' or 'hyperplane'")
    return torch.randn(n_bands, d, h, generator=generator, dtype=dtype)


def _bucket_pairs(key_x: Tensor, key_y: Tensor) -> Tuple[Tensor, Tensor]:
    """All ``(p, q)`` with ``key_x[p] == key_y[q]`` (flattened indices), grouped by ``p`` in ascending order."""
    order = torch.argsort(key_y, stable=True)
    sorted_y = key_y[order]
    start = torch.searchsorted(sorted_y, key_x, side="left")
    count = torch.searchsorted(sorted_y, key_x, side="right") - start
    rows = torch.repeat_interleave(torch.arange(key_x.numel(), device=key_x.device), count)
    first = torch.repeat_interleave(count.cumsum(0) - count, count)
    offset = torch.arange(rows.numel(), device=key_x.device) - first
    cols = order[torch.repeat_interleave(start, count) + offset]
    return rows, cols


def _nearest(x: Tensor, y: Tensor, need: Tensor, mask_y: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """For every flagged ``need[b, i]``, the nearest real ``y[b, j]``: returns ``(b, i, j)``."""
    b_idx, i_idx = need.nonzero(as_tuple=True)
    js = []
    for b in torch.unique(b_idx).tolist():
        sel = b_idx == b
        d2 = sq_euclidean(x[b, i_idx[sel]], y[b])
        if mask_y is not None:
            d2 = d2.masked_fill(~mask_y[b][None, :], float("inf"))
        js.append((sel.nonzero()[:, 0], d2.argmin(-1)))
    j_idx = torch.empty_like(i_idx)
    for pos, j in js:
        j_idx[pos] = j
    return b_idx, i_idx, j_idx


@torch.no_grad()
def neighbour_pattern(
    x: Tensor,
    y: Tensor,
    *,
    method: str = "kmeans",
    n_clusters: int = 16,
    n_hashes: int = 1,
    n_bands: int = 1,
    mask_x: Optional[Tensor] = None,
    mask_y: Optional[Tensor] = None,
    kmeans_iter: int = 10,
    init: str = "kmeans++",
    fit_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    projections: Optional[Tensor] = None,
) -> SparsePattern:
    r"""The neighbour pairs of the sparse kernel :math:`K^{sp}` between ``x: (B, n, d)`` and ``y: (B, m, d)``.

    Args:
        method: ``"kmeans"`` (pairs in the same cluster of a joint k-means of both clouds; ``n_clusters`` clusters),
            ``"crosspolytope"`` / ``"hyperplane"`` (same LSH bucket; about ``n_clusters`` buckets per band, ``n_bands``
            hashes concatenated per table) or ``"all"`` (every pair: the exact kernel, for tests).
        n_hashes: independent clusterings / hash tables whose pairs are united (more neighbours, fewer misses).
        kmeans_iter, init, fit_size: of :func:`kmeans` (``init="farthest"`` is deterministic per problem).
        generator: random stream of k-means++ and of the LSH projections; projections: fixed LSH projections
            ``(n_hashes, n_bands, d, h)`` (e.g. a module's buffer), overriding the generator.

    Returns:
        A :class:`SparsePattern` of shape ``(B, n, m)`` in which every real row and column has at least one entry.
    """
    if method not in NEIGHBOUR_METHODS:
        raise ValueError(f"method must be one of {NEIGHBOUR_METHODS}, got {method!r}")
    B, n, d = x.shape
    m = y.shape[1]
    dev = x.device
    real_x = torch.ones(B, n, dtype=torch.bool, device=dev) if mask_x is None else mask_x
    real_y = torch.ones(B, m, dtype=torch.bool, device=dev) if mask_y is None else mask_y
    batch_x = torch.arange(B, device=dev)[:, None].expand(B, n)
    batch_y = torch.arange(B, device=dev)[:, None].expand(B, m)
    if method == "all":  # one bucket per problem: every real pair, in CSR order, O(nnz) memory
        key_x = torch.where(real_x, batch_x, torch.full_like(batch_x, -1)).reshape(-1)
        key_y = torch.where(real_y, batch_y, torch.full_like(batch_y, -2)).reshape(-1)
        return SparsePattern(*_bucket_pairs(key_x, key_y), (B, n, m))
    rows, cols = [], []
    for h in range(n_hashes):
        if method == "kmeans":
            _, assign = kmeans(torch.cat([x, y], 1), n_clusters, mask=torch.cat([real_x, real_y], 1),
                               n_iter=kmeans_iter, init=init if h == 0 or init == "farthest" else "kmeans++",
                               generator=generator, fit_size=fit_size)
            if h > 0 and init == "farthest":
                break  # a deterministic clustering repeats itself: one table
            cx, cy, base = assign[:, :n], assign[:, n:], n_clusters
        else:
            proj = projections[h] if projections is not None else lsh_projections(
                d, n_clusters, method, n_bands, generator=generator, dtype=x.dtype)
            cx, cy = lsh_codes(x, proj, method), lsh_codes(y, proj, method)
            base = int(max(cx.max().item() if cx.numel() else 0, cy.max().item() if cy.numel() else 0)) + 1
        key_x = torch.where(real_x, batch_x * base + cx, torch.full_like(cx, -1)).reshape(-1)
        key_y = torch.where(real_y, batch_y * base + cy, torch.full_like(cy, -2)).reshape(-1)
        r, c = _bucket_pairs(key_x, key_y)
        rows.append(r)
        cols.append(c)
    rows, cols = torch.cat(rows), torch.cat(cols)
    # points without a partner in their bucket: pair them with their nearest neighbour in the other cloud
    has_x = torch.zeros(B * n, dtype=torch.bool, device=dev).index_fill(0, rows, True).view(B, n)
    has_y = torch.zeros(B * m, dtype=torch.bool, device=dev).index_fill(0, cols, True).view(B, m)
    need_x, need_y = real_x & ~has_x & real_y.any(-1, keepdim=True), real_y & ~has_y & real_x.any(-1, keepdim=True)
    b_all, i_all, j_all = [torch.div(rows, n, rounding_mode="floor")], [rows % n], [cols % m]
    if bool(need_x.any()):
        b, i, j = _nearest(x, y, need_x, mask_y)
        b_all.append(b), i_all.append(i), j_all.append(j)
    if bool(need_y.any()):
        b, j, i = _nearest(y, x, need_y, mask_x)
        b_all.append(b), i_all.append(i), j_all.append(j)
    if len(b_all) == 1 and n_hashes == 1:
        return SparsePattern(rows, cols, (B, n, m))  # one table, already in CSR order without duplicates
    return SparsePattern.from_pairs(torch.cat(b_all), torch.cat(i_all), torch.cat(j_all), (B, n, m))
