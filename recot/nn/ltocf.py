"""LT-OCF (Choi et al., CIKM'21): learnable-time ODE collaborative filtering.

The user and item embeddings co-evolve by the dual linear ODEs ``du/dt = A_{u->p} p``, ``dp/dt = A_{p->u} u``
(Eqs. 9, 12), i.e. one linear ODE ``dx/dt = A x`` on the stacked state ``x = [u; p]`` with LightGCN's symmetric
normalised adjacency ``A``. It is integrated from 0 to ``K`` through learnable times ``0 < t_1 < ... < t_T < K``
(Eq. 10); the states at ``0, t_1, ..., t_T, K`` are averaged (Eq. 11, ``w_i = 1 / (T + 2)``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from recot.nn.base import EmbeddingTables, GraphData
from recot.nn.ode import GraphODEFunc, ODEBlock, Solver
from recot.nn.sparse import Backend, SparseOperator

#: The smallest gap between consecutive times, as a fraction of K.
MIN_GAP = 1e-4


class LTOCF(EmbeddingTables):
    """LT-OCF as a layer loop: segment ``l`` integrates the ODE over ``[t_l, t_{l+1}]`` (``t_0 = 0``,
    ``t_{T+1} = K``), so ``num_layers = T + 1`` and wrappers can run their own steps between segments.

    ``residual`` chooses between the two forms of Eq. 10:

    - ``False`` (the official code's ``dual_res=False``, used for the paper's Table 3): a segment outputs only the
      integral ``x(t_{l+1}) - x(t_l)`` of its integration (the red residual terms removed) and the next segment starts
      from it. With ``t_i = i``, Euler and step 1 this is exactly LightGCN with ``K`` layers (Sec. 3.2.3, Eq. 13).
    - ``True``: one continuous trajectory; segment outputs are the states ``x(t_l)`` themselves.

    Learnable times are parametrised by their ``T + 1`` gaps, ``gap = m + (K - (T + 1) m) softmax([theta, 0])`` and
    ``t_i = gap_1 + ... + gap_i``, with ``theta`` of size ``T`` and the minimum gap ``m = MIN_GAP * K``: every gap is
    at least ``m`` and the gaps sum to ``K``, so ``0 < t_1 < ... < t_T < K`` holds by construction for any ``theta``
    (no clamping), and stays strict in float32 (``m`` is far above its resolution). The last gap's logit is fixed at
    0 (softmax is shift invariant). Near uniform gaps a step of ``delta`` in ``theta_i`` moves ``t_i`` by about
    ``K T / (T + 1)^2 * delta`` (0.75 delta for K = 4, T = 3), the scale of the official code's raw times.

    Args:
        embedding_dim: d (paper: 64).
        final_time: K, the end of the integration (paper: 4).
        num_times: T, the number of intermediate times (paper: 3).
        times: initial (learnable) or fixed intermediate times, strictly increasing in ``(0, K)``; None =
            ``t_i = i K / (T + 1)`` (the paper's fixed-time setting, Sec. 4.3.4, and the official initialisation).
        learnable_time: learn the times (LT-OCF) or keep them fixed.
        time_lr: learning rate of the times (paper: 1e-6 with 1e-4 for the embeddings); None = the optimizer's.
        solver: ``euler``, ``rk4`` (paper's best), ``implicit_adams`` or ``dopri5``; see :mod:`recot.nn.ode`.
        step_size: fixed-step solvers' step; None = one step per segment (as the official code).
        rtol, atol: tolerances of ``dopri5`` and of ``implicit_adams``' corrector (official: 1e-7, 1e-9).
        adjoint: gradients by the adjoint sensitivity method.
        polynomial_steps: Euler / RK4 steps as polynomials in ``A`` (same result, less work; see
            :mod:`recot.nn.ode`); False = torchdiffeq's generic steps.
        residual: see above (paper / official default: False).
        init_std: normal initialisation std (paper: 0.1); None = Xavier uniform.
        sparse_backend: see :class:`recot.nn.sparse.SparseOperator`.
    """

    def __init__(self, embedding_dim: int = 64, final_time: float = 4.0, num_times: int = 3,
                 times: Optional[Sequence[float]] = None, learnable_time: bool = True,
                 time_lr: Optional[float] = 1e-6, solver: Solver = "rk4", step_size: Optional[float] = None,
                 rtol: float = 1e-7, atol: float = 1e-9, adjoint: bool = False, residual: bool = False,
                 polynomial_steps: bool = True, init_std: Optional[float] = 0.1, sparse_backend: Backend = "auto"):
        super().__init__(embedding_dim, init_std)
        if not final_time > 0:
            raise ValueError(f"final_time (K) must be > 0, got {final_time}")
        if num_times < 0:
            raise ValueError(f"num_times (T) must be >= 0, got {num_times}")
        if times is None:
            times = [i * final_time / (num_times + 1) for i in range(1, num_times + 1)]
        times = [float(t) for t in times]
        if len(times) != num_times:
            raise ValueError(f"times needs num_times = {num_times} values, got {len(times)}: {times}")
        bounds = [0.0, *times, float(final_time)]
        min_gap = MIN_GAP * final_time
        if any(b - a <= min_gap for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"times must be strictly increasing inside (0, final_time={final_time}), at least "
                             f"{min_gap:g} (MIN_GAP * final_time) apart and from 0 and final_time; got {times}")
        if time_lr is not None and not time_lr > 0:
            raise ValueError(f"time_lr must be > 0 or null (the optimizer's learning rate), got {time_lr}")
        self.final_time, self.num_times = float(final_time), num_times
        self.num_layers = num_times + 1
        self.learnable_time, self.time_lr, self.residual = learnable_time, time_lr, residual
        self.sparse_backend = sparse_backend
        self.ode = ODEBlock(GraphODEFunc(), solver, step_size, rtol, atol, adjoint, polynomial_steps)
        free = torch.tensor([b - a for a, b in zip(bounds, bounds[1:])], dtype=torch.float64) - min_gap
        if learnable_time:
            self.time_logits = nn.Parameter((free[:-1].log() - free[-1].log()).float())
        else:
            self.register_buffer("fixed_times", torch.tensor(times, dtype=torch.float32))
        self.last_nfe = 0

    # --- times ---------------------------------------------------------------------------------------
    def times(self) -> torch.Tensor:
        """All segment bounds ``[0, t_1, ..., t_T, K]``: ``(T + 2,)`` float64, differentiable in the time logits."""
        if self.learnable_time:
            # float64: uniform gaps give the exact times i K / (T + 1) once rounded to float32
            logits = torch.cat([self.time_logits.double(), self.time_logits.new_zeros(1, dtype=torch.float64)])
            min_gap = MIN_GAP * self.final_time
            gaps = min_gap + (self.final_time - (self.num_times + 1) * min_gap) * torch.softmax(logits, 0)
            inner = torch.cumsum(gaps, 0)[:-1]
        else:
            inner = self.fixed_times.double()
        # exact end points: the last cumulative sum is K only up to rounding
        return torch.cat([inner.new_zeros(1), inner, inner.new_full((1,), self.final_time)])

    # --- graph and layers ----------------------------------------------------------------------------
    def attach(self, data: GraphData) -> None:
        self.ode.func.operator = SparseOperator(data.adjacency, symmetric=True, backend=self.sparse_backend)

    def propagate(self, layer: int, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment ``layer``: integrate ``[users; items]`` over ``[t_layer, t_{layer+1}]`` (Eq. 10)."""
        if self.ode.func.operator is None:
            raise RuntimeError("LTOCF has no graph: call bind(data) first (the ranking task does this in setup)")
        x = torch.cat([users, items])
        out = self.ode(x, self.times()[layer: layer + 2], final_only=True)
        if not self.residual:
            out = out - x
        return out[: self.num_users], out[self.num_users:]

    def combine(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 11 with equal weights: the mean over ``0, t_1, ..., t_T, K``."""
        users = torch.stack([u for u, _ in layers]).mean(0)
        items = torch.stack([i for _, i in layers]).mean(0)
        return users, items

    def embed(self, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
        # Same result as the generic layer loop (initial/propagate/combine), kept on the stacked (U + I, d) state: one
        # concatenation and one split instead of one per segment (the loop is memory-bound on large graphs).
        if self.ode.func.operator is None:
            raise RuntimeError("LTOCF has no graph: call bind(data) first (the ranking task does this in setup)")
        self.ode.func.nfe = 0
        times = self.times()
        x = torch.cat(self.initial())
        total = x
        for layer in range(self.num_layers):
            y = self.ode(x, times[layer: layer + 2], final_only=True)
            x = y if self.residual else y - x
            total = total + x
        self.last_nfe = self.ode.func.nfe
        total = total / (self.num_layers + 1)
        return total[: self.num_users], total[self.num_users:]

    # --- training -------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Embeddings at the optimizer's learning rate; the time logits at ``time_lr`` and without weight decay."""
        if not self.learnable_time or self.time_lr is None:
            return super().param_groups()
        rest = [p for p in self.parameters() if p.requires_grad and p is not self.time_logits]
        return [{"params": rest}, {"params": [self.time_logits], "lr": self.time_lr, "weight_decay": 0.0}]

    def log_values(self) -> dict[str, float]:
        """The intermediate times ``t1..tT`` and the ODE function evaluations of the last forward pass (``nfe``)."""
        with torch.no_grad():
            inner = self.times()[1:-1].tolist()
        return {**{f"t{i}": t for i, t in enumerate(inner, 1)}, "nfe": float(self.last_nfe)}

    def extra_repr(self) -> str:
        return (f"K={self.final_time:g}, T={self.num_times}, solver={self.ode.solver}, learnable_time="
                f"{self.learnable_time}, residual={self.residual}, adjoint={self.ode.adjoint}")
