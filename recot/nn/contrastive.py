"""AD-GCL (Suresh et al., NeurIPS 2021): graph contrastive learning with a learnable edge-dropping augmenter.

The graph protocol of the ROT pooling paper (Xu & Cheng, Table 2): a GIN encoder whose readout is the pooling under
test is pre-trained without labels by AD-GCL, then a linear SVM classifies the pooled embeddings
(:mod:`recot.svm`). Trained by :class:`recot.tasks.ContrastiveTask`.

* :class:`GINEncoder`: ``num_layers`` GIN layers (MLP ``Linear-ReLU-Linear``, batch norm, ReLU) that accept edge
  weights in [0, 1] (message :math:`w_{ij}x_j`); the graph embedding concatenates the pooled node embeddings of every
  layer (AD-GCL's / GraphCL's readout, ``readout="all"``) or pools the last layer only (``"last"``). Each layer has
  its own copy of the pooling.
* :class:`EdgeDropAugmenter`: AD-GCL's view learner: its own GIN gives node embeddings, an MLP on the two end nodes'
  embeddings gives a logit per edge, and the concrete (Gumbel-sigmoid) relaxation with temperature 1 gives the kept
  weight :math:`w_e = \\sigma((\\log u - \\log(1 - u) + \\text{logit}_e)/T)`, ``u ~ U(bias, 1 - bias)``.
* :class:`ADGCL`: encoder, projection head (``Linear-ReLU-Linear``) and augmenter; :meth:`ADGCL.nt_xent` is AD-GCL's
  InfoNCE between each graph's two views (cosine similarity, temperature 0.2, the other graphs' augmented views as
  negatives); :meth:`ADGCL.drop_ratio` is the regulariser (mean over graphs of the expected share of dropped edges).
  The encoder minimises the InfoNCE; the augmenter maximises ``InfoNCE - reg_lambda * drop_ratio``.
"""
from __future__ import annotations

import copy
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.aggr import Aggregation
from torch_geometric.utils import scatter

from recot.nn.classifiers import SetClassifier, pooled_size


def _mlp(a: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, b))


class WeightedGINConv(MessagePassing):
    """GIN layer (Xu et al. 2019) with optional edge weights: ``mlp((1 + eps) x_i + sum_j w_ij x_j)``."""

    def __init__(self, mlp: nn.Module, eps: float = 0.0):
        super().__init__(aggr="add")
        self.mlp, self.eps = mlp, eps

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
        return self.mlp((1 + self.eps) * x + self.propagate(edge_index, x=x, edge_weight=edge_weight))

    def message(self, x_j: Tensor, edge_weight: Optional[Tensor]) -> Tensor:
        return x_j if edge_weight is None else x_j * edge_weight[:, None]


class GINEncoder(nn.Module):
    """``num_layers`` weighted GIN layers with batch norm and ReLU; node embeddings ``(N, L * hidden)`` (all layers)
    and, with a ``pooling``, graph embeddings ``(B, L * F)`` (``readout="all"``) or ``(B, F)`` (``"last"``)."""

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int,
                 pooling: Optional[Aggregation] = None, readout: Literal["all", "last"] = "all"):
        super().__init__()
        if readout not in ("all", "last"):
            raise ValueError(f"readout must be 'all' or 'last', got {readout!r}")
        self.convs = nn.ModuleList(WeightedGINConv(_mlp(in_channels if i == 0 else hidden_channels, hidden_channels))
                                   for i in range(num_layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden_channels) for _ in range(num_layers))
        self.readout = readout
        self.pools = None
        if pooling is not None:
            count = num_layers if readout == "all" else 1
            self.pools = nn.ModuleList([pooling] + [copy.deepcopy(pooling) for _ in range(count - 1)])
            self.out_channels = count * pooled_size(pooling, hidden_channels)

    def nodes(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> list[Tensor]:
        out = []
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x, edge_index, edge_weight)))  # non-negative, as the ROT layers assume
            out.append(x)
        return out

    def forward(self, batch, edge_weight: Optional[Tensor] = None) -> Tensor:
        """Graph embeddings ``(batch.num_graphs, out_channels)``."""
        hs = self.nodes(batch.x, batch.edge_index, edge_weight)
        hs = hs if self.readout == "all" else hs[-1:]
        return torch.cat([pool(h, batch.batch, dim_size=batch.num_graphs) for pool, h in zip(self.pools, hs)], -1)


class EdgeDropAugmenter(nn.Module):
    """AD-GCL's learnable edge dropping: per-edge keep weights ``(E,)`` in (0, 1) (see the module docstring)."""

    def __init__(self, in_channels: int, hidden_channels: int = 32, num_layers: int = 5, edge_hidden: int = 64,
                 temperature: float = 1.0, bias: float = 1e-4):
        super().__init__()
        self.gnn = GINEncoder(in_channels, hidden_channels, num_layers)
        self.edge_mlp = nn.Sequential(nn.Linear(2 * num_layers * hidden_channels, edge_hidden), nn.ReLU(),
                                      nn.Linear(edge_hidden, 1))
        self.temperature, self.bias = temperature, bias

    def logits(self, batch) -> Tensor:
        h = torch.cat(self.gnn.nodes(batch.x, batch.edge_index), -1)
        src, dst = batch.edge_index
        return self.edge_mlp(torch.cat([h[src], h[dst]], -1)).squeeze(-1)

    def forward(self, batch, sample: bool = True) -> Tensor:
        logits = self.logits(batch)
        if not sample:  # the expected view (evaluation)
            return torch.sigmoid(logits / self.temperature)
        u = torch.rand_like(logits) * (1 - 2 * self.bias) + self.bias
        return torch.sigmoid((u.log() - (1 - u).log() + logits) / self.temperature)


class ADGCL(SetClassifier):
    """Encoder (GIN + pluggable pooling), projection head and edge-dropping augmenter of AD-GCL.

    Args:
        pooling: the readout under test (any PyG aggregation; one copy per GIN layer with ``readout="all"``).
        hidden_channels, num_layers: of both GINs (AD-GCL on TU data: 32 and 5).
        readout: ``"all"`` (concatenate every layer's pooled embedding, AD-GCL) or ``"last"``.
        temperature: of the InfoNCE (AD-GCL: 0.2). edge_hidden: width of the augmenter's edge MLP (AD-GCL: 64).
    """

    def __init__(self, pooling: Aggregation, hidden_channels: int = 32, num_layers: int = 5,
                 readout: Literal["all", "last"] = "all", temperature: float = 0.2, edge_hidden: int = 64):
        super().__init__()
        self.pooling = pooling
        self.hidden_channels, self.num_layers, self.readout = hidden_channels, num_layers, readout
        self.temperature, self.edge_hidden = temperature, edge_hidden

    def _build(self, num_features: int, num_classes: int) -> None:
        self.encoder = GINEncoder(num_features, self.hidden_channels, self.num_layers, self.pooling, self.readout)
        size = self.encoder.out_channels
        self.projection = _mlp(size, size)
        self.augmenter = EdgeDropAugmenter(num_features, self.hidden_channels, self.num_layers, self.edge_hidden)

    def embed(self, batch, edge_weight: Optional[Tensor] = None) -> Tensor:
        """Pooled graph embeddings ``(num_graphs, F)`` (what the SVM classifies)."""
        return self.encoder(batch, edge_weight)

    def forward(self, batch, edge_weight: Optional[Tensor] = None) -> Tensor:
        """Projected embeddings ``(num_graphs, F)`` for the contrastive loss."""
        return self.projection(self.embed(batch, edge_weight))

    def nt_xent(self, z: Tensor, z_aug: Tensor) -> Tensor:
        """AD-GCL's InfoNCE: ``-mean_i log(exp(s_ii) / sum_{j != i} exp(s_ij))``, ``s`` = cosine / temperature."""
        sim = F.normalize(z, dim=-1) @ F.normalize(z_aug, dim=-1).T / self.temperature
        eye = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
        negatives = torch.logsumexp(sim.masked_fill(eye, float("-inf")), -1)
        return (negatives - sim.diagonal()).mean()

    @staticmethod
    def drop_ratio(batch, edge_weight: Tensor) -> Tensor:
        """Mean over graphs with edges of the share of their edges dropped (``1 - w``): AD-GCL's regulariser."""
        graph = batch.batch[batch.edge_index[0]]
        dropped = scatter(1 - edge_weight, graph, dim_size=batch.num_graphs, reduce="sum")
        count = torch.bincount(graph, minlength=batch.num_graphs)
        has = count > 0
        return (dropped[has] / count[has]).mean() if bool(has.any()) else edge_weight.sum() * 0

    def poolings(self) -> dict[str, nn.Module]:
        return {"pooling": self.pooling}
