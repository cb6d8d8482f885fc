r"""Sinkhorn on a factored kernel :math:`K = U W + S` (low rank plus sparse), never forming an ``n x m`` matrix.

The shared engine of Sparse, Nyström and LCN-Sinkhorn (Klicpera/Gasteiger, Lienen & Günnemann, ICML 2021,
Sec. 3-5) and of GTN's BP matrix with these approximations (:mod:`recot.ot.bp`):

* Nyström: :math:`K_{Nys} = U A^{-1} V` with :math:`U = e^{-C(x, z)/\varepsilon}`, :math:`W = A^{-1} V`;
* Sparse: :math:`K^{sp}` = the exact kernel on neighbour pairs only;
* LCN: :math:`K_{LCN} = K_{Nys} - K^{sp}_{Nys} + K^{sp}` (Eq. 6): the low-rank part plus a *signed* sparse part.

Every factor is kept in log form, ``log|.|`` and a sign, because :math:`e^{-C/\varepsilon}` under- and overflows
in float32 long before the problem becomes hard. One Sinkhorn half-step computes
:math:`\log (K e^{\gamma})_i` with two batched matrix-vector products and one sparse product, O(n (l + k)).

Float32 stability: "absorbing scalings" (Schmitzer 2019, *Stabilized sparse scaling algorithms*, Sec. 3.2,
adapted to the low-rank factors). With reference potentials :math:`\bar\gamma` the row operator stores

.. math::
    \omega_k = \max_j (\log W_{kj} + \bar\gamma_j), \quad
    \tilde W_{kj} = \pm e^{\log W_{kj} + \bar\gamma_j - \omega_k}, \quad
    \mu_i = \max\big(\max_k (\log U_{ik} + \omega_k),\ \max_{j \in N(i)} (\log S_{ij} + \bar\gamma_j)\big),

:math:`\hat U_{ik} = e^{\log U_{ik} + \omega_k - \mu_i}`,
:math:`\tilde S_{ij} = \pm e^{\log S_{ij} + \bar\gamma_j - \mu_i}` (all entries at most 1 in magnitude), and applies
:math:`(K e^{\gamma})_i = e^{\mu_i}\,[\hat U (\tilde W \tau) + \tilde S \tau]_i`
with :math:`\tau = e^{\gamma - \bar\gamma}`.
When :math:`|\gamma - \bar\gamma|` exceeds ``absorb_threshold`` the potentials are absorbed into the factors (the
operator is rebuilt, one log-domain pass). ``absorb_threshold=0`` rebuilds every half-step, i.e. plain log-domain
Sinkhorn. For a nonnegative kernel the largest term bounds the sum from below, so nothing underflows; the signed
Nyström/LCN kernels can give a row sum :math:`\le 0` (Nyström's known failure at small :math:`\varepsilon`,
where :math:`K_{Nys}` has negative entries). A nonnegative kernel's bracket is at least :math:`e^{-T}`
(``T = absorb_threshold``: its largest term alone contributes that much); a row (column) whose bracket falls below
:math:`10^{-6} e^{-T}` keeps its previous potential instead of jumping to :math:`+\infty`. Its marginal then stays
wrong, the error (measured with the signed sums) stays large and the problem reports ``converged=False``.

Shapes: one problem per leading index ``B`` (callers flatten their batch dims); ``n`` rows, ``m`` columns,
``l`` landmarks (rank), ``nnz`` sparse entries over the whole batch. Sparse entries use flattened indices
``row = b * n + i``, ``col = b * m + j``, so the sparse part of a batch is one block-diagonal CSR matrix.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .cost import check_point_cost, sq_euclidean, sq_to_cost
from .utils import iterate, masked_log, masked_update, neg, prepare_weights

__all__ = ["FactoredKernel", "FactoredPlan", "SparsePattern", "factored_sinkhorn", "sparse_matvec"]


# --------------------------------------------------------------------------------------------------
# Sparse structure
# --------------------------------------------------------------------------------------------------


class SparsePattern:
    """Nonzero positions of a batch of ``(n, m)`` sparse matrices as one block-diagonal ``(B n, B m)`` matrix.

    Args:
        rows: ``(nnz,)`` flattened row indices ``b * n + i``; cols: ``(nnz,)`` ``b * m + j``. No duplicates.
        shape: ``(B, n, m)``.

    Entries are stored sorted by (row, col) (CSR order); :meth:`from_pairs` sorts and removes duplicates.
    The CSR structure of the matrix and of its transpose (int32 indices where they fit: torch's CPU kernel
    converts int64 indices on every product) is built once and shared by every product.
    """

    def __init__(self, rows: Tensor, cols: Tensor, shape: Tuple[int, int, int]):
        self.shape = tuple(int(s) for s in shape)
        B, n, m = self.shape
        self.rows, self.cols = rows.long(), cols.long()
        self.batch = torch.div(self.rows, n, rounding_mode="floor") if n > 0 else self.rows
        self._itype = torch.int32 if max(B * n, B * m, self.rows.numel()) < 2**31 - 1 else torch.int64
        self._crow = _crow(self.rows, B * n).to(self._itype)
        self._col = self.cols.to(self._itype)
        self._transpose = None

    @property
    def transpose_structure(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(perm, crow, col)`` of the transpose, built on first use: entries sorted by (col, row), ``perm`` maps
        transposed positions to stored ones."""
        if self._transpose is None:
            B, n, m = self.shape
            perm = torch.argsort(self.cols * max(B * n, 1) + self.rows)
            self._transpose = (perm, _crow(self.cols[perm], B * m).to(self._itype), self.rows[perm].to(self._itype))
        return self._transpose

    @property
    def perm(self) -> Tensor:
        return self.transpose_structure[0]

    @classmethod
    def from_pairs(cls, batch: Tensor, i: Tensor, j: Tensor, shape: Tuple[int, int, int]) -> "SparsePattern":
        """Pattern from per-problem indices (any order, duplicates allowed)."""
        B, n, m = shape
        rows, cols = batch.long() * n + i.long(), batch.long() * m + j.long()
        key = torch.unique(rows * max(B * m, 1) + cols)  # sorted: CSR order, duplicates dropped
        return cls(torch.div(key, max(B * m, 1), rounding_mode="floor"), key % max(B * m, 1), shape)

    @property
    def nnz(self) -> int:
        return int(self.rows.numel())

    def local(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(batch, i, j)`` per entry."""
        _, n, m = self.shape
        return self.batch, self.rows - self.batch * n, self.cols - self.batch * m

    def csr(self, values: Tensor, transpose: bool = False) -> Tensor:
        """The CSR matrix ``S`` (or ``S^T``) with these values (no autograd)."""
        B, n, m = self.shape
        if transpose:
            perm, crow, col = self.transpose_structure
            vals, size = values[perm], (B * m, B * n)
        else:
            crow, col, vals, size = self._crow, self._col, values, (B * n, B * m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(crow, col, vals.contiguous(), size)

    def product(self, values: Tensor, vec: Tensor, transpose: bool = False) -> Tensor:
        """``S @ vec`` (or ``S^T @ vec``) for ``vec: (B m,)`` or ``(B m, k)`` without autograd bookkeeping."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return self.csr(values, transpose) @ vec.contiguous()

    def segment_max(self, values: Tensor, along_rows: bool = True) -> Tensor:
        """Per-row (or per-column) maximum of ``values``; :func:`neg` where a row holds no entry."""
        B, n, m = self.shape
        index, size = (self.rows, B * n) if along_rows else (self.cols, B * m)
        out = torch.full((size,), neg(values.dtype), dtype=values.dtype, device=values.device)
        return out.scatter_reduce(0, index, values, reduce="amax", include_self=True)

    def segment_sum(self, values: Tensor, by: str = "batch") -> Tensor:
        """Sum of ``values`` per problem (``by="batch"``), per row or per column."""
        B, n, m = self.shape
        index, size = {"batch": (self.batch, B), "row": (self.rows, B * n), "col": (self.cols, B * m)}[by]
        out = torch.zeros(size, dtype=values.dtype, device=values.device)
        return out.index_add(0, index, values)

    def to(self, device) -> "SparsePattern":
        if self.rows.device == torch.device(device):
            return self
        return SparsePattern(self.rows.to(device), self.cols.to(device), self.shape)


def _crow(sorted_index: Tensor, size: int) -> Tensor:
    counts = torch.bincount(sorted_index, minlength=size)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class _SparseMatVec(torch.autograd.Function):
    """``S @ v`` with gradients for both the values of ``S`` and ``v`` (torch's CSR backward covers neither
    cheaply): ``dS_e = g_{row_e} v_{col_e}``, ``dv = S^T g``."""

    @staticmethod
    def forward(ctx, values: Tensor, vec: Tensor, pattern: SparsePattern, transpose: bool) -> Tensor:
        ctx.save_for_backward(values, vec)
        ctx.pattern, ctx.transpose = pattern, transpose
        return pattern.product(values, vec, transpose)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        values, vec = ctx.saved_tensors
        p = ctx.pattern
        g_values = g_vec = None
        if ctx.needs_input_grad[0]:
            out_idx, in_idx = (p.cols, p.rows) if ctx.transpose else (p.rows, p.cols)
            g_values = grad[out_idx] * vec[in_idx]
            if g_values.dim() > 1:
                g_values = g_values.sum(-1)
        if ctx.needs_input_grad[1]:
            g_vec = p.product(values, grad, not ctx.transpose)
        return g_values, g_vec, None, None


def sparse_matvec(pattern: SparsePattern, values: Tensor, vec: Tensor, transpose: bool = False,
                  csr: Optional[Tensor] = None) -> Tensor:
    """Differentiable ``S @ vec`` (``S^T @ vec``); ``vec: (B m,)`` or ``(B m, k)`` flattened over the batch.
    ``csr``: the matrix already built from ``values`` (reused when nothing needs a gradient)."""
    if torch.is_grad_enabled() and (values.requires_grad or vec.requires_grad):
        return _SparseMatVec.apply(values, vec, pattern, transpose)
    if csr is None:
        return pattern.product(values, vec, transpose)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return csr @ vec.contiguous()


# --------------------------------------------------------------------------------------------------
# The factored kernel
# --------------------------------------------------------------------------------------------------


@dataclass
class FactoredKernel:
    r"""A batch of kernels :math:`K = U W + S`, every part in log form.

    Attributes:
        shape: ``(B, n, m)``.
        log_u: ``(B, n, l)`` :math:`\log U` (nonnegative factor) or None (no low-rank part).
        log_w: ``(B, l, m)`` :math:`\log|W|`; sign_w: ``(B, l, m)`` its sign (+-1) or None = all positive.
        pattern: :class:`SparsePattern` of ``S`` or None; log_s: ``(nnz,)`` :math:`\log|S|`; sign_s: its sign or None.
    """

    shape: Tuple[int, int, int]
    log_u: Optional[Tensor] = None
    log_w: Optional[Tensor] = None
    sign_w: Optional[Tensor] = None
    pattern: Optional[SparsePattern] = None
    log_s: Optional[Tensor] = None
    sign_s: Optional[Tensor] = None

    def __post_init__(self):
        if (self.log_u is None) != (self.log_w is None):
            raise ValueError("log_u and log_w must be given together")
        if (self.pattern is None) != (self.log_s is None):
            raise ValueError("pattern and log_s must be given together")
        if self.log_u is None and self.pattern is None:
            raise ValueError("a FactoredKernel needs a low-rank part, a sparse part or both")

    @property
    def lowrank(self) -> bool:
        return self.log_u is not None

    @property
    def sparse(self) -> bool:
        return self.pattern is not None

    @property
    def rank(self) -> int:
        return 0 if self.log_u is None else int(self.log_u.shape[-1])

    @property
    def ref(self) -> Tensor:
        return self.log_u if self.log_u is not None else self.log_s

    def masked(self, mask_a: Optional[Tensor], mask_b: Optional[Tensor]) -> "FactoredKernel":
        """The kernel with padded rows/columns removed (log factors :func:`neg`, sparse entries dropped)."""
        if mask_a is None and mask_b is None:
            return self
        out = replace(self)
        lo = neg(self.ref.dtype)
        if self.lowrank:
            if mask_a is not None:
                out.log_u = self.log_u.masked_fill(~mask_a[..., None], lo)
            if mask_b is not None:
                out.log_w = self.log_w.masked_fill(~mask_b[..., None, :], lo)
        if self.sparse:
            keep = torch.ones_like(self.pattern.rows, dtype=torch.bool)
            if mask_a is not None:
                keep &= mask_a.reshape(-1)[self.pattern.rows]
            if mask_b is not None:
                keep &= mask_b.reshape(-1)[self.pattern.cols]
            if not bool(keep.all()):
                out.pattern = SparsePattern(self.pattern.rows[keep], self.pattern.cols[keep], self.shape)
                out.log_s = self.log_s[keep]
                out.sign_s = None if self.sign_s is None else self.sign_s[keep]
        return out

    def detach(self) -> "FactoredKernel":
        d = lambda t: None if t is None else t.detach()  # noqa: E731
        return replace(self, log_u=d(self.log_u), log_w=d(self.log_w), sign_w=d(self.sign_w), log_s=d(self.log_s),
                       sign_s=d(self.sign_s))

    def to_dense(self) -> Tensor:
        """``(B, n, m)`` kernel: for tests and small problems only."""
        B, n, m = self.shape
        out = torch.zeros(B, n, m, dtype=self.ref.dtype, device=self.ref.device)
        if self.lowrank:
            w = self.log_w.exp() if self.sign_w is None else self.sign_w * self.log_w.exp()
            out = out + self.log_u.exp() @ w
        if self.sparse:
            vals = self.log_s.exp() if self.sign_s is None else self.sign_s * self.log_s.exp()
            b, i, j = self.pattern.local()
            out = out.index_put((b, i, j), vals, accumulate=True)
        return out


class _Operators:
    """Stabilised products :math:`\\log(K e^{\\gamma})` and :math:`\\log(K^\\top e^{\\varphi})` (module docstring)."""

    def __init__(self, kernel: FactoredKernel, threshold: float):
        self.k, self.threshold = kernel, threshold
        self.row_ref = self.col_ref = None
        self.floor = 1e-6 * math.exp(-threshold)

    def _stale(self, ref: Optional[Tensor], pot: Tensor) -> bool:
        return ref is None or bool(((pot - ref).abs().amax() > self.threshold).item())

    def _build_row(self, gref: Tensor) -> None:
        k = self.k
        B, n, m = k.shape
        mu = None
        if k.lowrank:
            t = k.log_w + gref[:, None, :]
            omega = t.amax(-1, keepdim=True)
            w = (t - omega).exp()
            self.w_row = w if k.sign_w is None else w * k.sign_w
            lu = k.log_u + omega.transpose(-1, -2)
            mu = lu.amax(-1)
        if k.sparse:
            ls = k.log_s + gref.reshape(-1)[k.pattern.cols]
            mu_s = k.pattern.segment_max(ls, along_rows=True).view(B, n)
            mu = mu_s if mu is None else torch.maximum(mu, mu_s)
        if k.lowrank:
            self.u_row = (lu - mu[..., None]).exp()
        if k.sparse:
            s = (ls - mu.reshape(-1)[k.pattern.rows]).exp()
            self.s_row = s if k.sign_s is None else s * k.sign_s
            self.csr_row = k.pattern.csr(self.s_row.detach())
        self.mu, self.row_ref = mu, gref

    def _build_col(self, fref: Tensor) -> None:
        k = self.k
        B, n, m = k.shape
        lam = None
        if k.lowrank:
            t = k.log_u + fref[..., None]
            nu = t.amax(-2, keepdim=True)
            self.u_col = (t - nu).exp()
            lw = k.log_w + nu.transpose(-1, -2)
            lam = lw.amax(-2)
        if k.sparse:
            ls = k.log_s + fref.reshape(-1)[k.pattern.rows]
            lam_s = k.pattern.segment_max(ls, along_rows=False).view(B, m)
            lam = lam_s if lam is None else torch.maximum(lam, lam_s)
        if k.lowrank:
            w = (lw - lam[:, None, :]).exp()
            self.w_col = w if k.sign_w is None else w * k.sign_w
        if k.sparse:
            s = (ls - lam.reshape(-1)[k.pattern.cols]).exp()
            self.s_col = s if k.sign_s is None else s * k.sign_s
            self.csr_col = k.pattern.csr(self.s_col.detach(), transpose=True)
        self.lam, self.col_ref = lam, fref

    def row_sum(self, gamma: Tensor) -> Tuple[Tensor, Tensor]:
        r""":math:`(K e^{\gamma})_i = e^{\mu_i} s_i`: ``(mu, s)``, ``(B, m) -> (B, n), (B, n)``; ``s`` signed."""
        if self._stale(self.row_ref, gamma):
            self._build_row(gamma)
        tau = (gamma - self.row_ref).exp()
        k = self.k
        B, n, m = k.shape
        s = 0
        if k.lowrank:
            s = (self.u_row @ (self.w_row @ tau[..., None]))[..., 0]
        if k.sparse:
            s = s + sparse_matvec(k.pattern, self.s_row, tau.reshape(-1), csr=self.csr_row).view(B, n)
        return self.mu, s

    def update(self, log_w: Tensor, old: Tensor, mu: Tensor, s: Tensor) -> Tensor:
        """``log_w - log(e^mu s)`` where the bracket ``s`` is usable, else the old potential (module docstring)."""
        ok = s > self.floor
        return torch.where(ok, log_w - mu - s.clamp_min(self.floor).log(), old)

    def col_sum(self, phi: Tensor) -> Tuple[Tensor, Tensor]:
        r""":math:`(K^\top e^{\varphi})_j = e^{\lambda_j} s_j`: returns ``(lam, s)``, ``(B, n) -> (B, m), (B, m)``."""
        if self._stale(self.col_ref, phi):
            self._build_col(phi)
        sigma = (phi - self.col_ref).exp()
        k = self.k
        B, n, m = k.shape
        s = 0
        if k.lowrank:
            s = (self.w_col.transpose(-1, -2) @ (self.u_col.transpose(-1, -2) @ sigma[..., None]))[..., 0]
        if k.sparse:
            s = s + sparse_matvec(k.pattern, self.s_col, sigma.reshape(-1), transpose=True,
                                  csr=self.csr_col).view(B, m)
        return self.lam, s


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------


class FactoredPlan:
    r"""The transport plan :math:`P = \mathrm{diag}(e^{\varphi}) K \mathrm{diag}(e^{\gamma})` of a factored kernel,
    kept factored: :math:`P = Q R + P^{sp}`, ``Q: (B, n, l)``, ``R: (B, l, m)``, ``P^sp`` on the kernel's pattern.

    The scaling between ``Q`` and ``R`` is balanced per landmark (:math:`\beta_k`) so that neither factor over- or
    underflows. Products with dense matrices cost O((n + m) l k + nnz k); :meth:`to_dense` materialises the
    ``(B, n, m)`` plan (tests and small problems only).
    """

    def __init__(self, kernel: FactoredKernel, phi: Tensor, gamma: Tensor):
        self.shape = kernel.shape
        self.pattern = kernel.pattern
        self.q = self.r = self.sparse_values = None
        if kernel.lowrank:
            a = kernel.log_u + phi[..., None]  # (B, n, l)
            c = kernel.log_w + gamma[:, None, :]  # (B, l, m)
            beta = (0.5 * (c.detach().amax(-1) - a.detach().amax(-2))).clamp(-1e4, 1e4)  # (B, l)
            self.q = (a + beta[:, None, :]).exp()
            r = (c - beta[..., None]).exp()
            self.r = r if kernel.sign_w is None else r * kernel.sign_w
        if kernel.sparse:
            ls = kernel.log_s + phi.reshape(-1)[kernel.pattern.rows] + gamma.reshape(-1)[kernel.pattern.cols]
            v = ls.exp()
            self.sparse_values = v if kernel.sign_s is None else v * kernel.sign_s

    @property
    def dtype(self):
        return (self.q if self.q is not None else self.sparse_values).dtype

    def matmul(self, y: Tensor, lowrank: bool = True, sparse: bool = True) -> Tensor:
        """``P @ y``: ``(B, m, k) -> (B, n, k)`` (``lowrank``/``sparse`` select the parts of ``P``)."""
        B, n, m = self.shape
        out = torch.zeros(B, n, y.shape[-1], dtype=y.dtype, device=y.device)
        if lowrank and self.q is not None:
            out = out + self.q @ (self.r @ y)
        if sparse and self.pattern is not None:
            out = out + sparse_matvec(self.pattern, self.sparse_values, y.reshape(B * m, -1)).view(B, n, -1)
        return out

    __matmul__ = matmul

    def rmatmul(self, x: Tensor, lowrank: bool = True, sparse: bool = True) -> Tensor:
        """``P^T @ x``: ``(B, n, k) -> (B, m, k)``."""
        B, n, m = self.shape
        out = torch.zeros(B, m, x.shape[-1], dtype=x.dtype, device=x.device)
        if lowrank and self.q is not None:
            out = out + self.r.transpose(-1, -2) @ (self.q.transpose(-1, -2) @ x)
        if sparse and self.pattern is not None:
            out = out + sparse_matvec(self.pattern, self.sparse_values, x.reshape(B * n, -1), True).view(B, m, -1)
        return out

    def row_sums(self) -> Tensor:
        B, n, m = self.shape
        return self.matmul(torch.ones(B, m, 1, dtype=self.dtype, device=self._device))[..., 0]

    def col_sums(self) -> Tensor:
        B, n, m = self.shape
        return self.rmatmul(torch.ones(B, n, 1, dtype=self.dtype, device=self._device))[..., 0]

    @property
    def _device(self):
        return (self.q if self.q is not None else self.sparse_values).device

    def to_dense(self) -> Tensor:
        """``(B, n, m)`` plan."""
        B, n, m = self.shape
        out = torch.zeros(B, n, m, dtype=self.dtype, device=self._device)
        if self.q is not None:
            out = out + self.q @ self.r
        if self.pattern is not None:
            b, i, j = self.pattern.local()
            out = out.index_put((b, i, j), self.sparse_values, accumulate=True)
        return out

    def detach(self) -> "FactoredPlan":
        out = object.__new__(FactoredPlan)
        out.shape, out.pattern = self.shape, self.pattern
        out.q = None if self.q is None else self.q.detach()
        out.r = None if self.r is None else self.r.detach()
        out.sparse_values = None if self.sparse_values is None else self.sparse_values.detach()
        return out

    def cost(self, factors: Optional[Tuple[Tensor, Tensor]] = None, sparse_extra: Optional[Tensor] = None,
             lowrank_points: Optional[Tuple[Tensor, Tensor, str]] = None) -> Tensor:
        r"""Transport cost :math:`\langle C, P\rangle` per problem, ``(B,)``, for a cost given in parts.

        ``factors = (Phi (B, n, r), Psi (B, m, r))``: the cost :math:`\Phi\Psi^\top` on every entry of the plan
        (e.g. the squared Euclidean cost, :math:`r = d + 2`, :func:`sq_euclidean_factors`), evaluated as
        :math:`\sum_i \Phi_i \cdot (P\Psi)_i` without forming :math:`P`; ``sparse_extra: (nnz,)``: a cost added on
        the sparse entries (e.g. GTN's deletion costs on the diagonal blocks of the BP matrix);
        ``lowrank_points = (x (B, n', d), y (B, m', d), cost)``: a point cost (:data:`recot.ot.cost.POINT_COSTS`)
        on the low-rank part's leading ``n' x m'`` block, exact, by :func:`lowrank_point_cost` (for a cost without
        a finite factorisation, e.g. the Euclidean one).
        """
        B, n, m = self.shape
        value = torch.zeros(B, dtype=self.dtype, device=self._device)
        if factors is not None:
            phi, psi = factors
            value = value + (phi * self.matmul(psi)).sum((-2, -1))
        if sparse_extra is not None and self.pattern is not None:
            value = value + self.pattern.segment_sum(self.sparse_values * sparse_extra, "batch")
        if lowrank_points is not None and self.q is not None:
            x, y, cost = lowrank_points
            value = value + lowrank_point_cost(self.q[:, :x.shape[1]], self.r[..., :y.shape[1]], x, y, cost)
        return value


class _LowRankPointCost(torch.autograd.Function):
    """``sum_ij C_ij (Q R)_ij`` per problem, by row chunks; backward recomputes each chunk (no ``n x m`` saved)."""

    @staticmethod
    def forward(ctx, q: Tensor, r: Tensor, x: Tensor, y: Tensor, cost: str, rows: int) -> Tensor:
        ctx.save_for_backward(q, r, x, y)
        ctx.cost, ctx.rows = cost, rows
        out = q.new_zeros(q.shape[0])
        for s in range(0, x.shape[1], rows):
            c = sq_to_cost(_sq_dists(x[:, s:s + rows], y), cost)
            out = out + (c * (q[:, s:s + rows] @ r)).sum((-2, -1))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        q, r, x, y = ctx.saved_tensors
        need_q, need_r, need_x, need_y = ctx.needs_input_grad[:4]
        g = grad[:, None, None]
        gq = torch.zeros_like(q) if need_q else None
        gr = torch.zeros_like(r) if need_r else None
        gx = torch.zeros_like(x) if need_x else None
        gy = torch.zeros_like(y) if need_y else None
        for s in range(0, x.shape[1], ctx.rows):
            xs, qs = x[:, s:s + ctx.rows], q[:, s:s + ctx.rows]
            sq = _sq_dists(xs, y)
            c = sq_to_cost(sq, ctx.cost)
            if need_q:
                gq[:, s:s + ctx.rows] = g * (c @ r.transpose(-1, -2))
            if need_r:
                gr += g * (qs.transpose(-1, -2) @ c)
            if need_x or need_y:
                # dC/dx_i = dC/d(sq) * 2 (x_i - y_j): the Euclidean cost's dC/d(sq) is 1 / (2 C)
                h = 2 * g * (qs @ r) * (1 / (2 * c) if ctx.cost == "euclidean" else 1)
                if need_x:
                    gx[:, s:s + ctx.rows] = xs * h.sum(-1, keepdim=True) - h @ y
                if need_y:
                    gy += y * h.sum(-2)[..., None] - h.transpose(-1, -2) @ xs
        return gq, gr, gx, gy, None, None


def lowrank_point_cost(q: Tensor, r: Tensor, x: Tensor, y: Tensor, cost: str, max_entries: int = 2**22) -> Tensor:
    r""":math:`\sum_{ij} C_{ij} (Q R)_{ij}` per problem, ``(B,)``: the exact transport cost of a low-rank plan
    ``Q: (B, n, l)``, ``R: (B, l, m)`` for the point cost ``C = cost(x, y)``, ``x: (B, n, d)``, ``y: (B, m, d)``.

    The Euclidean cost has no finite factorisation :math:`C = \Phi\Psi^\top`, so there is no exact O((n + m) l)
    form: this evaluates :math:`C` and :math:`QR` in chunks of rows (at most ``max_entries`` entries per chunk),
    O(nm (d + l)) time and O(max_entries) memory, with a backward that recomputes each chunk (exact gradients for
    ``Q``, ``R``, ``x``, ``y``; memory independent of ``n m``). For GTN's graphs (a few hundred nodes) this is
    cheaper than the iterations; for large clouds it is the arithmetic of about (l + d) / 2 dense Sinkhorn iterations
    (each two ``n x m`` matrix-vector products), the one O(nm) step of the solvers.
    """
    B, _, m = r.shape
    rows = max(1, max_entries // max(B * m, 1))
    return _LowRankPointCost.apply(q, r, x, y, cost, rows)


def sq_euclidean_factors(x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    r""":math:`\|x_i - y_j\|^2 = \Phi_i \cdot \Psi_j` with :math:`\Phi = [\|x\|^2, 1, -2x]`,
    :math:`\Psi = [1, \|y\|^2, y]`: ``(B, n, d), (B, m, d) -> (B, n, d + 2), (B, m, d + 2)``.

    Exact in exact arithmetic; callers center the points first (translation invariance) to keep the cancellation
    in :math:`\|x\|^2 + \|y\|^2 - 2 x\cdot y` small.
    """
    xx, yy = (x * x).sum(-1, keepdim=True), (y * y).sum(-1, keepdim=True)
    return torch.cat([xx, torch.ones_like(xx), -2 * x], -1), torch.cat([torch.ones_like(yy), yy, y], -1)


# --------------------------------------------------------------------------------------------------
# The solver
# --------------------------------------------------------------------------------------------------


def factored_sinkhorn(
    kernel: FactoredKernel,
    a: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    *,
    mask_a: Optional[Tensor] = None,
    mask_b: Optional[Tensor] = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
    absorb_threshold: float = 10.0,
    init: Optional[Tuple[Tensor, Tensor]] = None,
) -> Tuple[FactoredPlan, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    r"""Balanced Sinkhorn with the kernel ``kernel`` (the Gibbs kernel :math:`e^{-C/\varepsilon}` or its
    approximation), under the caller's autograd mode.

    Iterations on scaled potentials :math:`\varphi = f/\varepsilon`, :math:`\gamma = g/\varepsilon`:
    :math:`\varphi \leftarrow \log a - \log(K e^{\gamma})`, :math:`\gamma \leftarrow \log b - \log(K^\top e^{\varphi})`
    (the log form of :math:`s = a \oslash K t`, :math:`t = b \oslash K^\top s`, the poster's Sinkhorn).

    Args:
        kernel: ``(B, n, m)`` factored kernel.
        a, b: ``(B, n)``, ``(B, m)`` weights (None: uniform over real entries); any total mass, equal on both sides.
        mask_a, mask_b: bool, True = real. A problem without real rows or columns is empty (all padding).
        max_iter, tol, check_every: as :func:`recot.ot.sinkhorn` (``tol``: L1 marginal error, checked every
            ``check_every`` iterations; ``tol=0`` runs exactly ``max_iter`` iterations).
        absorb_threshold: largest change of the potentials before they are absorbed into the factors
            (0 = every half-step, plain log-domain iterations).
        init: warm start ``(phi, gamma)`` in scaled (``/eps``) form.

    Returns:
        ``(plan, phi, gamma, n_iter, err, a, b, mask_a, mask_b)``: the :class:`FactoredPlan`, the scaled potentials
        (0 on padding), per-problem iterations and L1 marginal error, and the normalised weights and masks.
    """
    B, n, m = kernel.shape
    like = kernel.ref
    a, mask_a = prepare_weights(a, mask_a, (B, n), like)
    b, mask_b = prepare_weights(b, mask_b, (B, m), like)
    if mask_a is not None or mask_b is not None:
        ones = lambda k: torch.ones(B, k, dtype=torch.bool, device=like.device)  # noqa: E731
        mask_a = ones(n) if mask_a is None else mask_a
        mask_b = ones(m) if mask_b is None else mask_b
        nonempty = mask_a.any(-1, keepdim=True) & mask_b.any(-1, keepdim=True)
        mask_a, mask_b = mask_a & nonempty, mask_b & nonempty
        zero = torch.zeros((), dtype=a.dtype, device=a.device)
        a, b = torch.where(mask_a, a, zero), torch.where(mask_b, b, zero)
    kernel = kernel.masked(mask_a, mask_b)
    log_a, log_b = masked_log(a, mask_a), masked_log(b, mask_b)
    if init is None:
        phi, gamma = torch.zeros_like(log_a), torch.zeros_like(log_b)
    else:
        phi = masked_update(init[0].detach().to(log_a), torch.zeros_like(log_a), mask_a, None)
        gamma = masked_update(init[1].detach().to(log_b), torch.zeros_like(log_b), mask_b, None)
    ops = _Operators(kernel, absorb_threshold)

    def step(state, active):
        phi, gamma = state
        phi = masked_update(ops.update(log_a, phi, *ops.row_sum(gamma)), phi, mask_a, active)
        gamma = masked_update(ops.update(log_b, gamma, *ops.col_sum(phi)), gamma, mask_b, active)
        return phi, gamma

    def error(state, prev):
        # the column marginal is exact after the gamma half-step: the L1 error is the row term
        phi, gamma = state
        mu, s = ops.row_sum(gamma)
        d = ((phi + mu).exp() * s - a).abs()  # signed: a nonpositive Nystrom row sum shows as an error
        if mask_a is not None:
            d = d.masked_fill(~mask_a, 0)
        return d.sum(-1), state

    (phi, gamma), n_iter, err = iterate(step, (phi, gamma), max_iter=max_iter, tol=tol, check_every=check_every,
                                        batch_shape=(B,), device=like.device, dtype=like.dtype, error=error)
    if mask_a is not None:  # padding: potentials exactly 0
        phi, gamma = phi.masked_fill(~mask_a, 0), gamma.masked_fill(~mask_b, 0)
    plan = FactoredPlan(kernel, phi, gamma)
    return plan, phi, gamma, n_iter, err, a, b, mask_a, mask_b


def nan_to_neg(t: Tensor) -> Tensor:
    """``-inf``/NaN (log of an exact 0) -> :func:`neg`: log factors stay finite."""
    lo = neg(t.dtype)
    return torch.nan_to_num(t, nan=lo, neginf=lo).clamp_min(lo)


def signed_log(t: Tensor) -> Tuple[Tensor, Tensor]:
    """``(log|t|, sign t)`` with :func:`neg` for exact zeros (sign +1 there)."""
    sign = torch.where(t < 0, -torch.ones_like(t), torch.ones_like(t))
    return nan_to_neg(t.abs().log()), sign


def check_positive_eps(eps: float) -> float:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    return float(eps)


# --------------------------------------------------------------------------------------------------
# Point-cloud front end shared by sparse_sinkhorn, nystrom_sinkhorn and lcn_sinkhorn
# --------------------------------------------------------------------------------------------------


def pair_sq_dists(x: Tensor, y: Tensor, pattern: SparsePattern, chunk: int = 2**20) -> Tensor:
    r""":math:`\|x_i - y_j\|^2` for every entry of ``pattern``: ``(B, n, d), (B, m, d) -> (nnz,)``, computed as
    differences (exact for near pairs, where :math:`\|x\|^2 + \|y\|^2 - 2x\cdot y` would cancel), in blocks."""
    B, n, m = pattern.shape
    if pattern.nnz > B * n * m // 4:  # nearly all pairs: one batched matrix product, then the entries
        b, i, j = pattern.local()
        return _sq_dists(x, y)[b, i, j]
    xf, yf = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    out = [((xf[pattern.rows[s:s + chunk]] - yf[pattern.cols[s:s + chunk]]) ** 2).sum(-1)
           for s in range(0, max(pattern.nnz, 1), chunk)]
    return torch.cat(out) if out else x.new_zeros(0)


def _sq_dists(x: Tensor, y: Tensor) -> Tensor:
    return sq_euclidean(x, y)


def pair_costs(x: Tensor, y: Tensor, pattern: SparsePattern, cost: str = "sq_euclidean") -> Tensor:
    """The point cost (:data:`recot.ot.cost.POINT_COSTS`) on every entry of ``pattern``, ``(nnz,)``
    (:func:`pair_sq_dists` through :func:`recot.ot.cost.sq_to_cost`)."""
    return sq_to_cost(pair_sq_dists(x, y, pattern), cost)


def solve_points(
    x: Tensor,
    y: Tensor,
    a: Optional[Tensor],
    b: Optional[Tensor],
    *,
    eps: float,
    mask_a: Optional[Tensor],
    mask_b: Optional[Tensor],
    structure,
    kernel,
    grad: str,
    max_iter: int,
    tol: float,
    check_every: int,
    absorb_threshold: float,
    init: Optional[Tuple[Tensor, Tensor]],
    cost: str = "sq_euclidean",
):
    r"""Run a factored solver on point clouds with the point cost ``cost`` (:data:`recot.ot.cost.POINT_COSTS`:
    squared Euclidean, Gaussian kernel, or Euclidean, Laplacian kernel); returns an :class:`OTResult`.

    ``structure(x, y, mask_a, mask_b, center)`` (no autograd) picks the discrete structure (landmarks, neighbour
    pattern) from the centered points (``center: (B, 1, d)`` was subtracted from the caller's points);
    ``kernel(x, y, structure)`` builds the :class:`FactoredKernel` of
    :math:`e^{-C/\varepsilon}` (differentiable in ``x, y``).

    The value is :math:`\langle C, P\rangle` with the *exact* cost (:math:`\|x_i - y_j\|^2` or
    :math:`\|x_i - y_j\|`) and the approximate plan. Squared Euclidean: through the factorisation
    :math:`C = \Phi\Psi^\top` (:func:`sq_euclidean_factors`) as :math:`\sum_i \Phi_i \cdot (P\Psi)_i` in
    O((n + m)(l + d) + nnz d). Euclidean: exact per entry on the sparse part, and on the low-rank part by
    :func:`lowrank_point_cost` (chunked, O(nm (l + d)) time, O(chunk) memory: :math:`\|x - y\|` has no finite
    factorisation). The official LCN / GTN code returns the dual instead,
    :math:`\varepsilon(\langle u, P\mathbf 1\rangle + \langle v, P^\top\mathbf 1\rangle)` (with the entropy
    term, O(n l) for any cost), with gradients through the log factors (the costs to the landmarks); recot keeps
    the primal :math:`\langle C, P\rangle` for both costs, so that the value means the same for every solver.

    ``grad="unroll"``: autograd through the iterations (exact gradient of the value). ``grad="envelope"``: the
    iterations and the plan carry no autograd; the value is :math:`\langle C(x, y), P\rangle` with ``P`` fixed, so
    its gradient is the analytic one of the paper's Prop. 1 in point form, :math:`\nabla_{x_i} = \sum_j P_{ij}
    \nabla_x C(x_i, y_j)`: for the squared cost :math:`2\,(r_i x_i - (P y)_i)` (two factored products, memory
    O((n + m)(l + d) + nnz)), for the Euclidean cost :math:`\sum_j P_{ij} (x_i - y_j) / \|x_i - y_j\|` (autograd
    through the per-entry costs and :func:`lowrank_point_cost`'s chunked backward). Both are independent of the
    iterations.
    """
    from .result import OTResult
    from .utils import check_grad_mode

    check_grad_mode(grad, ("unroll", "envelope"))
    check_positive_eps(eps)
    check_point_cost(cost)
    if x.dim() < 2 or y.dim() < 2 or x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must be (*batch, n, d) and (*batch, m, d), got {tuple(x.shape)}, {tuple(y.shape)}")
    if not x.is_floating_point():
        raise TypeError("x and y must be floating point tensors")
    batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    n, m, d = x.shape[-2], y.shape[-2], x.shape[-1]
    x = x.expand(*batch, n, d).reshape(-1, n, d)
    y = y.expand(*batch, m, d).reshape(-1, m, d)
    B = x.shape[0]
    flat = lambda t, k: None if t is None else t.expand(*batch, k).reshape(B, k)  # noqa: E731
    a, b, mask_a, mask_b = flat(a, n), flat(b, m), flat(mask_a, n), flat(mask_b, m)
    mask_a = None if mask_a is None else mask_a.bool()
    mask_b = None if mask_b is None else mask_b.bool()
    if mask_a is not None:  # padded points may hold garbage: zero them so no NaN reaches a gradient
        x = torch.where(mask_a[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    if mask_b is not None:
        y = torch.where(mask_b[..., None], y, torch.zeros((), dtype=y.dtype, device=y.device))
    # center both clouds on their joint mean (the cost is translation invariant): smaller norms, less cancellation
    wx = torch.ones(B, n, 1, dtype=x.dtype, device=x.device) if mask_a is None else mask_a[..., None].to(x.dtype)
    wy = torch.ones(B, m, 1, dtype=x.dtype, device=x.device) if mask_b is None else mask_b[..., None].to(x.dtype)
    center = ((x * wx).sum(1, keepdim=True) + (y * wy).sum(1, keepdim=True)).detach() / (
        wx.sum(1, keepdim=True) + wy.sum(1, keepdim=True)).clamp_min(1)
    x, y = (x - center) * wx, (y - center) * wy
    with torch.no_grad():
        struct = structure(x.detach(), y.detach(), mask_a, mask_b, center)
    scaled = None if init is None else (init[0].reshape(B, n) / eps, init[1].reshape(B, m) / eps)
    opts = dict(mask_a=mask_a, mask_b=mask_b, max_iter=max_iter, tol=tol, check_every=check_every,
                absorb_threshold=absorb_threshold, init=scaled)
    if grad == "unroll":
        plan, phi, gamma, n_iter, err, *_ = factored_sinkhorn(kernel(x, y, struct), a, b, **opts)
    else:
        with torch.no_grad():
            plan, phi, gamma, n_iter, err, *_ = factored_sinkhorn(kernel(x.detach(), y.detach(), struct), a, b,
                                                                  **opts)
    if cost == "sq_euclidean":
        value = plan.cost(sq_euclidean_factors(x, y))
    else:
        entry = None if plan.pattern is None else pair_costs(x, y, plan.pattern, cost)
        value = plan.cost(sparse_extra=entry, lowrank_points=(x, y, cost))
    shape = lambda t, k: t.reshape(*batch, k)  # noqa: E731
    return OTResult(plan=plan, value=value.reshape(batch), f=shape(phi * eps, n), g=shape(gamma * eps, m),
                    n_iter=n_iter.reshape(batch), err=err.reshape(batch), converged=(err <= tol).reshape(batch))
