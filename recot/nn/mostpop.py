"""MostPop: rank items by their number of training interactions, the same list for every user."""
from __future__ import annotations

import numpy as np
import torch

from recot.nn.base import GraphData, Recommender


class MostPop(Recommender):
    """Popularity ranking (no parameters, no training): ``score(u, i) = |{v : (v, i) in train}|``.

    A reference row for every table: a personalised model that does not beat it has learned nothing.
    """

    trainable = False

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("popularity", torch.zeros(0), persistent=False)

    def attach(self, data: GraphData) -> None:
        counts = np.asarray(data.train.sum(axis=0)).ravel().astype(np.float32)
        self.popularity = torch.from_numpy(counts).to(self.popularity.device)

    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(self.num_users, 0, device=self.popularity.device), self.popularity.unsqueeze(1)

    def score(self, users: torch.Tensor, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        return item_emb.squeeze(1).expand(users.numel(), -1)

    def pair_score(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        return item_emb.squeeze(-1).expand(torch.broadcast_shapes(user_emb.shape[:-1], item_emb.shape[:-1]))
