"""NeuMF (He et al., WWW'17): generalised matrix factorisation and an MLP over (user, item) pairs, fused."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recot.nn.base import EmbeddingTables


class NeuMF(EmbeddingTables):
    """Neural matrix factorisation (Sec. 3.4, Eq. 12)::

        phi_GMF = p_u^G * q_i^G                                   # (gmf_dim,)
        phi_MLP = a_L(W_L^T (... a_2(W_2^T [p_u^M || q_i^M] + b_2) ...) + b_L)   # ReLU tower
        y_ui    = h^T [phi_GMF || phi_MLP] + b                     # a logit; sigmoid(y_ui) is the paper's prediction

    The four embedding tables are stored as one user table ``[p^G || p^M]: (U, gmf_dim + mlp_layers[0] / 2)`` and one
    item table ``[q^G || q^M]``, so ``embed()`` returns them as the representations and :meth:`pair_score` splits them.
    Trained with the ranking task's ``loss: bce`` and 4 sampled negatives per positive (Sec. 4.1); no pre-training of
    GMF / MLP (the paper's optional initialisation, Sec. 3.4.1).

    Full ranking scores every (user, item) pair with the MLP: :meth:`score` splits the first MLP layer into a user part
    and an item part (``W [p || q] = W_p p + W_q q``), computes each once, and evaluates the rest of the tower for
    ``max_pairs`` pairs at a time, so memory stays bounded on large catalogues.

    Args:
        gmf_dim: predictive factors of GMF (paper: 8).
        mlp_layers: MLP layer sizes, the first being the concatenated embedding size (paper: [64, 32, 16, 8]).
        init_std: normal initialisation std of the embeddings (paper: 0.01).
        max_pairs: (user, item) pairs per chunk in :meth:`score`.
    """

    def __init__(self, gmf_dim: int = 8, mlp_layers: Sequence[int] = (64, 32, 16, 8), init_std: float = 0.01,
                 max_pairs: int = 2 ** 19):
        mlp_layers = [int(s) for s in mlp_layers]
        if len(mlp_layers) < 2 or mlp_layers[0] % 2:
            raise ValueError(f"mlp_layers needs an even input size and at least one layer, got {mlp_layers}")
        super().__init__(gmf_dim + mlp_layers[0] // 2, init_std)
        self.gmf_dim, self.mlp_layers, self.max_pairs = gmf_dim, mlp_layers, max_pairs
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(mlp_layers, mlp_layers[1:]))
        self.predict = nn.Linear(gmf_dim + mlp_layers[-1], 1)
        for lin in (*self.mlp, self.predict):
            nn.init.xavier_uniform_(lin.weight)  # Glorot uniform: Keras' default, which the authors' MLP layers use
            nn.init.zeros_(lin.bias)

    def _split(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return emb[..., : self.gmf_dim], emb[..., self.gmf_dim:]

    def _tower(self, hidden: torch.Tensor) -> torch.Tensor:
        """The MLP from its first layer's pre-activation: ``(..., mlp_layers[1]) -> (..., mlp_layers[-1])``."""
        hidden = torch.relu(hidden)
        for lin in self.mlp[1:]:
            hidden = torch.relu(lin(hidden))
        return hidden

    def pair_score(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Logits of matched pairs: broadcastable ``(..., D)``, ``(..., D)`` -> ``(...)``."""
        user_emb, item_emb = torch.broadcast_tensors(user_emb, item_emb)
        (pg, pm), (qg, qm) = self._split(user_emb), self._split(item_emb)
        mlp = self._tower(self.mlp[0](torch.cat([pm, qm], dim=-1)))
        return self.predict(torch.cat([pg * qg, mlp], dim=-1)).squeeze(-1)

    def score(self, users: torch.Tensor, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Logits of all items: ``users (B,)``, ``user_emb (B, D)``, ``item_emb (I, D)`` -> ``(B, I)``."""
        (pg, pm), (qg, qm) = self._split(user_emb), self._split(item_emb)
        first = self.mlp[0]
        half = pm.shape[-1]
        user_part = pm @ first.weight[:, :half].T + first.bias  # (B, h1)
        item_part = qm @ first.weight[:, half:].T  # (I, h1)
        h_gmf, h_mlp = self.predict.weight[0, : self.gmf_dim], self.predict.weight[0, self.gmf_dim:]
        out = (pg * h_gmf) @ qg.T + self.predict.bias  # (B, I): the GMF half of the prediction layer
        rows = max(1, self.max_pairs // max(1, item_emb.shape[0]))
        for s in range(0, user_emb.shape[0], rows):
            tower = self._tower(user_part[s:s + rows, None, :] + item_part[None, :, :])  # (rows, I, h_L)
            out[s:s + rows] += tower @ h_mlp
        return out
