"""Build the served form of a trained scene: the world-frame query index (``SCENE/query_index.npz``).

Sits above :mod:`~ccl_lgs_ros.semantics` (the trained field) and :mod:`~ccl_lgs_ros.query` (the
index type, the lifting); the pipeline's last step calls :func:`build_query_index`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..capture.format import Capture
from ..config import Config
from ..priors.stage import load_priors
from ..query.index import LevelCodes, SemanticIndex
from ..query.lift import lift_labels
from ..semantics.field import gaussian_code_probs
from ..semantics.methods import field_method
from ..semantics.model import SemanticField
from ..semantics.views import FrozenGaussians
from ..splat.data import split_indices
from ..splat.gaussians import GaussianModel
from .layout import SceneDir


def _lifted_codes(scene: SceneDir, capture: Capture, cfg: Config, field: SemanticField, device: str) -> dict[str, Any]:
    """Per level, each Gaussian's code voted from 2D index maps of the training views through its
    rendering weights (:func:`~ccl_lgs_ros.query.lift.lift_labels`). Which maps is the field
    method's choice (:meth:`~ccl_lgs_ros.semantics.methods.FieldMethod.lift_maps`); each
    Gaussian then takes what the views it appears in say, instead of what its single feature
    decodes to."""
    priors, _ = load_priors(scene.priors_dir)
    train_idx, _ = split_indices(len(capture.frames), cfg.rgb.holdout_every)
    g = FrozenGaussians.load(scene.gaussians, device)
    maps, num_codes = field_method(cfg).lift_maps(field, capture, priors, train_idx, scene.scene_from_world(), g,
                                                  scene.codebook, cfg, device)  # fmt: skip
    out = {}
    for lv in field.levels:
        if not maps.get(lv) or not maps[lv][0]:
            continue
        index_maps, cams = maps[lv]
        out[lv] = lift_labels(
            g.means, g.quats, g.scales, g.opacities, np.stack([c[0] for c in cams]), np.stack([c[1] for c in cams]),
            index_maps, num_codes[lv], backend=cfg.rgb.backend, device=device,
        )  # fmt: skip
    return out


def build_query_index(scene_dir: str | Path, frame_id: str | None = None, capture: Capture | None = None,
                      cfg: Config | None = None, device: str = "cpu") -> dict[str, Any]:
    """Turn the trained field into the world-frame :class:`~ccl_lgs_ros.query.index.SemanticIndex`.

    Per-Gaussian codes come from ``field.query_codes``: ``decoded`` (each Gaussian's own feature
    through the decoder, the paper's field), ``lifted`` (votes of the 2D index maps through the
    Gaussian's rendering weights) or ``combined`` (lifted where a Gaussian was seen with a
    clear majority, decoded elsewhere). Lifting needs the capture and config; without them codes
    are decoded. The ``gags`` / ``cgc`` variants lift their rendered pixel codes (see
    :func:`_lifted_codes`). ``frame_id`` defaults to the one in ``scene.json``.
    """
    scene = SceneDir(scene_dir)
    record = scene.read_record()
    if frame_id is None:
        frame_id = str(record.get("frame_id", "map"))
    gaussians = GaussianModel.load(scene.gaussians).to_numpy()
    field = SemanticField.load(scene.field)  # once: the decoded codes and the variants' lifting both read it
    probs, codebooks = gaussian_code_probs(field), {lv: field.codebooks[lv] for lv in field.levels}
    levels = {name: LevelCodes.from_probs(probs[name], codebooks[name]) for name in probs}
    mode = cfg.field.query_codes if cfg is not None else "decoded"
    stats: dict[str, Any] = {"query_codes": mode}
    if mode != "decoded" and cfg is not None and capture is not None:
        lifted = _lifted_codes(scene, capture, cfg, field, device)
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
    index.save(scene.query_index)
    return {"gaussians": index.num_gaussians, "levels": list(levels),
            "bytes_per_gaussian": index.semantic_bytes_per_gaussian(), **stats}
