"""NGCF (Wang et al., SIGIR'19): graph propagation with sum and bi-interaction messages, layer concatenation."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recot.nn.base import EmbeddingTables, GraphData
from recot.nn.sparse import Backend, SparseOperator


class NGCF(EmbeddingTables):
    """Neural Graph Collaborative Filtering.

    One layer (Eq. 7, matrix form of Eqs. 3-4), on the stacked ``E = [users; items]: (U + I, d_l)``::

        E' = LeakyReLU( (L + I) E W1 + b1  +  (L E) * E W2 + b2 )        # sum message + bi-interaction message

    with ``L = D^-1/2 A D^-1/2`` the normalised bipartite adjacency (the data's ``adjacency``), ``*`` elementwise.
    The biases are those of the authors' code (the paper's Eq. 3 has none). Regularisation (Sec. 2.4.2):

    - node dropout: each layer, every node's outgoing messages are dropped with probability ``node_dropout`` (the
      kept ones rescaled by ``1 / (1 - p)``), i.e. ``L`` acts on ``diag(m) E / (1 - p)``; the self message stays;
    - message dropout: dropout with ``message_dropout`` on the layer's output.

    Both draw from torch's global generator (saved and restored on resume by :class:`recot.callbacks.RNGState`) and
    are off in eval mode. Readout (Eq. 9): ``e* = e^(0) || e^(1) / |e^(1)| || ... || e^(L) / |e^(L)|`` (each
    propagated layer L2-normalised per row, as the authors' code does), so the representation has
    ``d + sum(layer_sizes)`` columns; the score is the dot product of the concatenations (Eq. 10), trained with BPR.

    Args:
        embedding_dim: d of the layer-0 embeddings (paper: 64).
        layer_sizes: output size of each propagation layer (paper: [64, 64, 64]).
        node_dropout: probability of dropping a node's outgoing messages in a layer (authors' Gowalla run: 0.1).
        message_dropout: dropout on each layer's output (paper: 0.1).
        negative_slope: of the LeakyReLU (authors' code: 0.2).
        init_std: normal initialisation std of the embeddings; None = Xavier uniform (the authors' choice).
        sparse_backend: see :class:`recot.nn.sparse.SparseOperator`.
    """

    def __init__(self, embedding_dim: int = 64, layer_sizes: Sequence[int] = (64, 64, 64), node_dropout: float = 0.1,
                 message_dropout: float = 0.1, negative_slope: float = 0.2, init_std: Optional[float] = None,
                 sparse_backend: Backend = "auto"):
        super().__init__(embedding_dim, init_std)
        for name, p in (("node_dropout", node_dropout), ("message_dropout", message_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        sizes = [embedding_dim, *[int(s) for s in layer_sizes]]
        self.num_layers = len(sizes) - 1
        self.layer_sizes = sizes[1:]
        self.node_dropout, self.message_dropout, self.negative_slope = node_dropout, message_dropout, negative_slope
        self.sparse_backend = sparse_backend
        self.w1 = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))  # sum messages
        self.w2 = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))  # bi-interaction messages
        for lin in (*self.w1, *self.w2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.adjacency: Optional[SparseOperator] = None

    def attach(self, data: GraphData) -> None:
        self.adjacency = SparseOperator(data.adjacency, symmetric=True, backend=self.sparse_backend)

    def propagate(self, layer: int, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U, d_l), (I, d_l) -> (U, d_{l+1}), (I, d_{l+1})``: Eq. 7 with node and message dropout."""
        if self.adjacency is None:
            raise RuntimeError("NGCF has no graph: call bind(data) first (the ranking task does this in setup)")
        ego = torch.cat([users, items])
        sent = ego
        if self.training and self.node_dropout > 0:
            keep = torch.rand(ego.shape[0], 1, device=ego.device) >= self.node_dropout
            sent = ego * keep / (1.0 - self.node_dropout)
        side = self.adjacency @ sent  # L E: the neighbours' messages
        out = F.leaky_relu(self.w1[layer](side + ego) + self.w2[layer](side * ego), self.negative_slope)
        out = F.dropout(out, self.message_dropout, self.training)
        return out[: self.num_users], out[self.num_users:]

    def layer_dims(self) -> list[int]:
        return [self.embedding_dim, *self.layer_sizes]

    def combine(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 9: ``(U, d + sum d_l), (I, d + sum d_l)``, propagated layers L2-normalised per row."""
        (u0, i0), rest = layers[0], layers[1:]
        users = torch.cat([u0, *(F.normalize(u, dim=1) for u, _ in rest)], dim=1)
        items = torch.cat([i0, *(F.normalize(i, dim=1) for _, i in rest)], dim=1)
        return users, items
