r"""Sinkhorn losses: entropic OT value, debiased Sinkhorn divergence, fixed-iteration Sinkhorn loss.

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
from typing import Optional

import torch
from torch import Tensor

from .cost import CostFn, pairwise_cost
from .sinkhorn import differentiate, sinkhorn
from .utils import Problem, check_grad_mode, iterate, log_kernel, lse_rows, masked_log, masked_update, setup_problem

__all__ = ["entropic_ot", "entropy_term", "sinkhorn_divergence", "sinkhorn_loss"]


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
