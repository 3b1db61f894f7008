"""3D spatial-similarity regulariser (Contrastive Gaussian Clustering).

Features of Gaussians that are 3D neighbours should agree and features of random (almost always
distant) pairs should differ. 2D supervision only constrains what the training views see through
alpha blending; Gaussians hidden behind others or blended with a neighbouring object keep
arbitrary features, which become outliers when Gaussians are selected in 3D by their semantics.
The regulariser propagates the visible Gaussians' semantics to them.

``L = mean_i mean_{j in kNN(i)} (1 - cos(f_i, f_j)) + mean_i ReLU(cos(f_i, f_r(i)) - far_margin)``
over a random subset of Gaussians ``i`` each step, ``r(i)`` a random Gaussian.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree


def knn_indices(means: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest other Gaussians of each Gaussian: ``int64 [N, k]`` (``k`` capped at N-1)."""
    pts = np.asarray(means, dtype=np.float64)
    k = max(1, min(k, len(pts) - 1))
    _, idx = cKDTree(pts).query(pts, k=k + 1)
    return np.asarray(idx[:, 1:], dtype=np.int64).reshape(len(pts), k)


class SpatialRegularizer:
    """Samples Gaussians each call and returns the regulariser of their features."""

    def __init__(self, means: np.ndarray, k: int, samples: int = 2048, far_margin: float = 0.5,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:  # fmt: skip
        self.n = int(len(means))
        self.knn = torch.as_tensor(knn_indices(means, k), device=device) if self.n > 1 else None
        self.samples = samples
        self.far_margin = far_margin
        self.gen = torch.Generator(device="cpu").manual_seed(seed)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:  # [N, d] -> scalar
        if self.knn is None:
            return features.sum() * 0.0
        m = min(self.samples, self.n)
        idx = torch.randperm(self.n, generator=self.gen)[:m].to(features.device)
        f = F.normalize(features, dim=-1)
        fi = f[idx]  # [m, d]
        near = 1.0 - (fi[:, None, :] * f[self.knn[idx]]).sum(-1)  # [m, k]
        far_idx = torch.randint(self.n, (m,), generator=self.gen).to(features.device)
        far = F.relu((fi * f[far_idx]).sum(-1) - self.far_margin)
        return near.mean() + far.mean()
