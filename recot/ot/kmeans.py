r"""Differentiable balanced k-means by entropic OT (GOTNet, Chen et al. 2022, Eqs. 7-8).

Points :math:`x_i` (mass :math:`a_i`, default :math:`1/N`) are transported to centroids :math:`c_k`
(mass :math:`b_k`, default :math:`1/K`, GOTNet's :math:`w/N` with :math:`n_k = N/K`). One step solves

.. math::
    L_{OT} = \min_{P\mathbf 1 = a,\ P^\top\mathbf 1 = b}
    \sum_{ik} P_{ik} C_{ik} + \varepsilon\sum_{ik} P_{ik}(\log P_{ik} - 1), \qquad
    C_{ik} = \mathrm{cost}(x_i, c_k) \text{ normalized}

and moves each centroid to the plan-weighted mean :math:`c_k = \sum_i P_{ik}x_i / \sum_i P_{ik}`.
GOTNet writes the plan as :math:`\pi \in \mathbb R^{K\times N}`; here it is ``(N, K)``. Everything is
batched over leading dimensions (e.g. attention heads) without a Python loop over them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from .cost import CostFn, normalize_cost, pairwise_cost, sq_euclidean
from .greenkhorn import greenkhorn
from .losses import entropy_term
from .result import OTResult
from .sinkhorn import sinkhorn

__all__ = ["KMeansResult", "ot_kmeans"]


@dataclass
class KMeansResult:
    """Output of :func:`ot_kmeans`.

    Attributes:
        plan: ``(*batch, N, K)`` soft assignments (rows sum to the point masses, columns to the
            cluster masses), from the last assignment step.
        centroids: ``(*batch, K, d)`` plan-weighted means of the last plan.
        loss: ``(*batch,)`` GOTNet's :math:`L_{OT}` (Eq. 8) of the last step: transport cost plus
            :math:`\\varepsilon\\sum P(\\log P - 1)` on the normalized cost.
        cost: ``(*batch, N, K)`` the normalized cost of the last step.
        ot: the :class:`OTResult` of the last step (``n_iter``, ``err``, ``converged``, potentials).
        n_iter: number of assignment/update rounds run.
    """

    plan: Tensor
    centroids: Tensor
    loss: Tensor
    cost: Tensor
    ot: OTResult
    n_iter: int


def _flat(x: Tensor, batch) -> Tensor:
    return x.reshape(-1, *x.shape[len(batch):])


def _init_centroids(x: Tensor, k: int, mask: Optional[Tensor], how: str, generator) -> Tensor:
    """k-means++ (Arthur & Vassilvitskii 2007) or uniform sampling, vectorized over the batch; detached."""
    batch = x.shape[:-2]
    xs = _flat(x.detach(), batch)  # (B, N, d)
    w = torch.ones(xs.shape[:2], dtype=xs.dtype, device=xs.device)
    if mask is not None:
        w = w * _flat(mask.expand(x.shape[:-1]), batch).to(xs.dtype)
    rows = torch.arange(xs.shape[0], device=xs.device)
    if how == "random":
        idx = torch.multinomial(w, k, replacement=bool((w > 0).sum(-1).min() < k), generator=generator)
        return xs[rows[:, None], idx].reshape(*batch, k, x.shape[-1])
    if how != "kmeans++":
        raise ValueError(f"init must be 'kmeans++', 'random' or a tensor, got {how!r}")
    idx = torch.empty(xs.shape[0], k, dtype=torch.long, device=xs.device)
    idx[:, 0] = torch.multinomial(w, 1, generator=generator)[:, 0]
    d2 = sq_euclidean(xs, xs[rows, idx[:, 0]][:, None])[..., 0]
    for j in range(1, k):
        p = d2 * w
        # all remaining points coincide with a centroid: fall back to uniform over real points
        p = torch.where(p.sum(-1, keepdim=True) > 0, p, w)
        idx[:, j] = torch.multinomial(p, 1, generator=generator)[:, 0]
        d2 = torch.minimum(d2, sq_euclidean(xs, xs[rows, idx[:, j]][:, None])[..., 0])
    return xs[rows[:, None], idx].reshape(*batch, k, x.shape[-1])


def _entropy(res: OTResult, eps: float) -> Tensor:
    r""":math:`\sum P(\log P - 1)` of the last plan. A plan without gradient (``grad="envelope"``) is
    :math:`\exp((f \oplus g - C)/\varepsilon)`, so :math:`\sum P\log P = (\langle f, P\mathbf 1\rangle +
    \langle g, P^\top\mathbf 1\rangle - \langle C, P\rangle)/\varepsilon`: two sums instead of a log per entry."""
    if res.plan.requires_grad:
        return entropy_term(res.plan)
    plan = res.plan
    inner = (res.f * plan.sum(-1)).sum(-1) + (res.g * plan.sum(-2)).sum(-1) - res.value.detach()
    return inner / eps - plan.sum((-2, -1))


def ot_kmeans(
    x: Tensor,
    n_clusters: int,
    *,
    eps: float = 0.01,
    n_iter: int = 10,
    solver: str = "sinkhorn",
    cost: CostFn = "sq_euclidean",
    normalize: Optional[str] = "max",
    point_weights: Optional[Tensor] = None,
    cluster_weights: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    init: Union[str, Tensor] = "kmeans++",
    generator: Optional[torch.Generator] = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    grad: str = "implicit",
    warm_start: bool = True,
    potentials: Optional[tuple[Tensor, Tensor]] = None,
    **solver_kwargs,
) -> KMeansResult:
    r"""Balanced OT k-means, differentiable wrt ``x``.

    Args:
        x: ``(*batch, N, d)`` points (e.g. GOTNet's projected embeddings :math:`f_\theta(e_u)`).
        n_clusters: K.
        eps: entropic regularization relative to the normalized cost (GOTNet: 0.01).
        n_iter: assignment/update rounds.
        solver: ``"sinkhorn"`` or ``"greenkhorn"`` (GOTNet's choice; pass e.g. ``block=`` through
            ``solver_kwargs``).
        cost: ``"sq_euclidean"`` (Eq. 7), ``"dot"`` (negative dot product), ``"cosine"`` or a callable.
        normalize: :func:`recot.ot.normalize_cost` mode (``"max"``, ``"mean"``, ``"minmax"``, None);
            the scale is detached.
        point_weights: ``(*batch, N)`` point masses (default :math:`1/N`); cluster_weights:
            ``(*batch, K)`` cluster proportions (default :math:`1/K`); both are normalized to mass 1.
        mask: ``(*batch, N)`` bool, True = real point; padded points get no mass and no gradient.
        init: ``"kmeans++"``, ``"random"`` or initial centroids ``(*batch, K, d)`` (e.g. last step's).
        generator: torch.Generator for the random initialisations.
        max_iter, tol, grad, solver_kwargs: passed to the OT solver; ``grad="implicit"`` (default)
            keeps memory independent of the solver's iterations.
        warm_start: start each round's solver from the previous round's potentials.
        potentials: ``(f (*batch, N), g (*batch, K))`` warm start of the first round's solver, e.g.
            ``result.ot.f, result.ot.g`` of a previous call on slowly moving points (GOTNet's
            mini-batches); None = the solver's cold start.

    Returns:
        :class:`KMeansResult`. Gradients flow from ``plan``, ``centroids`` and ``loss`` to ``x``
        through every round (centroids are differentiable functions of earlier plans).
    """
    if solver not in ("sinkhorn", "greenkhorn"):
        raise ValueError(f"solver must be 'sinkhorn' or 'greenkhorn', got {solver!r}")
    if n_iter < 1:
        raise ValueError("n_iter must be >= 1")
    batch = x.shape[:-2]
    if mask is not None:  # padded points may hold garbage: zero them so no NaN reaches a gradient
        x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    solve = sinkhorn if solver == "sinkhorn" else greenkhorn
    a = point_weights
    if a is not None:
        a = a / a.sum(-1, keepdim=True)
    b = cluster_weights
    if b is not None:
        b = b / b.sum(-1, keepdim=True)
    if isinstance(init, Tensor):
        centroids = init.to(x).expand(*batch, n_clusters, x.shape[-1])
    else:
        centroids = _init_centroids(x, n_clusters, mask, init, generator)
    res = None
    for _ in range(n_iter):
        c = normalize_cost(pairwise_cost(x, centroids, cost), normalize, mask_a=mask)
        if res is None:
            warm = None if potentials is None else (potentials[0].detach(), potentials[1].detach())
        else:
            warm = (res.f.detach(), res.g.detach()) if warm_start else None
        res = solve(c, a, b, eps=eps, mask_a=mask, max_iter=max_iter, tol=tol, grad=grad, init=warm, **solver_kwargs)
        plan = res.plan
        mass = plan.sum(-2)
        centroids = (plan.transpose(-1, -2) @ x) / mass.clamp_min(torch.finfo(x.dtype).tiny)[..., None]
    loss = res.value + eps * _entropy(res, eps)
    return KMeansResult(plan=res.plan, centroids=centroids, loss=loss, cost=c, ot=res, n_iter=n_iter)
