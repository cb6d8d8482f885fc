r"""ROT pooling layers (Xu & Cheng, TPAMI 2023): ROTP_S, ROTP_B-E, ROTP_B-Q as PyG aggregations.

:math:`f_{rot}(X;\theta)` is the readout (Eq. 5) of the plan of the regularized OT problem (Eq. 3) solved by
:mod:`recot.ot.rot`; every weight :math:`\alpha_i` (and the solver's :math:`\tau` or :math:`\rho`) is
:math:`\mathrm{softplus}` of a learnable parameter (Sec. 4), the priors :math:`p_0, q_0` are uniform or learned.
"""
from __future__ import annotations

import functools
import math
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recot.nn.aggr.base import AttentionScore, SetAggregation, masked_softmax
from recot.ot.rot import ROTResult, ROTWeights, rot_badmm, rot_readout, rot_sinkhorn, similarity

WEIGHTS = ("alpha0", "alpha1", "alpha2", "alpha3", "step")


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    return torch.compile(fn, dynamic=True)


def _solver(fn, compiled: bool):
    return _compiled(fn) if compiled else fn


def inverse_softplus(value: float) -> float:
    """The parameter whose softplus is ``value > 0``."""
    return value if value > 20 else math.log(math.expm1(value))


class ROTPooling(SetAggregation):
    r"""Regularized optimal transport pooling, ``(num_elements, D) -> (num_sets, D)``.

    Args:
        in_channels: D; needed only for learned priors (``p0="learned"``, ``q0="attention"``).
        solver: ``"sinkhorn"`` (ROTP_S, Alg. 1), ``"badmm-e"`` (ROTP_B-E) or ``"badmm-q"`` (ROTP_B-Q, Alg. 2).
        num_modules: T unrolled modules (the paper uses 4 in its experiments, 4..16 in its search).
        inner_iter: K Sinkhorn iterations per module (ROTP_S only; the official code uses 5).
        alpha0, alpha1, alpha2, alpha3: initial weights of Eq. 3 (structure, smoothness, priors of p, q).
        step: initial proximal weight :math:`\tau` (ROTP_S, Eq. 15) or Bregman weight :math:`\rho` (ROTP_B, Eq. 21).
        learn: which of ``alpha0..alpha3, step`` are learnable (``softplus`` of a parameter initialised at the
            value); the others stay fixed at their value, where 0 and ``inf`` are allowed (``alpha0 = 0`` skips the
            structural term, ``inf`` makes a marginal prior a hard constraint).
        per_module: one value per module for the learnable weights (the official code's default) instead of one.
        p0: ``"uniform"`` or ``"learned"``: :math:`\mathrm{softmax}(UX\mathbf 1_N)` (Sec. 4).
        q0: ``"uniform"``, ``"attention"``: :math:`\mathrm{softmax}(w^\top\tanh(VX))` (Sec. 4, Ilse et al.), or
            ``"param"``: learnable logits over ``num_elements`` positions (sets of one fixed size, e.g. HROTP's heads).
        attention_dim: hidden size of the attention (default ``in_channels``).
        num_elements: set size for ``q0="param"``.
        similarity: :math:`\Sigma_1, \Sigma_2` for the structural term: ``covariance`` (paper), ``cosine``, ``rbf``.
        marginals: BADMM's treatment of the priors: ``"relaxed"`` (solved; default) or ``"paper"`` (Eqs. 26-27 as
            printed, where :math:`\alpha_2, \alpha_3` have no effect; see :func:`recot.ot.badmm_step`).
        compile_solver: run the solver through ``torch.compile`` (``dynamic=True``; one compiled solver per process,
            shared by every layer): elementwise passes of a module fuse, 20-30% off a training step on a CPU
            (``benchmarks/rotp_speed.py --compile``), after a first-batch compilation of about a minute per solver
            and set-size pattern; needs a C++ compiler on a CPU.

    The paper assumes non-negative inputs (post-ReLU features); the layer accepts any real input.
    """

    # A bucket of padded sets costs T modules of ~100 small tensor calls forward and backward, as much as some
    # 500 padded elements (measured on a PROTEINS batch, one thread: ``benchmarks/rotp_speed.py``).
    bucket_overhead = 512.0

    def __init__(self, in_channels: Optional[int] = None, solver: Literal["sinkhorn", "badmm-e", "badmm-q"] = "badmm-e",
                 num_modules: int = 4, inner_iter: int = 5, alpha0: float = 0.1, alpha1: float = 1.0,
                 alpha2: float = 1.0, alpha3: float = 1.0, step: float = 1.0,
                 learn: Sequence[str] = WEIGHTS, per_module: bool = False,
                 p0: Literal["uniform", "learned"] = "uniform",
                 q0: Literal["uniform", "attention", "param"] = "uniform", attention_dim: Optional[int] = None,
                 num_elements: Optional[int] = None, similarity: Literal["covariance", "cosine", "rbf"] = "covariance",
                 marginals: Literal["relaxed", "paper"] = "relaxed", compile_solver: bool = False):
        super().__init__()
        if solver not in ("sinkhorn", "badmm-e", "badmm-q"):
            raise ValueError(f"solver must be 'sinkhorn', 'badmm-e' or 'badmm-q', got {solver!r}")
        unknown = set(learn) - set(WEIGHTS)
        if unknown:
            raise ValueError(f"learn: unknown weights {sorted(unknown)}; expected names from {WEIGHTS}")
        if num_modules < 1:
            raise ValueError(f"num_modules must be >= 1, got {num_modules}")
        self.in_channels, self.solver, self.num_modules, self.inner_iter = in_channels, solver, num_modules, inner_iter
        self.similarity, self.marginals, self.p0_mode, self.q0_mode = similarity, marginals, p0, q0
        self.compile_solver = compile_solver
        init = dict(alpha0=alpha0, alpha1=alpha1, alpha2=alpha2, alpha3=alpha3, step=step)
        self.fixed: dict[str, float] = {}
        self.raw = nn.ParameterDict()
        for name in WEIGHTS:
            value = float(init[name])
            if name in learn:
                if not (0 < value < math.inf):
                    raise ValueError(f"learnable {name} needs a finite initial value > 0, got {value}")
                shape = (num_modules,) if per_module else ()
                self.raw[name] = nn.Parameter(torch.full(shape, inverse_softplus(value)))
            else:
                if value < 0 or (name == "step" and value == 0):
                    raise ValueError(f"fixed {name} must be >= 0 (step > 0), got {value}")
                self.fixed[name] = value
        needs_dim = p0 == "learned" or q0 == "attention"
        if needs_dim and in_channels is None:
            raise ValueError("ROTPooling: p0='learned' or q0='attention' needs in_channels")
        self.p0_net = nn.Linear(in_channels, in_channels, bias=False) if p0 == "learned" else None
        self.q0_net = None
        if q0 == "attention":
            self.q0_net = AttentionScore(in_channels, attention_dim or in_channels)
        self.q0_logits = None
        if q0 == "param":
            if not num_elements:
                raise ValueError("ROTPooling: q0='param' needs num_elements (the fixed set size)")
            self.q0_logits = nn.Parameter(torch.zeros(num_elements))

    def weights(self) -> ROTWeights:
        """Current :class:`~recot.ot.rot.ROTWeights` (softplus of the parameters, fixed values as floats)."""
        return ROTWeights(*(F.softplus(self.raw[n]) if n in self.raw else self.fixed[n] for n in WEIGHTS))

    def priors(self, x: Tensor, mask: Optional[Tensor]) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """``p0: (B, D)`` and ``q0: (B, N)`` (None = uniform over real elements)."""
        p0 = q0 = None
        if self.p0_net is not None:
            total = x if mask is None else x * mask[..., None].to(x.dtype)
            p0 = torch.softmax(self.p0_net(total.sum(-2)), -1)
        if self.q0_net is not None:
            q0 = masked_softmax(self.q0_net(x).squeeze(-1), mask)
        elif self.q0_logits is not None:
            if x.shape[-2] != self.q0_logits.numel():
                raise ValueError(f"ROTPooling(q0='param') was built for sets of {self.q0_logits.numel()} elements, "
                                 f"got {x.shape[-2]}")
            q0 = masked_softmax(self.q0_logits.expand(x.shape[:-1]), mask)
        return p0, q0

    def solve(self, x: Tensor, mask: Optional[Tensor] = None, stats: bool = True) -> ROTResult:
        """The plan of Eq. 3 for padded sets ``x: (B, N, D)``: a :class:`~recot.ot.rot.ROTResult` ``(B, D, N)``
        (``stats=False``: ``log_plan`` only, up to a constant per set, as :meth:`dense` needs)."""
        w = self.weights()
        p0, q0 = self.priors(x, mask)
        structural = "alpha0" in self.raw or self.fixed["alpha0"] > 0
        structure = similarity(x, mask, self.similarity) if structural else None
        if self.solver == "sinkhorn":
            solve = _solver(rot_sinkhorn, self.compile_solver)
            return solve(x, mask, weights=w, p0=p0, q0=q0, structure=structure, num_modules=self.num_modules,
                         inner_iter=self.inner_iter, stats=stats)
        solve = _solver(rot_badmm, self.compile_solver)
        return solve(x, mask, weights=w, reg_type="entropic" if self.solver == "badmm-e" else "quadratic", p0=p0,
                     q0=q0, structure=structure, num_modules=self.num_modules, marginals=self.marginals, stats=stats)

    def dense(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return rot_readout(x, self.solve(x, mask, stats=False).log_plan, mask)

    def log_values(self) -> dict[str, Tensor]:
        """The learnable weights (mean over modules), for logging."""
        return {n: F.softplus(p.detach()).mean() for n, p in self.raw.items()}

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(solver={self.solver}, num_modules={self.num_modules}, "
                f"learn={list(self.raw)}, p0={self.p0_mode}, q0={self.q0_mode})")


class ROTPoolingS(ROTPooling):
    r"""ROTP_S: Sinkhorn-based ROT pooling (Alg. 1). As in the paper's experiments :math:`\alpha_0 = 0` (fixed) to
    avoid numerical instability; :math:`\alpha_1, \alpha_2, \alpha_3, \tau` learnable."""

    def __init__(self, in_channels: Optional[int] = None, num_modules: int = 4, inner_iter: int = 5,
                 alpha0: float = 0.0, alpha1: float = 1.0, alpha2: float = 1.0, alpha3: float = 1.0, step: float = 1.0,
                 learn: Sequence[str] = ("alpha1", "alpha2", "alpha3", "step"), per_module: bool = False,
                 p0: Literal["uniform", "learned"] = "uniform",
                 q0: Literal["uniform", "attention", "param"] = "uniform", attention_dim: Optional[int] = None,
                 num_elements: Optional[int] = None, similarity: Literal["covariance", "cosine", "rbf"] = "covariance",
                 compile_solver: bool = False):
        super().__init__(in_channels, "sinkhorn", num_modules, inner_iter, alpha0, alpha1, alpha2, alpha3, step, learn,
                         per_module, p0, q0, attention_dim, num_elements, similarity, compile_solver=compile_solver)


class ROTPoolingBE(ROTPooling):
    r"""ROTP_B-E: Bregman ADMM ROT pooling with the entropic smoothness (Alg. 2); all weights, :math:`\alpha_0`
    and :math:`\rho` included, learnable."""

    SOLVER = "badmm-e"

    def __init__(self, in_channels: Optional[int] = None, num_modules: int = 4, alpha0: float = 0.1,
                 alpha1: float = 1.0, alpha2: float = 1.0, alpha3: float = 1.0, step: float = 1.0,
                 learn: Sequence[str] = WEIGHTS, per_module: bool = False,
                 p0: Literal["uniform", "learned"] = "uniform",
                 q0: Literal["uniform", "attention", "param"] = "uniform", attention_dim: Optional[int] = None,
                 num_elements: Optional[int] = None, similarity: Literal["covariance", "cosine", "rbf"] = "covariance",
                 marginals: Literal["relaxed", "paper"] = "relaxed", compile_solver: bool = False):
        super().__init__(in_channels, self.SOLVER, num_modules, 0, alpha0, alpha1, alpha2, alpha3, step, learn,
                         per_module, p0, q0, attention_dim, num_elements, similarity, marginals, compile_solver)


class ROTPoolingBQ(ROTPoolingBE):
    r"""ROTP_B-Q: Bregman ADMM ROT pooling with the quadratic smoothness (Alg. 2); arguments as
    :class:`ROTPoolingBE`. Keep :math:`\rho` of the order of :math:`\alpha_1` or larger: the linearised quadratic
    step oscillates when :math:`\alpha_1 \gg \rho` (it stays finite)."""

    SOLVER = "badmm-q"
