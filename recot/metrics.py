"""Full-ranking top-k metrics as a torchmetrics ``Metric`` whose states are sums, so N processes give the numbers of one.

For a user with held-out (target) items T and the ranked list R_k of the k best-scored non-excluded items:

- ``recall@k = |R_k ∩ T| / |T|`` (LightGCN / NGCF convention, ``recall_denominator="target"``), or
  ``recall_min@k = |R_k ∩ T| / min(k, |T|)`` (MultVAE / SinkhornCF convention, ``recall_denominator="min"``; the name
  says which, so the two are never confused in logs and reports),
- ``precision@k = |R_k ∩ T| / k``,
- ``hit_rate@k = 1[|R_k ∩ T| > 0]``,
- ``ndcg@k = DCG@k / IDCG@k`` with ``DCG@k = sum_{r=1..k} 1[R_r ∈ T] / log2(r + 1)`` and the ideal DCG over
  ``min(k, |T|)`` hits.

Each is averaged over users with at least one target item; users without targets are skipped.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torchmetrics import Metric

METRIC_NAMES = ("recall", "ndcg", "precision", "hit_rate")


class RankingMetrics(Metric):
    """Recall, NDCG, Precision and HitRate at several cut-offs.

    Args:
        k: cut-offs.
        metrics: which of ``recall``, ``ndcg``, ``precision``, ``hit_rate`` to compute.
        recall_denominator: ``"target"`` divides the hits by ``|T|`` (logged as ``recall@k``); ``"min"`` by
            ``min(k, |T|)`` (Liang et al. 2018; SinkhornCF Sec. 3.2.1), logged as ``recall_min@k``.

    ``update(scores (B, I) float, target (B, I) bool, exclude (B, I) bool or None)``; ``compute()`` returns
    ``{"recall@20": tensor, "ndcg@20": tensor, ...}``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: Sequence[int] = (10, 20), metrics: Sequence[str] = METRIC_NAMES,
                 recall_denominator: str = "target", **kwargs):
        super().__init__(**kwargs)
        if recall_denominator not in ("target", "min"):
            raise ValueError(f"recall_denominator must be 'target' or 'min', got {recall_denominator!r}")
        self.recall_denominator = recall_denominator
        unknown = set(metrics) - set(METRIC_NAMES)
        if unknown:
            raise ValueError(f"unknown ranking metric(s) {sorted(unknown)}; choose from {METRIC_NAMES}")
        if not k or min(k) < 1:
            raise ValueError(f"cut-offs must be positive integers, got {list(k)}")
        self.k = sorted(set(int(x) for x in k))
        self.metrics = tuple(metrics)
        for name in self.names:
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_users", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _label(self, metric: str) -> str:
        return "recall_min" if metric == "recall" and self.recall_denominator == "min" else metric

    @property
    def names(self) -> list[str]:
        return [f"{self._label(m)}@{k}" for m in self.metrics for k in self.k]

    def update(self, scores: torch.Tensor, target: torch.Tensor, exclude: Optional[torch.Tensor] = None) -> None:
        if scores.shape != target.shape or (exclude is not None and exclude.shape != scores.shape):
            raise ValueError(f"scores {tuple(scores.shape)}, target {tuple(target.shape)} and exclude "
                             f"{None if exclude is None else tuple(exclude.shape)} must have the same (B, I) shape")
        target = target.bool()
        if exclude is not None:
            exclude = exclude.bool()
            scores = scores.masked_fill(exclude, float("-inf"))
            # an excluded item never counts as a target; ``>`` on bools is ``target & ~exclude`` in one pass
            target = target > exclude
        # targets per row from the nonzeros: the (B, I) rows are sparse, and counting them this way is about 4x
        # faster on a CPU than a reduction over the whole row
        n_target = torch.bincount(torch.nonzero(target)[:, 0], minlength=target.shape[0])
        keep = n_target > 0
        if not keep.any():
            return
        k_max = min(self.k[-1], scores.shape[1])
        # rank every row and drop the users without targets from the (B, k) results: selecting rows of the (B, I)
        # inputs first would copy them, which costs more than ranking the few extra rows
        top = scores.topk(k_max, dim=1).indices
        # (B, k_max), True where the r-th ranked item is a target; when fewer than k items remain, excluded (-inf)
        # items fill the list, and they are never targets (above)
        hits = target.gather(1, top)
        hits, n_target = hits[keep], n_target[keep]
        hits = hits.to(torch.float64)
        discount = 1.0 / torch.log2(torch.arange(2, k_max + 2, device=scores.device, dtype=torch.float64))
        ideal = torch.cumsum(discount, 0)
        for k in self.k:
            h = hits[:, :k]
            n_hit = h.sum(1)
            values = {
                "recall": n_hit / (n_target if self.recall_denominator == "target" else n_target.clamp(max=k)),
                "precision": n_hit / k,
                "hit_rate": (n_hit > 0).to(torch.float64),
                "ndcg": (h * discount[: h.shape[1]]).sum(1) / ideal[(n_target.clamp(max=min(k, k_max)) - 1)],
            }
            for m in self.metrics:
                name = f"{self._label(m)}@{k}"
                setattr(self, name, getattr(self, name) + values[m].sum())
        self.num_users += keep.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.num_users.clamp(min=1).to(torch.float64)
        return {name: (getattr(self, name) / n).to(torch.float32) for name in self.names}
