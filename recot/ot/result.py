"""The result object every OT solver in :mod:`recot.ot` returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

__all__ = ["OTResult"]


@dataclass
class OTResult:
    r"""Solution of a batch of (regularized) OT problems.

    Attributes:
        plan: ``(*batch, n, m)`` transport plan :math:`P`; exactly 0 on padded rows/columns.
        value: ``(*batch,)`` transport cost :math:`\langle C, P\rangle` per problem, *without* the
            regularization term (POT's ``ot.solve`` includes it in its ``value``; recot does not).
        f: ``(*batch, n)`` dual potential of the rows, or ``None`` for solvers without potentials
            (BADMM). For the Sinkhorn-type solvers :math:`P_{ij} = \exp((f_i + g_j - C_{ij})/\varepsilon)`;
            0 on padded entries.
        g: ``(*batch, m)`` dual potential of the columns (see ``f``).
        n_iter: ``(*batch,)`` int64, iterations (greedy steps for Greenkhorn) each problem really ran.
        err: ``(*batch,)`` the solver's error at its last check (see each solver's docstring).
        converged: ``(*batch,)`` bool, ``err <= tol``.
    """

    plan: Tensor
    value: Tensor
    f: Optional[Tensor]
    g: Optional[Tensor]
    n_iter: Tensor
    err: Tensor
    converged: Tensor

    @property
    def batch_shape(self):
        """The leading batch dimensions shared by every field."""
        return self.value.shape
