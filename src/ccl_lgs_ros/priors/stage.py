"""The priors stage: backend selection, per-frame priors, association, cache.

``compute_priors`` is what the pipeline (``ccl-lgs train``) and the ROS node's trainer call;
``load_priors`` is what the codebook / field stages read; ``build_text_encoder`` rebuilds the
text encoder a trained scene was made with (from the spec stored in the cache's meta.json and
the scene), for queries.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..capture.format import Capture
from ..config import Config
from ..distributed import context as dist_context
from ..progress import Progress
from . import cache
from .types import CCL_LEVELS, FramePriors, PriorsBackend, TextEncoder

log = logging.getLogger(__name__)

#: Priors settings that only change association (changing them keeps the per-frame cache).
ASSOCIATION_KEYS = (
    "association_iou",
    "reseed",
    "association_max_objects",
    "association_window",
    "association_overlap",
    "association_patience",
    "association_budget",
    "sam2_image_size",
)
VALID_LEVELS = ("s", "p", "w", "sp", "wp")


class PriorsError(RuntimeError):
    """The priors stage cannot run (bad levels, backend output, or missing cache)."""


def default_levels(cfg: Config) -> tuple[str, ...]:
    """The configured field levels (``sp``/``wp`` by default). A field method that needs other
    levels says so (``semantics.methods.FieldMethod.prior_levels``) and the pipeline passes them."""
    return tuple(cfg.field.levels) if cfg.field.levels else CCL_LEVELS


def build_backend(cfg: Config, device: str) -> PriorsBackend:
    """The backend named by ``cfg.priors.backend`` (never a fallback from one to the other)."""
    if cfg.priors.backend == "simulator":
        from .simulator import SimulatorBackend

        return SimulatorBackend(cfg.priors)
    if cfg.priors.backend == "real":
        from .models import build_real_backend  # lazy: torch + SAM/SAM 2/OpenCLIP imports

        return build_real_backend(cfg, device)
    raise PriorsError(f"unknown priors.backend {cfg.priors.backend!r} (choose 'real' or 'simulator')")


def build_text_encoder(spec: dict, device: str = "cpu") -> TextEncoder:
    """Rebuild a text encoder from its ``spec()`` (as stored in meta.json / the scene)."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise PriorsError(f"invalid text-encoder spec {spec!r}")
    if spec["kind"] == "simulator":
        from .simulator import SimulatedTextEncoder

        return SimulatedTextEncoder.from_spec(spec)
    from .models import build_clip_text_encoder  # lazy: the real OpenCLIP encoder (torch, open_clip)

    return build_clip_text_encoder(spec, device)


def _check_frame(fp: FramePriors, levels: Sequence[str], index: int) -> None:
    """Enforce the FramePriors contract on a backend's output (fail early, not in training)."""
    for level in levels:
        if level not in fp.levels:
            raise PriorsError(f"backend returned no level {level!r} for frame {index}")
        lp = fp.levels[level]
        if lp.masks.ndim != 2 or lp.features.ndim != 2 or lp.labels.shape != (lp.features.shape[0],):
            raise PriorsError(f"frame {index} level {level}: malformed priors")
        if lp.masks.size and lp.masks.min() < -1:
            raise PriorsError(f"frame {index} level {level}: mask ids below -1")
        norms = np.linalg.norm(lp.features.astype(np.float32), axis=1)
        if norms.size and not np.all(np.abs(norms - 1.0) < 1e-2):
            raise PriorsError(f"frame {index} level {level}: features are not unit vectors")


def _stats(priors: Sequence[FramePriors], levels: Sequence[str]) -> dict[str, Any]:
    masks_per_frame = {}
    labelled = {}
    for level in levels:
        counts = [len(fp.levels[level].labels) for fp in priors]
        lab = sum(int((fp.levels[level].labels >= 0).sum()) for fp in priors)
        masks_per_frame[level] = float(np.mean(counts)) if counts else 0.0
        labelled[level] = float(lab / max(sum(counts), 1))
    empty = {lv: sum(1 for fp in priors if len(fp.levels[lv].labels) == 0) for lv in levels}
    return {"masks_per_frame": masks_per_frame, "labelled_fraction": labelled, "frames_without_masks": empty}


def _warn_empty_frames(priors: Sequence[FramePriors], levels: Sequence[str], cfg: Config) -> dict[str, int]:
    """Count the frames without any mask per level; warn with the settings that control it."""
    empty = {lv: sum(1 for fp in priors if len(fp.levels[lv].labels) == 0) for lv in levels}
    bad = {lv: k for lv, k in empty.items() if k}
    if bad:
        p = cfg.priors
        counts = ", ".join(f"level {lv}: {k}/{len(priors)}" for lv, k in bad.items())
        log.warning(
            "frames without any mask (%s). %s",
            counts,
            "The simulator found no instance there (priors.sim_corruption, the capture's instances/)"
            if p.backend == "simulator"
            else (
                f"SAM kept no mask there: its quality thresholds priors.pred_iou_thresh={p.pred_iou_thresh} and "
                f"priors.stability_score_thresh={p.stability_score_thresh} (lower them), priors.min_mask_area="
                f"{p.min_mask_area}, priors.points_per_side={p.points_per_side}; or the checkpoint "
                "(priors.sam_checkpoint) is not a trained SAM"
            ),
        )
    return empty


def compute_priors(
    capture: Capture,
    cfg: Config,
    out_dir: Path,
    device: str,
    levels: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Compute (or resume) the priors of every frame of ``capture`` into ``out_dir``.

    Args:
        capture: the capture; frames in capture order (association follows this order).
        cfg: configuration; ``cfg.priors.backend`` picks the real models or the simulator.
        out_dir: the cache folder (``SCENE/priors``); created if needed.
        device: torch device of the real backend ("cpu", "cuda", "cuda:1").
        levels: mask levels; default :func:`default_levels` (the pipeline passes the field
            method's, e.g. ``s``/``p``/``w`` for GAGS).
        progress: show / emit progress.

    Returns:
        Stats: ``backend``, ``frames``, ``computed`` and ``reused`` frame counts, ``associated``
        (whether association ran), ``masks_per_frame`` and ``labelled_fraction`` per level,
        ``seconds``, ``frames_per_s`` (of the frames computed), ``text_encoder`` (spec).
    """
    t0 = time.monotonic()
    out_dir = Path(out_dir)
    levels = tuple(levels) if levels is not None else default_levels(cfg)
    bad = [lv for lv in levels if lv not in VALID_LEVELS]
    if bad or not levels:
        raise PriorsError(f"invalid priors levels {list(levels)}; choose from {VALID_LEVELS}")
    if not capture.frames:
        raise PriorsError(f"{capture.root}: the capture has no frames")
    out_dir.mkdir(parents=True, exist_ok=True)

    simulator = cfg.priors.backend == "simulator"
    priors_settings = dataclasses.asdict(cfg.priors)
    if not simulator:  # simulator knobs must not invalidate an expensive real-model cache
        priors_settings = {k: v for k, v in priors_settings.items() if not k.startswith("sim_")}
    settings = {"backend": cfg.priors.backend, "levels": list(levels), "priors": priors_settings}
    frame_settings, assoc_settings = cache.settings_digests(settings, ASSOCIATION_KEYS)
    digests = cache.frame_digests(capture, include_pose=simulator)
    inputs_digest = cache.json_digest(digests)
    n = len(capture.frames)

    # Several ranks (distributed.py): rank 0 alone clears and writes the cache's meta and labels;
    # the frames to compute are split across ranks, association runs on rank 0 after them.
    ctx = dist_context()
    meta = cache.read_meta(out_dir)
    with ctx.main_first("the priors cache check"):
        if ctx.is_main:
            same_version = meta is not None and meta.get("format_version") == cache.CACHE_VERSION
            if meta is None or not same_version or meta.get("frame_settings") != frame_settings:
                cache.clear(out_dir)  # other settings or version: nothing is reusable
            cache.clear(out_dir, keep_below=n)  # frames beyond the capture's end are stale
    todo = [i for i in range(n) if not cache.frame_is_valid(out_dir, i, digests[i], frame_settings)]
    todo = ctx.agree(todo, "the priors frames to compute")
    labels = cache.load_labels(out_dir)
    assoc_valid = (
        not todo
        and labels is not None
        and str(labels.get("assoc_digest", "")) == cache.digest([assoc_settings, inputs_digest])
    )
    if ctx.agree(meta is not None and bool(meta.get("complete")) and assoc_valid, "the priors resume decision"):
        return {
            **(meta or {}).get("stats", {}),
            "computed": 0,
            "reused": n,
            "associated": False,
            "seconds": time.monotonic() - t0,
            "frames_per_s": None,
        }

    backend = build_backend(cfg, device)
    encoder_spec = backend.text_encoder().spec()
    base_meta = {
        "backend": backend.name,
        "levels": list(levels),
        "frame_settings": frame_settings,
        "assoc_settings": assoc_settings,
        "inputs_digest": inputs_digest,
        "num_frames": n,
        "frame_files": [f.file_path for f in capture.frames],
        "settings": settings,
        "text_encoder": encoder_spec,
    }
    if ctx.is_main:
        cache.write_meta(out_dir, {**base_meta, "complete": False})

    t_frames = time.monotonic()
    mine = todo[ctx.rank :: ctx.world_size]
    with Progress(stage="priors", total=len(mine) + 1, unit="frame", disable=not progress) as bar:
        for done, i in enumerate(mine, start=1):
            fp = backend.frame_priors(capture, i, levels)
            _check_frame(fp, levels, i)
            cache.save_frame(out_dir, i, fp, digests[i], frame_settings)
            fps = done / max(time.monotonic() - t_frames, 1e-9)
            bar.update(1, message=f"frame {i + 1}/{n}", fps=round(fps, 2))
        frames_s = time.monotonic() - t_frames
        ctx.barrier("the sharded priors frames (every rank's frames must be in the cache)")
        wait_s = time.monotonic() - t_frames - frames_s
        if not ctx.is_main:
            return {"computed": len(mine), "frames_s": frames_s, **ctx.record()}
        # Association needs every frame; masks come back from the cache (frames are small).
        t_assoc = time.monotonic()
        all_priors = [cache.load_frame(out_dir, i) for i in range(n)]
        _warn_empty_frames(all_priors, levels, cfg)
        backend.associate(capture, all_priors, levels)
        cache.save_labels(out_dir, all_priors, cache.digest([assoc_settings, inputs_digest]))
        assoc_s = time.monotonic() - t_assoc
        bar.update(1, message="association done")

    stats = {
        "backend": backend.name,
        "frames": n,
        "levels": list(levels),
        **_stats(all_priors, levels),
        "text_encoder": encoder_spec,
    }
    assoc = getattr(backend, "association_stats", None)  # the real backend's SAM 2 cost per level
    if assoc:
        stats["association"] = {
            lv: {k: v for k, v in st.to_json().items() if k != "seed_frames"} for lv, st in assoc.items()
        }
    cache.write_meta(out_dir, {**base_meta, "complete": True, "stats": stats})
    return {
        **stats,
        "computed": len(todo),
        "reused": n - len(todo),
        "associated": True,
        "seconds": time.monotonic() - t0,
        "frames_per_s": len(todo) / frames_s if todo and frames_s > 0 else None,
        "frames_s": frames_s,  # this rank's share of the per-frame work
        "wait_s": wait_s,  # waiting for the other ranks' frames
        "association_s": assoc_s,  # sequential, on rank 0 alone
        **(ctx.record() if ctx.enabled else {}),
    }


def load_priors(out_dir: Path) -> tuple[list[FramePriors], dict[str, Any]]:
    """All frames' priors (with association labels) and the cache's meta.

    Raises:
        PriorsError: the cache is missing, from another version, or incomplete.
    """
    out_dir = Path(out_dir)
    meta = cache.read_meta(out_dir)
    if meta is None:
        raise PriorsError(f"{out_dir}: no priors cache (run the priors stage first)")
    if meta.get("format_version") != cache.CACHE_VERSION:
        raise PriorsError(f"{out_dir}: priors cache version {meta.get('format_version')} != {cache.CACHE_VERSION}")
    if not meta.get("complete"):
        raise PriorsError(f"{out_dir}: the priors cache is incomplete (the stage was interrupted; rerun it)")
    labels = cache.load_labels(out_dir)
    if labels is None:
        raise PriorsError(f"{out_dir}: association labels missing")
    return [cache.load_frame(out_dir, i, labels) for i in range(int(meta["num_frames"]))], meta


__all__ = [
    "ASSOCIATION_KEYS",
    "PriorsError",
    "build_backend",
    "build_text_encoder",
    "compute_priors",
    "default_levels",
    "load_priors",
]
