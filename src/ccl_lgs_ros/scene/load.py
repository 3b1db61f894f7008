"""The trained-scene folder: build its query index, load it for serving, export it.

Layout (see docs/ARCHITECTURE.md)::

    SCENE/scene.json        format_version, frame_id, world_from_scene, config, stage records,
                            text_encoder spec
    SCENE/rgb/              RGB Gaussians (normalised scene frame) and checkpoints
    SCENE/priors/           2D priors cache
    SCENE/field/            codebooks, per-Gaussian semantic features, decoder
    SCENE/query_index.npz   world-frame Gaussians + per-level top codes (what queries read)

Loading never unpickles anything and is all-or-nothing: a :class:`LoadedScene` is built
completely before anyone can see it, so a node can swap scenes atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .io import read_json

log = logging.getLogger(__name__)

QUERY_INDEX = "query_index.npz"


class SceneError(RuntimeError):
    """A scene folder is missing, incomplete or of an unsupported version."""


def _scene_record(scene_dir: Path) -> dict[str, Any]:
    path = scene_dir / "scene.json"
    if not path.is_file():
        raise SceneError(f"{scene_dir}: no scene.json (not a trained scene)")
    try:
        record = read_json(path)
    except ValueError as exc:
        raise SceneError(f"{path}: invalid JSON ({exc})") from None
    from .pipeline import SCENE_FORMAT_VERSION
    from .scene_checks import SceneRefused, check_record

    try:
        record = check_record(record, path)
    except SceneRefused as exc:
        raise SceneError(str(exc)) from None
    version = int(record["format_version"])
    if version != SCENE_FORMAT_VERSION:
        raise SceneError(f"{path}: scene format {version}, this build reads {SCENE_FORMAT_VERSION}")
    return record


def _lifted_codes(scene_dir: Path, capture: Any, cfg: Any, field: Any, device: str) -> dict[str, Any]:
    """Per level, each Gaussian's code voted from 2D index maps of the training views through its
    rendering weights (:func:`~.query.lift.lift_labels`).

    CCL-LGS votes its own targets, the codebook's per-mask codes. The ``gags`` and ``cgc``
    variants have no per-mask codes: they vote the field's own rendered pixel codes (the codes
    its 2D relevance reads), on the pixels a SAM mask of the level covers. Each Gaussian then
    takes what the views it appears in say, instead of what its single feature decodes to."""
    from .io import load_npz
    from .priors.stage import load_priors
    from .query.lift import lift_labels
    from .semantics.field import load_scene_from_world, split_by_counts
    from .semantics.relevance import pixel_codes, render_field
    from .semantics.views import FrozenGaussians, supervised_views
    from .splat.data import split_indices

    levels = list(field.levels)
    priors, _ = load_priors(scene_dir / "priors")
    n = len(priors)
    train_idx, _ = split_indices(len(capture.frames), cfg.rgb.holdout_every)
    sfw = load_scene_from_world(scene_dir / "rgb")
    g = FrozenGaussians.load(scene_dir / "rgb" / "gaussians.npz", device)
    maps: dict[str, list[np.ndarray]] = {}
    cams: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    if cfg.field.method == "ccl":
        arrays = load_npz(scene_dir / "field" / "codebook.npz")
        num_codes = {lv: int(arrays[f"codebook.{lv}"].shape[0]) for lv in levels}
        codes = {lv: split_by_counts(arrays[f"codes.{lv}"], arrays[f"counts.{lv}"], n) for lv in levels}
        for v in supervised_views(capture, priors, train_idx, sfw, levels, codes, "cpu"):
            for lv, target in v.targets.items():
                maps.setdefault(lv, []).append(target.numpy())
                cams.setdefault(lv, []).append((v.viewmat.numpy(), v.K.numpy()))
    else:
        num_codes = {lv: int(field.codebooks[lv].shape[0]) for lv in levels}
        prior_levels = sorted({lv for fp in priors for lv in fp.levels})
        for v in supervised_views(capture, priors, train_idx, sfw, prior_levels, None, device):
            rendered = render_field(field, g, [v], cfg.rgb.backend)
            for lv in levels:
                # The level's own masks (cgc: sp / wp); GAGS' single field: any level's masks.
                masks = [v.masks[lv]] if lv in v.masks else list(v.masks.values())
                covered = np.logical_or.reduce([m.cpu().numpy() >= 0 for m in masks])
                if not covered.any():
                    continue
                maps.setdefault(lv, []).append(np.where(covered, pixel_codes(field, lv, rendered[lv])[0], -1))
                cams.setdefault(lv, []).append((v.viewmat.cpu().numpy(), v.K.cpu().numpy()))
    out = {}
    for lv in levels:
        if not maps.get(lv):
            continue
        out[lv] = lift_labels(
            g.means, g.quats, g.scales, g.opacities, np.stack([c[0] for c in cams[lv]]),
            np.stack([c[1] for c in cams[lv]]), maps[lv], num_codes[lv], backend=cfg.rgb.backend, device=device,
        )
    return out


def build_query_index(scene_dir: str | Path, frame_id: str, capture: Any = None, cfg: Any = None,
                      device: str = "cpu") -> dict[str, Any]:
    """Turn the trained field into the world-frame :class:`~.query.index.SemanticIndex`.

    Per-Gaussian codes come from ``field.query_codes``: ``decoded`` (each Gaussian's own feature
    through the decoder, the paper's field), ``lifted`` (votes of the 2D index maps through the
    Gaussian's rendering weights) or ``combined`` (lifted where a Gaussian was seen with a
    clear majority, decoded elsewhere). Lifting needs the capture and config; without them codes
    are decoded. The ``gags`` / ``cgc`` variants lift their rendered pixel codes (see
    :func:`_lifted_codes`).
    """
    from .query.index import LevelCodes, SemanticIndex
    from .semantics import gaussian_code_probs, load_field
    from .splat.gaussians import GaussianModel

    scene_dir = Path(scene_dir)
    record = _scene_record(scene_dir)
    gaussians = GaussianModel.load(scene_dir / "rgb" / "gaussians.npz").to_numpy()
    field = load_field(scene_dir)  # once: the decoded codes and the variants' lifting both read it
    probs, codebooks = gaussian_code_probs(field), {lv: field.codebooks[lv] for lv in field.levels}
    levels = {name: LevelCodes.from_probs(probs[name], codebooks[name]) for name in probs}
    mode = cfg.field.query_codes if cfg is not None else "decoded"
    stats: dict[str, Any] = {"query_codes": mode}
    if mode != "decoded" and cfg is not None and capture is not None:
        lifted = _lifted_codes(scene_dir, capture, cfg, field, device)
        for name, lift in lifted.items():
            lifted_codes = lift.to_level_codes(codebooks[name])
            if mode == "lifted":
                levels[name] = lifted_codes
                continue
            sure = (lift.share >= 0.5) & (lift.total_weight >= 1e-3)
            dec = levels[name]
            levels[name] = LevelCodes(
                codes=np.where(sure, lifted_codes.codes, dec.codes),
                confidence=np.where(sure, lifted_codes.confidence, dec.confidence),
                codebook=codebooks[name],
            )
            stats[f"lifted_fraction_{name}"] = float(sure.mean()) if sure.size else 0.0
            agree = lifted_codes.codes[sure] == dec.codes[sure]
            stats[f"agreement_{name}"] = float(agree.mean()) if sure.any() else None
    else:
        stats["query_codes"] = "decoded"
    index = SemanticIndex.from_scene_arrays(
        means=gaussians["means"], quats=gaussians["quats"], scales=gaussians["scales"],
        opacities=gaussians["opacities"], colors=gaussians["colors"], levels=levels,
        world_from_scene=np.asarray(record["world_from_scene"], dtype=np.float64), frame_id=frame_id,
    )
    index.save(scene_dir / QUERY_INDEX)
    return {"gaussians": index.num_gaussians, "levels": list(levels),
            "bytes_per_gaussian": index.semantic_bytes_per_gaussian(), **stats}


@dataclass
class LoadedScene:
    """A scene ready to answer queries (immutable once built)."""

    path: Path
    record: dict[str, Any]
    index: Any  # query.index.SemanticIndex
    engine: Any  # query.engine.QueryEngine

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
    path: str | Path, device: str = "cpu", query_cfg: Any = None, allowed_dirs: Any = None
) -> LoadedScene:
    """Load a trained scene for serving. Raises :class:`SceneError` with the reason.

    ``allowed_dirs``: folders besides the scene folder its text-encoder checkpoint may come from
    (the node passes ``node.allowed_roots`` + ``node.checkpoint_dirs``; ``None``, the command
    line's own use, accepts any checkpoint file). Every scene is checked first
    (:mod:`.scene_checks`): no downloads, no random encoder weights, at least one Gaussian,
    finite parameters, and an index no larger than ``query.max_index_bytes``.
    """
    from .config import QueryConfig, from_dict
    from .priors.stage import build_text_encoder
    from .query.engine import QueryEngine
    from .query.index import SemanticIndex

    scene_dir = Path(path).expanduser()
    if not scene_dir.is_dir():
        raise SceneError(f"{scene_dir}: no such scene folder")
    record = _scene_record(scene_dir)
    if not (scene_dir / QUERY_INDEX).is_file():
        raise SceneError(f"{scene_dir}: no {QUERY_INDEX} (training did not finish?)")
    from .scene_checks import SceneRefused, check_index, check_text_encoder_spec

    try:
        spec = check_text_encoder_spec(record.get("text_encoder"), scene_dir, allowed_dirs)
    except SceneRefused as exc:
        raise SceneError(str(exc)) from None
    # The size limit is the caller's (or the default), never the scene's own config.
    max_bytes = int(getattr(query_cfg, "max_index_bytes", QueryConfig().max_index_bytes))
    try:
        index = SemanticIndex.load(scene_dir / QUERY_INDEX, max_bytes=max_bytes)
        check_index(index, scene_dir / QUERY_INDEX)
    except (ValueError, KeyError, OSError) as exc:
        raise SceneError(f"{scene_dir / QUERY_INDEX}: {exc}") from None
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
    from .splat.gaussians import GaussianModel
    from .splat.ply import export_point_cloud_ply, export_splat_ply

    scene_dir = Path(scene_dir)
    record = _scene_record(scene_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = GaussianModel.load(scene_dir / "rgb" / "gaussians.npz")
    world_from_scene = np.asarray(record["world_from_scene"], dtype=np.float64)
    splats = out / "gaussians_3dgs.ply"
    cloud = out / "cloud.ply"
    export_splat_ply(splats, model, world_from_scene=world_from_scene)
    export_point_cloud_ply(cloud, model, world_from_scene=world_from_scene)
    return {"gaussians": str(splats), "cloud": str(cloud)}
