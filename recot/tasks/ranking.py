"""Top-k recommendation: pairwise (BPR) or pointwise (BCE) training, full-ranking evaluation over all items."""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from recot.metrics import RankingMetrics
from recot.nn.base import Recommender, take_rows
from recot.tasks.base import LRSchedulerCallable, OptimizerCallable, UserItemTask


class RankingTask(UserItemTask):
    """Train a :class:`~recot.nn.Recommender` on implicit feedback and evaluate it by full ranking.

    Loss per batch of triples ``(u, i+, i-)``:

    - ``bpr``: ``mean softplus(s(u, i-) - s(u, i+))`` (Rendle et al. 2009), averaged over the negatives;
    - ``bce``: binary cross-entropy with the positive labelled 1 and each negative 0 (NeuMF);

    plus ``l2_reg / 2 * (||e_u||^2 + ||e_i+||^2 + ||e_i-||^2) / B`` on the layer-0 embeddings of the batch, as LightGCN,
    plus the model's auxiliary losses (e.g. GOTNet's OT terms).

    Validation and test rank all items for every user with held-out items, excluding training items (and validation
    items at test time), and report Recall / NDCG / Precision / HitRate at each ``k``.

    Args:
        model: the recommender.
        optimizer: optimizer factory called with the model's parameter groups (default Adam, lr 1e-3).
        scheduler: optional learning-rate scheduler factory.
        loss: ``bpr`` or ``bce``.
        l2_reg: lambda of the L2 penalty (LightGCN: 1e-4).
        k: cut-offs of the metrics.

    ``predict_k`` (attribute, default 20; ``recot predict --top_k``) is the number of recommendations per user.
    """

    monitor = "val/recall@20"
    monitor_mode = "max"

    def __init__(self, model: Recommender, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler: Optional[LRSchedulerCallable] = None, loss: Literal["bpr", "bce"] = "bpr",
                 l2_reg: float = 1e-4, k: Sequence[int] = (10, 20)):
        super().__init__()
        self.save_task_hyperparameters()
        self.model = model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.loss_type, self.l2_reg = loss, l2_reg
        self.predict_k = 20
        self.val_metrics = RankingMetrics(k)
        self.test_metrics = RankingMetrics(k)
        self.monitor = f"val/recall@{20 if 20 in k else max(k)}"
        self._eval_embeddings: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        if not model.trainable:
            # popularity-style models: nothing to optimise, so Lightning must not try
            self.automatic_optimization = False

    # --- data-dependent construction --------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None or getattr(datamodule, "data", None) is None:
            raise RuntimeError("RankingTask needs an interaction data module (datamodules.InteractionDataModule)")
        self.model.bind(datamodule.data)

    def configure_optimizers(self):
        if not self.model.trainable:
            return None
        return self.build_optimizers(self.optimizer, self.scheduler, self.model.param_groups())

    # --- training -----------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Optional[torch.Tensor]:
        users, pos, neg = batch["users"], batch["pos"], batch["neg"]
        if not self.model.trainable:
            return None
        # the batch's rows are the only ones read below: models may skip work on the others (Recommender.embed)
        user_emb, item_emb = self.model.embed(rows=(users, torch.cat([pos.reshape(-1), neg.reshape(-1)])))
        u = take_rows(user_emb, users)
        pos_score = self.model.pair_score(u, take_rows(item_emb, pos))  # (B,)
        neg_score = self.model.pair_score(u.unsqueeze(1), take_rows(item_emb, neg))  # (B, n_neg)
        if self.loss_type == "bpr":
            rank_loss = F.softplus(neg_score - pos_score.unsqueeze(1)).mean()
        else:
            logits = torch.cat([pos_score.unsqueeze(1), neg_score], dim=1)
            labels = torch.zeros_like(logits)
            labels[:, 0] = 1.0
            rank_loss = F.binary_cross_entropy_with_logits(logits, labels)
        u0, i0 = self.model.initial()
        reg = (take_rows(u0, users).pow(2).sum() + take_rows(i0, pos).pow(2).sum()
               + take_rows(i0, neg).pow(2).sum()) / (2 * users.numel())
        loss = rank_loss + self.l2_reg * reg
        aux = self.model.auxiliary_losses()
        for value in aux.values():
            loss = loss + value
        self.log_dict({"train/loss": loss, f"train/{self.loss_type}": rank_loss, "train/l2": reg,
                       **{f"train/{k}": v for k, v in aux.items()}},
                      on_step=False, on_epoch=True, batch_size=users.numel())
        return loss

    def on_train_epoch_end(self) -> None:
        values = self.model.log_values()
        if values:
            self.log_dict({f"model/{k}": float(v) for k, v in values.items()}, on_step=False, on_epoch=True)

    # --- full-ranking evaluation ----------------------------------------------------------------------
    def _embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._eval_embeddings is None:
            self._eval_embeddings = self.model.embed()
        return self._eval_embeddings

    def _scores(self, users: torch.Tensor) -> torch.Tensor:
        user_emb, item_emb = self._embeddings()
        return self.model.score(users, user_emb[users], item_emb)

    def on_validation_epoch_start(self) -> None:
        self._eval_embeddings = None

    on_test_epoch_start = on_predict_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_metrics.update(self._scores(batch["users"]), batch["target"], batch["exclude"])

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.test_metrics.update(self._scores(batch["users"]), batch["target"], batch["exclude"])

    def _log_metrics(self, metrics: RankingMetrics, prefix: str) -> None:
        values = metrics.compute()  # synchronised sums over processes: identical on every rank
        metrics.reset()
        self._eval_embeddings = None
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items()}, rank_zero_only=False)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        users = batch["users"]
        scores = self._scores(users)
        if "exclude" in batch:
            scores = scores.masked_fill(batch["exclude"], float("-inf"))
        top = scores.topk(min(self.predict_k, scores.shape[1]), dim=1)
        return {"users": users, "items": top.indices, "scores": top.values}
