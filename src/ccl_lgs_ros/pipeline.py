"""``ccl-lgs train``: capture -> RGB Gaussians -> 2D priors -> codebook + semantic field -> query index.

Each stage writes into the scene folder and records itself in ``scene.json`` with a digest of
the settings it depends on; a rerun with the same settings skips finished stages (after a crash
or a kill, the stage in flight resumes from its own checkpoints). ``--fresh`` ignores the records.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from .capture.format import Capture
from .config import Config, digest, to_dict
from .distributed import context as dist_context
from .priors.stage import compute_priors
from .progress import announce
from .scene.build import build_query_index
from .scene.layout import SCENE_FORMAT_VERSION, SceneDir
from .semantics import train_field
from .semantics.methods import field_method
from .splat.trainer import train_rgb
from .train_checks import check_train_settings

log = logging.getLogger(__name__)

STAGES = ("rgb", "priors", "field")


def _stage_digest(cfg: Config, stage: str, capture_digest: str) -> str:
    # A stage depends on the capture, its own settings and what it reads from earlier stages
    # (priors read only the images, the field reads the RGB Gaussians and the priors).
    parts: dict[str, Any] = {"capture": capture_digest, "stage": stage}
    if stage in ("rgb", "field"):
        parts["rgb"] = digest(cfg.rgb)
    if stage in ("priors", "field"):
        parts["priors"] = digest(cfg.priors)
        parts["method"] = cfg.field.method
        parts["levels"] = list(cfg.field.levels)
    if stage == "field":
        parts["field"] = digest(cfg.field)
    return digest(parts)


def capture_digest(capture: Capture) -> str:
    """Digest of what training reads from a capture: frame list, poses, image sizes/mtimes."""
    items = []
    for i, frame in enumerate(capture.frames):
        path = capture.image_path(i)
        try:
            st = path.stat()
            stamp = (st.st_size, int(st.st_mtime))
        except OSError:
            stamp = (0, 0)
        items.append([frame.file_path, [round(v, 9) for v in frame.c2w.ravel().tolist()], stamp])
    return digest(items)


def _announce(stage: str, message: str) -> None:
    """A stage boundary, as a progress line (node) and a log line."""
    announce(stage, message)
    log.info("[%s] %s", stage, message)


def _absolute_checkpoint(spec: Any) -> Any:
    """The text-encoder spec with its checkpoint path absolute (symlinks resolved), so the
    scene's queries work whatever folder they are run from (scene_checks.py checks it on load)."""
    if isinstance(spec, dict) and isinstance(spec.get("checkpoint"), str) and spec["checkpoint"].strip():
        return {**spec, "checkpoint": str(Path(spec["checkpoint"]).expanduser().resolve())}
    return spec


def _write_record(scene: SceneDir, record: dict[str, Any]) -> None:
    if dist_context().is_main:  # several ranks: rank 0 alone writes the scene
        scene.write_record(record)


def train(capture_path: str | Path, scene_dir: str | Path, cfg: Config, stages: str = "all",
          fresh: bool = False) -> dict[str, Any]:
    """Run the pipeline (up to ``stages``) and return the scene record."""
    capture = Capture.load(capture_path)
    capture.max_image_pixels = max(capture.max_image_pixels, int(cfg.capture.max_image_pixels))
    if not capture.frames:
        raise ValueError(f"{capture_path}: the capture has no frames")
    scene = SceneDir(scene_dir)
    scene_dir = scene.root
    scene_dir.mkdir(parents=True, exist_ok=True)
    device = cfg.device
    cap_digest = capture_digest(capture)

    record: dict[str, Any] = {} if fresh else scene.read_record_or_empty()
    record.update({
        "format_version": SCENE_FORMAT_VERSION,
        "frame_id": capture.frame_id,
        "capture": str(Path(capture_path).expanduser().resolve()),
        "config": to_dict(cfg),
    })
    done: dict[str, Any] = record.setdefault("stages", {})
    if fresh:
        done.clear()
    last = STAGES.index(stages) if stages in STAGES else len(STAGES) - 1

    ctx = dist_context()  # several ranks (distributed.py): every stage runs on all of them

    def finished(stage: str, *more: bool) -> bool:
        ok = done.get(stage, {}).get("digest") == _stage_digest(cfg, stage, cap_digest) and all(more)
        return bool(ctx.agree(ok, f"whether the {stage} stage is done"))

    check_train_settings(cfg, capture, [s for s in STAGES[: last + 1] if not finished(s)])  # before any work
    t_all = time.monotonic()
    # -- 1. RGB Gaussians ------------------------------------------------------------------
    if not finished("rgb"):
        _announce("rgb", "training the RGB Gaussian reconstruction")
        t0 = time.monotonic()
        metrics = train_rgb(capture, cfg, scene.rgb_dir, device=device, progress=True, resume=not fresh)
        done["rgb"] = {"digest": _stage_digest(cfg, "rgb", cap_digest), "seconds": time.monotonic() - t0,
                       "metrics": metrics, **ctx.record()}
        done.pop("field", None)  # the field lives on these Gaussians
        _write_record(scene, record)
        ctx.barrier("the end of the rgb stage")
    record["world_from_scene"] = scene.world_from_scene().tolist()
    if last == 0:
        _write_record(scene, record)
        return record

    # -- 2. 2D priors -----------------------------------------------------------------------
    levels = field_method(cfg).prior_levels(cfg)
    if not finished("priors"):
        _announce("priors", f"2D priors ({cfg.priors.backend}) for levels {list(levels)}")
        t0 = time.monotonic()
        stats = compute_priors(capture, cfg, scene.priors_dir, device=device, levels=levels)
        done["priors"] = {"digest": _stage_digest(cfg, "priors", cap_digest), "seconds": time.monotonic() - t0,
                          "stats": stats, **ctx.record()}
        done.pop("field", None)
        record["text_encoder"] = _absolute_checkpoint(stats.get("text_encoder"))
        _write_record(scene, record)
        ctx.barrier("the end of the priors stage")
    if last == 1:
        return record

    # -- 3. codebook + semantic field + query index ------------------------------------------
    if not finished("field", scene.query_index.is_file()):
        _announce("field", f"codebook and semantic field ({cfg.field.method})")
        t0 = time.monotonic()
        metrics = train_field(scene_dir, capture, cfg, device=device, progress=True)
        index_stats: dict[str, Any] = {}
        if ctx.is_main:  # the query index is rank 0's alone
            _announce("index", "building the 3D query index")
            index_stats = build_query_index(scene_dir, capture.frame_id, capture=capture, cfg=cfg, device=device)
        done["field"] = {"digest": _stage_digest(cfg, "field", cap_digest), "seconds": time.monotonic() - t0,
                         "metrics": metrics, "index": index_stats, **ctx.record()}
    record["seconds_total_last_run"] = time.monotonic() - t_all
    record["distributed"] = ctx.record()
    _write_record(scene, record)
    ctx.barrier("the end of the run")
    _announce("done", f"scene ready at {scene_dir}")
    return record
