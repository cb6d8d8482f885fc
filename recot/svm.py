"""A linear SVM in torch and the cross-validated accuracy of embeddings (the unsupervised graph protocol's evaluation).

scikit-learn is not a dependency of recot, so this is a small replacement for the evaluation AD-GCL (Suresh et al.,
NeurIPS 2021) and the ROT pooling paper (Xu & Cheng, Table 2) run with scikit-learn's ``LinearSVC``:

* :class:`LinearSVM`: one-vs-rest linear SVM with the squared hinge loss and an L2 penalty (``LinearSVC``'s defaults,
  ``loss="squared_hinge"``, ``penalty="l2"``), primal problem per class ``k``
  :math:`\\min_{w_k, b_k} \\tfrac12\\|w_k\\|^2 + C\\sum_i \\max(0, 1 - y_{ik}(w_k^\\top x_i + b_k))^2` with
  :math:`y_{ik} = \\pm 1` (the intercept is not penalised, unlike liblinear's). The objective is convex and
  continuously differentiable and piecewise quadratic; all classes (and, in :func:`svm_cross_val`, all candidate
  ``C`` of all inner folds) are solved at once, in float64, by the primal Newton method (:func:`fit_svm`). Features
  are standardised with the training rows' mean and std (AD-GCL's ``StandardScaler`` in front of the SVM).
* :func:`svm_cross_val`: stratified k-fold accuracy (default 10 folds), ``C`` chosen in each training fold by an inner
  stratified CV (default 5 folds) over a grid (default ``10^-3 .. 10^3``, AD-GCL's grid); returns the per-fold test
  accuracies.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from recot.folds import stratified_folds

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 1e2, 1e3)


def _standardise(train: Tensor, *others: Tensor) -> list[Tensor]:
    mean, std = train.mean(0), train.std(0, unbiased=False).clamp_min(1e-8)
    return [(t - mean) / std for t in (train, *others)]


def _signs(y: Tensor, num_classes: int) -> Tensor:
    """``(n,)`` labels -> ``(n, K)`` one-vs-rest targets in {-1, +1} (K = 1 for two classes: class 1 positive)."""
    if num_classes == 2:
        return (2.0 * (y == 1).to(torch.float64) - 1.0)[:, None]
    return 2.0 * torch.nn.functional.one_hot(y, num_classes).to(torch.float64) - 1.0


def fit_svm(x: Tensor, y: Tensor, C: Tensor, num_classes: int, max_iter: int = 50, tol: float = 1e-8) -> Tensor:
    """Solve P independent one-vs-rest problems at once by the primal Newton method for the squared hinge.

    The objective is piecewise quadratic: with the rows of positive margin loss fixed (the active set A) it is a
    quadratic whose minimiser solves :math:`(R + 2\sum_{i\in A} c_i x_ix_i^\top) w = 2\sum_{i\in A} c_i t_i x_i`
    (R: the identity without the intercept). Each iteration solves that system for the current active set, halving
    the step until the objective does not increase; it stops when no problem's objective moves by more than ``tol``
    (relative), which the method reaches in finitely many steps (Keerthi & DeCoste, JMLR 2005; Chapelle 2007).

    Args:
        x: ``(P, n, F)`` float64 training features of each problem.
        y: ``(P, n)`` labels in ``0..num_classes-1``.
        C: ``(P, n)`` per-row penalty: the problem's ``C`` on its training rows, 0 on rows it does not train on
            (so the inner folds of a cross-validation share one tensor).

    Returns:
        ``(P, F + 1, K)`` weights with the intercept in the last row (K = 1 for two classes).
    """
    P, n, F = x.shape
    K = 1 if num_classes == 2 else num_classes
    xb = torch.cat([x, torch.ones(P, n, 1, dtype=x.dtype)], -1)  # (P, n, F+1)
    t = _signs(y.flatten(), num_classes).view(P, n, K)
    reg = torch.ones(F + 1, dtype=x.dtype)
    reg[-1] = 1e-10  # the intercept is (almost) unpenalised; the tiny term keeps the system regular
    w = torch.zeros(P, F + 1, K, dtype=x.dtype)

    def objective(w: Tensor) -> Tensor:  # (P, K)
        margin = (1.0 - t * (xb @ w)).clamp_min(0.0)
        return 0.5 * (reg[:, None] * w.pow(2)).sum(1) + (C[..., None] * margin.pow(2)).sum(1)

    value = objective(w)
    for _ in range(max_iter):
        active = ((1.0 - t * (xb @ w)) > 0).to(x.dtype) * C[..., None]  # (P, n, K)
        weighted = xb[:, None] * (2 * active).transpose(1, 2)[..., None]  # (P, K, n, F+1)
        hess = weighted.transpose(-1, -2) @ xb[:, None] + torch.diag(reg)  # (P, K, F+1, F+1)
        rhs = (weighted * t.transpose(1, 2)[..., None]).sum(2)  # (P, K, F+1)
        target = torch.linalg.solve(hess, rhs[..., None])[..., 0].transpose(1, 2)  # (P, F+1, K)
        step = torch.ones(P, 1, K, dtype=x.dtype)
        for _ in range(30):  # backtracking: the full step is the minimiser of the current quadratic piece
            cand = w + step * (target - w)
            new = objective(cand)
            worse = new > value * (1 + 1e-12) + 1e-300
            if not bool(worse.any()):
                break
            step = torch.where(worse[:, None, :], step / 2, step)
        moved = (value - new).abs() <= tol * value.abs().clamp_min(1e-12)
        w, value = cand, new
        if bool(moved.all()):
            break
    return w


def predict_svm(w: Tensor, x: Tensor, num_classes: int) -> Tensor:
    """``w: (..., F + 1, K)``, ``x: (..., m, F)`` -> predicted labels ``(..., m)``."""
    scores = x @ w[..., :-1, :] + w[..., -1:, :]
    return (scores[..., 0] > 0).long() if num_classes == 2 else scores.argmax(-1)


class LinearSVM:
    """One-vs-rest linear SVM (squared hinge, L2), standardised features; see the module docstring.

    ``LinearSVM(C).fit(x, y).predict(x_new)`` with ``x: (n, F)``, ``y: (n,)`` integer labels."""

    def __init__(self, C: float = 1.0, max_iter: int = 50):
        if C <= 0:
            raise ValueError(f"C must be > 0, got {C}")
        self.C, self.max_iter = C, max_iter

    def fit(self, x: Tensor, y: Tensor) -> "LinearSVM":
        x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.long)
        self.num_classes = max(int(y.max()) + 1, 2)
        self._mean, self._std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
        xs = (x - self._mean) / self._std
        self.w = fit_svm(xs[None], y[None], torch.full((1, len(y)), float(self.C), dtype=torch.float64),
                         self.num_classes, self.max_iter)[0]
        return self

    def predict(self, x: Tensor) -> Tensor:
        xs = (torch.as_tensor(x, dtype=torch.float64) - self._mean) / self._std
        return predict_svm(self.w, xs, self.num_classes)


def _folds_for(labels: np.ndarray, wanted: int) -> int:
    """A stratified k-fold needs k <= the smallest class count (tiny shrunk runs): use fewer folds then."""
    present = np.bincount(labels)
    smallest = int(present[present > 0].min()) if present.any() else 0
    return max(2, min(wanted, smallest))


def svm_cross_val(x: Tensor, y: Tensor, num_folds: int = 10, inner_folds: int = 5, Cs: Sequence[float] = C_GRID,
                  seed: int = 0, max_iter: int = 50) -> dict:
    """Stratified ``num_folds``-fold test accuracy of :class:`LinearSVM` on embeddings ``x: (n, F)``, labels ``(n,)``.

    In each outer fold ``C`` is picked from ``Cs`` by the mean accuracy of an inner stratified ``inner_folds``-fold
    CV on the training part (ties: the smaller C), then the SVM is refit on the whole training part with that C and
    tested on the held-out fold. The inner problems of one outer fold (``inner_folds x len(Cs)``) are solved in one
    batched Newton solve. Folds are reduced (to at least 2) when a class has fewer members than folds.

    Returns:
        ``{"acc": mean, "std": population std, "fold_acc": [...], "C": [chosen C per fold], "num_folds": k}``.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.long)
    labels = y.numpy()
    num_classes = max(int(labels.max()) + 1, 2)
    k = _folds_for(labels, num_folds)
    outer = stratified_folds(labels, k, seed)
    accs, chosen = [], []
    Cs = [float(c) for c in Cs]
    for fold in range(k):
        train, test = np.flatnonzero(outer != fold), np.flatnonzero(outer == fold)
        xtr, xte = _standardise(x[train], x[test])
        ytr = y[train]
        ki = _folds_for(labels[train], inner_folds)
        inner = torch.from_numpy(stratified_folds(labels[train], ki, seed + 1 + fold))
        # problem (i, c): trains on the rows outside inner fold i with C = Cs[c]
        member = (inner[None, :] != torch.arange(ki)[:, None]).to(torch.float64)  # (ki, n)
        C = (member[:, None, :] * torch.tensor(Cs, dtype=torch.float64)[None, :, None]).reshape(ki * len(Cs), -1)
        # standardise with each inner training part's statistics, as the refit does
        xs = []
        for i in range(ki):
            rows = member[i].bool()
            mean, std = xtr[rows].mean(0), xtr[rows].std(0, unbiased=False).clamp_min(1e-8)
            xs.append(((xtr - mean) / std)[None].expand(len(Cs), -1, -1))
        xs = torch.cat(xs)
        w = fit_svm(xs, ytr[None].expand(len(xs), -1), C, num_classes, max_iter)
        pred = predict_svm(w, xs, num_classes).view(ki, len(Cs), -1)
        held = (1 - member).bool()  # (ki, n)
        correct = ((pred == ytr[None, None, :]) & held[:, None, :]).sum((0, 2)).to(torch.float64)
        inner_acc = correct / held.sum()
        best = int(torch.nonzero(inner_acc == inner_acc.max())[0])
        w = fit_svm(xtr[None], ytr[None], torch.full((1, len(train)), Cs[best], dtype=torch.float64), num_classes,
                    max_iter)[0]
        accs.append(float((predict_svm(w, xte, num_classes) == y[test]).to(torch.float64).mean()))
        chosen.append(Cs[best])
    acc = np.asarray(accs)
    return {"acc": float(acc.mean()), "std": float(acc.std()), "fold_acc": accs, "C": chosen, "num_folds": k}
