"""Matrix factorisation trained with BPR (Rendle et al., UAI'09): score(u, i) = e_u . e_i."""
from __future__ import annotations

from recot.nn.base import EmbeddingTables


class MF(EmbeddingTables):
    """BPR-MF: one user and one item embedding table, no propagation.

    Args:
        embedding_dim: d (64 in the LightGCN comparison).
        init_std: normal initialisation std; None = Xavier uniform.
    """
