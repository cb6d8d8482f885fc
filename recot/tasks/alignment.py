r"""Unsupervised embedding alignment by Wasserstein Procrustes (Grave, Joulin & Berthet 2019), full batch, as in the
embedding-alignment experiment of Klicpera/Gasteiger, Lienen & Günnemann (ICML 2021, Sec. 7), with any of recot's
Sinkhorn solvers.

Each "epoch" is one alternating step: the entropic OT plan :math:`P` between :math:`xQ` and :math:`y` (squared
Euclidean cost), then the orthogonal Procrustes update :math:`Q = UV^\top` with :math:`U\Sigma V^\top = x^\top P y`.
With the scalable solvers :math:`x^\top P y = (P^\top x)^\top y` is one factored product: no ``n x n`` matrix.
Accuracy: the share of points whose nearest neighbour after alignment is their true partner.
"""
from __future__ import annotations

import time
from typing import Optional

import torch
from torch import Tensor

from recot.ot import sinkhorn, sq_euclidean
from recot.ot.lcn import lcn_sinkhorn
from recot.ot.nystrom import nystrom_sinkhorn
from recot.ot.result import OTResult
from recot.ot.sparse import sparse_sinkhorn
from recot.tasks.base import Task

SOLVERS = ("full", "sparse", "nystrom", "lcn")


def solve_ot(x: Tensor, y: Tensor, solver: str, eps: float, **kwargs) -> OTResult:
    """Balanced entropic OT between ``x: (n, d)`` and ``y: (m, d)`` (uniform weights) with the named solver;
    ``kwargs`` go to it (``landmarks``, ``n_clusters``, ``max_iter``, ...)."""
    if solver == "full":
        return sinkhorn(sq_euclidean(x, y), eps=eps, grad="envelope", **kwargs)
    fn = {"sparse": sparse_sinkhorn, "nystrom": nystrom_sinkhorn, "lcn": lcn_sinkhorn}.get(solver)
    if fn is None:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    return fn(x, y, eps=eps, grad="envelope", **kwargs)


def cross_moment(res: OTResult, x: Tensor, y: Tensor) -> Tensor:
    r""":math:`x^\top P y` ``(d, d)`` from a dense or factored plan."""
    if isinstance(res.plan, Tensor):
        return x.T @ (res.plan @ y)
    return res.plan.rmatmul(x[None])[0].T @ y


def procrustes(m: Tensor) -> Tensor:
    """The orthogonal matrix closest to ``m``: ``U V^T`` of its SVD."""
    u, _, vh = torch.linalg.svd(m)
    return u @ vh


@torch.no_grad()
def match_accuracy(x: Tensor, y: Tensor, match: Tensor, chunk: int = 1024) -> float:
    """Share of ``x[i]`` whose nearest ``y`` is ``y[match[i]]`` (chunked: O(chunk n) memory)."""
    hits = 0
    for s in range(0, x.shape[0], chunk):
        nearest = sq_euclidean(x[s:s + chunk], y).argmin(-1)
        hits += int((nearest == match[s:s + chunk]).sum())
    return hits / x.shape[0]


class AlignmentTask(Task):
    """Wasserstein Procrustes alignment as a Lightning task: one alternating step per epoch (module docstring).

    Args:
        solver: ``"full"``, ``"sparse"``, ``"nystrom"`` or ``"lcn"``.
        eps: entropic regularisation, relative to the mean squared distance between the clouds.
        solver_args: keyword arguments of the solver (e.g. ``landmarks``, ``n_clusters``, ``max_iter``, ``tol``).
    """

    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(self, solver: str = "lcn", eps: float = 0.05, solver_args: Optional[dict] = None):
        super().__init__()
        self.save_task_hyperparameters()
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.solver, self.eps, self.solver_args = solver, eps, dict(solver_args or {})
        self.automatic_optimization = False
        self.register_buffer("q", None)  # the rotation (d, d); its size comes from the data
        # Procrustes steps are closed-form: a no-op optimizer only counts them, so that global_step advances and
        # checkpoints are written each epoch
        self._counter = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def setup(self, stage: str) -> None:
        if self.q is None:
            self.q = torch.eye(self.trainer.datamodule.dim, device=self.device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.q = torch.empty_like(checkpoint["state_dict"]["q"])  # the buffer exists before the weights load

    def configure_optimizers(self):
        return torch.optim.SGD([self._counter], lr=0.0)

    def training_step(self, batch, batch_idx: int) -> None:
        x, y, _ = batch
        xq = x @ self.q
        scale = float(((xq ** 2).sum(-1).mean() + (y ** 2).sum(-1).mean()))  # mean sq. distance of centered clouds
        start = time.perf_counter()
        res = solve_ot(xq, y, self.solver, self.eps * scale, **self.solver_args)
        self.q = procrustes(cross_moment(res, x, y))
        self.optimizers().step()
        self.log_dict({"train/ot_value": res.value.float().mean(), "train/ot_seconds": time.perf_counter() - start,
                       "train/converged": res.converged.float().mean()}, on_step=False, on_epoch=True, batch_size=1)

    def _evaluate(self, batch, stage: str) -> None:
        x, y, match = batch
        self.log(f"{stage}/acc", match_accuracy(x @ self.q, y, match), batch_size=1)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")
