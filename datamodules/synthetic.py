"""Synthetic implicit feedback with planted low-rank preferences, so that a personalised model clearly beats popularity."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SyntheticSpec:
    """Size and shape of a synthetic interaction set.

    Each user u and item i get latent factors p_u, q_i ~ N(0, I_rank); user u interacts with n_u items drawn without
    replacement from softmax(p_u . q_i / temperature + popularity * log w_i), where w_i follows a Zipf law. The
    popularity term makes MostPop a real (but beatable) baseline.
    """

    num_users: int = 1000
    num_items: int = 800
    rank: int = 8
    min_items_per_user: int = 10
    max_items_per_user: int = 60
    temperature: float = 0.5
    popularity: float = 0.5
    seed: int = 0


def planted_interactions(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``(users, items)`` int64 arrays (no duplicate pairs) from ``spec``."""
    if spec.max_items_per_user > spec.num_items or spec.min_items_per_user < 1:
        raise ValueError(f"items per user must lie in [1, num_items={spec.num_items}], "
                         f"got [{spec.min_items_per_user}, {spec.max_items_per_user}]")
    rng = np.random.default_rng(spec.seed)
    p = rng.standard_normal((spec.num_users, spec.rank)) / np.sqrt(spec.rank)
    q = rng.standard_normal((spec.num_items, spec.rank))
    zipf = 1.0 / np.arange(1, spec.num_items + 1)
    log_pop = np.log(zipf[rng.permutation(spec.num_items)])
    logits = (p @ q.T) / spec.temperature + spec.popularity * log_pop
    # Gumbel top-k = sampling without replacement from the softmax
    keys = logits + rng.gumbel(size=logits.shape)
    n_u = rng.integers(spec.min_items_per_user, spec.max_items_per_user + 1, size=spec.num_users)
    order = np.argsort(-keys, axis=1)
    take = np.arange(spec.num_items)[None, :] < n_u[:, None]
    users = np.broadcast_to(np.arange(spec.num_users)[:, None], order.shape)[take]
    return users.astype(np.int64), order[take].astype(np.int64)
