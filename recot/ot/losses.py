r"""Sinkhorn losses: entropic OT value, debiased Sinkhorn divergence, fixed-iteration Sinkhorn loss, and the
accelerated (top-k) Sinkhorn loss of SinkhornCF with its concentration term.

Entropic OT with the product reference (Feydy et al. 2019, GeomLoss):

.. math::
    \mathrm{OT}_\varepsilon(a, b) = \min_{P \in \Pi(a, b)} \langle C, P\rangle + \varepsilon\,\mathrm{KL}(P\|a\otimes b)
    = \langle a, \hat f\rangle + \langle b, \hat g\rangle, \quad \hat f = f - \varepsilon\log a,\ \hat g = g - \varepsilon\log b,

where :math:`f, g` are :func:`recot.ot.sinkhorn`'s potentials. (With POT's entropy
:math:`\sum P(\log P - 1)` instead, the value differs by
:math:`\varepsilon(\langle a, \log a\rangle + \langle b, \log b\rangle - 1)`, a constant in :math:`C`.)

Debiased Sinkhorn divergence (Feydy et al. 2019, Eq. 4; GeomLoss ``SamplesLoss("sinkhorn", debias=True)``):

.. math::
    S_\varepsilon(a, b) = \mathrm{OT}_\varepsilon(a, b) - \tfrac12\mathrm{OT}_\varepsilon(a, a) - \tfrac12\mathrm{OT}_\varepsilon(b, b).

References:
    Genevay, Peyré & Cuturi (2018), Learning generative models with Sinkhorn divergences;
    Feydy, Séjourné, Vialard, Amari, Trouvé & Peyré (2019), Interpolating between optimal transport
    and MMD using Sinkhorn divergences, AISTATS.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
from torch import Tensor

from .cost import CostFn, pairwise_cost
from .sinkhorn import differentiate, sinkhorn
from .utils import Problem, check_grad_mode, iterate, log_kernel, lse_rows, masked_log, masked_update, setup_problem

__all__ = ["accelerated_sinkhorn_loss", "concentration_loss", "entropic_ot", "entropy_term", "sinkhorn_divergence",
           "sinkhorn_loss", "topk_sinkhorn_loss"]


def entropy_term(plan: Tensor) -> Tensor:
    r""":math:`\sum_{ij} P_{ij}(\log P_{ij} - 1)` per problem, ``(*batch, n, m) -> (*batch,)``.

    Zero entries contribute 0, with a zero (not NaN) gradient."""
    pos = plan > 0
    safe = torch.where(pos, plan, torch.ones_like(plan))
    return torch.where(pos, plan * (safe.log() - 1), torch.zeros_like(plan)).sum((-2, -1))


def sinkhorn_loss(
    cost: Tensor,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    *,
    eps: float = 1.0,
    n_iter: int = 5,
    mask_a: Optional[Tensor] = None,
    mask_b: Optional[Tensor] = None,
    grad: str = "unroll",
    **kwargs,
) -> Tensor:
    r"""Transport cost :math:`\langle C, P_L\rangle` after exactly ``n_iter`` log-domain Sinkhorn
    iterations, differentiated through them (SinkhornCF, Alg. 1 lines 3-8: :math:`L = 5`,
    :math:`\varepsilon = 1`, cost :math:`1 - S`). Same update order as the paper (rows, then columns,
    from :math:`b^{(0)} = \mathbf 1`). ``(*batch, n, m) -> (*batch,)``."""
    return sinkhorn(cost, a, b, eps=eps, max_iter=n_iter, tol=0.0, mask_a=mask_a, mask_b=mask_b, grad=grad, **kwargs).value


def _symmetric_potential(prob: Problem, *, eps: float, max_iter: int, tol: float, check_every: int):
    r"""Averaged fixed-point iteration for :math:`\mathrm{OT}_\varepsilon(a, a)` with a symmetric cost.

    :math:`f \leftarrow \tfrac12\big(f + \varepsilon\log a - \varepsilon\operatorname{LSE}_j((f_j - C_{ij})/\varepsilon)\big)`
    (Feydy et al. 2019, Sec. 3.1): converges in a few iterations where alternating updates
    oscillate between two half-solutions. Returns ``f, f, n_iter, err`` (err: L1 marginal error).
    """
    logk = log_kernel(prob.cost, eps, prob.mask2d)
    log_a = masked_log(prob.a, prob.mask_a)

    def step(state, active):
        (phi,) = state
        return (masked_update(0.5 * (phi + log_a - lse_rows(logk, phi)), phi, prob.mask_a, active),)

    def error(state, prev):
        (phi,) = state
        d = ((phi + lse_rows(logk, phi)).exp() - prob.a).abs()
        if prob.mask_a is not None:
            d = d.masked_fill(~prob.mask_a, 0)
        return 2 * d.sum(-1), state

    (phi,), n_iter, err = iterate(
        step,
        (torch.zeros_like(log_a),),
        max_iter=max_iter,
        tol=tol,
        check_every=check_every,
        batch_shape=log_a.shape[:-1],
        device=log_a.device,
        dtype=log_a.dtype,
        error=error,
    )
    return phi * eps, phi * eps, n_iter, err


def entropic_ot(
    cost: Tensor,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    *,
    eps: float,
    mask_a: Optional[Tensor] = None,
    mask_b: Optional[Tensor] = None,
    grad: str = "envelope",
    symmetric: bool = False,
    **kwargs,
) -> Tensor:
    r""":math:`\mathrm{OT}_\varepsilon(a, b)` (module docstring) for balanced problems, ``(*batch,)``.

    ``grad="envelope"`` (default, as GeomLoss): the value is the dual objective at the last iterate and
    its gradient is the envelope one, :math:`\partial/\partial C = P`,
    :math:`\partial/\partial a = \hat f`, :math:`\partial/\partial b = \hat g` (exact at convergence).
    ``"unroll"``/``"implicit"``: the dual formula differentiated through :func:`recot.ot.sinkhorn`.
    Extra keyword arguments go to :func:`recot.ot.sinkhorn` (``reg_m`` is not supported).
    ``symmetric=True`` declares :math:`C = C^\top`, ``b = a`` (the debiasing terms) and uses the
    averaged iteration of :func:`_symmetric_potential` (accepts ``tol``, ``max_iter``, ``check_every``).
    """
    check_grad_mode(grad)
    if kwargs.get("reg_m") is not None:
        raise NotImplementedError("entropic_ot is defined here for balanced problems only")
    prob = setup_problem(cost, a, b, mask_a, mask_b)
    if symmetric:
        opts = dict(max_iter=1000, tol=1e-6, check_every=10)
        unknown = set(kwargs) - set(opts)
        if unknown:
            raise TypeError(f"symmetric entropic_ot does not take {sorted(unknown)}")
        opts.update(kwargs)
        solve = partial(_symmetric_potential, eps=eps, **opts)
        _, value, f, g, _, _ = differentiate(prob, solve, eps=eps, grad=grad)
    else:
        res = sinkhorn(prob.cost, prob.a, prob.b, eps=eps, mask_a=prob.mask_a, mask_b=prob.mask_b, grad=grad, **kwargs)
        value, f, g = res.value, res.f, res.g
    fh = f - eps * masked_log(prob.a, prob.mask_a)
    gh = g - eps * masked_log(prob.b, prob.mask_b)
    if grad != "envelope":
        return (prob.a * fh).sum(-1) + (prob.b * gh).sum(-1)
    fh, gh = fh.detach(), gh.detach()
    dual = (prob.a.detach() * fh).sum(-1) + (prob.b.detach() * gh).sum(-1)
    # Zero-valued terms that carry the envelope gradients wrt C (value = <C, P.detach()>), a and b.
    surrogate = (value - value.detach()) + ((prob.a - prob.a.detach()) * fh).sum(-1)
    return dual + surrogate + ((prob.b - prob.b.detach()) * gh).sum(-1)


def sinkhorn_divergence(
    x: Tensor,
    y: Tensor,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    *,
    eps: float,
    cost: CostFn = "half_sq_euclidean",
    mask_x: Optional[Tensor] = None,
    mask_y: Optional[Tensor] = None,
    debias: bool = True,
    grad: str = "envelope",
    **kwargs,
) -> Tensor:
    r"""Debiased Sinkhorn divergence :math:`S_\varepsilon` between point clouds (module docstring).

    Args:
        x: ``(*batch, n, d)``, y: ``(*batch, m, d)`` points; a: ``(*batch, n)``, b: ``(*batch, m)``
            weights with equal mass (None = uniform over real points).
        eps: entropic regularization in cost units. GeomLoss' ``SamplesLoss("sinkhorn", p=2, blur=s)``
            uses ``cost="half_sq_euclidean"`` (:math:`\|x - y\|^2/2`, the default) and
            :math:`\varepsilon = s^2`.
        cost: cost name or callable (see :func:`recot.ot.pairwise_cost`).
        mask_x, mask_y: bool, True = real point.
        debias: subtract the self terms (False returns :math:`\mathrm{OT}_\varepsilon(a, b)`).
        grad, kwargs: see :func:`entropic_ot` and :func:`recot.ot.sinkhorn` (e.g. ``tol``,
            ``max_iter``, ``eps_scaling``) for the cross term; the self terms use the symmetric
            averaged iteration with the same ``tol``, ``max_iter``, ``check_every``.

    Returns:
        ``(*batch,)`` divergence values.
    """
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    if mask_x is not None:  # garbage in padded points must not reach a gradient (0 * NaN)
        x = torch.where(mask_x[..., None], x, zero)
    if mask_y is not None:
        y = torch.where(mask_y[..., None], y, zero)
    common = dict(eps=eps, grad=grad, **kwargs)
    out = entropic_ot(pairwise_cost(x, y, cost), a, b, mask_a=mask_x, mask_b=mask_y, **common)
    if debias:
        sym = dict(common, symmetric=True)
        sym = {k: v for k, v in sym.items() if k in ("eps", "grad", "symmetric", "tol", "max_iter", "check_every")}
        out = out - 0.5 * entropic_ot(pairwise_cost(x, x, cost), a, a, mask_a=mask_x, mask_b=mask_x, **sym)
        out = out - 0.5 * entropic_ot(pairwise_cost(y, y, cost), b, b, mask_a=mask_y, mask_b=mask_y, **sym)
    return out


# --------------------------------------------------------------------------------------------------
# SinkhornCF: Sinkhorn losses between a user's observed items and a predicted distribution over items
# --------------------------------------------------------------------------------------------------

CostBlock = Callable[[Tensor, Optional[Tensor]], Tensor]


def _chunks_by_size(sizes: list[int], width: int, max_elements: int, growth: float = 1.5) -> list[tuple[int, int]]:
    """Split users sorted by ``sizes`` (ascending) into ``[start, end)`` runs padded to their largest size: a run
    ends before its largest size exceeds ``growth`` times its smallest (padding stays below ``growth`` x the real
    entries) or its block ``(end - start) * sizes[end - 1] * width`` would exceed ``max_elements``."""
    runs, start = [], 0
    while start < len(sizes):
        end, low = start + 1, max(sizes[start], 1)
        while (end < len(sizes) and sizes[end] <= growth * low
               and (end + 1 - start) * max(sizes[end], 1) * width <= max_elements):
            end += 1
        runs.append((start, end))
        start = end
    return runs


def topk_sinkhorn_loss(
    log_probs: Tensor,
    observed: Tensor,
    cost: CostBlock,
    *,
    k: Optional[int] = 200,
    eps: float = 1.0,
    n_iter: int = 5,
    max_elements: int = 1 << 20,
) -> Tensor:
    r"""Sinkhorn loss :math:`\mathcal L_1 = \langle C[I_1, I_k], P_L\rangle` of SinkhornCF (Alg. 1, lines 2-8).

    For each user, the observed measure is uniform on the observed items :math:`I_1` (the normalised
    :math:`x_u`, Sec. 2.3), the predicted one is :math:`\hat x_u[I_k]` on the indices :math:`I_k` of the
    ``k`` largest predicted probabilities, and :math:`P_L` is the plan after ``n_iter`` log-domain Sinkhorn
    iterations of :func:`recot.ot.sinkhorn` (``tol=0``, rows first from :math:`b^{(0)} = \mathbf 1` as Eq. 12),
    differentiated by unrolling. The last half-step matches the columns, so :math:`P_L^\top\mathbf 1 =
    \hat x_u[I_k]`, whose mass is at most 1: scaling the observed measure does not change :math:`P_L`.
    With ``k=None`` every item is a column: the plain Sinkhorn loss :math:`W^{(L)}_\varepsilon(x_u, \hat x_u)`
    (Sec. 2.4) used on small catalogues.

    Only the selected :math:`\hat x_u[I_k]` receive a gradient (the partial gradient of Sec. 2.4): ``log_probs``
    elsewhere get none from this term. Users are solved as one masked batch per run of similar :math:`|I_1|`
    (sorted by it, sizes within a factor 1.5), so padding costs little and a padded cost block holds at most
    ``max_elements`` entries (or one user's).

    Args:
        log_probs: ``(B, I)`` log predicted distribution :math:`\log\hat x_u` (e.g. ``log_softmax`` of logits).
        observed: ``(B, I)`` bool (or 0/1) observed items :math:`x_u`.
        cost: ``cost(rows (b, n), cols (b, m) or None) -> (b, n, m)`` cost block :math:`C[I_1, I_k]`
            (``cols=None``: all ``I`` columns, in item order), e.g. :class:`recot.nn.ItemCosineCost`.
        k: number of predicted items kept (paper: 200); None = all items.
        eps: entropic regularisation :math:`\varepsilon` (paper: 1).
        n_iter: Sinkhorn iterations :math:`L` (paper: 5).
        max_elements: bound on the padded ``b * n * m`` of one masked batch.

    Returns:
        ``(B,)`` :math:`\mathcal L_1` per user; 0 for a user without observed items.
    """
    if log_probs.dim() != 2 or observed.shape != log_probs.shape:
        raise ValueError(f"log_probs and observed must both be (B, I), got {tuple(log_probs.shape)} and "
                         f"{tuple(observed.shape)}")
    observed = observed > 0
    num_users, num_items = log_probs.shape
    if k is None:
        cols, b = None, log_probs.exp()
    else:
        if k < 1:
            raise ValueError(f"k must be a positive number of items or None, got {k}")
        cols = log_probs.detach().topk(min(k, num_items), dim=1).indices  # (B, k): I_k, no gradient through it
        b = log_probs.gather(1, cols).exp()
    width = b.shape[1]
    sizes = observed.sum(1)
    order = torch.argsort(sizes, stable=True)
    sorted_sizes = sizes[order].tolist()
    values = []
    for start, end in _chunks_by_size(sorted_sizes, width, max_elements):
        idx = order[start:end]
        n = max(sorted_sizes[end - 1], 1)
        obs = observed.index_select(0, idx)
        hit, rows = obs.to(log_probs.dtype).topk(n, dim=1)  # (b, n): I_1 first, padding where hit == 0
        mask_a = hit > 0
        c = cost(rows, None if cols is None else cols.index_select(0, idx)).to(log_probs.dtype)
        values.append(sinkhorn_loss(c, None, b.index_select(0, idx), eps=eps, n_iter=n_iter, mask_a=mask_a))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(num_users, device=order.device)
    return torch.cat(values).index_select(0, inverse)


def concentration_loss(log_probs: Tensor, observed: Tensor, alpha: float) -> Tensor:
    r"""Concentration term of SinkhornCF (Alg. 1, line 9), ``(B, I) -> (B,)``:

    .. math:: \mathcal L_2 = -\sum_{i\in I_1}\log\hat x_{ui} - \alpha\sum_{i\in I_2}\log\hat x_{ui},
              \quad I_2 = [I]\setminus I_1.

    It reaches every item, which keeps the mass that the top-k partial gradient of :math:`\mathcal L_1` would
    let leak to the other items concentrated on the likely ones; ``alpha = 0`` is the multinomial
    log-likelihood of MultVAE (Eq. 9).
    """
    observed = (observed > 0).to(log_probs.dtype)
    return -(observed * log_probs).sum(1) - alpha * ((1 - observed) * log_probs).sum(1)


def accelerated_sinkhorn_loss(
    log_probs: Tensor,
    observed: Tensor,
    cost: CostBlock,
    *,
    k: Optional[int] = 200,
    alpha: float = 0.03,
    eps: float = 1.0,
    n_iter: int = 5,
    max_elements: int = 1 << 20,
) -> tuple[Tensor, Tensor]:
    r"""The accelerated Sinkhorn loss of SinkhornCF (Alg. 1): ``L = L1 + L2`` per user.

    Returns ``(L1, L2)``, each ``(B,)``: :func:`topk_sinkhorn_loss` and :func:`concentration_loss`
    (paper: ``k = 200``, ``eps = 1``, ``L = 5``; ``alpha`` 0.03 on ML-20M, 0.01 on Netflix).
    """
    l1 = topk_sinkhorn_loss(log_probs, observed, cost, k=k, eps=eps, n_iter=n_iter, max_elements=max_elements)
    return l1, concentration_loss(log_probs, observed, alpha)
