r"""recot.ot: pure-torch optimal transport, batched over leading dimensions, masked, log-domain.

Every solver takes ``cost: (*batch, n, m)``, weights ``a: (*batch, n)``, ``b: (*batch, m)`` (None =
uniform over real elements) and bool masks (True = real), and returns an :class:`OTResult`.

    >>> from recot.ot import sinkhorn, sq_euclidean
    >>> res = sinkhorn(sq_euclidean(x, y), eps=0.05, grad="implicit")
    >>> res.plan, res.value, res.n_iter, res.converged
"""
from .badmm import BADMMState, badmm, badmm_init, badmm_step
from .cost import cosine_cost, cost_scale, dot_cost, euclidean, normalize_cost, pairwise_cost, sq_euclidean
from .greenkhorn import greenkhorn
from .kmeans import KMeansResult, ot_kmeans
from .losses import (accelerated_sinkhorn_loss, concentration_loss, entropic_ot, entropy_term, sinkhorn_divergence,
                     sinkhorn_loss, topk_sinkhorn_loss)
from .result import OTResult
from .sinkhorn import sinkhorn

__all__ = [
    "BADMMState",
    "KMeansResult",
    "OTResult",
    "accelerated_sinkhorn_loss",
    "badmm",
    "badmm_init",
    "badmm_step",
    "concentration_loss",
    "cosine_cost",
    "cost_scale",
    "dot_cost",
    "entropic_ot",
    "entropy_term",
    "euclidean",
    "greenkhorn",
    "normalize_cost",
    "ot_kmeans",
    "pairwise_cost",
    "sinkhorn",
    "sinkhorn_divergence",
    "sinkhorn_loss",
    "sq_euclidean",
    "topk_sinkhorn_loss",
]
