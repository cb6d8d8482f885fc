r"""Hierarchical ROT pooling (HROTP, Xu & Cheng Sec. 3.4): mixed pooling (Eq. 13) and set fusion (Eq. 14)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch_geometric.nn.aggr import Aggregation

from recot.nn.aggr.base import SetAggregation


class MixedROTPooling(Aggregation):
    r"""M-head mixed pooling, Eq. 13: :math:`f_{mrot}(X) = f_{rot}(\Vert_{m=1}^M f_m(X);\ \theta_{M+1})`.

    Every head pools the same sets (any aggregation with output size D: ROT layers, sum, mean, max, ...); their M
    outputs form a set of M samples with D features that ``top`` (a :class:`~recot.nn.aggr.SetAggregation`, usually a
    ROT layer, e.g. with ``q0="param"`` and ``num_elements=M``) pools again. Proposition 2: with mean/max heads and a
    top layer with :math:`\alpha_{1,2,3}\to\infty`, :math:`q_0 = [\omega, 1 - \omega]` this is mixed mean-max pooling.
    """

    def __init__(self, heads: Sequence[Aggregation], top: SetAggregation):
        super().__init__()
        if len(heads) < 1:
            raise ValueError("MixedROTPooling needs at least one head")
        self.heads = nn.ModuleList(heads)
        self.top = top

    def forward(self, x: Tensor, index: Optional[Tensor] = None, ptr: Optional[Tensor] = None,
                dim_size: Optional[int] = None, dim: int = -2, **kwargs) -> Tensor:
        outs = [head(x, index, ptr, dim_size, dim) for head in self.heads]
        dims = {o.shape[-1] for o in outs}
        if len(dims) != 1:
            raise ValueError(f"MixedROTPooling: the heads' output sizes differ ({sorted(dims)}); Eq. 13 needs one D")
        return self.top.dense(torch.stack(outs, dim=-2), None)


class SetFusion(nn.Module):
    r"""Set fusion, Eq. 14: :math:`f_{hrot}(\mathcal X) = f_{rot}(\Vert_{m=1}^M g(f_{rot}(X_m;\theta_1));\ \theta_2)`.

    ``inner`` pools the elements of each member (e.g. the node embeddings of each drug graph) and is shared by all
    members; ``g`` transforms the member vectors (an MLP, identity by default); ``outer`` pools the members of each set.

    ``forward(x, member_index, set_index, num_members, num_sets)``: ``x: (num_elements, D)``, ``member_index:
    (num_elements,)`` sorted member of each element, ``set_index: (num_members,)`` sorted set of each member ->
    ``(num_sets, D')``.
    """

    def __init__(self, inner: Aggregation, outer: Aggregation, g: Optional[nn.Module] = None):
        super().__init__()
        self.inner, self.outer, self.g = inner, outer, g if g is not None else nn.Identity()

    def forward(self, x: Tensor, member_index: Tensor, set_index: Tensor, num_members: Optional[int] = None,
                num_sets: Optional[int] = None) -> Tensor:
        members = self.g(self.inner(x, member_index, dim_size=num_members))
        return self.outer(members, set_index, dim_size=num_sets)
