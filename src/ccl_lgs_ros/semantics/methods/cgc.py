"""CGC (contrastive Gaussian clustering, :class:`~..variants.CGCObjective`): per-level unit features
clustered into a codebook; pixels read relevance through their nearest centroid's code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...capture.format import Capture
from ...config import Config
from ...priors.types import FramePriors
from ..codebook import LevelCodebook
from ..model import SemanticField
from ..training import FieldObjective
from ..variants import CGCObjective
from ..views import FieldView, FrozenGaussians
from .base import LiftMaps
from .ccl import codes_relevance, configured_prior_levels, configured_train_levels
from .gags import rendered_code_maps

#: CGC's spatial regulariser is part of the method; this weight applies when the config leaves it at 0.
CGC_DEFAULT_SPATIAL = 0.1


class CGC:
    name = "cgc"

    def prior_levels(self, cfg: Config) -> tuple[str, ...]:
        return configured_prior_levels(cfg)

    def train_levels(self, cfg: Config, present: list[str]) -> list[str]:
        return configured_train_levels(cfg, present)

    def codebooks(self, codebook_path: Path, priors: list[FramePriors], meta: dict[str, Any], levels: list[str],
                  cfg: Config, device: str, progress: bool) -> dict[str, LevelCodebook]:  # fmt: skip
        return {}

    def objective(self, n_gaussians: int, levels: list[str], views: list[FieldView],
                  codebooks: dict[str, LevelCodebook], cfg: Config,
                  device: str) -> tuple[FieldObjective, float]:  # fmt: skip
        f = cfg.field
        obj = CGCObjective(n_gaussians, levels, f.feature_dim, f.codebook_size, seed=f.seed, device=device)
        return obj, f.spatial_lambda if f.spatial_lambda > 0 else CGC_DEFAULT_SPATIAL

    def reported_levels(self, field: SemanticField) -> list[str]:
        return field.levels

    def logits(self, field: SemanticField, level: str, feats: torch.Tensor) -> torch.Tensor:
        """Cosine to the level's cluster centroids over the field's temperature."""
        cen = torch.as_tensor(field.centroids[level], dtype=feats.dtype, device=feats.device)
        return F.normalize(feats, dim=-1) @ cen.T / field.temperature

    def pixel_relevance(self, field: SemanticField, level: str, feats: torch.Tensor, queries: np.ndarray,
                        negatives: np.ndarray, temperature: float) -> np.ndarray:  # fmt: skip
        return codes_relevance(self, field, level, feats, queries, negatives, temperature)

    def lift_maps(self, field: SemanticField, capture: Capture, priors: list[FramePriors], train_idx: list[int],
                  scene_from_world: np.ndarray, gaussians: FrozenGaussians, codebook_path: Path, cfg: Config,
                  device: str) -> tuple[LiftMaps, dict[str, int]]:  # fmt: skip
        return rendered_code_maps(self, field, capture, priors, train_idx, scene_from_world, gaussians, cfg, device)
