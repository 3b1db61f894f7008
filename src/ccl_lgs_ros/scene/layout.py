"""The trained-scene folder's layout: the one owner of its file names, format version and record.

::

    SCENE/scene.json         format_version, frame_id, world_from_scene, config, stage records,
                             text_encoder spec (:meth:`SceneDir.read_record` / :meth:`write_record`)
    SCENE/rgb/               RGB stage (``splat.trainer``): gaussians.npz, rgb.json, ckpt_*.npz
    SCENE/priors/            2D priors cache (``priors.stage``; meta.json)
    SCENE/field/             field stage (``semantics.field``): codebook.npz, field.npz, field.json
    SCENE/query_index.npz    world-frame Gaussians + per-level codes (``scene.build``)

Every stage that reads or writes a scene takes its paths from a :class:`SceneDir`; the
record is written atomically (:func:`~ccl_lgs_ros.io.atomic_write_json`). This module sits below
every stage (it imports only :mod:`ccl_lgs_ros.io` and the RGB stage's frame reader), so any of
them may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_json, read_json
from ..scene_checks import SceneRefused, check_record
from ..splat.gaussians import load_scene_from_world, load_world_from_scene

#: Version of the folder layout and ``scene.json``; a reader refuses any other.
SCENE_FORMAT_VERSION = 1


class SceneError(RuntimeError):
    """A scene folder is missing, incomplete or of an unsupported version."""


@dataclass(frozen=True)
class SceneDir:
    """Typed paths of one trained-scene folder (nothing is read or created by constructing it)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root).expanduser())

    # -- files ---------------------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.root / "scene.json"

    @property
    def rgb_dir(self) -> Path:
        return self.root / "rgb"

    @property
    def gaussians(self) -> Path:
        """The RGB stage's Gaussians (normalised scene frame)."""
        return self.rgb_dir / "gaussians.npz"

    @property
    def rgb_record(self) -> Path:
        return self.rgb_dir / "rgb.json"

    @property
    def priors_dir(self) -> Path:
        return self.root / "priors"

    @property
    def priors_meta(self) -> Path:
        return self.priors_dir / "meta.json"

    @property
    def field_dir(self) -> Path:
        return self.root / "field"

    @property
    def field(self) -> Path:
        return self.field_dir / "field.npz"

    @property
    def codebook(self) -> Path:
        return self.field_dir / "codebook.npz"

    @property
    def field_record(self) -> Path:
        return self.field_dir / "field.json"

    @property
    def query_index(self) -> Path:
        return self.root / "query_index.npz"

    # -- the record ----------------------------------------------------------------------
    def read_record(self) -> dict[str, Any]:
        """``scene.json`` of a trained scene; :class:`SceneError` when absent, invalid or of another version."""
        path = self.record_path
        if not path.is_file():
            raise SceneError(f"{self.root}: no scene.json (not a trained scene)")
        try:
            record = read_json(path)
        except ValueError as exc:
            raise SceneError(f"{path}: invalid JSON ({exc})") from None
        try:
            record = check_record(record, path)  # a JSON object with the fields every reader needs
        except SceneRefused as exc:
            raise SceneError(str(exc)) from None
        version = int(record["format_version"])
        if version != SCENE_FORMAT_VERSION:
            raise SceneError(f"{path}: scene format {version}, this build reads {SCENE_FORMAT_VERSION}")
        return record

    def read_record_or_empty(self) -> dict[str, Any]:
        """The record as it is (any version) for a stage that updates it, ``{}`` when absent or unreadable."""
        if not self.record_path.is_file():
            return {}
        try:
            record = read_json(self.record_path)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def write_record(self, record: dict[str, Any]) -> None:
        """Write ``scene.json`` atomically, stamped with this build's format version."""
        atomic_write_json(self.record_path, {**record, "format_version": SCENE_FORMAT_VERSION})

    def text_encoder_spec(self) -> dict[str, Any] | None:
        """The text encoder recorded with the scene (``scene.json``, else the priors cache's meta)."""
        spec = None
        if self.record_path.is_file():
            spec = self.read_record_or_empty().get("text_encoder")
        if spec is None and self.priors_meta.is_file():
            spec = read_json(self.priors_meta).get("text_encoder")
        return spec

    # -- the frame -----------------------------------------------------------------------
    def scene_from_world(self) -> np.ndarray:
        """The RGB stage's normalisation ``scene = scene_from_world @ world`` (4x4)."""
        return load_scene_from_world(self.rgb_dir)

    def world_from_scene(self) -> np.ndarray:
        return load_world_from_scene(self.rgb_dir)


__all__ = ["SCENE_FORMAT_VERSION", "SceneDir", "SceneError"]
