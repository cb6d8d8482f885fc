"""Linear graph ODE blocks: ``dx/dt = A x`` on node features, integrated by torchdiffeq between given times.

:class:`GraphODEFunc` is the right-hand side (LT-OCF Eq. 12 on the stacked ``[users; items]`` state), an ``nn.Module`` so
that ``torchdiffeq.odeint_adjoint`` accepts it. :class:`ODEBlock` integrates it with one of the solvers below:

==================  ==================================================================================================
``euler``           explicit Euler (Eq. 2): residual connections; with step 1 and no residual it is a LightGCN layer
``rk4``             fourth-order Runge-Kutta (Eq. 3, torchdiffeq's 3/8 rule): 4 products with ``A`` per step
``implicit_adams``  Adams-Bashforth predictor + Adams-Moulton corrector (Eq. 4), functional iterations to ``rtol``/
                    ``atol``; needs 3 past steps, so the first steps of every integration are RK4 steps
``dopri5``          Dormand-Prince 5(4), adaptive steps to ``rtol`` / ``atol``
==================  ==================================================================================================

``step_size=None`` makes each fixed-step solver take one step per interval between requested times (torchdiffeq's
default, which the official LT-OCF code uses); a number makes it take steps of that size.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn

Solver = Literal["euler", "rk4", "implicit_adams", "dopri5"]
SOLVERS: tuple[str, ...] = ("euler", "rk4", "implicit_adams", "dopri5")
FIXED_STEP = ("euler", "rk4", "implicit_adams")


class GraphODEFunc(nn.Module):
    """``f(t, x) = A x`` for a fixed operator ``A`` (e.g. :class:`recot.nn.sparse.SparseOperator`), ``x: (N, d)``.

    Non-parametrised and time-independent (LT-OCF Sec. 3.2.2). ``nfe`` counts evaluations, the solvers' cost.
    """

    def __init__(self, operator=None):
        super().__init__()
        self.operator = operator
        self.nfe = 0

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.operator is None:
            raise RuntimeError("GraphODEFunc has no operator: set .operator (recommenders do this in bind(data))")
        self.nfe += 1
        return self.operator @ x


class ODEBlock(nn.Module):
    """Integrates ``dx/dt = func(t, x)`` from ``times[0]`` and returns the states at all ``times``.

    Args:
        func: the right-hand side, an ``nn.Module`` ``(t, x) -> dx/dt``.
        solver: ``euler``, ``rk4``, ``implicit_adams`` or ``dopri5``.
        step_size: step of the fixed-step solvers; None = one step per interval between requested times.
            Not allowed with ``dopri5`` (adaptive).
        rtol, atol: tolerances of ``dopri5``'s step control and of ``implicit_adams``' corrector iterations
            (official LT-OCF defaults 1e-7 / 1e-9).
        adjoint: gradients by the adjoint sensitivity method (``torchdiffeq.odeint_adjoint``: memory independent of
            the number of steps, one more backward integration) instead of backpropagating through the solver.
    """

    def __init__(self, func: nn.Module, solver: Solver = "rk4", step_size: Optional[float] = None,
                 rtol: float = 1e-7, atol: float = 1e-9, adjoint: bool = False):
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}; got {solver!r}")
        if step_size is not None:
            if solver not in FIXED_STEP:
                raise ValueError(f"step_size is for the fixed-step solvers ({', '.join(FIXED_STEP)}); {solver} chooses"
                                 f" its own steps from rtol/atol: leave step_size unset (null)")
            if not step_size > 0:
                raise ValueError(f"step_size must be > 0, got {step_size}")
        if not (rtol > 0 and atol > 0):
            raise ValueError(f"rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
        self.func = func
        self.solver, self.step_size, self.rtol, self.atol, self.adjoint = solver, step_size, rtol, atol, adjoint

    def forward(self, x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """``x: (N, d)`` state at ``times[0]``; ``times: (S,)`` strictly increasing -> ``(S, N, d)`` states."""
        import torchdiffeq  # imported here: recot.nn stays importable for models without ODEs

        options = {} if self.step_size is None else {"step_size": self.step_size}
        times = times.to(x.dtype)
        if self.adjoint:
            # the function has no parameters: only x and the times receive gradients
            return torchdiffeq.odeint_adjoint(self.func, x, times, rtol=self.rtol, atol=self.atol, method=self.solver,
                                              options=options, adjoint_params=())
        return torchdiffeq.odeint(self.func, x, times, rtol=self.rtol, atol=self.atol, method=self.solver,
                                  options=options)
