"""PinSage (Ying et al., KDD'18) on the user-item graph: random-walk importance neighbourhoods, importance pooling."""
from __future__ import annotations

import warnings
import weakref
from typing import Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from recot.nn.base import EmbeddingTables, GraphData
from recot.nn.sparse import Backend, SparseOperator


def bipartite_csr(train: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR ``(indptr (N + 1,), indices (2 nnz,))`` of the undirected user-item graph on ``N = U + I`` nodes, users
    ``0..U-1`` and items ``U..U+I-1``."""
    num_users = train.shape[0]
    coo = train.tocoo()
    rows = np.concatenate([coo.row, coo.col + num_users]).astype(np.int64)
    cols = np.concatenate([coo.col + num_users, coo.row]).astype(np.int64)
    order = np.lexsort((cols, rows))
    counts = np.bincount(rows, minlength=sum(train.shape))
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return torch.from_numpy(indptr), torch.from_numpy(cols[order])


def importance_neighborhoods(train: sp.csr_matrix, num_walks: int, walk_length: int, num_neighbors: int,
                             generator: torch.Generator) -> torch.Tensor:
    """Importance-based neighbourhoods (PinSage Sec. 3.2) of every user and item, from short random walks.

    From every node with an edge, ``num_walks`` uniform random walks of ``walk_length`` hops are run on the
    user-item graph; the visits at odd hops (nodes of the other type: a user's items, an item's users) are counted, and
    the ``num_neighbors`` (T) most visited nodes (ties: smaller id first) form the neighbourhood, weighted by their
    visit counts normalised to sum 1 over the kept T (the ``alpha`` of importance pooling). All walkers advance
    together, one vectorised step per hop, so the cost is ``O(N * num_walks * walk_length)`` tensor work.

    Args:
        train: binary ``(U, I)`` CSR training matrix.
        generator: the only source of randomness: equal seeds give equal neighbourhoods.

    Returns:
        ``(U + I, U + I)`` float32 sparse CSR; row ``v`` holds ``alpha_{v, w}`` for the T neighbours ``w`` of ``v``
        (users are rows ``0..U-1``, items ``U..``); nodes without edges have empty rows.
    """
    if num_walks < 1 or walk_length < 1 or num_neighbors < 1:
        raise ValueError(f"num_walks, walk_length and num_neighbors must be >= 1, got {num_walks}, {walk_length}, "
                         f"{num_neighbors}")
    n = sum(train.shape)
    indptr, indices = bipartite_csr(train)
    degree = indptr[1:] - indptr[:-1]
    starts = torch.nonzero(degree > 0).flatten().repeat_interleave(num_walks)  # (S * num_walks,)
    here, visits = starts, []
    for hop in range(1, walk_length + 1):
        deg = degree[here]  # > 0: every node reached over an edge has one
        offset = (torch.rand(here.numel(), generator=generator) * deg).long().clamp_max(deg - 1)
        here = indices[indptr[here] + offset]
        if hop % 2 == 1:
            visits.append(here)
    source = starts.repeat(len(visits))
    pairs, counts = torch.unique(source * n + torch.cat(visits), return_counts=True)  # sorted by (source, target)
    src, dst = pairs // n, pairs % n
    # top-T per source by count: a stable sort by count, then a stable sort by source keeps (source, -count, target)
    order = torch.sort(-counts, stable=True).indices
    order = order[torch.sort(src[order], stable=True).indices]
    src, dst, counts = src[order], dst[order], counts[order]
    first = torch.ones_like(src, dtype=torch.bool)
    first[1:] = src[1:] != src[:-1]
    group_start = torch.nonzero(first).flatten()
    rank = torch.arange(src.numel()) - group_start[torch.cumsum(first, 0) - 1]
    keep = rank < num_neighbors
    src, dst, counts = src[keep], dst[keep], counts[keep].to(torch.float32)
    totals = torch.zeros(n).index_add_(0, src, counts)
    alpha = counts / totals[src]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "sparse CSR is beta" / invariant-check notices
        matrix = torch.sparse_coo_tensor(torch.stack([src, dst]), alpha, (n, n), check_invariants=True)
        return matrix.coalesce().to_sparse_csr()


class PinSage(EmbeddingTables):
    """PinSage with ID embeddings as input features, on the user-item graph.

    Each node's neighbourhood is the top-T of :func:`importance_neighborhoods` (a user aggregates items, an item
    users). One layer (Algorithm 1, CONVOLVE), on the stacked ``h = [users; items]: (U + I, d_l)``::

        n_v = sum_w alpha_{v,w} ReLU(Q h_w + q)           # importance pooling (weighted mean)
        z_v = ReLU(W [h_v || n_v] + w);  z_v = z_v / |z_v|  # concat + dense + ReLU + L2 normalisation

    Readout (Algorithm 2, last line): ``e_v = G2 ReLU(G1 z_v^(K) + g)``; the score is the dot product, trained with BPR
    (the paper's max-margin loss is replaced by the ranking task's loss, as in the GOTNet comparison).

    The walks are drawn once per bind from a fresh generator seeded with ``walk_seed`` (the run's seed when None): the
    neighbourhoods are a pure function of the training graph and the seed, so no sampler state evolves during training;
    a resumed run or ``recot test --ckpt_path`` rebuilds exactly the neighbourhoods the weights were trained with.

    Args:
        embedding_dim: d of the layer-0 embeddings.
        layer_sizes: output size of each convolution layer (paper: K = 2 layers).
        hidden_dim: output size of Q (the pooled messages); None = d.
        num_walks: walks started from every node.
        walk_length: hops per walk (3: direct neighbours and the neighbours of co-interacting nodes).
        num_neighbors: T, the neighbourhood size.
        walk_seed: seed of the walks; None = ``torch.initial_seed()`` (the ``seed_everything`` value under the CLI).
        init_std: normal initialisation std of the embeddings; None = Xavier uniform.
        sparse_backend: see :class:`recot.nn.sparse.SparseOperator`.
    """

    def __init__(self, embedding_dim: int = 64, layer_sizes: Sequence[int] = (64, 64), hidden_dim: Optional[int] = None,
                 num_walks: int = 50, walk_length: int = 3, num_neighbors: int = 20, walk_seed: Optional[int] = None,
                 init_std: Optional[float] = 0.1, sparse_backend: Backend = "auto"):
        super().__init__(embedding_dim, init_std)
        sizes = [embedding_dim, *[int(s) for s in layer_sizes]]
        hidden = hidden_dim or embedding_dim
        self.num_layers = len(sizes) - 1
        self.num_walks, self.walk_length, self.num_neighbors = num_walks, walk_length, num_neighbors
        self.walk_seed, self.sparse_backend = walk_seed, sparse_backend
        self.q = nn.ModuleList(nn.Linear(a, hidden) for a in sizes[:-1])
        self.w = nn.ModuleList(nn.Linear(a + hidden, b) for a, b in zip(sizes, sizes[1:]))
        self.g1 = nn.Linear(sizes[-1], sizes[-1])
        self.g2 = nn.Linear(sizes[-1], sizes[-1])
        self.neighborhoods: Optional[SparseOperator] = None
        self._walked: Optional[weakref.ref] = None

    def attach(self, data: GraphData) -> None:
        if self._walked is not None and self._walked() is data.train:
            return  # fit then test in one run: the same graph, the same walks
        seed = self.walk_seed if self.walk_seed is not None else torch.initial_seed()
        matrix = importance_neighborhoods(data.train, self.num_walks, self.walk_length, self.num_neighbors,
                                          torch.Generator().manual_seed(int(seed)))
        self.neighborhoods = SparseOperator(matrix, backend=self.sparse_backend)
        self._walked = weakref.ref(data.train)

    def propagate(self, layer: int, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U, d_l), (I, d_l) -> (U, d_{l+1}), (I, d_{l+1})``: Algorithm 1 for every node at once."""
        if self.neighborhoods is None:
            raise RuntimeError("PinSage has no neighbourhoods: call bind(data) first (the ranking task does this)")
        h = torch.cat([users, items])
        pooled = self.neighborhoods @ F.relu(self.q[layer](h))  # (N, hidden): alpha-weighted mean of messages
        z = F.normalize(F.relu(self.w[layer](torch.cat([h, pooled], dim=1))), dim=1)
        return z[: self.num_users], z[self.num_users:]

    def layer_dims(self) -> list[int]:
        return [self.embedding_dim, *(w.out_features for w in self.w)]

    def combine(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``G2 ReLU(G1 z^(K) + g)`` of the last layer: ``(U, d_K), (I, d_K)``."""
        users, items = layers[-1]
        return self.g2(F.relu(self.g1(users))), self.g2(F.relu(self.g1(items)))
