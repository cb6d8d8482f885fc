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

Polynomial steps: on the linear autonomous ODE ``dx/dt = A x`` an explicit Runge-Kutta step of size ``h`` is a
polynomial in ``hA`` (the method's stability function): ``I + hA`` for Euler and ``I + hA + (hA)^2/2 + (hA)^3/6 +
(hA)^4/24`` for every 4-stage order-4 method, torchdiffeq's ``rk4`` included. With ``polynomial_steps=True`` (default)
Euler and RK4 steps of a :class:`GraphODEFunc` are evaluated by Horner's rule, ``x + hA(x + h/2 A(x + h/3 A(x +
h/4 A x)))``: the same products with ``A`` and the same result up to rounding (tested), with far fewer element-wise
passes over the state than torchdiffeq's generic stages (timed in ``benchmarks/ltocf_gowalla.py``). Other solvers,
``step_size`` and ``adjoint`` use torchdiffeq.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn

Solver = Literal["euler", "rk4", "implicit_adams", "dopri5"]
SOLVERS: tuple[str, ...] = ("euler", "rk4", "implicit_adams", "dopri5")
FIXED_STEP = ("euler", "rk4", "implicit_adams")
#: Order of the step polynomial of the solvers with polynomial steps.
POLYNOMIAL_ORDER = {"euler": 1, "rk4": 4}


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
        polynomial_steps: evaluate Euler / RK4 steps (one per interval, no adjoint) of a :class:`GraphODEFunc` as
            polynomials in ``A`` (module docstring); False = always torchdiffeq.
    """

    def __init__(self, func: nn.Module, solver: Solver = "rk4", step_size: Optional[float] = None,
                 rtol: float = 1e-7, atol: float = 1e-9, adjoint: bool = False, polynomial_steps: bool = True):
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
        self.polynomial_steps = polynomial_steps

    @property
    def uses_polynomial_steps(self) -> bool:
        return (self.polynomial_steps and self.solver in POLYNOMIAL_ORDER and self.step_size is None
                and not self.adjoint and isinstance(self.func, GraphODEFunc))

    def forward(self, x: torch.Tensor, times: torch.Tensor, final_only: bool = False) -> torch.Tensor:
        """``x: (N, d)`` state at ``times[0]``; ``times: (S,)`` strictly increasing -> ``(S, N, d)`` states, or
        the ``(N, d)`` state at ``times[-1]`` with ``final_only``."""
        times = times.to(x.dtype)
        if self.uses_polynomial_steps:
            states = [x]
            for t0, t1 in zip(times[:-1], times[1:]):
                states.append(self._polynomial_step(states[-1], t0, t1 - t0))
            return states[-1] if final_only else torch.stack(states)
        out = self._odeint(x, times)
        return out[-1] if final_only else out

    def _polynomial_step(self, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``P(hA) x`` by Horner's rule, ``P`` the solver's stability polynomial (Euler: degree 1, RK4: degree 4)."""
        v = x
        for k in range(POLYNOMIAL_ORDER[self.solver], 0, -1):
            v = torch.addcmul(x, h / k, self.func(t, v))
        return v

    def _odeint(self, x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        import torchdiffeq  # imported here: recot.nn stays importable for models without ODEs

        options = {} if self.step_size is None else {"step_size": self.step_size}
        if self.adjoint:
            # the function has no parameters: only x and the times receive gradients
            return torchdiffeq.odeint_adjoint(self.func, x, times, rtol=self.rtol, atol=self.atol, method=self.solver,
                                              options=options, adjoint_params=())
        return torchdiffeq.odeint(self.func, x, times, rtol=self.rtol, atol=self.atol, method=self.solver,
                                  options=options)
