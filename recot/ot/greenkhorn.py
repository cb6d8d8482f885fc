r"""Greenkhorn: greedy coordinate Sinkhorn, batched over problems, log-domain, masked.

Same problem and fixed point as balanced :func:`recot.ot.sinkhorn` (POT's ``ot.bregman.greenkhorn``):

.. math::
    \min_{P\mathbf 1 = a,\ P^\top\mathbf 1 = b} \langle C, P\rangle + \varepsilon\sum_{ij} P_{ij}(\log P_{ij} - 1).

Each step (Altschuler, Weed & Rigollet 2017, Alg. 2, with POT's greedy rule) picks, per problem, the
row :math:`i` and column :math:`j` with the largest absolute marginal violation
:math:`|r_i - a_i|`, :math:`|c_j - b_j|` (:math:`r = P\mathbf 1`, :math:`c = P^\top\mathbf 1`) and
projects the worse of the two exactly:

.. math::
    f_i \leftarrow \varepsilon\log a_i - \varepsilon\operatorname{LSE}_j\big((g_j - C_{ij})/\varepsilon\big)
    \quad\text{or}\quad
    g_j \leftarrow \varepsilon\log b_j - \varepsilon\operatorname{LSE}_i\big((f_i - C_{ij})/\varepsilon\big).

Cost per step and trade-off. A row step reads one row of the log-kernel (O(m)), a column step one
column (O(n), from a transposed copy so the read is contiguous); the marginals ``r, c`` are kept
incrementally (a row step changes every :math:`c_j` by :math:`P^{new}_{ij} - P^{old}_{ij}`), so a step
is O(n + m) work, never O(nm). Every ``check_every`` steps (default n + m, one "sweep") ``r, c`` are
recomputed exactly, O(nm), which bounds the drift of the incremental sums and gives the exact error.
Being greedy, Greenkhorn is sequential: one step is a handful of tiny tensor ops, so on a CPU it is
bound by per-op overhead (tens of microseconds per step, whatever n + m). A Sinkhorn iteration updates
all n + m coordinates with two large vectorized ops, so for GOTNet's N ~ 30k users x K ~ 300
clusters a sweep of n + m single-coordinate steps is far slower than a Sinkhorn iteration. ``block``
updates the ``block`` most violated rows (or columns) in one step (rows are independent given g, so
this is exact block-coordinate ascent); ``block=1`` is the textbook algorithm and reproduces POT step
by step; ``block ~ (n + m)/100`` makes Greenkhorn usable at that scale (see ``benchmarks/ot.py``).

References:
    Altschuler, Weed & Rigollet (2017), Near-linear time approximation algorithms for optimal transport
    via Sinkhorn iteration, NeurIPS; Chen et al. (2022), GOTNet, WWW (its use for k-means).
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Tuple

import torch
from torch import Tensor

from .result import OTResult
from .sinkhorn import differentiate
from .utils import (
    Problem,
    check_grad_mode,
    clamped_exp_,
    iterate,
    log_kernel,
    logsumexp,
    lse_cols,
    lse_rows,
    masked_log,
    setup_problem,
)

__all__ = ["greenkhorn"]


def _exact_marginals(logk: Tensor, phi: Tensor, gamma: Tensor) -> Tuple[Tensor, Tensor]:
    r = (phi + lse_rows(logk, gamma)).exp()
    c = (gamma + lse_cols(logk, phi)).exp()
    return r, c


def _block_update(pot, other, logk_t, idx, log_w, mask, chosen, marg_self, marg_other):
    """Project the selected rows of ``logk_t`` (rows of the kernel, or columns via its transpose).

    ``pot`` (*, k_all) is updated at ``idx`` (*, k) where ``chosen`` (*,) and the element is real;
    returns the new potential and the incrementally updated marginals.
    """
    size = logk_t.shape[-1]
    lk = logk_t.gather(-2, idx[..., :, None].expand(*idx.shape, size))  # (*, k, size)
    t = lk + other[..., None, :]
    lse = logsumexp(t, -1)
    old = pot.gather(-1, idx)
    ok = chosen[..., None]
    if mask is not None:
        ok = ok & mask.gather(-1, idx)
    new = torch.where(ok, log_w.gather(-1, idx) - lse, old)
    pot = pot.scatter(-1, idx, new)
    with torch.no_grad():
        delta = clamped_exp_(t + new[..., None]) - clamped_exp_(t + old[..., None])
        marg_other = marg_other + delta.sum(-2)
        marg_self = marg_self.scatter(-1, idx, torch.where(ok, (new + lse).exp(), marg_self.gather(-1, idx)))
    return pot, marg_self, marg_other


def _greenkhorn_step(state, active, *, logk, logk_t, log_a, log_b, a, b, mask_a, mask_b, kr, kc):
    phi, gamma, r, c = state
    with torch.no_grad():
        vr, vc = (r - a).abs(), (c - b).abs()
        if mask_a is not None:
            vr = vr.masked_fill(~mask_a, -1.0)
        if mask_b is not None:
            vc = vc.masked_fill(~mask_b, -1.0)
        top_r, ir = vr.topk(kr, -1)
        top_c, jc = vc.topk(kc, -1)
        row = top_r[..., 0] > top_c[..., 0]  # POT's rule: ties go to the column
        col = ~row
        if active is not None:
            row, col = row & active, col & active
    if bool(row.any()):
        phi, r, c = _block_update(phi, gamma, logk, ir, log_a, mask_a, row, r, c)
    if bool(col.any()):
        gamma, c, r = _block_update(gamma, phi, logk_t, jc, log_b, mask_b, col, c, r)
    return phi, gamma, r, c


def _greenkhorn_error(state, prev, *, logk, a, b, mask_a, mask_b):
    phi, gamma, _, _ = state
    r, c = _exact_marginals(logk, phi, gamma)
    dr, dc = (r - a).abs(), (c - b).abs()
    if mask_a is not None:
        dr = dr.masked_fill(~mask_a, 0)
    if mask_b is not None:
        dc = dc.masked_fill(~mask_b, 0)
    return dr.sum(-1) + dc.sum(-1), (phi, gamma, r, c)


def _solve_greenkhorn(prob: Problem, *, eps, max_iter, tol, block, check_every, init):
    n, m = prob.cost.shape[-2:]
    logk = log_kernel(prob.cost, eps, prob.mask2d)
    logk_t = logk.transpose(-1, -2).contiguous()
    log_a, log_b = masked_log(prob.a, prob.mask_a), masked_log(prob.b, prob.mask_b)
    if init is not None:
        phi = (init[0].detach().to(logk) / eps).expand_as(log_a).clone()
        gamma = (init[1].detach().to(logk) / eps).expand_as(log_b).clone()
    else:  # POT's start u = 1/n, v = 1/m, over the real elements
        na = torch.full_like(log_a, n) if prob.mask_a is None else prob.mask_a.sum(-1, keepdim=True).clamp_min(1).to(logk)
        nb = torch.full_like(log_b, m) if prob.mask_b is None else prob.mask_b.sum(-1, keepdim=True).clamp_min(1).to(logk)
        phi, gamma = -na.log().expand_as(log_a).clone(), -nb.log().expand_as(log_b).clone()
    if prob.mask_a is not None:
        phi, gamma = phi.masked_fill(~prob.mask_a, 0), gamma.masked_fill(~prob.mask_b, 0)
    with torch.no_grad():
        r, c = _exact_marginals(logk, phi, gamma)
    step = partial(
        _greenkhorn_step,
        logk=logk,
        logk_t=logk_t,
        log_a=log_a,
        log_b=log_b,
        a=prob.a,
        b=prob.b,
        mask_a=prob.mask_a,
        mask_b=prob.mask_b,
        kr=min(block, n),
        kc=min(block, m),
    )
    error = partial(_greenkhorn_error, logk=logk, a=prob.a, b=prob.b, mask_a=prob.mask_a, mask_b=prob.mask_b)
    (phi, gamma, _, _), n_iter, err = iterate(
        step,
        (phi, gamma, r, c),
        max_iter=max_iter,
        tol=tol,
        check_every=check_every or (n + m),
        batch_shape=prob.cost.shape[:-2],
        device=logk.device,
        dtype=logk.dtype,
        error=error,
    )
    return phi * eps, gamma * eps, n_iter, err


def greenkhorn(
    cost: Tensor,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    *,
    eps: float,
    mask_a: Optional[Tensor] = None,
    mask_b: Optional[Tensor] = None,
    max_iter: int = 10000,
    tol: float = 1e-6,
    block: int = 1,
    check_every: Optional[int] = None,
    grad: str = "implicit",
    init: Optional[Tuple[Tensor, Tensor]] = None,
) -> OTResult:
    r"""Greenkhorn for a batch of balanced entropic OT problems (see the module docstring).

    Args:
        cost: ``(*batch, n, m)``. a, b: ``(*batch, n)``, ``(*batch, m)`` weights with equal mass
            (None = uniform over real elements). mask_a, mask_b: bool, True = real.
        eps: entropic regularization (POT's ``reg``).
        max_iter: maximum number of greedy steps per problem (POT's ``numItermax``).
        tol: stop when the L1 marginal error :math:`\|P\mathbf 1 - a\|_1 + \|P^\top\mathbf 1 - b\|_1`,
            checked every ``check_every`` steps (default ``n + m``), is ``<= tol``. (POT stops on the
            max-norm violation instead.) ``tol=0`` runs exactly ``max_iter`` steps.
        block: rows/columns projected per step (1 = Altschuler et al. and POT).
        grad: ``"implicit"`` (default: the fixed point is Sinkhorn's, so the same implicit gradient
            applies and memory does not grow with the thousands of steps), ``"envelope"``, or
            ``"unroll"`` (exact gradient of the greedy steps; O(block (n + m)) memory per step).
        init: optional warm start ``(f, g)``.

    Returns:
        :class:`OTResult`; ``n_iter`` counts greedy steps, ``f, g`` follow
        :math:`P = \exp((f\oplus g - C)/\varepsilon)`.
    """
    check_grad_mode(grad)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if block < 1:
        raise ValueError("block must be >= 1")
    prob = setup_problem(cost, a, b, mask_a, mask_b)
    solve = partial(
        _solve_greenkhorn, eps=eps, max_iter=max_iter, tol=tol, block=int(block), check_every=check_every, init=init
    )
    plan, value, f, g, n_iter, err = differentiate(prob, solve, eps=eps, grad=grad)
    return OTResult(plan=plan, value=value, f=f, g=g, n_iter=n_iter, err=err, converged=err <= tol)
