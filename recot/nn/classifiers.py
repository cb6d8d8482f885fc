"""Set and graph classifiers with a pluggable pooling, trained by :class:`recot.tasks.ClassificationTask`.

Each is built lazily for the data's sizes (``build(num_features, num_classes)``, called by the task's ``setup``) and
maps a PyG batch to logits ``(batch.num_graphs, num_classes)``:

* :class:`GraphClassifier`: GIN (Xu et al. 2019) + pooling + MLP (graph classification on TU data);
* :class:`BagClassifier`: AttentionDeepMIL's network for MIL bags (Ilse et al. 2018): instance MLP + pooling + linear;
* :class:`GraphSetClassifier`: 3-layer GIN + set fusion (HROTP, Eq. 14) for sets of graphs (DDI).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.aggr import Aggregation
from torch_geometric.nn.models import GIN

from recot.nn.aggr.hierarchical import SetFusion


def pooled_size(pooling: Aggregation, in_channels: int) -> int:
    """Output size of ``pooling`` for inputs of ``in_channels`` features (Set2Set doubles it, OTK multiplies...)."""
    training = pooling.training
    pooling.eval()  # e.g. batch norm inside a DeepSet's MLPs: no statistics from the dummy set
    try:
        with torch.no_grad():
            x = torch.zeros(2, in_channels)
            return int(pooling(x, torch.zeros(2, dtype=torch.long), dim_size=1).shape[-1])
    finally:
        pooling.train(training)


def mlp_head(in_channels: int, hidden_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_channels, hidden_channels), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden_channels, num_classes))


class SetClassifier(nn.Module):
    """Base: lazily built for the data's sizes; logs the pooling's learnable weights where it has any."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: Optional[tuple[int, int]] = None

    @property
    def built(self) -> bool:
        return self.sizes is not None

    def build(self, num_features: int, num_classes: int) -> None:
        if self.sizes == (num_features, num_classes):
            return
        if self.sizes is not None:
            raise RuntimeError(f"{type(self).__name__} was built for {self.sizes} (features, classes), the data has "
                               f"{(num_features, num_classes)}")
        self._build(num_features, num_classes)
        self.sizes = (num_features, num_classes)

    def _build(self, num_features: int, num_classes: int) -> None:
        raise NotImplementedError

    def poolings(self) -> dict[str, nn.Module]:
        return {}

    def log_values(self) -> dict[str, Tensor]:
        """Learnable pooling weights (e.g. ROT's alphas), logged by the task each epoch."""
        out = {}
        for prefix, pool in self.poolings().items():
            for module_name, module in pool.named_modules():
                if hasattr(module, "log_values") and module is not self:
                    tag = ".".join(p for p in (prefix, module_name) if p)
                    out.update({f"{tag}/{k}": v for k, v in module.log_values().items()})
        return out


class GraphClassifier(SetClassifier):
    """GIN encoder -> ReLU (the ROT layers assume non-negative inputs) -> ``pooling`` -> MLP.

    Args:
        pooling: any PyG aggregation over the node embeddings (its ``in_channels`` = ``hidden_channels``).
        hidden_channels: GIN width. num_layers: GIN layers (5 in the paper). dropout: in the MLP head.
        train_eps: learnable epsilon of the GIN layers (GIN-eps).
    """

    def __init__(self, pooling: Aggregation, hidden_channels: int = 32, num_layers: int = 5, dropout: float = 0.5,
                 train_eps: bool = False):
        super().__init__()
        self.pooling = pooling
        self.hidden_channels, self.num_layers, self.dropout, self.train_eps = hidden_channels, num_layers, dropout, \
            train_eps

    def _build(self, num_features: int, num_classes: int) -> None:
        self.encoder = GIN(num_features, self.hidden_channels, self.num_layers, norm="batch_norm",
                           train_eps=self.train_eps)
        size = pooled_size(self.pooling, self.hidden_channels)
        self.head = mlp_head(size, self.hidden_channels, num_classes, self.dropout)

    def embed(self, batch) -> Tensor:
        """Pooled graph embeddings ``(num_graphs, F)``."""
        h = F.relu(self.encoder(batch.x, batch.edge_index))
        return self.pooling(h, batch.batch, dim_size=batch.num_graphs)

    def forward(self, batch) -> Tensor:
        return self.head(self.embed(batch))

    def poolings(self) -> dict[str, nn.Module]:
        return {"pooling": self.pooling}


class BagClassifier(SetClassifier):
    """AttentionDeepMIL's network for MIL benchmark features (Ilse et al. 2018, Table 9 of their appendix):
    fc-256, ReLU, dropout, fc-128, ReLU, dropout, fc-64, ReLU, MIL pooling, fc to the classes.

    Args:
        pooling: aggregation over the instance embeddings (``in_channels`` = the last of ``hidden``).
        hidden: widths of the instance MLP. dropout: after each hidden layer but the last.
    """

    def __init__(self, pooling: Aggregation, hidden: Sequence[int] = (256, 128, 64), dropout: float = 0.0):
        super().__init__()
        self.pooling = pooling
        self.hidden, self.dropout = list(hidden), dropout

    def _build(self, num_features: int, num_classes: int) -> None:
        layers: list[nn.Module] = []
        sizes = [num_features, *self.hidden]
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            layers += [nn.Linear(a, b), nn.ReLU()]
            if i < len(self.hidden) - 1 and self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(pooled_size(self.pooling, sizes[-1]), num_classes)

    def forward(self, batch) -> Tensor:
        h = self.features(batch.x)
        return self.head(self.pooling(h, batch.batch, dim_size=batch.num_graphs))

    def poolings(self) -> dict[str, nn.Module]:
        return {"pooling": self.pooling}


class GraphSetClassifier(SetClassifier):
    """Sets of graphs (DDI, Xu & Cheng Sec. 6.2): GIN node embeddings, set fusion (Eq. 14) with ``inner`` pooling the
    nodes of each graph, an MLP ``g`` and ``outer`` pooling the graphs of each set, then an MLP head.

    Batches come from :class:`datamodules.GraphSetDataModule`: ``batch.member`` (node -> graph, sorted),
    ``batch.member_set`` (graph -> set, sorted), ``batch.num_graphs`` sets.
    """

    def __init__(self, inner: Aggregation, outer: Aggregation, hidden_channels: int = 32, num_layers: int = 3,
                 dropout: float = 0.5):
        super().__init__()
        self.inner, self.outer = inner, outer
        self.hidden_channels, self.num_layers, self.dropout = hidden_channels, num_layers, dropout

    def _build(self, num_features: int, num_classes: int) -> None:
        self.encoder = GIN(num_features, self.hidden_channels, self.num_layers, norm="batch_norm")
        g = nn.Sequential(nn.Linear(pooled_size(self.inner, self.hidden_channels), self.hidden_channels), nn.ReLU())
        self.fusion = SetFusion(self.inner, self.outer, g)
        self.head = mlp_head(pooled_size(self.outer, self.hidden_channels), self.hidden_channels, num_classes,
                             self.dropout)

    def forward(self, batch) -> Tensor:
        h = F.relu(self.encoder(batch.x, batch.edge_index))
        z = self.fusion(h, batch.member, batch.member_set, num_members=batch.member_set.numel(),
                        num_sets=batch.num_graphs)
        return self.head(z)

    def poolings(self) -> dict[str, nn.Module]:
        return {"inner": self.inner, "outer": self.outer}
