"""The ``synthetic`` protocol: a trained scene against the ground truth of its capture.

- 3D: for every non-background label of ``ccl_lgs.instances`` the scene is queried through the
  same :class:`~ccl_lgs_ros.query.engine.QueryEngine` that serves ``/semantic_query``; the
  returned instances' points are scored against the GT object points
  (:func:`~ccl_lgs_ros.eval.metrics3d.evaluate_label`: per-object precision / recall / F1,
  centroid error, axis-aligned box IoU, instance count, separation of shared labels).
  Protocol: 3D selection of Gaussians (no rendering).
- 2D: LERF-OVS-style thresholding of rendered relevance maps on held-out views
  (:func:`~ccl_lgs_ros.eval.metrics2d.evaluate_synthetic_2d`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..capture.format import Capture
from ..config import Config
from ..ply import read_ply_points
from ..scene.load import LoadedScene, load_scene
from .metrics2d import evaluate_synthetic_2d
from .metrics3d import evaluate_label, instance_points, summarise

#: A returned point counts as correct within this distance of the object's GT points (metres).
DEFAULT_DIST_THRESH = 0.02


def gt_objects(capture: Capture) -> dict[str, list[np.ndarray]]:
    """GT points per queryable label (background instances such as the table are skipped)."""
    out: dict[str, list[np.ndarray]] = {}
    for inst in capture.instances:
        if inst.get("background") or not inst.get("gt_points"):
            continue
        pts, _ = read_ply_points(capture.root / inst["gt_points"])
        out.setdefault(str(inst["label"]), []).append(pts)
    return out


def evaluate_3d(scene: LoadedScene, capture: Capture, dist_thresh: float = DEFAULT_DIST_THRESH) -> dict[str, Any]:
    """3D retrieval metrics of a loaded scene (:class:`~ccl_lgs_ros.scene.LoadedScene`)."""
    objects = gt_objects(capture)
    if not objects:
        raise ValueError(f"{capture.root}: no ground-truth objects (ccl_lgs.instances with gt_points)")
    evaluations = []
    per_label = {}
    for label, gts in sorted(objects.items()):
        result = scene.engine.query(label)
        ev = evaluate_label(instance_points(result), gts, dist_thresh, label=label)
        evaluations.append(ev)
        per_label[label] = {**ev.to_dict(), "best_score": result.best_score, "found": result.found}
    return {"protocol": "synthetic-3d", "dist_thresh": dist_thresh, **summarise(evaluations),
            "per_label": per_label}


def evaluate_synthetic(scene_dir: str | Path, capture: Capture, cfg: Config, device: str = "cpu",
                       out_dir: str | Path | None = None, with_2d: bool = True) -> dict[str, Any]:
    """Both halves of the protocol; ``ccl-lgs eval SCENE --protocol synthetic``."""
    scene = load_scene(scene_dir, device=device)
    result: dict[str, Any] = {"protocol": "synthetic", "3d": evaluate_3d(scene, capture)}
    if with_2d:
        result["2d"] = evaluate_synthetic_2d(scene_dir, capture, cfg, device=device, out_dir=out_dir)
    return result
