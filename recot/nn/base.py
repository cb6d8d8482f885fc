"""The interface every recommender exposes to :class:`recot.tasks.RankingTask` and to wrappers such as GOTNet.

A recommender is built lazily: its size comes from the data (``bind``), so a config names only its hyperparameters.
Representations are computed by a layer loop that wrappers can re-run with their own steps between layers:

    u, i = model.initial()                      # layer 0: (U, d), (I, d)
    for l in range(model.num_layers):
        u, i = model.propagate(l, u, i)         # one message-passing layer
    user_emb, item_emb = model.combine(layers)  # readout over [(u_0, i_0), ..., (u_L, i_L)]

``embed()`` runs exactly that loop; ``score`` / ``pair_score`` turn representations into preferences.
"""
from __future__ import annotations

from typing import Optional, Protocol

import scipy.sparse as sp
import torch
from torch import nn


def take_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for ``table: (N, d)`` and any-shaped int ``index`` -> ``(*index.shape, d)``.

    Uses ``index_select``, whose backward (``index_add``) is deterministic on CPU; the backward of ``table[index]``
    (``index_put_`` with accumulation) adds duplicate rows in thread-dependent order, which breaks exact resume.
    """
    return table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[-1])


class GraphData(Protocol):
    """What a recommender may read from the data: sizes, the training matrix and the normalised adjacency."""

    num_users: int
    num_items: int
    train: sp.csr_matrix
    adjacency: torch.Tensor


class Recommender(nn.Module):
    """Base class: sizes bound from the data, layer-wise representations, dot-product scores."""

    num_layers: int = 0
    #: False for models without parameters to train (popularity); the task then skips optimisation.
    trainable: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.num_users: int | None = None
        self.num_items: int | None = None

    # --- sizes and data -------------------------------------------------------------------------
    def bind(self, data: GraphData) -> None:
        """Create parameters for the data's sizes (once) and attach the data the forward pass needs."""
        self.build(data.num_users, data.num_items)
        self.attach(data)

    def build(self, num_users: int, num_items: int) -> None:
        """Create the parameters for ``num_users`` x ``num_items``; a no-op when already built for these sizes."""
        if self.num_users is not None:
            if (self.num_users, self.num_items) != (num_users, num_items):
                raise ValueError(f"{type(self).__name__} was built for {self.num_users} users x {self.num_items} items,"
                                 f" but the data has {num_users} x {num_items}")
            return
        self.num_users, self.num_items = num_users, num_items
        self.reset_parameters_for(num_users, num_items)

    def reset_parameters_for(self, num_users: int, num_items: int) -> None:
        """Subclasses create their size-dependent parameters here."""

    def attach(self, data: GraphData) -> None:
        """Subclasses keep what they need from the data (e.g. the adjacency); nothing by default."""

    # --- representations ------------------------------------------------------------------------
    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-0 (ego) representations ``(U, d)``, ``(I, d)``; the L2 penalty of BPR applies to these."""
        raise NotImplementedError

    def propagate(self, layer: int, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer of message passing: ``(U, d_l), (I, d_l) -> (U, d_{l+1}), (I, d_{l+1})``."""
        raise NotImplementedError(f"{type(self).__name__} has no message-passing layers")

    def combine(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Readout over all layers' representations; the last layer by default. Row-wise: row r of the result
        depends on row r of each layer only (wrappers such as GOTNet apply it to a subset of the rows)."""
        return layers[-1]

    def layer_dims(self) -> list[int]:
        """Widths ``[d_0, ..., d_L]`` of the layer loop's representations (known once built); wrappers such as GOTNet
        size their per-layer weights from them."""
        raise NotImplementedError(f"{type(self).__name__} does not report the widths of its layers (layer_dims)")

    def embed(self, rows: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item representations ``(U, d), (I, d)``.

        ``rows``: optional ``(user ids, item ids)``, a promise that only these rows of the result will be read (the
        training batch's users and items). A model may then leave the other rows unspecified; GOTNet computes its
        non-local term for these rows only. Models whose cost does not depend on it ignore it.
        """
        return self.combine(self.layer_outputs())

    def layer_outputs(self, stacked: bool = False) -> list:
        """The layer loop's representations ``[(users, items) of layer 0, ..., of layer L]`` (``(U, d_l), (I, d_l)``),
        what :meth:`combine` reads out; ``stacked=True``: ``[(U + I, d_l) users then items, ...]`` instead (one
        gather of a few rows per layer, with one gradient buffer, for wrappers such as GOTNet)."""
        u, i = self.initial()
        layers = [(u, i)]
        for layer in range(self.num_layers):
            u, i = self.propagate(layer, u, i)
            layers.append((u, i))
        return [torch.cat(pair) for pair in layers] if stacked else layers

    # --- scores ---------------------------------------------------------------------------------
    def score(self, users: torch.Tensor, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Scores of all items for a batch of users: ``users (B,)`` ids, ``user_emb (B, d)``, ``item_emb (I, d)``
        -> ``(B, I)``."""
        return user_emb @ item_emb.T

    def pair_score(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Scores of matched pairs: broadcastable ``(..., d)``, ``(..., d)`` -> ``(...)``."""
        return (user_emb * item_emb).sum(-1)

    # --- training extras ------------------------------------------------------------------------
    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """Extra loss terms of the last ``embed()`` call (already weighted), added to the task's loss and logged."""
        return {}

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups (a model with its own learning rates for some parameters overrides this)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def log_values(self) -> dict[str, float]:
        """Scalars describing the model's state (e.g. LT-OCF's learned times), logged by the task as
        ``model/<name>`` at the end of every training epoch."""
        return {}


class EmbeddingTables(Recommender):
    """A recommender whose layer 0 is a pair of embedding tables ``(U, d)`` and ``(I, d)``.

    Args:
        embedding_dim: d.
        init_std: standard deviation of the normal initialisation (LightGCN: 0.1); None = Xavier uniform.
    """

    def __init__(self, embedding_dim: int = 64, init_std: float | None = 0.1):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.init_std = init_std
        self.user_embedding: nn.Embedding | None = None
        self.item_embedding: nn.Embedding | None = None

    def reset_parameters_for(self, num_users: int, num_items: int) -> None:
        self.user_embedding = nn.Embedding(num_users, self.embedding_dim)
        self.item_embedding = nn.Embedding(num_items, self.embedding_dim)
        for table in (self.user_embedding, self.item_embedding):
            if self.init_std is None:
                nn.init.xavier_uniform_(table.weight)
            else:
                nn.init.normal_(table.weight, std=self.init_std)

    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding.weight, self.item_embedding.weight

    def layer_dims(self) -> list[int]:
        """Width-preserving layers by default: ``d`` at every layer."""
        return [self.embedding_dim] * (self.num_layers + 1)
