"""CCL-LGS (METHOD.md): a contrastive codebook of the mask features first, then a field per level
whose decoder classifies rendered features into the codebook (:class:`~..training.CCLObjective`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...capture.format import Capture
from ...config import Config, digest
from ...io import atomic_save_npz, load_npz
from ...priors.types import CCL_LEVELS, FramePriors
from ...progress import Progress
from ...relevance import lerf_relevance
from ..codebook import LevelCodebook, split_by_counts, train_codebook
from ..model import SemanticField
from ..training import CCLObjective, FieldObjective
from ..views import FieldView, FrozenGaussians, supervised_views
from .base import FieldMethod, LiftMaps, pixel_codes

#: Bump when the codebook cache's meaning changes.
CODEBOOK_VERSION = 1


def _codebook_settings(cfg: Config, priors_meta: dict[str, Any], levels: list[str]) -> str:
    f = cfg.field
    keys = ("codebook_size", "codebook_iterations", "codebook_lr", "lambda_pull", "lambda_push", "push_margin",
            "codebook_frames_per_batch", "seed")  # fmt: skip
    return digest({
        "version": CODEBOOK_VERSION, "levels": levels, **{k: getattr(f, k) for k in keys},
        "priors": [priors_meta.get(k) for k in ("frame_settings", "assoc_settings", "inputs_digest")],
    })  # fmt: skip


def run_codebook_stage(
    path: Path, priors: list[FramePriors], levels: list[str], cfg: Config, settings: str, device: str,
    progress: bool = True,
) -> dict[str, LevelCodebook]:  # fmt: skip
    """Learn (or reload) the codebook of every level, cached in ``path`` (``SceneDir.codebook``)."""
    if path.is_file():
        cached = load_npz(path)
        if str(cached.get("settings", "")) == settings:
            n = len(priors)
            return {
                lv: LevelCodebook(
                    cached[f"codebook.{lv}"], split_by_counts(cached[f"codes.{lv}"], cached[f"counts.{lv}"], n)
                )
                for lv in levels
            }
    f = cfg.field
    result: dict[str, LevelCodebook] = {}
    total = max(1, f.codebook_iterations * len(levels))
    with Progress(stage="codebook", total=total, disable=not progress) as bar:
        for lv in levels:
            result[lv] = train_codebook(
                priors, lv, f.codebook_size, f.codebook_iterations, lr=f.codebook_lr, lambda_pull=f.lambda_pull,
                lambda_push=f.lambda_push, margin=f.push_margin, frames_per_batch=f.codebook_frames_per_batch,
                seed=f.seed, device=device,
                on_step=lambda s, losses, lv=lv: bar.update(  # type: ignore[misc]
                    1, message=lv, l_max=round(float(losses.max.detach()), 4)
                ),
            )  # fmt: skip
    arrays: dict[str, np.ndarray] = {"settings": np.asarray(settings), "levels": np.asarray(levels)}
    for lv, cb in result.items():
        arrays[f"codebook.{lv}"] = cb.codebook
        arrays[f"codes.{lv}"] = np.concatenate([c.astype(np.int32) for c in cb.mask_codes])
        arrays[f"counts.{lv}"] = np.asarray([len(c) for c in cb.mask_codes], dtype=np.int64)
    atomic_save_npz(path, arrays)
    return result


def codes_relevance(method: FieldMethod, field: SemanticField, level: str, feats: torch.Tensor,
                    queries: np.ndarray, negatives: np.ndarray, temperature: float) -> np.ndarray:  # fmt: skip
    """Codebook methods: each pixel's code, relevance looked up per code ``[B, Q, H, W]``."""
    codes = pixel_codes(method, field, level, feats)  # [B, H, W]
    tables = np.stack([lerf_relevance(field.codebooks[level], q, negatives, temperature) for q in queries])
    return tables[:, codes].transpose(1, 0, 2, 3)


def configured_prior_levels(cfg: Config) -> tuple[str, ...]:
    """Per-level methods (CCL-LGS, CGC): the priors levels are ``field.levels`` (default: CCL-LGS's)."""
    return tuple(cfg.field.levels) if cfg.field.levels else CCL_LEVELS


def configured_train_levels(cfg: Config, present: list[str]) -> list[str]:
    """Per-level methods: ``field.levels`` that the priors hold, in the config's order; none is an error."""
    wanted = [lv for lv in cfg.field.levels if lv in present]
    if not wanted:
        raise ValueError(f"none of the field levels {cfg.field.levels} is in the priors (have {present})")
    return wanted


class CCL:
    name = "ccl"

    def prior_levels(self, cfg: Config) -> tuple[str, ...]:
        return configured_prior_levels(cfg)

    def train_levels(self, cfg: Config, present: list[str]) -> list[str]:
        return configured_train_levels(cfg, present)

    def codebooks(self, codebook_path: Path, priors: list[FramePriors], meta: dict[str, Any], levels: list[str],
                  cfg: Config, device: str, progress: bool) -> dict[str, LevelCodebook]:  # fmt: skip
        return run_codebook_stage(codebook_path, priors, levels, cfg, _codebook_settings(cfg, meta, levels), device,
                                  progress)  # fmt: skip

    def objective(self, n_gaussians: int, levels: list[str], views: list[FieldView],
                  codebooks: dict[str, LevelCodebook], cfg: Config,
                  device: str) -> tuple[FieldObjective, float]:  # fmt: skip
        f = cfg.field
        obj = CCLObjective(n_gaussians, levels, {lv: cb.codebook for lv, cb in codebooks.items()}, f.feature_dim,
                           seed=f.seed, device=device)  # fmt: skip
        return obj, f.spatial_lambda

    def reported_levels(self, field: SemanticField) -> list[str]:
        return field.levels

    def logits(self, field: SemanticField, level: str, feats: torch.Tensor) -> torch.Tensor:
        """The level's MLP decoder classifies a feature into the codebook."""
        return field.decoders[level](feats)

    def pixel_relevance(self, field: SemanticField, level: str, feats: torch.Tensor, queries: np.ndarray,
                        negatives: np.ndarray, temperature: float) -> np.ndarray:  # fmt: skip
        return codes_relevance(self, field, level, feats, queries, negatives, temperature)

    def lift_maps(self, field: SemanticField, capture: Capture, priors: list[FramePriors], train_idx: list[int],
                  scene_from_world: np.ndarray, gaussians: FrozenGaussians, codebook_path: Path, cfg: Config,
                  device: str) -> tuple[LiftMaps, dict[str, int]]:  # fmt: skip
        """CCL-LGS votes its own training targets, the codebook's per-mask codes."""
        levels = list(field.levels)
        arrays = load_npz(codebook_path)
        num_codes = {lv: int(arrays[f"codebook.{lv}"].shape[0]) for lv in levels}
        codes = {lv: split_by_counts(arrays[f"codes.{lv}"], arrays[f"counts.{lv}"], len(priors)) for lv in levels}
        out: LiftMaps = {}
        for v in supervised_views(capture, priors, train_idx, scene_from_world, levels, codes, "cpu"):
            for lv, target in v.targets.items():
                maps, cams = out.setdefault(lv, ([], []))
                maps.append(target.numpy())
                cams.append((v.viewmat.numpy(), v.K.numpy()))
        return out, num_codes
