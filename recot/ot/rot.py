r"""The regularized optimal transport (ROT) problem of ROT pooling and its two solvers.

Xu & Cheng, *Regularized optimal transport layers for generalized global pooling operations*
(TPAMI 2023). For a set :math:`X \in \mathbb R^{D\times N}` (N samples of D features) the plan
:math:`P \in \mathbb R^{D\times N}` solves (Eq. 3)

.. math::
    \min_{P\in\Omega}\ \langle -X, P\rangle + \alpha_0\langle C(X, P), P\rangle + \alpha_1 R(P)
    + \alpha_2\mathrm{KL}(P\mathbf 1_N\|p_0) + \alpha_3\mathrm{KL}(P^\top\mathbf 1_D\|q_0),

:math:`\Omega = \{P > 0, \mathbf 1^\top P\mathbf 1 = 1\}`, with the Gromov-Wasserstein-type structural cost
:math:`C(X, P) = -\Sigma_1 P\Sigma_2^\top` (Eq. 4) built from a feature-level similarity
:math:`\Sigma_1 \in \mathbb R^{D\times D}` and a sample-level one :math:`\Sigma_2 \in \mathbb R^{N\times N}`
(:func:`similarity`), the smoothness :math:`R(P) = \sum P(\log P - 1)` (entropic) or :math:`\|P\|_F^2`
(quadratic) and :math:`\mathrm{KL}(a\|b) = \sum a\log(a/b) - a + b`. The pooled vector is the readout
(Eq. 5) :math:`f_d = \sum_n x_{dn} P_{dn} / \sum_n P_{dn}` (:func:`rot_readout`).

Layout: sets arrive as ``x: (B, N, D)`` with ``mask: (B, N)`` (True = real sample); plans are
``(B, D, N)`` as in the paper (rows = feature dimensions, marginal :math:`p_0`; columns = samples,
marginal :math:`q_0`), i.e. :mod:`recot.ot`'s ``(*batch, n, m)`` with ``n = D``, ``m = N``.

Solvers (both unrolled: a fixed number ``num_modules`` = T of feed-forward modules):

* :func:`rot_sinkhorn` (ROTP_S, Alg. 1): proximal point outer loop, Eq. 15, whose sub-problem Eq. 16 is an
  entropic unbalanced OT problem with cost :math:`C^{(t)} = -X - \alpha_0\Sigma_1P^{(t)}\Sigma_2^\top
  - \tau\log P^{(t)}` and entropy weight :math:`\alpha_1 + \tau`, solved by K log-domain Sinkhorn steps of
  :mod:`recot.ot.sinkhorn`. Two deviations from the printed algorithm, both found against a direct
  minimiser of Eq. 3 (``tests/ot/test_rot.py``): the structural term is linearised with its gradient,
  :math:`-2\alpha_0\Sigma_1P^{(t)}\Sigma_2^\top` (with Eq. 15's :math:`\alpha_0 C(X, P^{(t)})` the fixed points are
  those of Eq. 3 with :math:`\alpha_0/2`, while BADMM's split P/S linearisations reach Eq. 3 itself), and
  Eq. 18's extra :math:`a^{(k)}/\alpha_1'` term (consistent only for :math:`\alpha_1' = 1`) is replaced by the
  core's exact dual update.
* :func:`rot_badmm` (ROTP_B-E / ROTP_B-Q, Alg. 2): Bregman ADMM, Eqs. 23-28, by
  :func:`recot.ot.badmm_step` with the linearised structural costs of Eqs. 23 and 25. By default
  (``marginals="relaxed"``) the marginal priors are solved for real; ``"paper"`` keeps the published
  :math:`\mu, \eta` updates, under which :math:`\alpha_2, \alpha_3` have no effect (see
  :func:`recot.ot.badmm_step`).

Every weight may be a float (``inf`` = hard marginal), a 0-dim tensor (learnable) or a ``(T,)`` tensor
(one value per module). Since the objective is invariant, up to the total mass, to rescaling the plan
(every term is linear in P or of the form :math:`P\log P`), the KL-relaxed problems are solved without
the mass constraint and the plan is then normalised to :math:`\Omega`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from .badmm import _log_marginals, _scalar, badmm_init, badmm_step
from .losses import entropy_term
from .result import OTResult
from .sinkhorn import _potential_change, _sinkhorn_step
from .utils import clamped_exp, iterate, log_kernel, logsumexp, neg, setup_problem, softmax

__all__ = ["ROTResult", "ROTWeights", "Structure", "rot_badmm", "rot_objective", "rot_readout", "rot_sinkhorn",
           "similarity"]

Weight = Union[float, Tensor]
SIMILARITIES = ("covariance", "cosine", "rbf")


class ROTWeights(NamedTuple):
    r"""Weights of Eq. 3: :math:`\alpha_0` (structure), :math:`\alpha_1` (smoothness), :math:`\alpha_2`,
    :math:`\alpha_3` (marginal priors), and the solver's own weight ``step``: the proximal :math:`\tau` of
    ROTP_S (Eq. 15) or the Bregman :math:`\rho` of ROTP_B (Eq. 21). Each entry is a float, a 0-dim
    tensor, or a ``(T,)`` tensor with one value per module."""

    alpha0: Weight = 0.0
    alpha1: Weight = 1.0
    alpha2: Weight = 1.0
    alpha3: Weight = 1.0
    step: Weight = 1.0

    def at(self, t: int) -> "ROTWeights":
        """The weights of module ``t`` (per-module tensors are indexed, the rest shared)."""
        return ROTWeights(*(w[t] if torch.is_tensor(w) and w.dim() == 1 else w for w in self))


@dataclass
class ROTResult(OTResult):
    """:class:`~recot.ot.OTResult` of a ROT solve plus ``log_plan`` (``(B, D, N)``, :func:`recot.ot.utils.neg`
    on padding), from which :func:`rot_readout` normalises rows without underflow."""

    log_plan: Optional[Tensor] = None


class Structure(NamedTuple):
    r"""Similarities of Eq. 4: ``feature`` :math:`\Sigma_1` ``(B, D, D)``; ``sample`` either :math:`\Sigma_2`
    ``(B, N, N)`` or, when ``factored``, a factor :math:`F` ``(B, N, r)`` with :math:`\Sigma_2 = FF^\top`, so
    that :math:`\Sigma_1P\Sigma_2^\top` costs :math:`O(D^2N)` instead of :math:`O(DN^2)`. Zero on padding."""

    feature: Tensor
    sample: Tensor
    factored: bool

    def apply(self, plan: Tensor) -> Tensor:
        r""":math:`\Sigma_1 P \Sigma_2^\top` for ``plan: (B, D, N)`` (both similarities are symmetric, so this is
        also the :math:`\Sigma_1^\top P\Sigma_2` of Eq. 25)."""
        return self.add(plan.new_zeros(()), plan, 1.0)

    def add(self, base: Tensor, plan: Tensor, weight: Weight) -> Tensor:
        r""":math:`\text{base} + w\,\Sigma_1 P \Sigma_2^\top`, ``base`` broadcastable to ``plan: (B, D, N)``.

        One ``baddbmm`` writes the sum: the weight scales the small left factor, so the ``(B, D, N)`` result is
        produced once (forward and backward) instead of by a product, a scaling and an addition."""
        if self.factored:  # (D x D)(D x r) before the (r x N) factor: D^2 r + 2 D r N operations, not D^2 N + 2 D r N
            left = self.feature @ (plan @ self.sample)
        else:
            left = self.feature @ plan
        return torch.baddbmm(base.expand(plan.shape), left * weight, self.sample.transpose(-1, -2))

    def add_outer(self, base: Tensor, u: Tensor, v: Tensor, weight: Weight) -> Tensor:
        r""":meth:`add` for the rank-one plan :math:`uv^\top` (``u: (B, D)``, ``v: (B, N)``): :math:`\text{base} +
        w(\Sigma_1u)(\Sigma_2v)^\top` by matrix-vector products (both solvers' first module starts from it)."""
        left = (self.feature @ u[..., None]) * weight
        v = v[..., None]
        right = self.sample @ (self.sample.transpose(-1, -2) @ v) if self.factored else self.sample @ v
        return torch.addcmul(base, left, right.transpose(-1, -2))


def _count(mask: Optional[Tensor], x: Tensor) -> Tensor:
    if mask is None:
        return torch.full(x.shape[:-2] + (1, 1), float(x.shape[-2]), dtype=x.dtype, device=x.device)
    return mask.sum(-1).clamp_min(1).to(x.dtype)[..., None, None]


def similarity(x: Tensor, mask: Optional[Tensor] = None, kind: str = "covariance") -> Structure:
    r"""Feature- and sample-level similarities of a batch of sets, ``x: (B, N, D)``, ``mask: (B, N)``.

    * ``covariance`` (the paper, Sec. 3.2): :math:`\Sigma_1 = \frac1N (X - \mu_1\mathbf 1^\top)(X -
      \mu_1\mathbf 1^\top)^\top`, :math:`\Sigma_2 = \frac1D (X - \mathbf 1\mu_2^\top)^\top(X - \mathbf 1
      \mu_2^\top)` with :math:`\mu_1, \mu_2` the sample and feature means (over real samples only);
    * ``cosine``: cosine similarities between features (over samples) and between samples;
    * ``rbf``: Gaussian kernels :math:`\exp(-\|u - v\|^2 / \bar d)` with :math:`\bar d` the mean squared
      distance over real pairs (dense :math:`N\times N`).
    """
    if kind not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {kind!r}")
    m = None if mask is None else mask[..., None].to(x.dtype)
    x = x if m is None else x * m
    n = _count(mask, x)
    if kind == "covariance":
        xc1 = x - x.sum(-2, keepdim=True) / n
        xc2 = x - x.mean(-1, keepdim=True)
        if m is not None:
            xc1, xc2 = xc1 * m, xc2 * m
        return Structure(xc1.transpose(-1, -2) @ xc1 / n, xc2 / math.sqrt(x.shape[-1]), True)
    if kind == "cosine":
        f1 = x / x.norm(dim=-2, keepdim=True).clamp_min(1e-12)
        f2 = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return Structure(f1.transpose(-1, -2) @ f1, f2, True)
    xt = x.transpose(-1, -2)
    k1 = _rbf(xt, None)
    k2 = _rbf(x, mask)
    return Structure(k1, k2, False)


def _rbf(points: Tensor, mask: Optional[Tensor]) -> Tensor:
    sq = (points.unsqueeze(-2) - points.unsqueeze(-3)).pow(2).sum(-1)
    pair = None if mask is None else mask[..., :, None] & mask[..., None, :]
    real = sq if pair is None else sq * pair
    count = sq[..., :1, :1].new_tensor(sq.shape[-1] ** 2) if pair is None else pair.sum((-2, -1), keepdim=True)
    scale = (real.sum((-2, -1), keepdim=True) / count.clamp_min(1)).detach().clamp_min(1e-12)
    k = torch.exp(-sq / scale)
    return k if pair is None else k * pair


def _problem(x: Tensor, mask: Optional[Tensor], p0: Optional[Tensor], q0: Optional[Tensor]):
    prob = setup_problem(-x.transpose(-1, -2), p0, q0, None, mask)
    log_a, log_b = _log_marginals(prob)
    return prob, log_a, log_b


def _mask_log(log_plan: Tensor, mask2d: Optional[Tensor]) -> Tensor:
    return log_plan if mask2d is None else torch.where(mask2d, log_plan, neg(log_plan.dtype))


def _normalize(log_plan: Tensor, mask2d: Optional[Tensor]) -> Tensor:
    """Project onto Omega (total mass 1) in the log domain; empty problems stay empty."""
    total = logsumexp(log_plan.flatten(-2), -1)[..., None, None]
    return _mask_log(log_plan - total, mask2d)


def _tau(alpha: Weight, eps) -> Weight:
    if not torch.is_tensor(alpha) and math.isinf(alpha):
        return 1.0
    return alpha / (alpha + eps)


def rot_sinkhorn(
    x: Tensor,
    mask: Optional[Tensor] = None,
    *,
    weights: ROTWeights,
    p0: Optional[Tensor] = None,
    q0: Optional[Tensor] = None,
    structure: Optional[Structure] = None,
    num_modules: int = 4,
    inner_iter: int = 5,
    tol: float = 1e-4,
    stats: bool = True,
) -> ROTResult:
    r"""ROTP_S (Alg. 1): T proximal modules (Eq. 15), each K log-domain Sinkhorn steps on Eq. 16.

    Module t solves the unbalanced problem with cost :math:`-X - 2\alpha_0\Sigma_1P^{(t)}\Sigma_2^\top -
    \tau\log P^{(t)}` and entropy weight :math:`\alpha_1 + \tau` (the factor 2: see the module docstring).

    Args:
        x: ``(B, N, D)`` sets (the paper assumes :math:`X \ge 0`). mask: ``(B, N)`` bool, True = real sample.
        weights: :class:`ROTWeights`; ``step`` is the proximal weight :math:`\tau > 0`.
        p0: ``(B, D)`` or ``(D,)`` feature prior (None = uniform). q0: ``(B, N)`` sample prior (None =
            uniform over real samples); zero entries act as padding.
        structure: similarities for :math:`\alpha_0 > 0` (:func:`similarity`); None skips the structural term.
        num_modules: T. inner_iter: K Sinkhorn iterations per module (Sinkhorn restarts from zero potentials in
            each module, Alg. 1 line 4).
        tol: ``converged`` reports whether the last inner iteration changed the potentials by at most ``tol``
            (L1, scaled by the entropy weight).
        stats: False (the pooling layer's path) returns only ``log_plan`` (not normalised to mass 1: the readout
            normalises rows anyway), ``f``, ``g`` and ``n_iter``; ``plan``, ``value``, ``err``, ``converged`` are None.

    Returns:
        :class:`ROTResult` with ``plan (B, D, N)`` of mass 1, ``value`` :math:`\langle -X, P\rangle`, the last
        module's potentials ``f (B, D)``, ``g (B, N)``, ``n_iter`` = T * K.
    """
    prob, log_a, log_b = _problem(x, mask, p0, q0)
    batch = prob.cost.shape[:-2]
    log_plan = _mask_log(log_a[..., :, None] + log_b[..., None, :], prob.mask2d)
    f = g = err = None
    for t in range(num_modules):
        w = weights.at(t)
        eps = w.alpha1 + w.step
        cost = torch.addcmul(prob.cost, log_plan, _scalar(-w.step, like=x))
        if structure is not None and not _is_zero(w.alpha0):
            cost = _add_structure(cost, structure, -2 * w.alpha0, t, log_a, log_b, lambda: clamped_exp(log_plan))
        logk = log_kernel(cost, eps, prob.mask2d)  # replaces the padded costs (-tau * neg) by neg
        tau_a, tau_b = _tau(w.alpha2, eps), _tau(w.alpha3, eps)
        # keep: the K unrolled steps over small sets can afford their exponentials, and backward gets 5x cheaper
        step = partial(_sinkhorn_step, logk=logk, ca=tau_a * log_a, cb=tau_b * log_b, tau_a=tau_a, tau_b=tau_b,
                       mask_a=prob.mask_a, mask_b=prob.mask_b, keep=True)
        last = t == num_modules - 1
        (phi, gamma), _, err = iterate(step, (torch.zeros_like(log_a), torch.zeros_like(log_b)), max_iter=inner_iter,
                                       tol=0.0, check_every=inner_iter, batch_shape=batch, device=x.device,
                                       dtype=x.dtype, error=_potential_change if stats and last else None)
        log_plan = logk + phi[..., :, None] + gamma[..., None, :]
        if stats or not last:  # the next module's cost needs the plan of mass 1
            log_plan = _normalize(log_plan, prob.mask2d)
    f, g = phi * eps, gamma * eps
    return _result(prob, log_plan, f, g, num_modules * inner_iter, err, tol, stats)


def rot_badmm(
    x: Tensor,
    mask: Optional[Tensor] = None,
    *,
    weights: ROTWeights,
    reg_type: str = "entropic",
    p0: Optional[Tensor] = None,
    q0: Optional[Tensor] = None,
    structure: Optional[Structure] = None,
    num_modules: int = 4,
    marginals: str = "relaxed",
    tol: float = 1e-4,
    stats: bool = True,
) -> ROTResult:
    r"""ROTP_B-E (``reg_type="entropic"``) / ROTP_B-Q (``"quadratic"``), Alg. 2: T Bregman ADMM modules.

    Module t updates P by Eq. 23 with cost :math:`-X - \alpha_0\Sigma_1 S^{(t)}\Sigma_2^\top`, S by Eq. 25 with
    cost :math:`-\alpha_0\Sigma_1^\top P^{(t+1)}\Sigma_2`, then the duals (Eq. 28); ``weights.step`` is
    :math:`\rho`. ``marginals``: ``"relaxed"`` (the KL priors solved inside the sub-problems) or ``"paper"``
    (Eqs. 26-27 as published). Arguments (``stats`` included) as :func:`rot_sinkhorn`.

    Returns:
        :class:`ROTResult` with ``plan = P (B, D, N)`` (mass 1), ``value`` :math:`\langle -X, P\rangle`,
        ``f = g = None``, ``err`` the primal residual :math:`\|P - S\|_1`.
    """
    if marginals not in ("relaxed", "paper"):
        raise ValueError(f"marginals must be 'relaxed' or 'paper', got {marginals!r}")
    prob, log_a, log_b = _problem(x, mask, p0, q0)
    state = badmm_init(log_a, log_b, prob.mask2d)
    for t in range(num_modules):
        w = weights.at(t)
        cost_p, cost_s = prob.cost, None
        if structure is not None and not _is_zero(w.alpha0):
            cost_p = _add_structure(cost_p, structure, -w.alpha0, t, log_a, log_b, lambda: state.s)
            cost_s = partial(_dual_minus_structural_cost, structure=structure, alpha0=w.alpha0)
        # without stats only the last P is read: its S- and dual updates would be computed for nothing
        state = badmm_step(state, cost_p, reg=w.alpha1, rho=w.step, log_a=log_a, log_b=log_b, reg_type=reg_type,
                           reg_m=(w.alpha2, w.alpha3), cost_s=cost_s, relax_marginals=marginals == "relaxed",
                           mask_a=prob.mask_a, mask_b=prob.mask_b, mask2d=prob.mask2d,
                           update_s=stats or t < num_modules - 1)
    if not stats:
        return _result(prob, state.log_p, None, None, num_modules, None, tol, stats)
    with torch.no_grad():
        err = (clamped_exp(state.log_p) - clamped_exp(state.log_s)).abs().sum((-2, -1))
    return _result(prob, _normalize(state.log_p, prob.mask2d), None, None, num_modules, err, tol)


def _add_structure(cost: Tensor, structure: Structure, weight: Weight, module: int, log_a: Tensor, log_b: Tensor,
                   plan: Callable[[], Tensor]) -> Tensor:
    """``cost + weight * structure.apply(plan())``; module 0's plan is the start a b^T of both solvers (rank one)."""
    if module == 0:
        return structure.add_outer(cost, clamped_exp(log_a), clamped_exp(log_b), weight)
    return structure.add(cost, plan(), weight)


def _dual_minus_structural_cost(plan: Tensor, z: Tensor, *, structure: Structure, alpha0: Weight) -> Tensor:
    r""":math:`Z - C_S` of Eq. 25, :math:`C_S = -\alpha_0\Sigma_1^\top P\Sigma_2` (``badmm_step``'s callable form)."""
    return structure.add(z, plan, alpha0)


def _is_zero(w: Weight) -> bool:
    return not torch.is_tensor(w) and w == 0


def _result(prob, log_plan: Tensor, f, g, n_iter: int, err: Optional[Tensor], tol: float,
            stats: bool = True) -> ROTResult:
    n_iter = torch.full(prob.cost.shape[:-2], n_iter, dtype=torch.long, device=log_plan.device)
    if not stats:
        return ROTResult(plan=None, value=None, f=f, g=g, n_iter=n_iter, err=None, converged=None, log_plan=log_plan)
    plan = clamped_exp(log_plan)
    return ROTResult(plan=plan, value=(prob.cost * plan).sum((-2, -1)), f=f, g=g, n_iter=n_iter, err=err,
                     converged=err <= tol, log_plan=log_plan)


def rot_readout(x: Tensor, log_plan: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    r"""Eq. 5: :math:`f_d = \sum_n x_{dn}P_{dn} / \sum_n P_{dn}`.

    ``x: (B, N, D)``, ``log_plan: (B, D, N)``, ``mask: (B, N)`` -> ``(B, D)``. Rows are normalised in the log
    domain (a softmax over samples), so no row underflows to 0/0; an empty set gives 0.
    """
    # recot.ot.utils.softmax: torch's exp takes a slow path below log(tiny), where padding and most small entries lie
    # Padded samples hold neg in log_plan, hence weight exactly 0; only an empty set (all neg: uniform weights)
    # needs the mask, applied to the output.
    weights = softmax(log_plan, -1)
    out = (weights * x.transpose(-1, -2)).sum(-1)
    return out if mask is None else out * mask.any(-1, keepdim=True).to(out.dtype)


def rot_objective(
    x: Tensor,
    plan: Tensor,
    *,
    weights: ROTWeights,
    reg_type: str = "entropic",
    p0: Optional[Tensor] = None,
    q0: Optional[Tensor] = None,
    structure: Optional[Structure] = None,
    mask: Optional[Tensor] = None,
) -> Tensor:
    r"""The objective of Eq. 3 at ``plan: (B, D, N)`` (``weights.step`` unused), per set ``(B,)``.

    Marginal terms with an infinite weight are skipped (they are constraints, not penalties)."""
    prob, _, _ = _problem(x, mask, p0, q0)
    value = (prob.cost * plan).sum((-2, -1))
    if structure is not None and not _is_zero(weights.alpha0):
        value = value - weights.alpha0 * (structure.apply(plan) * plan).sum((-2, -1))
    if reg_type == "entropic":
        value = value + weights.alpha1 * entropy_term(plan)
    else:
        value = value + weights.alpha1 * plan.pow(2).sum((-2, -1))
    for alpha, marg, prior in ((weights.alpha2, plan.sum(-1), prob.a), (weights.alpha3, plan.sum(-2), prob.b)):
        if torch.is_tensor(alpha) or not math.isinf(alpha):
            value = value + alpha * _kl(marg, prior)
    return value


def _kl(u: Tensor, v: Tensor) -> Tensor:
    pos = u > 0
    ratio = torch.where(pos, u, torch.ones_like(u)) / torch.where(pos, v, torch.ones_like(v))
    return (torch.where(pos, u * ratio.log(), torch.zeros_like(u)) - u + v).sum(-1)
