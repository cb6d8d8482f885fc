"""Synthetic embedding alignment (Klicpera/Gasteiger, Lienen & Günnemann, ICML 2021, Sec. 7, on synthetic data): two
point clouds that are the same set of points up to an unknown rotation, noise and order, for
:class:`recot.tasks.AlignmentTask`.

``x`` holds ``n`` points of a Gaussian mixture in ``dim`` dimensions (``clusters`` components, unit variance overall);
``y = (x R^T + noise)[perm]`` with a random rotation ``R = exp(angle * A)`` (``A`` a random skew-symmetric matrix of
unit spectral norm, so ``angle`` is the largest rotation angle in radians). The task recovers ``R`` without any
matched pair (Wasserstein Procrustes) and is scored by how many points find their true partner.

Every split is the same pair of clouds (an unsupervised problem has nothing to hold out); ``data_dir`` is accepted so
that every recot config takes one, and is not read.
"""
from __future__ import annotations

from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader


class AlignmentDataModule(L.LightningDataModule):
    """One batch ``(x (n, d), y (n, d), match (n,))``: ``y[match[i]]`` is the image of ``x[i]``.

    Args:
        num_points, dim, clusters: the clouds. angle: largest rotation angle (radians). noise: standard deviation of
        the noise added to ``y``. seed: of everything random. data_dir: ignored (synthetic data).
    """

    def __init__(self, num_points: int = 2000, dim: int = 16, clusters: int = 10, angle: float = 0.6,
                 noise: float = 0.05, seed: int = 0, data_dir: Optional[str] = None):
        super().__init__()
        self.save_hyperparameters()
        if num_points < 2 or dim < 2:
            raise ValueError(f"num_points and dim must be >= 2, got {num_points}, {dim}")
        self.num_points, self.dim, self.clusters, self.angle, self.noise, self.seed = (num_points, dim, clusters,
                                                                                       angle, noise, seed)
        self.batch = None

    @property
    def name(self) -> str:
        return "synthetic"

    def setup(self, stage: Optional[str] = None) -> None:
        if self.batch is not None:
            return
        g = torch.Generator().manual_seed(self.seed)
        centers = 3 * torch.randn(self.clusters, self.dim, generator=g)
        x = centers[torch.randint(0, self.clusters, (self.num_points,), generator=g)]
        x = x + torch.randn(self.num_points, self.dim, generator=g)
        x = (x - x.mean(0)) / x.std()
        skew = torch.randn(self.dim, self.dim, generator=g)
        skew = skew - skew.T
        rotation = torch.linalg.matrix_exp(self.angle * skew / torch.linalg.matrix_norm(skew, ord=2))
        perm = torch.randperm(self.num_points, generator=g)
        y_ordered = x @ rotation.T + self.noise * torch.randn(self.num_points, self.dim, generator=g)
        y = torch.empty_like(y_ordered)
        y[perm] = y_ordered  # x[i] -> y[perm[i]]
        self.rotation = rotation
        self.batch = (x, y, perm)

    def _loader(self) -> DataLoader:
        return DataLoader([self.batch], batch_size=None)

    train_dataloader = val_dataloader = test_dataloader = _loader
