"""Unsupervised graph representation learning (AD-GCL) evaluated by a linear SVM: the ROT pooling paper's protocol."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from recot.svm import C_GRID, svm_cross_val
from recot.tasks.base import OptimizerCallable, SizedTask


class ContrastiveTask(SizedTask):
    """Pre-train :class:`recot.nn.contrastive.ADGCL` without labels, then score its embeddings with an SVM.

    Each training batch takes two steps (AD-GCL, Suresh et al. 2021, Alg. 1): the augmenter's (the encoder in eval
    mode) ascends ``InfoNCE(view, augmented view) - reg_lambda * drop_ratio``, then the encoder's descends the InfoNCE
    with the augmenter's edge weights fixed. Logged per epoch: ``train/loss`` (the encoder's InfoNCE),
    ``train/view_loss`` and ``train/drop_ratio``.

    Evaluation (validation and test loaders hold every graph with its label, see
    :class:`datamodules.TUGraphPretrainDataModule`): ``val/loss`` is the InfoNCE against the augmenter's expected view
    (no sampling) and selects the checkpoint; at test, and at validation every ``svm_every`` epochs (0 = never), the
    pooled embeddings of the encoder (eval mode) go to :func:`recot.svm.svm_cross_val` (stratified ``svm_folds``-fold
    accuracy, C by an inner ``svm_inner_folds``-fold CV over ``svm_C``), logged as ``<stage>/acc`` (mean over folds)
    and ``<stage>/acc_std``.

    Args:
        model: :class:`recot.nn.contrastive.ADGCL` (its pooling is the readout under test).
        optimizer: factory for the encoder + projection head (default Adam, lr 1e-3, AD-GCL's).
        view_optimizer: factory for the augmenter (default Adam, lr 1e-3).
        reg_lambda: weight of the edge-drop regulariser (AD-GCL's lambda_reg).
        svm_folds, svm_inner_folds, svm_C, svm_seed: the SVM evaluation (AD-GCL: 10 folds, C in 10^-3..10^3).
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(self, model: nn.Module, optimizer: OptimizerCallable = torch.optim.Adam,
                 view_optimizer: OptimizerCallable = torch.optim.Adam, reg_lambda: float = 5.0, svm_every: int = 0,
                 svm_folds: int = 10, svm_inner_folds: int = 5, svm_C: Optional[list[float]] = None,
                 svm_seed: int = 0):
        super().__init__()
        self.save_task_hyperparameters()
        self.automatic_optimization = False
        self.model = model
        self.optimizer, self.view_optimizer, self.reg_lambda = optimizer, view_optimizer, reg_lambda
        self.svm_every, self.svm_folds, self.svm_inner_folds = svm_every, svm_folds, svm_inner_folds
        self.svm_C, self.svm_seed = list(svm_C or C_GRID), svm_seed
        self._embeddings: dict[str, list] = {}
        self.last_svm: Optional[dict] = None

    # --- data-dependent construction (SizedTask: setup and checkpoints) ---------------------------------------
    data_requirement = ("a graph data module with num_features and num_classes "
                        "(datamodules.TUGraphPretrainDataModule)")

    def configure_optimizers(self):
        m = self.model
        encoder = [*m.encoder.parameters(), *m.projection.parameters()]
        return [self.optimizer(encoder), self.view_optimizer(m.augmenter.parameters())]

    # --- training: AD-GCL's min-max --------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        opt, view_opt = self.optimizers()
        m = self.model
        # augmenter step: maximise the InfoNCE the encoder reaches on its views (encoder in eval mode, as AD-GCL)
        m.encoder.eval()
        m.projection.eval()
        weight = m.augmenter(batch)
        drop = m.drop_ratio(batch, weight)
        view_loss = m.nt_xent(m(batch), m(batch, weight)) - self.reg_lambda * drop
        view_opt.zero_grad()
        self.manual_backward(-view_loss)
        view_opt.step()
        # encoder step on the augmenter's (fixed) views
        m.encoder.train()
        m.projection.train()
        with torch.no_grad():
            weight = m.augmenter(batch)
        loss = m.nt_xent(m(batch), m(batch, weight))
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.log_dict({"train/loss": loss, "train/view_loss": view_loss.detach(), "train/drop_ratio": drop.detach()},
                      on_step=False, on_epoch=True, batch_size=batch.num_graphs)
        return loss

    def on_train_epoch_end(self) -> None:
        values = self.model.log_values()
        if values:
            self.log_dict({f"pool/{k}": v for k, v in values.items()}, rank_zero_only=True)

    # --- evaluation ------------------------------------------------------------------------------------
    def _eval_step(self, batch, stage: str) -> None:
        m = self.model
        emb = m.embed(batch)
        weight = m.augmenter(batch, sample=False)
        loss = m.nt_xent(m.projection(emb), m(batch, weight))
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=batch.num_graphs)
        self._embeddings.setdefault(stage, []).append((emb.detach().cpu(), batch.y.detach().cpu()))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _svm(self, stage: str) -> None:
        parts = self._embeddings.pop(stage, [])
        if not parts:
            return
        x = torch.cat([p[0] for p in parts])
        y = torch.cat([p[1] for p in parts])
        out = svm_cross_val(x, y, self.svm_folds, self.svm_inner_folds, self.svm_C, self.svm_seed)
        self.last_svm = out
        self.log_dict({f"{stage}/acc": out["acc"], f"{stage}/acc_std": out["std"],
                       f"{stage}/svm_folds": float(out["num_folds"])})

    def on_validation_epoch_end(self) -> None:
        last = self.trainer.max_epochs is not None and self.current_epoch + 1 >= self.trainer.max_epochs
        due = self.svm_every > 0 and ((self.current_epoch + 1) % self.svm_every == 0 or last)
        if due and not self.trainer.sanity_checking:
            self._svm("val")
        self._embeddings.pop("val", None)

    def on_test_epoch_end(self) -> None:
        self._svm("test")
