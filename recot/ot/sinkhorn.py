r"""Batched, masked, log-domain Sinkhorn for balanced and unbalanced (KL) entropic OT.

Problem (balanced, ``reg_m=None``), exactly POT's ``ot.sinkhorn(a, b, M, reg)``:

.. math::
    \min_{P \ge 0,\ P\mathbf 1 = a,\ P^\top\mathbf 1 = b}
    \langle C, P\rangle + \varepsilon \sum_{ij} P_{ij}(\log P_{ij} - 1)

Problem (unbalanced, ``reg_m`` = :math:`\rho` or :math:`(\rho_a, \rho_b)`), exactly POT's
``ot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, reg_m, reg_type=...)``:

.. math::
    \min_{P \ge 0} \langle C, P\rangle + \varepsilon\,\Omega(P)
    + \rho_a \mathrm{KL}(P\mathbf 1 \| a) + \rho_b \mathrm{KL}(P^\top\mathbf 1 \| b)

with :math:`\Omega(P) = \mathrm{KL}(P \| a b^\top)` (``reg_type="kl"``, POT's default since 0.9.5) or
:math:`\Omega(P) = \sum P(\log P - 1)` (``reg_type="entropy"``), and
:math:`\mathrm{KL}(x\|y) = \sum x\log(x/y) - x + y`. ``rho = inf`` on one side gives semi-relaxed OT.

Iterations, on scaled potentials :math:`\varphi = f/\varepsilon`, :math:`\gamma = g/\varepsilon` with
:math:`\tau = \rho/(\rho+\varepsilon)` (:math:`\tau = 1` balanced):

.. math::
    \varphi_i &\leftarrow \alpha_a \log a_i - \tau_a \operatorname{LSE}_j(\gamma_j - C_{ij}/\varepsilon), \\
    \gamma_j &\leftarrow \alpha_b \log b_j - \tau_b \operatorname{LSE}_i(\varphi_i - C_{ij}/\varepsilon),

where :math:`\alpha = 1` for balanced and ``"kl"``, :math:`\alpha = \tau` for ``"entropy"``. In every mode
:math:`P = \exp((f \oplus g - C)/\varepsilon)` (POT's / OTT's convention). The potentials are the dual
variables of the penalised problem: for ``"entropy"`` ``f, g`` themselves, with the fixed point
:math:`P\mathbf 1 = a\, e^{-f/\rho_a}`; for ``"kl"`` the duals are :math:`\hat f = f - \varepsilon\log a`,
:math:`\hat g = g - \varepsilon\log b` (POT: ``f = reg * (log u + log a)``), with
:math:`P\mathbf 1 = a\, e^{-\hat f/\rho_a}`.

References:
    Cuturi (2013), Sinkhorn distances; Peyré & Cuturi (2019), Computational OT, Sec. 4.4;
    Chizat, Peyré, Schmitzer & Vialard (2018), Scaling algorithms for unbalanced OT;
    Schmitzer (2019), Stabilized sparse scaling algorithms (log domain, eps-scaling);
    Eisenberger et al. (2022) / Luise et al. (2018) for implicit differentiation of Sinkhorn.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .result import OTResult
from .utils import (
    Problem,
    check_grad_mode,
    clamped_exp,
    clamped_exp_,
    iterate,
    log_kernel,
    lse_cols,
    lse_rows,
    masked_log,
    masked_update,
    plan_from_potentials,
    setup_problem,
)

__all__ = ["sinkhorn"]

RegM = Union[None, float, Tuple[float, float]]


def _parse_reg_m(reg_m: RegM) -> Tuple[float, float]:
    if reg_m is None:
        return math.inf, math.inf
    if isinstance(reg_m, (tuple, list)):
        if len(reg_m) != 2:
            raise ValueError("reg_m must be a float or a pair (rho_a, rho_b)")
        r = (float(reg_m[0]), float(reg_m[1]))
    else:
        r = (float(reg_m), float(reg_m))
    if min(r) < 0:
        raise ValueError(f"reg_m must be nonnegative, got {reg_m}")
    return r


def _tau(rho: float, eps: float) -> float:
    return 1.0 if math.isinf(rho) else rho / (rho + eps)


def _eps_schedule(cost: Tensor, eps: float, eps_scaling: Optional[float]):
    if eps_scaling is None:
        return [eps]
    if not 0.0 < eps_scaling < 1.0:
        raise ValueError(f"eps_scaling must be in (0, 1), got {eps_scaling}")
    c = cost.detach().abs()
    cmax = float(c.max()) if c.numel() else 0.0
    schedule = []
    e = cmax
    while e > eps:
        schedule.append(e)
        e *= eps_scaling
    return schedule + [eps]


def _init_potentials(prob: Problem, log_a: Tensor, log_b: Tensor, eps: float, kl_unbalanced: bool, init):
    if init is not None:
        f0, g0 = init
        phi = (f0.detach().to(prob.cost) / eps).expand_as(log_a)
        gamma = (g0.detach().to(prob.cost) / eps).expand_as(log_b)
        phi = masked_update(phi, torch.zeros_like(phi), prob.mask_a, None)
        gamma = masked_update(gamma, torch.zeros_like(gamma), prob.mask_b, None)
        return phi.clone(), gamma.clone()
    if kl_unbalanced:  # POT's u = v = 1 for the kernel K * a b^T
        return log_a.clone(), log_b.clone()
    return torch.zeros_like(log_a), torch.zeros_like(log_b)


def _is_one(tau) -> bool:
    return not torch.is_tensor(tau) and tau == 1.0


def _sinkhorn_step(state, active, *, logk, ca, cb, tau_a, tau_b, mask_a, mask_b, keep=False):
    phi, gamma = state
    lse = lse_rows(logk, gamma, keep)
    # a learnable tau is a tensor, never taken as exactly 1 (comparing it would sync on every half-step)
    phi = masked_update(ca - lse if _is_one(tau_a) else ca - tau_a * lse, phi, mask_a, active)
    lse = lse_cols(logk, phi, keep)
    gamma = masked_update(cb - lse if _is_one(tau_b) else cb - tau_b * lse, gamma, mask_b, active)
    return phi, gamma


def _marginal_error(state, prev, *, logk, a, mask_a):
    # After the gamma half-step the column marginal equals b up to rounding, so the L1 marginal error
    # |P1 - a|_1 + |P^T 1 - b|_1 reduces to its row term.
    phi, gamma = state
    r = (phi + lse_rows(logk, gamma)).exp()
    d = (r - a).abs()
    if mask_a is not None:
        d = d.masked_fill(~mask_a, 0)
    return d.sum(-1), state


def _potential_change(state, prev):
    if prev is None:
        return torch.zeros_like(state[0][..., 0]), state
    return (state[0] - prev[0]).abs().sum(-1) + (state[1] - prev[1]).abs().sum(-1), state


def _dual_terms(log_a: Tensor, log_b: Tensor, reg_m, reg_type: str, eps: float):
    """``tau_a, tau_b, ca, cb`` of the half-steps (module docstring) at entropic weight ``eps``."""
    tau_a, tau_b = _tau(reg_m[0], eps), _tau(reg_m[1], eps)
    ca = log_a if reg_type == "kl" or tau_a == 1.0 else tau_a * log_a
    cb = log_b if reg_type == "kl" or tau_b == 1.0 else tau_b * log_b
    return tau_a, tau_b, ca, cb


def _solve_potentials(prob: Problem, *, eps, reg_m, reg_type, max_iter, tol, eps_scaling, check_every, stage_iter, init):
    """Run the (annealed) iterations under the caller's grad mode; returns ``f, g, n_iter, err``."""
    rho_a, rho_b = reg_m
    balanced = math.isinf(rho_a) and math.isinf(rho_b)
    log_a, log_b = masked_log(prob.a, prob.mask_a), masked_log(prob.b, prob.mask_b)
    schedule = _eps_schedule(prob.cost, eps, eps_scaling)
    phi, gamma = _init_potentials(prob, log_a, log_b, schedule[0], reg_type == "kl" and not balanced, init)
    batch = prob.cost.shape[:-2]
    total = torch.zeros(batch, dtype=torch.long, device=prob.cost.device)
    err = None
    for k, e in enumerate(schedule):
        if k > 0:  # warm start: keep f = e * phi fixed across stages
            phi, gamma = phi * (schedule[k - 1] / e), gamma * (schedule[k - 1] / e)
        final = k == len(schedule) - 1
        logk = log_kernel(prob.cost, e, prob.mask2d)
        tau_a, tau_b, ca, cb = _dual_terms(log_a, log_b, reg_m, reg_type, e)
        step = partial(
            _sinkhorn_step, logk=logk, ca=ca, cb=cb, tau_a=tau_a, tau_b=tau_b, mask_a=prob.mask_a, mask_b=prob.mask_b
        )
        if not final:
            error = None
        elif balanced:
            error = partial(_marginal_error, logk=logk, a=prob.a, mask_a=prob.mask_a)
        else:
            error = _potential_change
        (phi, gamma), n, err = iterate(
            step,
            (phi, gamma),
            max_iter=max_iter if final else stage_iter,
            tol=tol if final else 0.0,
            check_every=check_every,
            batch_shape=batch,
            device=prob.cost.device,
            dtype=prob.cost.dtype,
            error=error,
        )
        total = total + n
    return phi * eps, gamma * eps, total, err


def _real(t: Tensor, mask: Optional[Tensor]) -> Tensor:
    # padding's 0 would give log 0 = -inf, and 0 * inf = NaN in an unrolled backward through torch.where
    return t if mask is None else torch.where(mask, t, torch.ones_like(t))


def _solve_scaling(prob: Problem, *, eps, reg_m, reg_type, max_iter, tol, check_every, init, absorb=30.0):
    """``method="scaling"``: Sinkhorn on scaling vectors with absorption (Schmitzer 2019, Sec. 3.2); same fixed
    point and updates as the log-domain loop, returns ``f, g, n_iter, err`` as :func:`_solve_potentials`.

    The kernel :math:`\tilde K = \exp((f \oplus g - C)/\varepsilon)` is formed once with the current potentials
    (one exp pass), after which an iteration is two matrix-vector products instead of two log-sum-exp passes over
    the n x m matrix. When a scaling leaves ``[-absorb, absorb]`` (in log) or is not finite (a row or column of
    :math:`\tilde K` underflowed), the scalings are absorbed into the potentials, one log-domain iteration
    re-centres them (it cannot underflow) and the kernel is rebuilt. All problems of the batch run the same number of
    iterations (until every one is within ``tol``).
    """
    rho_a, rho_b = reg_m
    balanced = math.isinf(rho_a) and math.isinf(rho_b)
    log_a, log_b = masked_log(prob.a, prob.mask_a), masked_log(prob.b, prob.mask_b)
    tau_a, tau_b, ca, cb = _dual_terms(log_a, log_b, reg_m, reg_type, eps)
    logk = log_kernel(prob.cost, eps, prob.mask2d)
    log_step = partial(_sinkhorn_step, logk=logk, ca=ca, cb=cb, tau_a=tau_a, tau_b=tau_b, mask_a=prob.mask_a,
                       mask_b=prob.mask_b)
    phi, gamma = _init_potentials(prob, log_a, log_b, eps, reg_type == "kl" and not balanced, init)
    batch = prob.cost.shape[:-2]
    n, err = 0, torch.full(batch, math.inf, dtype=prob.cost.dtype, device=prob.cost.device)
    recentre = init is None  # a cold start's kernel exp(-C/eps) may underflow whole rows at small eps
    while n < max_iter:
        if recentre:
            phi, gamma = log_step((phi, gamma), None)
            n += 1
        t = logk + phi[..., :, None] + gamma[..., None, :]
        kt = clamped_exp(t) if torch.is_grad_enabled() else clamped_exp_(t)  # grad="unroll" differentiates this
        lu, lv, kv = torch.zeros_like(phi), torch.zeros_like(gamma), None
        recentre = True
        while n < max_iter:
            if kv is None:
                kv = _real(torch.matmul(kt, lv.exp().unsqueeze(-1)).squeeze(-1), prob.mask_a)
            new_u = masked_update(ca - tau_a * (kv.log() - phi) - phi, lu, prob.mask_a, None)
            ktu = _real(torch.matmul(new_u.exp().unsqueeze(-2), kt).squeeze(-2), prob.mask_b)
            new_v = masked_update(cb - tau_b * (ktu.log() - gamma) - gamma, lv, prob.mask_b, None)
            if not (bool(torch.isfinite(new_u).all()) and bool(torch.isfinite(new_v).all())):
                break  # an underflowed row/column: absorb what is good and re-centre in the log domain
            prev_u, prev_v, lu, lv, kv = lu, lv, new_u, new_v, None
            n += 1
            if n == max_iter or (tol > 0 and n % check_every == 0):
                if balanced:  # the row sums need K v, which the next iteration reuses
                    kv = _real(torch.matmul(kt, lv.exp().unsqueeze(-1)).squeeze(-1), prob.mask_a)
                    d = (lu.exp() * kv - prob.a).abs()
                    err = (d if prob.mask_a is None else d.masked_fill(~prob.mask_a, 0)).sum(-1)
                else:
                    err = (lu - prev_u).abs().sum(-1) + (lv - prev_v).abs().sum(-1)
                if tol > 0 and bool((err <= tol).all()):
                    return (phi + lu) * eps, (gamma + lv) * eps, torch.full(batch, n, device=phi.device), err
            if max(float(lu.detach().abs().max()), float(lv.detach().abs().max())) > absorb:
                break
        phi, gamma = phi + lu, gamma + lv
    return phi * eps, gamma * eps, torch.full(batch, n, device=phi.device), err


# --------------------------------------------------------------------------------------------------
# Implicit differentiation of the fixed point
# --------------------------------------------------------------------------------------------------


def _spd_solve(S: Tensor, rhs: Tensor) -> Tensor:
    """Batched Cholesky solve with a growing ridge for the rare matrix that is not numerically PD.

    Never ``torch.linalg.solve``: batched LU in float32 has stalled inside oneMKL on 2-thread CPUs.
    """
    S = 0.5 * (S + S.transpose(-1, -2))
    scale = S.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(torch.finfo(S.dtype).tiny)
    eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
    ridge = 1e-12
    L, info = torch.linalg.cholesky_ex(S)
    for _ in range(6):
        bad = info != 0
        if not bool(bad.any()):
            break
        S = S + (bad.to(S.dtype) * scale * ridge)[..., None, None] * eye
        L, info = torch.linalg.cholesky_ex(S)
        ridge *= 100
    return torch.cholesky_solve(rhs.unsqueeze(-1), L).squeeze(-1)


def kkt_solve(P: Tensor, d1: Tensor, d2: Tensor, p: Tensor, q: Tensor, mask_a, mask_b, gauge: bool) -> Tuple[Tensor, Tensor]:
    r"""Solve :math:`\begin{pmatrix}D_1 & P\\ P^\top & D_2\end{pmatrix}\begin{pmatrix}u\\v\end{pmatrix}
    = \begin{pmatrix}p\\q\end{pmatrix}` by a Schur complement on the smaller side (Cholesky).

    ``gauge=True`` (balanced problems) adds :math:`\delta\mathbf 1\mathbf 1^\top` to the singular Schur
    complement; this fixes the constant shift :math:`(u, v) \to (u - c, v + c)` that the
    linearised balanced system leaves free and changes nothing for gauge-invariant outputs.
    Padded rows/columns get ``u = v = 0``. Works in float64.
    """
    if P.shape[-2] < P.shape[-1]:  # eliminate the larger side
        v, u = kkt_solve(P.transpose(-1, -2), d2, d1, q, p, mask_b, mask_a, gauge)
        return u, v
    one = torch.ones((), dtype=P.dtype, device=P.device)
    if mask_a is not None:
        d1, p = torch.where(mask_a, d1, one), p.masked_fill(~mask_a, 0)
    if mask_b is not None:
        d2, q = torch.where(mask_b, d2, one), q.masked_fill(~mask_b, 0)
    Pd = P / d1[..., :, None]
    S = torch.diag_embed(d2) - Pd.transpose(-1, -2) @ P
    rhs = q - (Pd.transpose(-1, -2) @ p.unsqueeze(-1)).squeeze(-1)
    if gauge:
        ones = torch.ones_like(d2) if mask_b is None else mask_b.to(P.dtype)
        cnt = ones.sum(-1).clamp_min(1)
        delta = (d2 * ones).sum(-1) / cnt**2
        S = S + delta[..., None, None] * ones[..., :, None] * ones[..., None, :]
    v = _spd_solve(S, rhs)
    u = (p - (P @ v.unsqueeze(-1)).squeeze(-1)) / d1
    return u, v


class _ImplicitPotentials(torch.autograd.Function):
    r"""``(cost, a, b) -> (f, g)`` at the Sinkhorn fixed point, differentiated implicitly.

    Linearising the optimality conditions :math:`\log(P\mathbf 1) = \beta_a\log a - \kappa_a f/\varepsilon`
    (and the same for columns), with :math:`\kappa = \varepsilon/\rho` (0 balanced),
    :math:`\beta = 1` (balanced, ``"entropy"``) or :math:`1+\kappa` (``"kl"``), :math:`r = P\mathbf 1`,
    :math:`c = P^\top\mathbf 1`:

    .. math::
        \begin{pmatrix}\operatorname{diag}(r(1+\kappa_a)) & P \\ P^\top & \operatorname{diag}(c(1+\kappa_b))\end{pmatrix}
        \begin{pmatrix} df \\ dg \end{pmatrix} =
        \begin{pmatrix} (P\odot dC)\mathbf 1 + \varepsilon\beta_a \tfrac{r}{a} da \\
                        (P\odot dC)^\top\mathbf 1 + \varepsilon\beta_b \tfrac{c}{b} db \end{pmatrix}

    The matrix is symmetric, so the vector-Jacobian product solves it once with the incoming
    gradients: :math:`\bar C = P \odot (u \oplus v)`, :math:`\bar a = \varepsilon\beta_a (r/a) u`.
    Only ``cost, f, g`` are saved: memory does not depend on the number of iterations.
    """

    @staticmethod
    def forward(ctx, cost, a, b, solve, eps, kappa, beta, mask_a, mask_b, mask2d, stats):
        f, g, n_iter, err = solve()
        stats.extend([n_iter, err])
        ctx.save_for_backward(cost, a, b, f, g, mask_a, mask_b, mask2d)
        ctx.eps, ctx.kappa, ctx.beta = eps, kappa, beta
        return f, g

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_f, grad_g):
        cost, a, b, f, g, mask_a, mask_b, mask2d = ctx.saved_tensors
        eps, (ka, kb), (ba, bb) = ctx.eps, ctx.kappa, ctx.beta
        dt = torch.float64
        P = plan_from_potentials(cost.to(dt), f.to(dt), g.to(dt), eps, mask2d)
        r, c = P.sum(-1), P.sum(-2)
        gf = torch.zeros_like(r) if grad_f is None else grad_f.to(dt)
        gg = torch.zeros_like(c) if grad_g is None else grad_g.to(dt)
        u, v = kkt_solve(P, r * (1 + ka), c * (1 + kb), gf, gg, mask_a, mask_b, gauge=ka == 0 and kb == 0)
        grad_cost = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_cost = (P * (u[..., :, None] + v[..., None, :])).to(cost.dtype)
        if ctx.needs_input_grad[1]:
            grad_a = _weight_grad(eps * ba * u, r, a.to(dt), mask_a).to(a.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = _weight_grad(eps * bb * v, c, b.to(dt), mask_b).to(b.dtype)
        return grad_cost, grad_a, grad_b, None, None, None, None, None, None, None, None


def _weight_grad(w: Tensor, marg: Tensor, weights: Tensor, mask: Optional[Tensor]) -> Tensor:
    ratio = marg / torch.where(weights > 0, weights, torch.ones_like(weights))
    out = w * ratio
    return out if mask is None else out.masked_fill(~mask, 0)


def differentiate(
    prob: Problem,
    solve: Callable[[Problem], Tuple[Tensor, Tensor, Tensor, Tensor]],
    *,
    eps: float,
    grad: str,
    kappa: Tuple[float, float] = (0.0, 0.0),
    beta: Tuple[float, float] = (1.0, 1.0),
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Run a potential-based solver under one of the grad modes; returns ``plan, value, f, g, n_iter, err``.

    Shared by :func:`sinkhorn` and :func:`recot.ot.greenkhorn` (same fixed point, so the same
    implicit gradient).
    """
    if grad == "unroll":
        f, g, n_iter, err = solve(prob)
        plan = plan_from_potentials(prob.cost, f, g, eps, prob.mask2d)
    elif grad == "envelope":
        with torch.no_grad():
            detached = Problem(*(None if t is None else t.detach() for t in prob))
            f, g, n_iter, err = solve(detached)
            plan = plan_from_potentials(detached.cost, f, g, eps, prob.mask2d)
    else:
        if any(math.isinf(k) for k in kappa):
            raise NotImplementedError("grad='implicit' needs reg_m > 0 on both sides")
        stats = []

        def run():
            with torch.no_grad():
                detached = Problem(*(None if t is None else t.detach() for t in prob))
                return solve(detached)

        f, g = _ImplicitPotentials.apply(
            prob.cost, prob.a, prob.b, run, eps, kappa, beta, prob.mask_a, prob.mask_b, prob.mask2d, stats
        )
        n_iter, err = stats
        plan = plan_from_potentials(prob.cost, f, g, eps, prob.mask2d)
    value = (prob.cost * plan).sum((-2, -1))
    return plan, value, f, g, n_iter, err


def sinkhorn(
    cost: Tensor,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    *,
    eps: float,
    mask_a: Optional[Tensor] = None,
    mask_b: Optional[Tensor] = None,
    reg_m: RegM = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    eps_scaling: Optional[float] = None,
    grad: str = "unroll",
    reg_type: str = "kl",
    check_every: int = 10,
    stage_iter: int = 10,
    init: Optional[Tuple[Tensor, Tensor]] = None,
    method: str = "log",
) -> OTResult:
    r"""Log-domain Sinkhorn for a batch of (masked) entropic OT problems; see the module docstring.

    The objective is exactly POT's ``ot.sinkhorn(a, b, M, reg=eps)`` (balanced) or
    ``ot.unbalanced.sinkhorn_unbalanced(a, b, M, reg=eps, reg_m=reg_m, reg_type=reg_type)``.

    Args:
        cost: ``(*batch, n, m)`` cost matrix :math:`C`. Padded entries may hold anything (even NaN).
        a: ``(*batch, n)`` nonnegative row weights (broadcastable); None = uniform over real rows.
            Balanced problems need ``a.sum() == b.sum()`` per problem. Zero weights act as padding.
        b: ``(*batch, m)`` column weights, as ``a``.
        eps: entropic regularization :math:`\varepsilon > 0` (POT's ``reg``), in cost units.
        mask_a: ``(*batch, n)`` bool, True = real row. Padding carries no mass and no gradient; a
            problem with no real row or column gives a zero plan, value 0 and zero potentials.
        mask_b: ``(*batch, m)`` bool, True = real column.
        reg_m: None (balanced), :math:`\rho` or :math:`(\rho_a, \rho_b)` (unbalanced; ``inf`` = hard).
        max_iter: maximum number of iterations (one iteration = f then g half-step) of the final stage.
        tol: stopping tolerance, checked every ``check_every`` iterations. Balanced: L1 marginal error
            :math:`\|P\mathbf 1 - a\|_1 + \|P^\top\mathbf 1 - b\|_1` (the column term is exact after
            the g half-step, so only the row term is computed). Unbalanced: L1 change of the
            potentials over the last iteration divided by eps,
            :math:`(\|\Delta f\|_1 + \|\Delta g\|_1)/\varepsilon`. ``tol=0``: exactly ``max_iter``
            iterations (``err`` is still reported; ``converged`` is then ``err == 0``).
        eps_scaling: None or :math:`s \in (0, 1)`: anneal :math:`\varepsilon` from the largest
            :math:`|C_{ij}|` of the batch, multiplied by ``s`` each stage, down to ``eps``; each
            non-final stage runs ``stage_iter`` iterations, warm-starting :math:`f, g`; the final stage
            runs to ``tol``. ``n_iter`` counts all stages.
        grad: ``"unroll"`` autograd through the iterations (memory-lean: O(n + m) saved per
            half-step, the kernel is shared); ``"envelope"`` iterations without autograd,
            ``value = <C, P.detach()>`` so :math:`\partial\,\text{value}/\partial C = P` (the envelope
            gradient of the regularized objective), ``plan``, ``f``, ``g`` carry no gradient;
            ``"implicit"`` ``plan``, ``value``, ``f``, ``g`` differentiable wrt ``cost``, ``a`` and ``b``
            by implicit differentiation of the fixed point (Cholesky solve of an n or m sized
            system in float64; memory independent of ``max_iter``; exact at convergence). For balanced
            problems the gradient wrt ``a``/``b`` is defined up to a constant vector (the marginals'
            tangent space); gradients wrt ``eps`` are not supported.
        reg_type: ``"kl"`` (:math:`\mathrm{KL}(P\|ab^\top)`, POT's default) or ``"entropy"``; only
            matters for unbalanced problems (balanced plans are the same).
        check_every: iterations between convergence checks (each costs half an iteration).
        stage_iter: iterations per non-final eps-scaling stage.
        init: optional warm start ``(f, g)`` (detached).
        method: ``"log"`` (log-sum-exp half-steps over the n x m log-kernel; every problem frozen once within
            ``tol``) or ``"scaling"`` (the same updates on scaling vectors with absorption into the potentials:
            one exp pass per absorption, then two matrix-vector products per iteration, several times faster on
            large dense problems; no ``eps_scaling``; every problem runs until all are within ``tol``).

    Returns:
        :class:`OTResult` with ``plan (*batch, n, m)``, ``value``, ``f (*batch, n)``, ``g (*batch, m)``,
        ``n_iter``, ``err``, ``converged`` (all ``(*batch,)``). Converged problems are frozen, so
        ``n_iter`` is each problem's true iteration count.

    Example:
        >>> x, y = torch.randn(8, 30, 2), torch.randn(8, 40, 2)
        >>> res = sinkhorn(sq_euclidean(x, y), eps=0.1)
        >>> res.plan.shape, res.value.shape
        (torch.Size([8, 30, 40]), torch.Size([8]))
    """
    check_grad_mode(grad)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if reg_type not in ("kl", "entropy"):
        raise ValueError(f"reg_type must be 'kl' or 'entropy', got {reg_type!r}")
    if method not in ("log", "scaling"):
        raise ValueError(f"method must be 'log' or 'scaling', got {method!r}")
    if method == "scaling" and eps_scaling is not None:
        raise ValueError("method='scaling' does not anneal eps: use eps_scaling=None or method='log'")
    rho = _parse_reg_m(reg_m)
    prob = setup_problem(cost, a, b, mask_a, mask_b)
    if method == "scaling":
        solve = partial(_solve_scaling, eps=eps, reg_m=rho, reg_type=reg_type, max_iter=max_iter, tol=tol,
                        check_every=check_every, init=init)
    else:
        solve = partial(_solve_potentials, eps=eps, reg_m=rho, reg_type=reg_type, max_iter=max_iter, tol=tol,
                        eps_scaling=eps_scaling, check_every=check_every, stage_iter=stage_iter, init=init)
    kappa = tuple(0.0 if math.isinf(r) else (math.inf if r == 0 else eps / r) for r in rho)
    beta = tuple(1.0 + k if reg_type == "kl" else 1.0 for k in kappa)
    plan, value, f, g, n_iter, err = differentiate(prob, solve, eps=eps, grad=grad, kappa=kappa, beta=beta)
    return OTResult(plan=plan, value=value, f=f, g=g, n_iter=n_iter, err=err, converged=err <= tol)
