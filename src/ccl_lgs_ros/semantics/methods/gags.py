"""GAGS (granularity-aware distillation, :class:`~..variants.GAGSObjective`): one field over the
three raw granularities, decoded to CLIP vectors; pixels read relevance from their vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...capture.format import Capture
from ...config import Config
from ...priors.types import GAGS_LEVELS, FramePriors
from ...relevance import lerf_relevance
from ..codebook import LevelCodebook
from ..model import GAGS_LEVEL, SemanticField
from ..training import FieldObjective
from ..variants import GAGSObjective
from ..views import FieldView, FrozenGaussians, render_field, supervised_views
from .base import FieldMethod, LiftMaps, pixel_codes


def rendered_code_maps(method: FieldMethod, field: SemanticField, capture: Capture, priors: list[FramePriors],
                       train_idx: list[int], scene_from_world: np.ndarray, gaussians: FrozenGaussians, cfg: Config,
                       device: str) -> tuple[LiftMaps, dict[str, int]]:  # fmt: skip
    """The variants have no per-mask codes: they vote the field's own rendered pixel codes (the
    codes its 2D relevance reads), on the pixels a SAM mask of the level covers."""
    levels = list(field.levels)
    num_codes = {lv: int(field.codebooks[lv].shape[0]) for lv in levels}
    prior_levels = sorted({lv for fp in priors for lv in fp.levels})
    out: LiftMaps = {}
    for v in supervised_views(capture, priors, train_idx, scene_from_world, prior_levels, None, device):
        rendered = render_field(field, gaussians, [v], cfg.rgb.backend)
        for lv in levels:
            # The level's own masks (cgc: sp / wp); GAGS' single field: any level's masks.
            masks = [v.masks[lv]] if lv in v.masks else list(v.masks.values())
            covered = np.logical_or.reduce([m.cpu().numpy() >= 0 for m in masks])
            if not covered.any():
                continue
            maps, cams = out.setdefault(lv, ([], []))
            maps.append(np.where(covered, pixel_codes(method, field, lv, rendered[lv])[0], -1))
            cams.append((v.viewmat.cpu().numpy(), v.K.cpu().numpy()))
    return out, num_codes


def decoded_vectors(field: SemanticField, level: str, feats: torch.Tensor) -> torch.Tensor:
    """GAGS' decoded unit CLIP vectors ``[..., D]`` (the decoder's first ``D`` outputs) of features ``[..., d_f]``."""
    return F.normalize(field.decoders[level](feats)[..., : field.dim], dim=-1)


def clip_dim(views: list[FieldView]) -> int:
    return int(next(v.mask_features[lv] for v in views for lv in v.mask_features).shape[1])


class GAGS:
    name = "gags"

    def prior_levels(self, cfg: Config) -> tuple[str, ...]:
        return GAGS_LEVELS

    def train_levels(self, cfg: Config, present: list[str]) -> list[str]:
        return list(present)  # every priors level feeds the one field

    def codebooks(self, codebook_path: Path, priors: list[FramePriors], meta: dict[str, Any], levels: list[str],
                  cfg: Config, device: str, progress: bool) -> dict[str, LevelCodebook]:  # fmt: skip
        return {}

    def objective(self, n_gaussians: int, levels: list[str], views: list[FieldView],
                  codebooks: dict[str, LevelCodebook], cfg: Config,
                  device: str) -> tuple[FieldObjective, float]:  # fmt: skip
        f = cfg.field
        obj = GAGSObjective(n_gaussians, levels, clip_dim(views), f.feature_dim, f.codebook_size,
                            entropy=f.gags_entropy, consistency=f.gags_consistency, seed=f.seed,
                            device=device)  # fmt: skip
        return obj, f.spatial_lambda

    def reported_levels(self, field: SemanticField) -> list[str]:
        return [GAGS_LEVEL]

    def logits(self, field: SemanticField, level: str, feats: torch.Tensor) -> torch.Tensor:
        """Decoded vectors against the codebook (spherical k-means of the per-Gaussian vectors)."""
        cb = torch.as_tensor(field.codebooks[level], dtype=feats.dtype, device=feats.device)
        return decoded_vectors(field, level, feats) @ cb.T / field.temperature

    def pixel_relevance(self, field: SemanticField, level: str, feats: torch.Tensor, queries: np.ndarray,
                        negatives: np.ndarray, temperature: float) -> np.ndarray:  # fmt: skip
        """Each pixel's decoded CLIP vector against the text."""
        b, h, w = feats.shape[:3]
        vec = decoded_vectors(field, level, feats.cpu()).reshape(-1, field.dim).numpy()
        rel = np.stack([lerf_relevance(vec, q, negatives, temperature) for q in queries])  # [Q, BHW]
        return rel.reshape(len(queries), b, h, w).transpose(1, 0, 2, 3)

    def lift_maps(self, field: SemanticField, capture: Capture, priors: list[FramePriors], train_idx: list[int],
                  scene_from_world: np.ndarray, gaussians: FrozenGaussians, codebook_path: Path, cfg: Config,
                  device: str) -> tuple[LiftMaps, dict[str, int]]:  # fmt: skip
        return rendered_code_maps(self, field, capture, priors, train_idx, scene_from_world, gaussians, cfg, device)
