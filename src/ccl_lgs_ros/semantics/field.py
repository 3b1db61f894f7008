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
unseen by every stage. What differs between methods (``ccl``, ``gags``, ``cgc``) is behind one
protocol in :mod:`.methods`, picked once from ``field.method``.
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
from ..distributed import context as dist_context
from ..io import atomic_write_json, read_json
from ..priors.stage import load_priors
from ..priors.types import FramePriors
from ..progress import Progress
from ..scene.layout import SceneDir
from ..splat.data import split_indices
from .methods import field_method
from .model import SemanticField
from .training import optimise
from .views import FrozenGaussians, supervised_views

FIELD_STAGE_VERSION = 1


def field_levels(cfg: Config, priors: list[FramePriors]) -> list[str]:
    """Levels to train: the method's choice among the levels present in the priors."""
    present: list[str] = []
    for fp in priors:
        for lv in fp.levels:
            if lv not in present:
                present.append(lv)
    return field_method(cfg).train_levels(cfg, present)


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


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
    ctx = dist_context()  # several ranks: data-parallel field, rank 0 alone writes (distributed.py)
    iterations = ctx.scaled_steps(f.iterations, cfg.distributed.scale_steps)
    settings = digest({
        "version": FIELD_STAGE_VERSION, "field": dataclasses.asdict(f), "levels": levels,
        "holdout_every": cfg.rgb.holdout_every, "gaussians": _file_stamp(gauss_path),
        "priors": [meta.get(k) for k in ("frame_settings", "assoc_settings", "inputs_digest")],
        **({"world_size": ctx.world_size, "iterations": iterations} if ctx.enabled else {}),
    })  # fmt: skip
    record_path = scene.field_record
    finished = None
    if record_path.is_file() and scene.field.is_file():
        record = read_json(record_path)
        if record.get("completed") and record.get("settings") == settings:
            finished = dict(record["metrics"], skipped=True)
    if ctx.agree(finished is not None, "the field resume decision"):
        return finished or {"skipped": True, **ctx.record()}

    gaussians = FrozenGaussians.load(gauss_path, device)
    scene_from_world = scene.scene_from_world()
    train_idx, _ = split_indices(len(capture.frames), cfg.rgb.holdout_every)
    backend = cfg.rgb.backend

    method = field_method(cfg)
    with ctx.main_first("the codebook (rank 0 learns it, the others read it back)"):
        codebooks = method.codebooks(scene.codebook, priors, meta, levels, cfg, device, progress)
    codes = {lv: cb.mask_codes for lv, cb in codebooks.items()} or None
    views = supervised_views(capture, priors, train_idx, scene_from_world, levels, codes, device)
    objective, spatial = method.objective(len(gaussians), levels, views, codebooks, cfg, device)

    ckpt = out_dir / "ckpt.npz"
    with Progress(stage="field", total=max(1, iterations), disable=not progress) as bar:
        run = optimise(
            objective, gaussians, views, iterations=iterations, lr=f.lr, batch_views=f.batch_views,
            spatial_lambda=spatial, spatial_knn=f.spatial_knn, backend=backend, seed=f.seed, checkpoint=ckpt,
            checkpoint_every=f.checkpoint_every, settings_digest=settings,
            on_step=lambda s, m: bar.update(1, loss=round(m["loss"], 4)),
        )  # fmt: skip
        dist_metrics: dict[str, Any] = {k: run[k] for k in ("world_size", "backend", "rank_param_digests",
                                              "allreduce_bytes_per_step") if k in run}  # fmt: skip
        if not ctx.is_main:
            return {"steps": iterations, "resumed_from": run["resumed_from"], **dist_metrics}
        with torch.no_grad():
            field = objective.finish(gaussians, views, backend)
    field.save(scene.field)
    ckpt.unlink(missing_ok=True)

    history = run["history"]
    metrics: dict[str, Any] = {
        "method": f.method,
        "levels": method.reported_levels(field),
        "n_gaussians": len(gaussians),
        "train_views": len(views),
        "steps": iterations,
        "resumed_from": run["resumed_from"],
        "seconds": time.monotonic() - t0,
        **dist_metrics,
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


@torch.no_grad()
def gaussian_code_probs(field: SemanticField | str | Path, chunk: int = 65536) -> dict[str, np.ndarray]:
    """Each Gaussian's own feature decoded by the field's method: ``level -> float16 [N_gauss, Nc]`` (softmax).

    This is the per-Gaussian semantics the query engine reads (with the codebooks): a Gaussian's
    relevance to a text is a lookup of its top code's relevance, or a small matmul.
    """
    if not isinstance(field, SemanticField):
        field = SemanticField.load(field)
    method = field_method(field.method)
    out = {}
    for lv in field.levels:
        feats = torch.from_numpy(np.asarray(field.features[lv], dtype=np.float32))
        parts = [torch.softmax(method.logits(field, lv, feats[i : i + chunk]), dim=-1)
                 for i in range(0, len(feats), chunk)]  # fmt: skip
        out[lv] = torch.cat(parts).numpy().astype(np.float16)
    return out
