"""User-vector recommendation under strong generalization: Mult-VAE / Mult-DAE, SinkhornCF and the loss comparison."""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from recot.metrics import RankingMetrics
from recot.nn.item_cost import ItemCosineCost
from recot.nn.uservec import UserVectorModel, negative_log_likelihood
from recot.ot.losses import concentration_loss, topk_sinkhorn_loss
from recot.tasks.base import LRSchedulerCallable, OptimizerCallable, UserItemTask

LossKind = Literal["model", "sinkhorn", "accelerated"]


class AutoencoderTask(UserItemTask):
    """Train a :class:`~recot.nn.uservec.UserVectorModel` on user rows; evaluate on held-out users by fold-in.

    Loss per batch of users (mean over users), plus the model's regularization (Mult-VAE's annealed KL, Mult-DAE's
    L2 penalty):

    - ``model``: the model's own negative log-likelihood (``model.likelihood``: Mult-VAE's multinomial, Eq. 9; MF's
      Gaussian, Eq. 2; NeuMF's Bernoulli, Eq. 5);
    - ``sinkhorn``: the Sinkhorn loss :math:`W^{(L)}_\\varepsilon(x_u, \\hat x_u)` over all items (Sec. 2.4), the
      drop-in replacement of Tables 3-5 for small catalogues;
    - ``accelerated``: Algorithm 1, :math:`\\mathcal L_1 + \\mathcal L_2` with the top-``k`` items (SinkhornCF =
      Mult-VAE with this loss).

    :math:`\\hat x_u = \\operatorname{softmax}(\\text{logits})`; the cost is ``1 - S`` from ``cost`` (item cosine
    similarity over the training users, built at setup). Evaluation ranks all items for each validation / test user
    from its fold-in vector, excluding the fold-in items, and reports Recall and NDCG at ``k_eval``; Recall divides by
    ``min(k, |held-out|)`` as Mult-VAE and SinkhornCF define it (``recall_min@k``) unless
    ``recall_denominator: target``. Validation NDCG@100 selects the best checkpoint.

    Args:
        model: the user-vector model (:class:`recot.nn.MultVAE`, :class:`recot.nn.MultDAE`,
            :class:`recot.nn.FactorizationRows`).
        optimizer: optimizer factory (default Adam, lr 1e-3).
        scheduler: optional learning-rate scheduler factory.
        loss: ``model``, ``sinkhorn`` or ``accelerated``.
        k: top-k predicted items of the accelerated loss (200).
        alpha: weight of the unobserved items in the concentration term (0.03 ML-20M, 0.01 Netflix).
        eps: entropic regularization of the Sinkhorn iterations (1.0).
        n_iter: Sinkhorn iterations L (5).
        cost: the item cost; default :class:`recot.nn.ItemCosineCost` with its defaults.
        max_elements: bound on one padded cost block of the Sinkhorn losses (users are batched by size under it).
        sinkhorn_every: evaluate the Sinkhorn term on every n-th training step only (the concentration term and the
            model's regularization on every step), the speed-up the paper suggests at the end of Sec. 2.4; 1 = always.
        k_eval: cut-offs of the metrics.
        recall_denominator: ``min`` (Mult-VAE / SinkhornCF) or ``target`` (LightGCN).
    """

    monitor = "val/ndcg@100"
    monitor_mode = "max"

    def __init__(self, model: UserVectorModel, optimizer: OptimizerCallable = torch.optim.Adam,
                 scheduler: Optional[LRSchedulerCallable] = None, loss: LossKind = "model", k: int = 200,
                 alpha: float = 0.03, eps: float = 1.0, n_iter: int = 5, cost: Optional[ItemCosineCost] = None,
                 max_elements: int = 1 << 20, sinkhorn_every: int = 1, k_eval: Sequence[int] = (20, 50, 100),
                 recall_denominator: Literal["min", "target"] = "min"):
        super().__init__()
        self.save_task_hyperparameters()
        if loss not in ("model", "sinkhorn", "accelerated"):
            raise ValueError(f"loss must be 'model', 'sinkhorn' or 'accelerated', got {loss!r}")
        self.model = model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.loss_kind, self.k, self.alpha, self.eps, self.n_iter = loss, k, alpha, eps, n_iter
        if sinkhorn_every < 1 or (sinkhorn_every > 1 and loss != "accelerated"):
            raise ValueError(f"sinkhorn_every must be 1, or a larger number of steps with loss 'accelerated' (whose "
                             f"concentration term trains the other steps); got {sinkhorn_every} with loss {loss!r}")
        self.max_elements, self.sinkhorn_every = max_elements, sinkhorn_every
        self.cost = (cost or ItemCosineCost()) if loss != "model" else None
        metrics = dict(k=k_eval, metrics=("recall", "ndcg"), recall_denominator=recall_denominator)
        self.val_metrics, self.test_metrics = RankingMetrics(**metrics), RankingMetrics(**metrics)
        self.monitor = f"val/ndcg@{100 if 100 in k_eval else max(k_eval)}"
        self.predict_k = 20

    # --- data-dependent construction -------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        data = getattr(datamodule, "data", None)
        if data is None or not hasattr(data, "held_out"):
            raise RuntimeError("AutoencoderTask needs a user-vector data module (datamodules.UserVectorDataModule)")
        if not self.model.inductive and not getattr(datamodule, "fold_in_training", True):
            raise ValueError(f"{type(self.model).__name__} learns one vector per user: set the data module's "
                             f"fold_in_training: true so that validation / test users are folded in while training")
        self.model.build(data.num_users, data.num_items)
        if self.cost is not None and stage == "fit":
            self.cost.fit(data.train)

    def configure_optimizers(self):
        return self.build_optimizers(self.optimizer, self.scheduler, [{"params": list(self.model.parameters())}])

    # --- training ------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        users, x = batch["users"], batch["x"]
        logits = self.model(users, x)
        logs: dict[str, torch.Tensor] = {}
        if self.loss_kind == "model":
            loss = logs[f"train/nll_{self.model.likelihood}"] = negative_log_likelihood(
                self.model.likelihood, logits, x).mean()
        else:
            log_probs = F.log_softmax(logits, dim=1)
            loss = torch.zeros((), dtype=logits.dtype, device=logits.device)
            if self.global_step % self.sinkhorn_every == 0:
                k = None if self.loss_kind == "sinkhorn" else self.k
                loss = logs["train/sinkhorn"] = topk_sinkhorn_loss(log_probs, x, self.cost, k=k, eps=self.eps,
                                                                   n_iter=self.n_iter,
                                                                   max_elements=self.max_elements).mean()
            if self.loss_kind == "accelerated":
                logs["train/concentration"] = concentration_loss(log_probs, x, self.alpha).mean()
                loss = loss + logs["train/concentration"]
        for name, value in self.model.regularization(self.global_step).items():
            logs[f"train/{name}"] = value
            loss = loss + value
        logs["train/loss"] = loss
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=users.numel())
        return loss

    def on_train_epoch_end(self) -> None:
        values = self.model.log_values(self.global_step)
        if values:
            self.log_dict({f"model/{k}": float(v) for k, v in values.items()}, on_step=False, on_epoch=True)

    # --- evaluation by fold-in -------------------------------------------------------------------------------
    def _scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["users"], batch["x"])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_metrics.update(self._scores(batch), batch["target"], batch["x"] > 0)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.test_metrics.update(self._scores(batch), batch["target"], batch["x"] > 0)

    def _log_metrics(self, metrics: RankingMetrics, prefix: str) -> None:
        values = metrics.compute()
        metrics.reset()
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items()}, rank_zero_only=False)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        scores = self._scores(batch).masked_fill(batch["x"] > 0, float("-inf"))
        top = scores.topk(min(self.predict_k, scores.shape[1]), dim=1)
        return {"users": batch["users"], "items": top.indices, "scores": top.values}
