"""Checks a scene folder must pass before it is served (ROS-free).

A scene folder is data from somewhere else (another robot, a copy, a caller naming a folder):
nothing in it is trusted. :func:`load_scene <ccl_lgs_ros.scene.load_scene>` calls these small
functions, each raising :class:`~ccl_lgs_ros.scene.SceneError` (a ``RuntimeError``) or
``ValueError`` with the reason, before the loaded scene can replace the served one:

- :func:`check_record`: ``scene.json`` is an object with an integer ``format_version``;
- :func:`check_text_encoder_spec`: the ``text_encoder`` entry names a known kind; an OpenCLIP
  encoder must come from a checkpoint file (never downloaded: ``allow_download`` is refused;
  never random weights: an empty checkpoint is refused), and that file must lie inside the scene
  folder or one of the folders the loader allows (the node: ``node.allowed_roots`` and
  ``node.checkpoint_dirs``), after resolving symlinks; a relative path is taken relative to the
  scene folder, never the process's working directory;
- :func:`check_index`: at least one Gaussian and finite parameters.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .paths import PathRefused, resolve_inside

#: Text-encoder kinds a scene may name.
ENCODER_KINDS = ("simulator", "open_clip")


class SceneRefused(ValueError):
    """A scene folder's content is not acceptable; the message says why."""


def check_record(record: Any, path: Path) -> dict[str, Any]:
    """``scene.json``'s content must be an object with an integer ``format_version``."""
    if not isinstance(record, dict):
        raise SceneRefused(f"{path}: scene.json must hold a JSON object, not {type(record).__name__}")
    version = record.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise SceneRefused(f"{path}: format_version must be an integer, not {str(version)[:50]!r}")
    frame = record.get("frame_id", "map")
    if not isinstance(frame, str) or len(frame) > 256:
        raise SceneRefused(f"{path}: frame_id must be a short text")
    return record


def check_text_encoder_spec(
    spec: Any, scene_dir: Path, allowed_dirs: Sequence[str | os.PathLike] | None = None
) -> dict[str, Any]:
    """The scene's text-encoder spec, checked; an OpenCLIP checkpoint path comes back absolute.

    Args:
        spec: ``scene.json``'s ``text_encoder`` entry.
        scene_dir: the scene folder (a relative checkpoint path is relative to it).
        allowed_dirs: folders besides ``scene_dir`` a checkpoint may come from; ``None`` = any
            readable file (the operator's own command line, not a caller's request).

    Raises:
        SceneRefused: with the reason.
    """
    if not isinstance(spec, dict) or not spec:
        raise SceneRefused(f"{scene_dir}: scene.json names no text encoder (an object with a 'kind')")
    kind = spec.get("kind")
    if kind not in ENCODER_KINDS:
        raise SceneRefused(f"{scene_dir}: unknown text encoder kind {str(kind)[:50]!r}; known: {list(ENCODER_KINDS)}")
    if kind == "simulator":
        return dict(spec)
    if spec.get("allow_download"):
        raise SceneRefused(
            f"{scene_dir}: the text encoder asks to be downloaded (allow_download); a scene may only name a "
            "checkpoint file on disk"
        )
    checkpoint = spec.get("checkpoint")
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        raise SceneRefused(
            f"{scene_dir}: the OpenCLIP text encoder names no checkpoint file, so it would have random weights "
            "and every query would answer nonsense; refused"
        )
    model = spec.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        raise SceneRefused(f"{scene_dir}: the OpenCLIP text encoder names no model")
    candidate = Path(os.path.expanduser(checkpoint))
    if not candidate.is_absolute():
        candidate = scene_dir / candidate  # relative to the scene folder, never the working directory
    if allowed_dirs is None:
        resolved = candidate.resolve()
        if ".." in Path(checkpoint).parts:
            raise SceneRefused(f"{scene_dir}: text encoder checkpoint {checkpoint!r} contains '..'")
    else:
        try:
            resolved = resolve_inside(
                candidate, [scene_dir, *allowed_dirs], must_exist=True, what="text encoder checkpoint"
            )
        except PathRefused as exc:
            raise SceneRefused(
                f"{scene_dir}: {exc} (node.checkpoint_dirs lists the folders checkpoints may come from)"
            ) from None
    if not resolved.is_file():
        raise SceneRefused(f"{scene_dir}: text encoder checkpoint {str(resolved)!r} is not a file")
    out = {k: v for k, v in spec.items() if k not in ("allow_download", "seed")}
    out["checkpoint"] = str(resolved)
    return out


def check_index(index: Any, path: Path) -> None:
    """A servable index: at least one Gaussian, finite means / scales / quaternions / opacities
    / colours and codebooks."""
    n = int(index.num_gaussians)
    if n < 1:
        raise SceneRefused(f"{path}: the scene has no Gaussians")
    for name in ("means", "quats", "scales", "opacities", "colors"):
        arr = np.asarray(getattr(index, name))
        if arr.shape[:1] != (n,):
            raise SceneRefused(f"{path}: {name} has {arr.shape[:1]} rows for {n} Gaussians")
        if np.issubdtype(arr.dtype, np.number) and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).reshape(n, -1).any(axis=1).sum())
            raise SceneRefused(f"{path}: {name} of {bad} Gaussians are NaN or infinite")
    for level, codes in getattr(index, "levels", {}).items():
        cb = np.asarray(codes.codebook)
        if cb.size == 0 or not np.isfinite(cb).all():
            raise SceneRefused(f"{path}: the codebook of level {level!r} is empty or not finite")


__all__ = ["ENCODER_KINDS", "SceneRefused", "check_index", "check_record", "check_text_encoder_spec"]
