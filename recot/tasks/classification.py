"""Classification of sets and graphs (graph classification, multi-instance learning, set fusion)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from recot.tasks.base import LRSchedulerCallable, OptimizerCallable, SizedTask


class ClassificationTask(SizedTask):
    """Train a set/graph classifier (:mod:`recot.nn.classifiers`) with cross-entropy; report accuracy.

    The model is built for the data's sizes in ``setup`` from the data module's ``num_features`` and
    ``num_classes``; batches are PyG batches whose ``y`` holds the labels. Validation and test accuracy are
    torchmetrics ``MulticlassAccuracy`` (micro average, i.e. the share of correct sets), whose states are sums, so
    evaluation on N processes gives the numbers of one. The validation accuracy selects the best checkpoint.

    Args:
        model: the classifier (e.g. :class:`recot.nn.GraphClassifier` with any pooling).
        optimizer: optimizer factory called with the model's parameters (default Adam, lr 1e-3).
        scheduler: optional learning-rate scheduler factory.
        label_smoothing: of the cross-entropy.
    """

    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(self, model: nn.Module, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler: Optional[LRSchedulerCallable] = None, label_smoothing: float = 0.0):
        super().__init__()
        self.save_task_hyperparameters()
        self.model = model
        self.optimizer, self.scheduler, self.label_smoothing = optimizer, scheduler, label_smoothing
        self.metrics: Optional[nn.ModuleDict] = None

    # --- data-dependent construction (SizedTask: setup and checkpoints) ---------------------------------------
    data_requirement = ("a data module with num_features and num_classes (datamodules.TUGraphDataModule, "
                        "MILDataModule or GraphSetDataModule)")

    def _build(self, num_features: int, num_classes: int) -> None:
        self.model.build(num_features, num_classes)
        if self.metrics is None:
            self.metrics = nn.ModuleDict({s: MulticlassAccuracy(num_classes, average="micro") for s in ("val", "test")})
            self.metrics.to(self.device)

    def configure_optimizers(self):
        return self.build_optimizers(self.optimizer, self.scheduler, [{"params": list(self.model.parameters())}])

    # --- steps ---------------------------------------------------------------------------------------------
    def _loss(self, batch):
        logits = self.model(batch)
        return logits, F.cross_entropy(logits, batch.y, label_smoothing=self.label_smoothing)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        logits, loss = self._loss(batch)
        acc = (logits.argmax(-1) == batch.y).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, on_step=False, on_epoch=True,
                      batch_size=batch.num_graphs)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        logits, loss = self._loss(batch)
        self.metrics[stage].update(logits, batch.y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=batch.num_graphs, sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_accuracy(self, stage: str) -> None:
        metric = self.metrics[stage]
        self.log(f"{stage}/acc", metric.compute(), rank_zero_only=False)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test")

    def on_train_epoch_end(self) -> None:
        values = self.model.log_values() if hasattr(self.model, "log_values") else {}
        if values:
            self.log_dict({f"pool/{k}": v for k, v in values.items()}, rank_zero_only=True)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        probs = torch.softmax(self.model(batch), -1)
        return {"probs": probs, "pred": probs.argmax(-1), "y": batch.y}

    @staticmethod
    def prediction_writer(path: Path) -> BasePredictionWriter:
        """``recot predict`` writes the data module's predict split (the test fold) with this callback."""
        return ClassPredictionWriter(path)


class ClassPredictionWriter(BasePredictionWriter):
    """``predictions.csv``: one row per set of the predict split, ``set,label,pred,prob_0,...`` (``set`` counts
    the split's sets in loader order; under DDP each rank writes ``<stem>.rank<r>.csv``)."""

    def __init__(self, path: Path):
        super().__init__(write_interval="batch")
        self.path, self._file, self._writer, self._count = Path(path), None, None, 0

    def on_predict_start(self, trainer, pl_module) -> None:
        path = self.path if trainer.world_size == 1 else self.path.with_name(
            f"{self.path.stem}.rank{trainer.global_rank}{self.path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file, self._count = path.open("w", newline=""), 0
        self._writer = csv.writer(self._file)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        probs = prediction["probs"].cpu()
        if self._count == 0:
            self._writer.writerow(["set", "label", "pred", *(f"prob_{c}" for c in range(probs.shape[1]))])
        for y, pred, row in zip(prediction["y"].tolist(), prediction["pred"].tolist(), probs.tolist()):
            self._writer.writerow([self._count, y, pred, *(f"{p:.6g}" for p in row)])
            self._count += 1

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
