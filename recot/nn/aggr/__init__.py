"""Set poolings as PyG aggregations: ROT pooling (Xu & Cheng), its hierarchical forms, and the baselines PyG lacks.

PyG's own are reused where they exist: ``torch_geometric.nn.aggr.{SumAggregation, MeanAggregation, MaxAggregation,
Set2Set, DeepSetsAggregation, AttentionalAggregation, GRUAggregation}``.
"""
from recot.nn.aggr.base import AttentionScore, SetAggregation, index_from_ptr, masked_softmax
from recot.nn.aggr.baselines import (AttentionPooling, DynamicPooling, GatedAttentionPooling, GatedMixedPooling,
                                     GNPPooling, MixedPooling, OTKPooling, SWEPooling)
from recot.nn.aggr.hierarchical import MixedROTPooling, SetFusion
from recot.nn.aggr.rot import ROTPooling, ROTPoolingBE, ROTPoolingBQ, ROTPoolingS

__all__ = ["SetAggregation", "AttentionScore", "index_from_ptr", "masked_softmax", "ROTPooling", "ROTPoolingS",
           "ROTPoolingBE", "ROTPoolingBQ", "MixedROTPooling", "SetFusion", "MixedPooling", "GatedMixedPooling",
           "AttentionPooling", "GatedAttentionPooling", "DynamicPooling", "GNPPooling", "OTKPooling", "SWEPooling"]
