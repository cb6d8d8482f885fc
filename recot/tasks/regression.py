"""Graph-pair distance regression (GTN: graph edit distance and other graph distances)."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanSquaredError

from recot.tasks.base import LRSchedulerCallable, OptimizerCallable, Task


class GraphDistanceTask(Task):
    """Train a graph-pair distance model (:class:`recot.nn.GTN`) with MSE; report RMSE.

    The model is built in ``setup`` from the data module's ``num_node_features``, ``num_edge_features``,
    ``dist_scale`` and ``avg_degree`` (:class:`datamodules.GEDDataModule`); batches are ``(g1, g2, y)``. RMSE is a
    torchmetrics ``MeanSquaredError(squared=False)`` whose states (sum of squared errors, count) reduce by sum, so N
    processes give the numbers of one. The validation RMSE selects the best checkpoint.

    Args:
        model: the distance model, ``model(g1, g2) -> (B,)``.
        optimizer: optimizer factory (default Adam, lr 1e-3; GTN: lr 0.01).
        scheduler: optional learning-rate scheduler factory (GTN: StepLR, step 100 epochs, gamma 0.1).
        weight_decay: L2 penalty on the weight matrices (not on biases and 1-d parameters such as the
            deletion-cost scales), as GTN's optimizer.
        warmup_steps: linear learning-rate warm-up over this many optimizer steps (factor (k + 1) / warmup_steps on
            the scheduled rate at step k); 0 (default, as GTN) = none. After GTN's calibrated start the first Adam
            steps at lr 0.01 overshoot (README, GTN section).
    """

    monitor = "val/rmse"
    monitor_mode = "min"

    def __init__(self, model: nn.Module, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler: Optional[LRSchedulerCallable] = None, weight_decay: float = 0.0, warmup_steps: int = 0):
        super().__init__()
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.save_task_hyperparameters()
        self.model = model
        self.optimizer, self.scheduler, self.weight_decay = optimizer, scheduler, weight_decay
        self.warmup_steps = warmup_steps
        # keys "<stage>_rmse": a ModuleDict key "train" would shadow nn.Module.train
        self.metrics = nn.ModuleDict({f"{s}_rmse": MeanSquaredError(squared=False) for s in ("train", "val", "test")})

    # --- data-dependent construction -----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None or getattr(datamodule, "dist_scale", None) is None:
            raise RuntimeError("GraphDistanceTask needs a data module with num_node_features, num_edge_features, "
                               "dist_scale and avg_degree (datamodules.GEDDataModule)")
        self._build(self._sizes_of(datamodule))

    @staticmethod
    def _sizes_of(dm) -> dict:
        return dict(num_node_features=dm.num_node_features, num_edge_features=dm.num_edge_features,
                    dist_scale=dm.dist_scale, avg_degree=dm.avg_degree)

    def _build(self, sizes: dict) -> None:
        self.model.build(**sizes)
        self.model.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["recot_sizes"] = dict(self.model.sizes)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # load_from_checkpoint builds the module before loading the weights: create the layers at the right size
        sizes = checkpoint.get("recot_sizes")
        if sizes is not None:
            self._build(sizes)

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.dim() > 1]
        rest = [p for p in self.model.parameters() if p.dim() <= 1]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        return self.build_optimizers(self.optimizer, self.scheduler, groups)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        factor = min(1.0, (self.global_step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        scheduled = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:  # the scheduler's rate is restored after the step
            group["lr"] *= factor
        optimizer.step(closure=optimizer_closure)
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr

    # --- steps ---------------------------------------------------------------------------------------------
    def _step(self, batch, stage: str) -> torch.Tensor:
        g1, g2, y = batch
        pred = self.model(g1, g2)
        loss = F.mse_loss(pred, y)
        self.metrics[f"{stage}_rmse"].update(pred.detach(), y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=y.numel(), sync_dist=stage != "train")
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if not bool(getattr(self.model, "calibrated", True)):  # once, before the first update (GTN.calibrate)
            self.model.calibrate_scale(*batch, reduce=lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_rmse(self, stage: str) -> None:
        metric = self.metrics[f"{stage}_rmse"]
        if metric.update_count:
            self.log(f"{stage}/rmse", metric.compute(), rank_zero_only=False)
        metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_rmse("train")
        values = self.model.log_values() if hasattr(self.model, "log_values") else {}
        if values:
            self.log_dict({f"model/{k}": v for k, v in values.items()}, rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        self._log_rmse("val")

    def on_test_epoch_end(self) -> None:
        self._log_rmse("test")
