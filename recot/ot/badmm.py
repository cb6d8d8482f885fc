r"""Bregman ADMM for (regularized) OT, batched, masked and in the log domain.

Problem (Xu & Cheng, ROT pooling, Eq. 3 with the Gromov-Wasserstein weight :math:`\alpha_0 = 0`):

.. math::
    \min_{P\mathbf 1 = a,\ P^\top\mathbf 1 = b} \langle C, P\rangle + \lambda R(P)

with :math:`R(P) = \sum_{ij} P_{ij}(\log P_{ij} - 1)` (``reg_type="entropic"``, ROTP_B-E) or
:math:`R(P) = \|P\|_F^2` (``"quadratic"``, ROTP_B-Q), :math:`\lambda` = ``reg`` (the paper's
:math:`\alpha_1`). The paper's marginal priors :math:`\alpha_2\mathrm{KL}(P\mathbf 1\|p_0) +
\alpha_3\mathrm{KL}(P^\top\mathbf 1\|q_0)` enter only through Eqs. 26-27, available in
:func:`badmm_step` (``reg_m``); see the note there.

Splitting :math:`P = S`, :math:`P\mathbf 1 = \mu`, :math:`S^\top\mathbf 1 = \eta` with KL Bregman terms of
weight ``rho`` and duals :math:`Z, z_1, z_2`, one iteration (paper's Alg. 2) is

.. math::
    \log P &= Y_P + (\log\mu - \operatorname{LSE}_{row} Y_P)\mathbf 1^\top,
        & Y_P &= (-C_P - \lambda_Q S - Z)/\rho + \log S \quad (23)\\
    \log S &= Y_S + \mathbf 1(\log\eta - \operatorname{LSE}_{col} Y_S)^\top,
        & Y_S &= \begin{cases} (Z - C_S + \rho\log P)/(\lambda + \rho) & \text{entropic}\\
                              (Z - C_S - \lambda P)/\rho + \log P & \text{quadratic}\end{cases} \quad (25)\\
    \log\mu &= \operatorname{logsoftmax}\big((\rho\log\mu + \alpha_2\log a - z_1)/(\rho + \alpha_2)\big) \quad (26)
        & \log\eta &= \operatorname{logsoftmax}\big((\rho\log\eta + \alpha_3\log b - z_2)/(\rho + \alpha_3)\big) \quad (27)\\
    Z &\mathrel{+}= \rho(P - S),\quad z_1 \mathrel{+}= \rho(\mu - P\mathbf 1),\quad z_2 \mathrel{+}= \rho(\eta - S^\top\mathbf 1) \quad (28)

where :math:`\lambda_Q = \lambda` for the quadratic regularizer and 0 for the entropic one,
:math:`C_P = C` and :math:`C_S = 0` for plain OT. :func:`badmm_step` takes :math:`C_P, C_S` per
iteration so that the ROT problem (issue 10) can pass its Gromov-Wasserstein linearisations
:math:`C_P = C - \alpha_0\Sigma_1 S\Sigma_2^\top`, :math:`C_S = -\alpha_0\Sigma_1^\top P\Sigma_2`.
Everything but the duals (which are differences of probabilities) lives in the log domain, so it
stays finite where Sinkhorn's kernel underflows.

References:
    Wang & Banerjee (2014), Bregman alternating direction method of multipliers, NeurIPS;
    Xu (2020), Gromov-Wasserstein factorization models for graph clustering, AAAI (BADMM for OT);
    Xu & Cheng (2023), Regularized optimal transport layers for generalized global pooling
    operations, TPAMI, Sec. 4.2, Alg. 2, Eqs. 23-28.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from .result import OTResult
from .utils import Problem, check_grad_mode, clamped_exp, iterate, logsumexp, masked_log, neg, setup_problem

__all__ = ["BADMMState", "badmm", "badmm_init", "badmm_step"]


class BADMMState(NamedTuple):
    """BADMM variables: ``log_p, log_s, z`` are ``(*batch, n, m)``; ``log_mu, z1`` ``(*batch, n)``;
    ``log_eta, z2`` ``(*batch, m)``; ``s = exp(log_s)`` as the last step computed it (reused by the next step and
    by the ROT layer's structural cost; None = recompute)."""

    log_p: Tensor
    log_s: Tensor
    log_mu: Tensor
    log_eta: Tensor
    z: Tensor
    z1: Tensor
    z2: Tensor
    s: Optional[Tensor] = None


def _fill(x: Tensor, mask: Optional[Tensor]) -> Tensor:
    return x if mask is None else torch.where(mask, x, neg(x.dtype))  # one pass; masked_fill(~mask) takes three


def _scalar(value, like: Tensor) -> Tensor:
    """A weight (float or 0-dim tensor, learnable) as a tensor for ``torch.addcmul``."""
    return value if torch.is_tensor(value) else torch.tensor(value, dtype=like.dtype, device=like.device)


def _finite(weight) -> bool:
    """A marginal weight is a hard constraint only as the float ``inf``; tensors are learnable, hence finite."""
    return torch.is_tensor(weight) or not math.isinf(weight)


def _prior_mix(lse: Tensor, log_prior: Tensor, w, alpha, mask: Optional[Tensor]) -> Tensor:
    """Log marginal of a Bregman sub-problem with a KL prior of weight ``alpha`` on the simplex."""
    v = _fill((w * lse + alpha * log_prior) / (w + alpha), mask)
    return _fill(v - logsumexp(v, -1)[..., None], mask)


def _log_marginals(prob: Problem) -> Tuple[Tensor, Tensor]:
    return _fill(masked_log(prob.a, prob.mask_a), prob.mask_a), _fill(masked_log(prob.b, prob.mask_b), prob.mask_b)


def badmm_init(log_a: Tensor, log_b: Tensor, mask2d: Optional[Tensor] = None) -> BADMMState:
    r"""Alg. 2, lines 1-2: :math:`P = S = ab^\top`, :math:`\mu = a`, :math:`\eta = b`, duals 0.

    ``log_a``/``log_b`` hold :func:`recot.ot.utils.neg` on padding."""
    log_p = _fill(log_a[..., :, None] + log_b[..., None, :], mask2d)
    zero2 = torch.zeros_like(log_p)
    return BADMMState(log_p, log_p.clone(), log_a, log_b, zero2, torch.zeros_like(log_a), torch.zeros_like(log_b),
                      clamped_exp(log_p))


def badmm_step(
    state: BADMMState,
    cost_p: Tensor,
    *,
    reg: float,
    rho: float,
    log_a: Tensor,
    log_b: Tensor,
    reg_type: str = "entropic",
    reg_m: Tuple[float, float] = (math.inf, math.inf),
    cost_s: Union[None, Tensor, Callable[[Tensor, Tensor], Tensor]] = None,
    relax_marginals: bool = False,
    mask_a: Optional[Tensor] = None,
    mask_b: Optional[Tensor] = None,
    mask2d: Optional[Tensor] = None,
    update_s: bool = True,
) -> BADMMState:
    r"""One BADMM iteration, Eqs. 23-28 (see the module docstring). Differentiable.

    Args:
        state: current :class:`BADMMState`.
        cost_p: ``(*batch, n, m)`` linear cost of the P-update (:math:`C` for plain OT).
        reg, rho: :math:`\lambda \ge 0` and the Bregman weight :math:`\rho > 0`.
        log_a, log_b: log prior marginals with :func:`recot.ot.utils.neg` on padding.
        reg_m: :math:`(\alpha_2, \alpha_3)` of Eqs. 26-27; ``inf`` keeps :math:`\mu = a` (resp.
            :math:`\eta = b`) fixed, which is plain OT.
        cost_s: optional linear cost :math:`C_S` of the S-update (0 for plain OT), or a callable ``(P, Z)`` of the
            new plan :math:`P^{(t+1)}` and the dual returning :math:`Z - C_S(P^{(t+1)})` (the ROT problem's
            :math:`C_S = -\alpha_0\Sigma_1^\top P^{(t+1)}\Sigma_2`, which the caller can fuse into one product).
        relax_marginals: solve the KL-relaxed marginals for real (see below) instead of Eqs. 26-28's
            :math:`\mu, \eta` updates. ``reg`` and ``reg_m`` may be 0-dim tensors (learnable weights).
        update_s: False stops after the P-update (Eq. 23; with ``relax_marginals`` its :math:`\mu`): the rest
            of the state is returned unchanged. For a last iteration whose caller reads only :math:`P` (the ROT
            layer's readout), which saves the S- and dual updates' forward work.

    Note (found while testing against a direct solver of the ROT problem): Eq. 23 enforces
    :math:`P^{(t+1)}\mathbf 1 = \mu^{(t)}` exactly, so the dual update (28) gives
    :math:`z_1 \mathrel{+}= \rho(\mu^{(t+1)} - \mu^{(t)})` and Eq. 26 never sees the cost: the
    :math:`\mu`/:math:`\eta` iterates evolve on their own, and from Alg. 2's start :math:`\mu^{(0)} = p_0`
    they stay at :math:`p_0`. As published, finite :math:`\alpha_2, \alpha_3` therefore act like hard
    marginals; this primitive reproduces the paper, it does not solve the KL-relaxed problem.

    ``relax_marginals=True`` keeps the prior terms inside the two Bregman sub-problems, where they have
    closed forms (a splitting of :math:`P = S` only): the P-update (23) with
    :math:`+\alpha_2\mathrm{KL}(P\mathbf 1\|a)` on the simplex gives
    :math:`\log\mu = \operatorname{logsoftmax}\big((\rho L + \alpha_2\log a)/(\rho + \alpha_2)\big)`
    with :math:`L = \operatorname{LSE}_{row} Y_P`, the S-update (25) with
    :math:`+\alpha_3\mathrm{KL}(S^\top\mathbf 1\|b)` the same with :math:`w = \lambda + \rho` (entropic)
    or :math:`\rho` (quadratic) in place of :math:`\rho`; :math:`z_1, z_2` stay 0. :math:`\alpha \to \infty`
    gives the hard marginals of the published step, :math:`\alpha = 0` leaves that marginal free.
    """
    log_p, log_s, log_mu, log_eta, z, z1, z2, s = state
    quadratic = reg_type == "quadratic"
    # addcmul fuses "+ a * b" into one pass over the (n, m) plan (every line here is memory-bound)
    w = partial(_scalar, like=log_s)
    y = torch.addcmul(log_s, cost_p + z, w(-1 / rho))
    if quadratic:
        y = torch.addcmul(y, clamped_exp(log_s) if s is None else s, w(-reg / rho))
    rho_a, rho_b = reg_m
    relax_a, relax_b = relax_marginals and _finite(rho_a), relax_marginals and _finite(rho_b)
    y = _fill(y, mask2d)
    lse = logsumexp(y, -1)
    if relax_a:
        log_mu = _prior_mix(lse, log_a, rho, rho_a, mask_a)
    # y holds neg on padding and log_mu - lse is finite there (-log m on padded rows): no second fill needed
    log_p = y + (log_mu - lse)[..., :, None]
    if not update_s:
        return state._replace(log_p=log_p, log_mu=log_mu)
    p = clamped_exp(log_p)
    zc = cost_s(p, z) if callable(cost_s) else z if cost_s is None else z - cost_s
    if quadratic:
        y = torch.addcmul(log_p, torch.addcmul(zc, p, w(-reg)), w(1 / rho))
    else:
        y = torch.addcmul(zc, log_p, w(rho)) * w(1 / (reg + rho))
    y = _fill(y, mask2d)
    lse = logsumexp(y, -2)
    if relax_b:
        log_eta = _prior_mix(lse, log_b, rho if quadratic else reg + rho, rho_b, mask_b)
    log_s = y + (log_eta - lse)[..., None, :]  # neg on padding, as log_p
    s = clamped_exp(log_s)
    if not relax_marginals and _finite(rho_a):
        v = _fill((rho * log_mu + rho_a * log_a - z1) / (rho + rho_a), mask_a)
        log_mu = _fill(v - logsumexp(v, -1)[..., None], mask_a)
        z1 = z1 + rho * (log_mu.exp() - p.sum(-1))
    if not relax_marginals and _finite(rho_b):
        v = _fill((rho * log_eta + rho_b * log_b - z2) / (rho + rho_b), mask_b)
        log_eta = _fill(v - logsumexp(v, -1)[..., None], mask_b)
        z2 = z2 + rho * (log_eta.exp() - s.sum(-2))
    z = torch.addcmul(z, p - s, w(rho))
    return BADMMState(log_p, log_s, log_mu, log_eta, z, z1, z2, s)


def _residual(state: BADMMState, prev) -> Tuple[Tensor, BADMMState]:
    p, s = state.log_p.exp(), state.log_s.exp()
    err = (p - s).abs().sum((-2, -1))
    err = err + (state.log_mu.exp() - p.sum(-1)).abs().sum(-1) + (state.log_eta.exp() - s.sum(-2)).abs().sum(-1)
    return err, state


def _freeze(new: BADMMState, old: BADMMState, active: Optional[Tensor]) -> BADMMState:
    if active is None:
        return new
    out = []
    for n_, o_ in zip(new, old):
        if n_ is None or o_ is None:
            out.append(None)
            continue
        act = active.reshape(active.shape + (1,) * (n_.dim() - active.dim()))
        out.append(torch.where(act, n_, o_))
    return BADMMState(*out)


def badmm(
    cost: Tensor,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    *,
    reg: float,
    reg_type: str = "entropic",
    rho: Optional[float] = None,
    mask_a: Optional[Tensor] = None,
    mask_b: Optional[Tensor] = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
    grad: str = "unroll",
) -> OTResult:
    r"""Bregman ADMM for OT with an entropic or quadratic regularizer (see the module docstring).

    Args:
        cost: ``(*batch, n, m)``. a, b: weights with equal mass (None = uniform over real elements).
        mask_a, mask_b: bool, True = real element.
        reg: :math:`\lambda \ge 0`; :math:`\lambda \to 0` approaches unregularized OT (``ot.emd``).
        reg_type: ``"entropic"`` or ``"quadratic"``.
        rho: Bregman/ADMM weight; default: the largest :math:`|C_{ij}|` of the batch (a cost-scaled
            step works across cost scales).
        max_iter, tol, check_every: stop when the ADMM primal residual
            :math:`\|P - S\|_1 + \|\mu - P\mathbf 1\|_1 + \|\eta - S^\top\mathbf 1\|_1` is ``<= tol``
            (rows of ``plan`` match ``a`` exactly, so this bounds its marginal error); ``tol=0`` runs exactly
            ``max_iter`` iterations (the unrolled ROTP layer).
        grad: ``"unroll"`` (autograd through the iterations, the ROTP_B layer) or ``"envelope"``
            (no autograd in the loop; ``value = <C, P.detach()>``).

    Returns:
        :class:`OTResult` with ``plan`` = :math:`P` (rows match :math:`\mu` exactly), ``value`` =
        :math:`\langle C, P\rangle`, ``f = g = None`` (BADMM has no Sinkhorn potentials).
    """
    check_grad_mode(grad, ("unroll", "envelope"))
    if reg_type not in ("entropic", "quadratic"):
        raise ValueError(f"reg_type must be 'entropic' or 'quadratic', got {reg_type!r}")
    if reg < 0:
        raise ValueError("reg must be >= 0")
    prob = setup_problem(cost, a, b, mask_a, mask_b)
    if rho is None:
        rho = float(prob.cost.detach().abs().max()) if prob.cost.numel() else 1.0
        rho = rho if rho > 0 else 1.0
    work = prob
    if grad == "envelope":
        work = Problem(*(None if t is None else t.detach() for t in prob))
    with torch.set_grad_enabled(grad == "unroll" and torch.is_grad_enabled()):
        log_a, log_b = _log_marginals(work)
        core = partial(
            badmm_step,
            cost_p=work.cost,
            reg=reg,
            rho=rho,
            log_a=log_a,
            log_b=log_b,
            reg_type=reg_type,
            mask_a=work.mask_a,
            mask_b=work.mask_b,
            mask2d=work.mask2d,
        )
        state, n_iter, err = iterate(
            lambda st, active: _freeze(core(st), st, active),
            badmm_init(log_a, log_b, work.mask2d),
            max_iter=max_iter,
            tol=tol,
            check_every=check_every,
            batch_shape=prob.cost.shape[:-2],
            device=prob.cost.device,
            dtype=prob.cost.dtype,
            error=_residual,
        )
        plan = state.log_p.exp()
    value = (prob.cost * plan).sum((-2, -1))
    return OTResult(plan=plan, value=value, f=None, g=None, n_iter=n_iter, err=err, converged=err <= tol)
