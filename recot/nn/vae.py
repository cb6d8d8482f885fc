"""Mult-VAE and Mult-DAE (Liang, Krishnan, Hoffman & Jebara, WWW'18), the autoencoders of SinkhornCF.

Both read a user's interaction vector ``x: (B, I)``, L2-normalise it, drop input units (dropout 0.5) while training,
encode, decode to logits ``(B, I)`` and are trained with the multinomial log-likelihood (SinkhornCF Eq. 9) unless the
task replaces it by a Sinkhorn loss. They are inductive: a user unseen in training is folded in from its vector alone.

- Mult-VAE ``[I -> 600 -> 200 -> 600 -> I]``: the encoder gives the mean and log-variance of q(z|x) (200 each),
  z is sampled by reparameterisation while training (the mean at evaluation), and the KL divergence to N(0, I) is
  added with weight beta = min(anneal_cap, step / total_anneal_steps) (KL annealing, Sec. 2.2.2: cap 0.2).
- Mult-DAE ``[I -> 200 -> I]``: a deterministic encoder, no KL; an L2 weight penalty instead (lambda = 0.01 per
  batch of 500 in the authors' code).

All hidden layers use tanh; weights are Xavier-uniform, biases N(0, 0.001) as in the authors' code.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recot.nn.uservec import UserVectorModel


def _mlp(sizes: Sequence[int]) -> nn.ModuleList:
    layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
    for lin in layers:
        nn.init.xavier_uniform_(lin.weight)
        nn.init.normal_(lin.bias, std=0.001)
    return layers


def _run(layers: nn.ModuleList, h: torch.Tensor, last_activation: bool) -> torch.Tensor:
    for i, lin in enumerate(layers):
        h = lin(h)
        if i < len(layers) - 1 or last_activation:
            h = torch.tanh(h)
    return h


class _AutoEncoder(UserVectorModel):
    inductive = True
    likelihood = "multinomial"

    def __init__(self, hidden_dims: Sequence[int], latent_dim: int, dropout: float, weight_penalty: float):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.hidden_dims, self.latent_dim = [int(h) for h in hidden_dims], int(latent_dim)
        self.dropout, self.weight_penalty = dropout, weight_penalty
        self.encoder: nn.ModuleList | None = None
        self.decoder: nn.ModuleList | None = None
        self._reg: dict[str, torch.Tensor] = {}

    def _encoder_out(self) -> int:
        return self.latent_dim

    def reset_for(self, num_users: int, num_items: int) -> None:
        self.encoder = _mlp([num_items, *self.hidden_dims, self._encoder_out()])
        self.decoder = _mlp([self.latent_dim, *self.hidden_dims[::-1], num_items])

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(F.normalize(x, dim=1), self.dropout, self.training)

    def _penalty(self) -> dict[str, torch.Tensor]:
        if not self.weight_penalty:
            return {}
        weights = [lin.weight for lin in (*self.encoder, *self.decoder)]
        return {"l2": self.weight_penalty * sum(w.pow(2).sum() for w in weights)}

    def regularization(self, step: int) -> dict[str, torch.Tensor]:
        return dict(self._reg)


class MultDAE(_AutoEncoder):
    """Mult-DAE: ``x -> dropout(normalize(x)) -> tanh layers -> latent (tanh) -> tanh layers -> logits``.

    Args:
        hidden_dims: encoder hidden sizes between the items and the latent layer (mirrored in the decoder); the
            paper's Mult-DAE has none: ``[I -> 200 -> I]``.
        latent_dim: size of the bottleneck (200).
        dropout: input dropout (0.5).
        weight_penalty: lambda of ``lambda * sum ||W||^2`` over the weight matrices, added to the loss.
    """

    def __init__(self, hidden_dims: Sequence[int] = (), latent_dim: int = 200, dropout: float = 0.5,
                 weight_penalty: float = 2e-5):
        super().__init__(hidden_dims, latent_dim, dropout, weight_penalty)

    def forward(self, users: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z = _run(self.encoder, self._input(x), last_activation=True)
        if self.training:
            self._reg = self._penalty()
        return _run(self.decoder, z, last_activation=False)


class MultVAE(_AutoEncoder):
    """Mult-VAE with KL annealing (see the module docstring).

    Args:
        hidden_dims: encoder hidden sizes (mirrored in the decoder): ``(600,)`` gives ``[I -> 600 -> 200 -> 600 -> I]``.
        latent_dim: size of z (200).
        dropout: input dropout (0.5).
        anneal_cap: the largest KL weight beta (0.2).
        total_anneal_steps: optimizer steps over which beta grows linearly from 0 (200,000 in the authors' code);
            0 uses ``anneal_cap`` from the first step.
        weight_penalty: lambda of an L2 penalty on the weight matrices (0 in the authors' Mult-VAE).
    """

    def __init__(self, hidden_dims: Sequence[int] = (600,), latent_dim: int = 200, dropout: float = 0.5,
                 anneal_cap: float = 0.2, total_anneal_steps: int = 200_000, weight_penalty: float = 0.0):
        super().__init__(hidden_dims, latent_dim, dropout, weight_penalty)
        self.anneal_cap, self.total_anneal_steps = anneal_cap, total_anneal_steps

    def _encoder_out(self) -> int:
        return 2 * self.latent_dim  # mean and log-variance

    def beta(self, step: int) -> float:
        """KL weight after ``step`` optimizer steps."""
        if self.total_anneal_steps <= 0:
            return self.anneal_cap
        return min(self.anneal_cap, step / self.total_anneal_steps)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, I)`` -> mean and log-variance of q(z|x), each ``(B, latent_dim)``."""
        h = _run(self.encoder, self._input(x), last_activation=False)
        return h[:, : self.latent_dim], h[:, self.latent_dim:]

    def forward(self, users: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encode(x)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            # KL(q(z|x) || N(0, I)) per user, averaged over the batch
            kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(1).mean()
            self._reg = {"kl": kl, **self._penalty()}
        else:
            z = mu
        return _run(self.decoder, z, last_activation=False)

    def regularization(self, step: int) -> dict[str, torch.Tensor]:
        reg = dict(self._reg)
        if "kl" in reg:
            reg["kl"] = self.beta(step) * reg["kl"]
        return reg

    def log_values(self, step: int) -> dict[str, float]:
        return {"beta": self.beta(step)}
