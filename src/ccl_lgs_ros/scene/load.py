"""A trained scene loaded for serving (:class:`LoadedScene`), and its export.

Loading never unpickles anything and is all-or-nothing: a :class:`LoadedScene` is built
completely before anyone can see it, so a node can swap scenes atomically. The folder's layout
is :mod:`.layout`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import QueryConfig, from_dict
from ..priors.stage import build_text_encoder
from ..query.engine import QueryEngine
from ..query.index import SemanticIndex
from ..scene_checks import SceneRefused, check_index, check_text_encoder_spec
from ..splat.gaussians import GaussianModel
from ..splat.ply import export_point_cloud_ply, export_splat_ply
from .layout import SceneDir, SceneError


@dataclass
class LoadedScene:
    """A scene ready to answer queries (immutable once built)."""

    path: Path
    record: dict[str, Any]
    index: SemanticIndex
    engine: QueryEngine

    @property
    def frame_id(self) -> str:
        return str(self.index.frame_id)

    @property
    def num_gaussians(self) -> int:
        return int(self.index.num_gaussians)

    def scene_cloud(self, min_opacity: float = 0.3, max_points: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian centres and colours (world frame) for display."""
        keep = np.flatnonzero(self.index.opacities >= min_opacity)
        if keep.size > max_points:
            keep = keep[np.linspace(0, keep.size - 1, max_points).astype(np.int64)]
        return self.index.means[keep], self.index.colors[keep]


def load_scene(
    path: str | Path, device: str = "cpu", query_cfg: QueryConfig | None = None,
    allowed_dirs: Sequence[str | Path] | None = None,
) -> LoadedScene:  # fmt: skip
    """Load a trained scene for serving. Raises :class:`SceneError` with the reason.

    ``allowed_dirs``: folders besides the scene folder its text-encoder checkpoint may come from
    (the node passes ``node.allowed_roots`` + ``node.checkpoint_dirs``; ``None``, the command
    line's own use, accepts any checkpoint file). Every scene is checked first
    (:mod:`ccl_lgs_ros.scene_checks`): no downloads, no random encoder weights, at least one
    Gaussian, finite parameters, and an index no larger than ``query.max_index_bytes``.
    """
    scene = SceneDir(path)
    scene_dir = scene.root
    if not scene_dir.is_dir():
        raise SceneError(f"{scene_dir}: no such scene folder")
    record = scene.read_record()
    if not scene.query_index.is_file():
        raise SceneError(f"{scene_dir}: no {scene.query_index.name} (training did not finish?)")
    try:
        spec = check_text_encoder_spec(record.get("text_encoder"), scene_dir, allowed_dirs)
    except SceneRefused as exc:
        raise SceneError(str(exc)) from None
    # The size limit is the caller's (or the default), never the scene's own config.
    max_bytes = int(query_cfg.max_index_bytes if query_cfg is not None else QueryConfig().max_index_bytes)
    try:
        index = SemanticIndex.load(scene.query_index, max_bytes=max_bytes)
        check_index(index, scene.query_index)
    except (ValueError, KeyError, OSError) as exc:
        raise SceneError(f"{scene.query_index}: {exc}") from None
    if query_cfg is None:
        try:
            query_cfg = from_dict(record.get("config") or {}).query
        except (ValueError, TypeError, AttributeError) as exc:
            raise SceneError(f"{scene_dir}: invalid config in scene.json ({exc})") from None
    try:
        encoder = build_text_encoder(spec, device=device)
    except Exception as exc:  # noqa: BLE001 - PriorsError, RuntimeError, OSError from a checkpoint
        why = f"{type(exc).__name__}: {exc}"
        if "Weights only load failed" in why:  # torch's hint to unpickle the file is no option here
            why = f"{spec.get('checkpoint')} is not a plain weights file (it would need unpickling, which is refused)"
        raise SceneError(f"{scene_dir}: text encoder not loaded: {why[:1000]}") from None
    engine = QueryEngine(index, encoder, query_cfg)
    return LoadedScene(path=scene_dir, record=record, index=index, engine=engine)


def export_scene(scene_dir: str | Path, out: str | Path) -> dict[str, str]:
    """Export the RGB Gaussians as a standard 3DGS ``.ply`` and a coloured point cloud (world frame)."""

    scene = SceneDir(scene_dir)
    record = scene.read_record()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = GaussianModel.load(scene.gaussians)
    world_from_scene = np.asarray(record["world_from_scene"], dtype=np.float64)
    splats = out / "gaussians_3dgs.ply"
    cloud = out / "cloud.ply"
    export_splat_ply(splats, model, world_from_scene=world_from_scene)
    export_point_cloud_ply(cloud, model, world_from_scene=world_from_scene)
    return {"gaussians": str(splats), "cloud": str(cloud)}
