"""Lifted assignment: each Gaussian's code voted from the 2D index maps through its render weights.

The field decodes a code per Gaussian from the Gaussian's own feature; the lifted alternative asks
the training views instead: Gaussian ``i`` receives, for every pixel ``p`` labelled with code
``M(p)``, a vote of its alpha-blending weight ``w_ip`` (``alpha_i T_i`` at ``p``), and takes the
code with the most weight. The weights are never materialised: rendering features ``X [N, Nc]``
gives ``R(p) = sum_i w_ip X_i``, so the gradient of ``sum_p R(p)[M(p)]`` with respect to ``X_i``
is exactly ``sum_p w_ip onehot(M(p))`` — one forward and one backward pass per view, on any
backend of :func:`ccl_lgs_ros.splat.render.rasterize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..splat.render import rasterize
from .index import LevelCodes


@dataclass
class LiftedCodes:
    votes: np.ndarray  # float32 [N, Nc], accumulated blending weight per code
    codes: np.ndarray  # int64 [N], argmax of the votes
    share: np.ndarray  # float32 [N], votes of the winning code / all votes (0 when unseen)
    total_weight: np.ndarray  # float32 [N], all labelled weight the Gaussian received

    def to_level_codes(self, codebook: np.ndarray, min_weight: float = 1e-3) -> LevelCodes:
        """:class:`LevelCodes` with the vote share as confidence (0 for Gaussians barely seen, so
        ``query.min_confidence > 0`` excludes them)."""
        conf = np.where(self.total_weight >= min_weight, self.share, 0.0)
        return LevelCodes(self.codes, np.clip(np.rint(conf * 255), 0, 255).astype(np.uint8), codebook)


def lift_labels(
    means: np.ndarray | torch.Tensor,  # [N, 3], frame of the cameras
    quats: np.ndarray | torch.Tensor,  # [N, 4] wxyz
    scales: np.ndarray | torch.Tensor,  # [N, 3] activated
    opacities: np.ndarray | torch.Tensor,  # [N] activated
    viewmats: np.ndarray | torch.Tensor,  # [C, 4, 4] world-to-camera, OpenCV axes
    Ks: np.ndarray | torch.Tensor,  # [C, 3, 3] for the index maps' size
    index_maps: Sequence[np.ndarray],  # C x int [H, W], code per pixel, -1 = no label
    num_codes: int,
    *,
    backend: str = "torch",
    device: str | torch.device = "cpu",
) -> LiftedCodes:
    """Vote every Gaussian's code from ``C`` labelled views. See the module docstring."""
    dev = torch.device(device)

    def t(x: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32).to(dev)

    m, q, s, o = t(means), t(quats), t(scales), t(opacities)
    vm, k = t(viewmats).reshape(-1, 4, 4), t(Ks).reshape(-1, 3, 3)
    if len(index_maps) != vm.shape[0]:
        raise ValueError(f"{len(index_maps)} index maps for {vm.shape[0]} cameras")
    n = m.shape[0]
    votes = torch.zeros(n, num_codes, dtype=torch.float32, device=dev)
    for c, index_map in enumerate(index_maps):
        labels = torch.as_tensor(np.asarray(index_map, dtype=np.int64), device=dev)
        if labels.numel() and int(labels.max()) >= num_codes:
            raise ValueError(f"index map {c} refers to code {int(labels.max())} >= num_codes {num_codes}")
        valid = labels >= 0
        if not bool(valid.any()):
            continue
        h, w = labels.shape
        feats = torch.zeros(n, num_codes, dtype=torch.float32, device=dev, requires_grad=True)
        img, _, _ = rasterize(m, q, s, o, feats, vm[c : c + 1], k[c : c + 1], w, h, backend=backend)  # type: ignore[arg-type]
        picked = img[0][valid].gather(1, labels[valid][:, None])
        (grad,) = torch.autograd.grad(picked.sum(), feats)
        votes += grad
    v = votes.cpu().numpy().astype(np.float32)
    total = v.sum(axis=1)
    codes = v.argmax(axis=1).astype(np.int64) if num_codes else np.zeros(n, np.int64)
    share = np.where(total > 0, v[np.arange(n), codes] / np.maximum(total, 1e-12), 0.0).astype(np.float32)
    return LiftedCodes(votes=v, codes=codes, share=share, total_weight=total.astype(np.float32))
