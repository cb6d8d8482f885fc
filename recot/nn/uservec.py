"""Models that predict a user's whole item vector, as the SinkhornCF paper's unified view frames them (Sec. 2.2).

Each maps a batch of users, given by their ids and their (fold-in) interaction vectors ``x: (B, I)``, to logits
``(B, I)`` whose softmax is the predicted distribution :math:`\\hat x_u`, and names the observation distribution of its
own loss (Table 1):

- ``gaussian`` (MF, Eq. 2): :math:`\\sum_i (x_{ui} - f_{ui})^2` on the raw scores,
- ``bernoulli`` (NeuMF, Eq. 5): :math:`-\\sum_i x_{ui}\\log\\sigma(f_{ui}) + (1 - x_{ui})\\log(1 - \\sigma(f_{ui}))`,
- ``multinomial`` (MultVAE, Eq. 9): :math:`-\\sum_i x_{ui}\\log\\operatorname{softmax}(f_u)_i`.

Inductive models (MultVAE, MultDAE) read ``x``; transductive ones (MF, NeuMF through :class:`FactorizationRows`)
read the user id and learn a vector per user, so under strong generalization they are trained on the fold-in part of
the validation and test users as well (never on their held-out part).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from recot.nn.base import Recommender, take_rows

Likelihood = Literal["gaussian", "bernoulli", "multinomial"]


def negative_log_likelihood(kind: Likelihood, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-user negative log-likelihood of ``x: (B, I)`` under the model's observation distribution -> ``(B,)``
    (up to constants; see the module docstring)."""
    if kind == "gaussian":
        return (x - logits).pow(2).sum(1)
    if kind == "bernoulli":
        return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
    if kind == "multinomial":
        return -(x * F.log_softmax(logits, dim=1)).sum(1)
    raise ValueError(f"likelihood must be 'gaussian', 'bernoulli' or 'multinomial', got {kind!r}")


class UserVectorModel(nn.Module):
    """Base of the user-vector models: sizes bound from the data, ``forward(users, x) -> logits``.

    Subclasses set ``inductive`` and ``likelihood`` and create their size-dependent layers in :meth:`reset_for`.
    """

    inductive: bool = True
    likelihood: Likelihood = "multinomial"

    def __init__(self) -> None:
        super().__init__()
        self.num_users: int | None = None
        self.num_items: int | None = None

    def build(self, num_users: int, num_items: int) -> None:
        """Create the layers for ``num_users`` x ``num_items``; a no-op when already built for these sizes."""
        if self.num_items is not None:
            if (self.num_users, self.num_items) != (num_users, num_items):
                raise ValueError(f"{type(self).__name__} was built for {self.num_users} users x {self.num_items} "
                                 f"items, but the data has {num_users} x {num_items}")
            return
        self.num_users, self.num_items = num_users, num_items
        self.reset_for(num_users, num_items)

    def reset_for(self, num_users: int, num_items: int) -> None:
        raise NotImplementedError

    def forward(self, users: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``users (B,)`` ids, ``x (B, I)`` interaction vectors -> logits ``(B, I)``."""
        raise NotImplementedError

    def regularization(self, step: int) -> dict[str, torch.Tensor]:
        """Weighted extra terms of the last training ``forward`` (e.g. MultVAE's annealed KL), added to any loss."""
        return {}

    def log_values(self, step: int) -> dict[str, float]:
        """Scalars describing the training state (e.g. the KL weight), logged every epoch as ``model/<name>``."""
        return {}


class FactorizationRows(UserVectorModel):
    """A latent factor recommender (:class:`recot.nn.MF`, :class:`recot.nn.NeuMF`) as a user-vector model:
    the logits of user ``u`` are its scores for all items, ``f_u = backbone.score(u)``.

    Used for the drop-in loss comparison of SinkhornCF (Tables 3-5): MF (d = 16, ``likelihood: gaussian``) and NeuMF
    (16 factors, one hidden layer of 50, ``likelihood: bernoulli``) trained with their own loss or a Sinkhorn loss.

    Args:
        backbone: the factorization model; its tables are built for all users of the data.
        likelihood: the observation distribution of its own loss (``gaussian`` for MF, ``bernoulli`` for NeuMF).
    """

    inductive = False

    def __init__(self, backbone: Recommender, likelihood: Likelihood = "gaussian"):
        super().__init__()
        if backbone.num_layers:
            raise ValueError(f"{type(backbone).__name__} propagates over a graph; FactorizationRows takes a plain "
                             f"factorization model (MF, NeuMF)")
        negative_log_likelihood(likelihood, torch.zeros(1, 1), torch.zeros(1, 1))  # validates the name
        self.backbone = backbone
        self.likelihood = likelihood

    def reset_for(self, num_users: int, num_items: int) -> None:
        self.backbone.build(num_users, num_items)

    def forward(self, users: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        user_emb, item_emb = self.backbone.embed()
        return self.backbone.score(users, take_rows(user_emb, users), item_emb)
