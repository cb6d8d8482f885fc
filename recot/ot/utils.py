r"""Shared log-domain primitives: masking, log-kernels, memory-lean log-sum-exp, the iteration driver.

Masking convention (used by every solver here and meant for ``rot.py``, ``sparse.py``, ``lcn.py``):

* masks are bool, True = real element; a real element with zero weight is treated as padding;
* a problem with no real row or no real column is *empty*: every element becomes padding;
* padded entries of a log-kernel hold the finite stand-in :func:`neg` for :math:`-\infty`, so that
  log-sum-exp over a fully padded row stays finite and its gradient is 0, never NaN;
* potentials are 0 on padded entries, plans exactly 0.

References:
    Peyré & Cuturi (2019), *Computational Optimal Transport*, Sec. 4.4 (log-domain Sinkhorn).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "GRAD_MODES",
    "Problem",
    "check_grad_mode",
    "clamped_exp",
    "clamped_exp_",
    "iterate",
    "log_kernel",
    "logsumexp",
    "lse_cols",
    "lse_rows",
    "masked_log",
    "masked_update",
    "neg",
    "plan_from_potentials",
    "prepare_weights",
    "setup_problem",
]

GRAD_MODES = ("unroll", "envelope", "implicit")


def check_grad_mode(grad: str, allowed=GRAD_MODES) -> None:
    if grad not in allowed:
        raise ValueError(f"grad must be one of {allowed}, got {grad!r}")


def neg(dtype: torch.dtype) -> float:
    r"""Finite stand-in for :math:`-\infty` in log-domain tensors of ``dtype``.

    :math:`-\sqrt{\text{max}}` (about -1.8e19 in float32): ``exp`` of it is exactly 0, and it can be
    multiplied by factors up to ~1e19 (e.g. ``rho * log S`` in BADMM) without overflowing to ``-inf``.
    """
    return -math.sqrt(torch.finfo(dtype).max)


def prepare_weights(
    w: Optional[Tensor], mask: Optional[Tensor], shape: Tuple[int, ...], like: Tensor
) -> Tuple[Tensor, Optional[Tensor]]:
    """Weights ``(*batch, size)`` with zeros on padding, and the effective mask (or None if all real).

    ``w=None`` gives uniform weights over the real elements. Entries with ``w <= 0`` join the padding.
    """
    if mask is not None:
        mask = mask.to(device=like.device, dtype=torch.bool).expand(shape)
    if w is None:
        if mask is None:
            w = torch.full(shape, 1.0 / shape[-1], dtype=like.dtype, device=like.device)
        else:
            count = mask.sum(-1, keepdim=True).clamp_min(1)
            w = mask.to(like.dtype) / count
    else:
        w = w.to(device=like.device, dtype=like.dtype).expand(shape)
        if mask is not None:
            w = torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
    positive = w > 0
    if not bool(positive.all()):
        mask = positive if mask is None else mask & positive
    return w, mask


class Problem(NamedTuple):
    """A batch of OT problems after weights and masks were normalized by :func:`setup_problem`."""

    cost: Tensor  # (*batch, n, m), 0 on padded entries
    a: Tensor  # (*batch, n), 0 on padding
    b: Tensor  # (*batch, m), 0 on padding
    mask_a: Optional[Tensor]  # (*batch, n) or None = all real
    mask_b: Optional[Tensor]  # (*batch, m)
    mask2d: Optional[Tensor]  # (*batch, n, m)


def setup_problem(cost: Tensor, a=None, b=None, mask_a=None, mask_b=None) -> Problem:
    """Broadcast weights and masks to ``cost``'s batch, drop empty problems, zero the padded cost."""
    if cost.dim() < 2:
        raise ValueError(f"cost must be (*batch, n, m), got shape {tuple(cost.shape)}")
    if not cost.is_floating_point():
        raise TypeError("cost must be a floating point tensor")
    *batch, n, m = cost.shape
    a, mask_a = prepare_weights(a, mask_a, (*batch, n), cost)
    b, mask_b = prepare_weights(b, mask_b, (*batch, m), cost)
    mask2d = None
    if mask_a is not None or mask_b is not None:
        ones_a = torch.ones((*batch, n), dtype=torch.bool, device=cost.device)
        ones_b = torch.ones((*batch, m), dtype=torch.bool, device=cost.device)
        mask_a = ones_a if mask_a is None else mask_a
        mask_b = ones_b if mask_b is None else mask_b
        nonempty = mask_a.any(-1, keepdim=True) & mask_b.any(-1, keepdim=True)
        mask_a, mask_b = mask_a & nonempty, mask_b & nonempty
        zero = torch.zeros((), dtype=cost.dtype, device=cost.device)
        a, b = torch.where(mask_a, a, zero), torch.where(mask_b, b, zero)
        mask2d = mask_a[..., :, None] & mask_b[..., None, :]
        # Padded costs may be garbage (NaN/inf from padded features): replace them by 0 so that no
        # NaN reaches the plan, the value or a gradient.
        cost = torch.where(mask2d, cost, zero)
    return Problem(cost, a, b, mask_a, mask_b, mask2d)


def masked_log(w: Tensor, mask: Optional[Tensor]) -> Tensor:
    """``log w`` on real entries, 0 on padding; gradient-safe (no ``0 * inf``) at zero weights."""
    if mask is None:
        return w.log()
    return torch.where(mask, torch.where(mask, w, torch.ones_like(w)).log(), torch.zeros_like(w))


def log_kernel(cost: Tensor, eps: float, mask2d: Optional[Tensor] = None) -> Tensor:
    r"""Log Gibbs kernel :math:`-C/\varepsilon`, with :func:`neg` on padded entries."""
    logk = cost / (-eps)
    if mask2d is not None:
        logk = torch.where(mask2d, logk, neg(cost.dtype))  # one pass; masked_fill(~mask2d) takes three
    return logk


def plan_from_potentials(cost: Tensor, f: Tensor, g: Tensor, eps: float, mask2d: Optional[Tensor] = None) -> Tensor:
    r""":math:`P_{ij} = \exp((f_i + g_j - C_{ij})/\varepsilon)`, exactly 0 on padded entries."""
    logp = (f[..., :, None] + g[..., None, :] - cost) / eps
    if mask2d is not None:
        logp = torch.where(mask2d, logp, neg(cost.dtype))
    return logp.exp()


def masked_update(new: Tensor, old: Tensor, mask: Optional[Tensor], active: Optional[Tensor]) -> Tensor:
    """``new`` where ``mask`` (real element) and ``active`` (problem not yet converged), else ``old``."""
    if active is not None:
        act = active[..., None]
        mask = act if mask is None else mask & act
    return new if mask is None else torch.where(mask, new, old)


def clamped_exp_(t: Tensor, exact_zero: bool = True) -> Tensor:
    """In-place ``exp`` of shifted log-weights (all <= 0), clamped at ``log(tiny) + 1`` first.

    On x86 CPUs ``exp`` of arguments below ``log(tiny)`` (-87.3 in float32) takes a subnormal slow path
    some 20-50x slower, and at small eps most kernel entries land there. Those terms are below
    ``e * tiny`` relative to the largest one (which is 1), so counting them as ``e * tiny`` changes a
    sum of ``m`` terms by at most ``3 m tiny`` relative: far below rounding. With ``exact_zero`` results up to
    ``4 tiny`` are then set to exactly 0 (padding's :func:`neg` included): a floor of ``e * tiny`` would turn
    later products (gradients, ``grad * plan``) into subnormals, whose arithmetic is as slow; a result that is
    only summed can skip that pass.
    """
    tiny = torch.finfo(t.dtype).tiny
    t = t.clamp_min_(math.log(tiny) + 1.0).exp_()
    return torch.nn.functional.threshold_(t, 4 * tiny, 0.0) if exact_zero else t


class _ClampedExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        out = clamped_exp_(t.clamp_min(math.log(torch.finfo(t.dtype).tiny) + 1.0))  # a copy, clamped
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (out,) = ctx.saved_tensors
        return grad * out


def clamped_exp(t: Tensor) -> Tensor:
    """Out-of-place, differentiable ``exp`` of log-weights without the subnormal slow path (:func:`clamped_exp_`).

    Results below ``4 tiny`` (padding's :func:`neg` included) are exactly 0, never subnormal; the gradient is
    ``grad * out``, as ``exp``'s."""
    return _ClampedExp.apply(t)


class _LogSumExpStep(torch.autograd.Function):
    """``log sum_k exp(logk + pot)`` along one axis, saving only ``logk`` (shared), ``pot`` and the output.

    ``torch.logsumexp`` saves its (n, m) input for every call; here backward recomputes the softmax
    from the shared kernel, so unrolled Sinkhorn stores O(n + m) per half-iteration instead of O(n m).
    Same arithmetic as torch's backward (one ``exp`` pass), so no time is lost. ``keep=True`` trades that memory
    for time instead: the exponentials (exact zeros below ``4 tiny``) and their sums are kept, and backward is one
    pass over them instead of five (the ROT layers' short unrolled loops over small sets).
    """

    @staticmethod
    def forward(ctx, logk: Tensor, pot: Tensor, dim: int, keep: bool = False) -> Tensor:
        t = logk + (pot.unsqueeze(-2) if dim == -1 else pot.unsqueeze(-1))
        mx = t.amax(dim, keepdim=True)
        ctx.dim, ctx.keep, ctx.logk_shape = dim, keep, logk.shape
        if keep:
            e = clamped_exp_(t.sub_(mx))
            s = e.sum(dim, keepdim=True)
            ctx.save_for_backward(e, s)
            return s.log().add_(mx).squeeze(dim)
        out = clamped_exp_(t.sub_(mx), exact_zero=False).sum(dim).log_().add_(mx.squeeze(dim))
        ctx.save_for_backward(logk, pot, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        dim = ctx.dim
        if ctx.keep:
            e, s = ctx.saved_tensors
            w = e * (grad.unsqueeze(dim) / s)
        else:
            logk, pot, out = ctx.saved_tensors
            t = logk + (pot.unsqueeze(-2) if dim == -1 else pot.unsqueeze(-1))
            w = clamped_exp_(t.sub_(out.unsqueeze(dim))).mul_(grad.unsqueeze(dim))
        g_pot = w.sum(-2 if dim == -1 else -1) if ctx.needs_input_grad[1] else None
        g_logk = w if ctx.needs_input_grad[0] else None
        if g_logk is not None and g_logk.shape != ctx.logk_shape:
            g_logk = g_logk.sum_to_size(ctx.logk_shape)
        return g_logk, g_pot, None, None


class _LogSumExp(torch.autograd.Function):
    """``log sum exp`` along ``dim`` with clamped exponentials; backward ``grad * exp(t - out)`` as torch's.

    Keeps the shifted exponentials ``e = exp(t - max)`` (exact zeros below ``4 tiny``) and their sums ``s`` for
    backward, ``grad * e / s``: one pass instead of recomputing the exponentials (five), for one tensor of the
    input's size (torch's keeps the input instead)."""

    @staticmethod
    def forward(ctx, t: Tensor, dim: int) -> Tensor:
        mx = t.amax(dim, keepdim=True)
        e = clamped_exp_(t - mx)
        s = e.sum(dim, keepdim=True)
        ctx.save_for_backward(e, s)
        ctx.dim = dim
        return s.log().add_(mx).squeeze(dim)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        e, s = ctx.saved_tensors
        return e * (grad.unsqueeze(ctx.dim) / s), None


class _Softmax(torch.autograd.Function):
    """Softmax along ``dim`` with clamped exponentials; backward ``out * (grad - <grad, out>)`` as torch's."""

    @staticmethod
    def forward(ctx, t: Tensor, dim: int) -> Tensor:
        e = clamped_exp_(t - t.amax(dim, keepdim=True))
        out = torch.nn.functional.threshold_(e.div_(e.sum(dim, keepdim=True)), 4 * torch.finfo(t.dtype).tiny, 0.0)
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (out,) = ctx.saved_tensors
        return out * (grad - (grad * out).sum(ctx.dim, keepdim=True)), None


def softmax(t: Tensor, dim: int) -> Tensor:
    """``torch.softmax(t, dim)`` without the subnormal slow path of ``exp`` (see :func:`clamped_exp_`): results
    below ``4 tiny`` are exactly 0. Differentiable (once); ``t`` finite (:func:`neg` for padding)."""
    if t.shape[dim] == 0:
        return torch.softmax(t, dim)
    return _Softmax.apply(t, dim)


def logsumexp(t: Tensor, dim: int) -> Tensor:
    """``torch.logsumexp(t, dim)`` without the subnormal slow path of ``exp`` (see :func:`clamped_exp_`).

    Differentiable (once; out of place); ``t`` must be finite (use :func:`neg` for padding). An empty ``dim``
    gives ``-inf`` as torch's does."""
    if t.shape[dim] == 0:
        return torch.logsumexp(t, dim)
    return _LogSumExp.apply(t, dim)


def lse_rows(logk: Tensor, pot: Tensor, keep: bool = False) -> Tensor:
    r""":math:`\log\sum_j \exp(\text{logk}_{ij} + \text{pot}_j)`: ``(*batch, n, m), (*batch, m) -> (*batch, n)``.

    ``keep``: keep the exponentials for a one-pass backward (memory O(n m) per call instead of O(n + m))."""
    return _LogSumExpStep.apply(logk, pot, -1, keep)


def lse_cols(logk: Tensor, pot: Tensor, keep: bool = False) -> Tensor:
    r""":math:`\log\sum_i \exp(\text{logk}_{ij} + \text{pot}_i)`: ``(*batch, n, m), (*batch, n) -> (*batch, m)``
    (``keep`` as :func:`lse_rows`)."""
    return _LogSumExpStep.apply(logk, pot, -2, keep)


State = Tuple[Tensor, ...]


def iterate(
    step: Callable[[State, Optional[Tensor]], State],
    state: State,
    *,
    max_iter: int,
    tol: float,
    check_every: int,
    batch_shape,
    device,
    dtype,
    error: Optional[Callable[[State, Optional[State]], Tuple[Tensor, State]]] = None,
) -> Tuple[State, Tensor, Tensor]:
    """Run ``step`` up to ``max_iter`` times, freezing each problem once its error is ``<= tol``.

    ``step(state, active)`` must leave problems with ``active == False`` unchanged (``active=None``
    means all active). ``error(state, prev_state)`` returns the per-problem error and (possibly
    refreshed) state; it runs without autograd every ``check_every`` iterations and at the last one.
    ``tol <= 0`` runs exactly ``max_iter`` iterations. Returns ``(state, n_iter, err)`` where
    ``n_iter`` counts the iterations each problem really ran (a multiple of ``check_every`` for those
    that converged) and ``err`` is its error at its last check (NaN if ``error`` is None).
    """
    n_iter = torch.zeros(batch_shape, dtype=torch.long, device=device)
    err = torch.full(batch_shape, float("nan"), dtype=dtype, device=device)
    active: Optional[Tensor] = None
    check_every = max(int(check_every), 1)
    for it in range(1, max_iter + 1):
        check = error is not None and (it == max_iter or (tol > 0 and it % check_every == 0))
        prev = state
        state = step(state, active)
        if not check:
            continue
        with torch.no_grad():
            e, state = error(state, prev)
        if active is None:
            err, n_iter = e, torch.full_like(n_iter, it)
        else:
            err = torch.where(active, e, err)
            n_iter = torch.where(active, torch.full_like(n_iter, it), n_iter)
        if tol > 0:
            active = ~(err <= tol)
            if not bool(active.any()):
                break
    else:
        if error is None or max_iter == 0:
            n_iter = torch.full_like(n_iter, max_iter)
            if error is not None:
                with torch.no_grad():
                    err, state = error(state, None)
    return state, n_iter, err
