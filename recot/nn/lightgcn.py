"""LightGCN (He et al., SIGIR'20): linear propagation on the normalised user-item graph, layer mean as readout."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from recot.nn.base import EmbeddingTables, GraphData
from recot.nn.sparse import Backend, SparseOperator


class LightGCN(EmbeddingTables):
    """LightGCN.

    Propagation (Eq. 7): ``E^(k+1) = D^-1/2 A D^-1/2 E^(k)`` on the stacked ``[users; items]`` embeddings, no
    weights, no nonlinearity, no self loops. Readout (Eq. 8): ``E = sum_k alpha_k E^(k)`` with ``alpha_k = 1/(K+1)``
    by default.

    Args:
        embedding_dim: d (paper: 64).
        num_layers: K (paper: 3).
        layer_weights: alpha_0..alpha_K; None = uniform mean.
        init_std: normal initialisation std (paper: 0.1); None = Xavier uniform.
        sparse_backend: see :class:`recot.nn.sparse.SparseOperator`.
    """

    def __init__(self, embedding_dim: int = 64, num_layers: int = 3, layer_weights: Optional[Sequence[float]] = None,
                 init_std: Optional[float] = 0.1, sparse_backend: Backend = "auto"):
        super().__init__(embedding_dim, init_std)
        if layer_weights is not None and len(layer_weights) != num_layers + 1:
            raise ValueError(f"layer_weights needs num_layers + 1 = {num_layers + 1} values, got {len(layer_weights)}")
        self.num_layers = num_layers
        self.layer_weights = None if layer_weights is None else [float(w) for w in layer_weights]
        self.sparse_backend = sparse_backend
        self.adjacency: Optional[SparseOperator] = None

    def attach(self, data: GraphData) -> None:
        self.adjacency = SparseOperator(data.adjacency, symmetric=True, backend=self.sparse_backend)

    def propagate(self, layer: int, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.adjacency is None:
            raise RuntimeError("LightGCN has no graph: call bind(data) first (the ranking task does this in setup)")
        out = self.adjacency @ torch.cat([users, items])
        return out[: self.num_users], out[self.num_users:]

    def embed(self, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
        # Same result as the generic layer loop (initial/propagate/combine), kept on the stacked (U + I, d) state:
        # one concatenation and one split instead of one per layer (the loop is memory-bound on large graphs).
        weights = self.layer_weights or [1.0 / (self.num_layers + 1)] * (self.num_layers + 1)
        out = sum(w * x for w, x in zip(weights, self.layer_outputs(stacked=True)))
        return out[: self.num_users], out[self.num_users:]

    def layer_outputs(self, stacked: bool = False) -> list:
        # the stacked (U + I, d) state, split by views (no copy per layer)
        if self.adjacency is None:
            raise RuntimeError("LightGCN has no graph: call bind(data) first (the ranking task does this in setup)")
        x = torch.cat(self.initial())
        states = [x]
        for _ in range(self.num_layers):
            x = self.adjacency @ x
            states.append(x)
        return states if stacked else [(x[: self.num_users], x[self.num_users:]) for x in states]

    def combine(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.layer_weights or [1.0 / len(layers)] * len(layers)
        users = sum(w * u for w, (u, _) in zip(weights, layers))
        items = sum(w * i for w, (_, i) in zip(weights, layers))
        return users, items
