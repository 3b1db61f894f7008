"""The field stage of the pipeline: codebook (CCL-LGS) then the semantic Gaussian field.

:func:`train_field` reads ``SCENE/rgb/gaussians.npz`` (+ ``rgb.json`` for ``scene_from_world``)
and the priors cache ``SCENE/priors/``, and writes to ``SCENE/field/``:

- ``codebook.npz``: per level the codebook ``[Nc, D]`` and every mask's prototype index (the
  index maps are these codes looked up through the cached mask maps), with a settings digest so
  a rerun reuses it;
- ``ckpt.npz``: the field's resumable checkpoint (parameters + Adam moments), removed at the end;
- ``field.npz``: the trained :class:`~.model.SemanticField` (format in :mod:`.model`);
- ``field.json``: settings digest, metrics and ``completed``; a rerun with the same settings
  returns the recorded metrics without training.

Training uses the RGB stage's training split (``rgb.holdout_every``) so held-out views stay
unseen by every stage. Methods: ``ccl`` (:class:`~.training.CCLObjective`), ``gags`` and ``cgc``
(:mod:`.variants`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..capture.format import Capture
from ..config import Config, digest
from ..io import atomic_save_npz, atomic_write_json, load_npz, read_json
from ..priors.stage import load_priors
from ..priors.types import FramePriors
from ..progress import Progress
from ..scene.layout import SceneDir
from ..splat.data import split_indices
from .codebook import LevelCodebook, train_codebook
from .model import GAGS_LEVEL, SemanticField, gaussian_code_probs
from .training import CCLObjective, optimise
from .variants import CGCObjective, GAGSObjective
from .views import FrozenGaussians, supervised_views

FIELD_STAGE_VERSION = 1
#: CGC's spatial regulariser is part of the method; this weight applies when the config leaves it at 0.
CGC_DEFAULT_SPATIAL = 0.1


def field_levels(cfg: Config, priors: list[FramePriors]) -> list[str]:
    """Levels to train: the configured ones present in the priors (GAGS: every priors level)."""
    present: list[str] = []
    for fp in priors:
        for lv in fp.levels:
            if lv not in present:
                present.append(lv)
    if cfg.field.method == "gags":
        return present
    wanted = [lv for lv in cfg.field.levels if lv in present]
    if not wanted:
        raise ValueError(f"none of the field levels {cfg.field.levels} is in the priors (have {present})")
    return wanted


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _codebook_settings(cfg: Config, priors_meta: dict[str, Any], levels: list[str]) -> str:
    f = cfg.field
    keys = ("codebook_size", "codebook_iterations", "codebook_lr", "lambda_pull", "lambda_push", "push_margin",
            "codebook_frames_per_batch", "seed")  # fmt: skip
    return digest({
        "version": FIELD_STAGE_VERSION, "levels": levels, **{k: getattr(f, k) for k in keys},
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


def split_by_counts(flat: np.ndarray, counts: np.ndarray, n: int) -> list[np.ndarray]:
    """Per-frame arrays back from their concatenation and per-frame lengths."""
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [flat[bounds[i] : bounds[i + 1]] for i in range(n)]


def train_field(scene_dir: Path, capture: Capture, cfg: Config, device: str, progress: bool = True) -> dict:
    """The field stage: codebook (CCL-LGS) + semantic field, written to ``scene_dir/field``.

    Args:
        scene_dir: trained-scene folder with ``rgb/`` and ``priors/`` done.
        capture: the capture the scene was trained from (poses, intrinsics).
        cfg: configuration (``field`` section; ``rgb.holdout_every`` for the split; ``rgb.backend``).
        device: torch device.
        progress: show / emit progress (stages ``"codebook"`` and ``"field"``).

    Returns:
        Metrics: ``method``, ``levels``, ``n_gaussians``, ``steps``, ``loss_first``/``loss_last``
        (means over the first / last 10 % of steps), per-term finals, ``seconds``, ``skipped``.
    """
    t0 = time.monotonic()
    scene = SceneDir(scene_dir)
    out_dir = scene.field_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    gauss_path = scene.gaussians
    priors, meta = load_priors(scene.priors_dir)
    if len(priors) != len(capture.frames):
        raise ValueError(f"priors have {len(priors)} frames, the capture {len(capture.frames)}")
    levels = field_levels(cfg, priors)
    f = cfg.field
    settings = digest({
        "version": FIELD_STAGE_VERSION, "field": dataclasses.asdict(f), "levels": levels,
        "holdout_every": cfg.rgb.holdout_every, "gaussians": _file_stamp(gauss_path),
        "priors": [meta.get(k) for k in ("frame_settings", "assoc_settings", "inputs_digest")],
    })  # fmt: skip
    record_path = scene.field_record
    if record_path.is_file() and scene.field.is_file():
        record = read_json(record_path)
        if record.get("completed") and record.get("settings") == settings:
            return dict(record["metrics"], skipped=True)

    gaussians = FrozenGaussians.load(gauss_path, device)
    scene_from_world = scene.scene_from_world()
    train_idx, _ = split_indices(len(capture.frames), cfg.rgb.holdout_every)
    backend = cfg.rgb.backend

    codes = None
    codebooks: dict[str, LevelCodebook] = {}
    if f.method == "ccl":
        codebooks = run_codebook_stage(scene.codebook, priors, levels, cfg, _codebook_settings(cfg, meta, levels),
                                       device, progress)  # fmt: skip
        codes = {lv: cb.mask_codes for lv, cb in codebooks.items()}
    views = supervised_views(capture, priors, train_idx, scene_from_world, levels, codes, device)

    if f.method == "ccl":
        objective: Any = CCLObjective(len(gaussians), levels, {lv: cb.codebook for lv, cb in codebooks.items()},
                                      f.feature_dim, seed=f.seed, device=device)  # fmt: skip
        spatial = f.spatial_lambda
    else:
        dim = int(next(v.mask_features[lv] for v in views for lv in v.mask_features).shape[1])
        if f.method == "gags":
            objective = GAGSObjective(len(gaussians), levels, dim, f.feature_dim, f.codebook_size,
                                      entropy=f.gags_entropy, consistency=f.gags_consistency, seed=f.seed,
                                      device=device)  # fmt: skip
            spatial = f.spatial_lambda
        else:
            objective = CGCObjective(len(gaussians), levels, f.feature_dim, f.codebook_size, seed=f.seed,
                                     device=device)  # fmt: skip
            spatial = f.spatial_lambda if f.spatial_lambda > 0 else CGC_DEFAULT_SPATIAL

    ckpt = out_dir / "ckpt.npz"
    with Progress(stage="field", total=max(1, f.iterations), disable=not progress) as bar:
        run = optimise(
            objective, gaussians, views, iterations=f.iterations, lr=f.lr, batch_views=f.batch_views,
            spatial_lambda=spatial, spatial_knn=f.spatial_knn, backend=backend, seed=f.seed, checkpoint=ckpt,
            checkpoint_every=f.checkpoint_every, settings_digest=settings,
            on_step=lambda s, m: bar.update(1, loss=round(m["loss"], 4)),
        )  # fmt: skip
        with torch.no_grad():
            field = objective.finish(gaussians, views, backend)
    field.save(scene.field)
    ckpt.unlink(missing_ok=True)

    history = run["history"]
    metrics: dict[str, Any] = {
        "method": f.method,
        "levels": field.levels if f.method != "gags" else [GAGS_LEVEL],
        "n_gaussians": len(gaussians),
        "train_views": len(views),
        "steps": f.iterations,
        "resumed_from": run["resumed_from"],
        "seconds": time.monotonic() - t0,
    }
    if history:
        tenth = max(1, len(history) // 10)
        for key in history[-1]:
            vals = [h[key] for h in history if key in h]
            metrics[f"{key}_first"] = float(np.mean(vals[:tenth]))
            metrics[f"{key}_last"] = float(np.mean(vals[-tenth:]))
    atomic_write_json(record_path, {"format_version": FIELD_STAGE_VERSION, "completed": True, "settings": settings,
                                    "metrics": metrics})  # fmt: skip
    return dict(metrics, skipped=False)


def load_field(scene_dir: str | Path) -> SemanticField:
    return SemanticField.load(SceneDir(scene_dir).field)


def per_gaussian_code_probs(scene_dir: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(level -> float16 [N_gauss, Nc], level -> float32 [Nc, D])`` of a trained scene.

    The query index stores each Gaussian's top code and its probability per level; relevance of
    a Gaussian to a text is then a lookup into the codebook's relevance table.
    """
    field = load_field(scene_dir)
    return gaussian_code_probs(field), {lv: field.codebooks[lv] for lv in field.levels}
