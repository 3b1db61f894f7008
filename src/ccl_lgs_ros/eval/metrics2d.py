"""2D open-vocabulary segmentation metrics: LERF-OVS, 3D-OVS and the synthetic protocol.

Protocol definitions (METHOD.md, from the anchors' public evaluation code); every number says
which protocol made it ("2D": thresholding rendered relevance maps):

- **LERF-OVS** (LangSplat's labels): GT mask = filled polygons of the category. The relevance map
  of each level is smoothed ``0.5 (r + box30(r))``; the level with the highest smoothed maximum is
  chosen; its smoothed map is min-max normalised and pixels above ``0.7`` of the range form the
  prediction (LangSplat writes it ``clip((x - 0.5) * 2, 0, 1) > 0.4`` on the normalised ``x``,
  the same set). Localisation: the argmax pixel of the box-filtered map of the chosen level
  (chosen by the highest box-filtered maximum) must fall inside a GT box of the category.
- **3D-OVS** (LEGaussians' convention): prediction = relevance ``>= 0.5``; IoU averaged over the
  queries of an image, then over images.
- **synthetic**: captures with instance ground truth; held-out views (the RGB split); per label
  (instances sharing a label are one GT mask) LERF-style IoU and localisation (GT boxes = the
  bounding boxes of the label's instances); mIoU = mean over labels of the per-view mean. The
  smoothing box is scaled with the image width (``30 * width / 986``, at least 1 px).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..semantics.relevance import SMOOTH_SIZE, box_filter, smooth_relevance

#: LERF-OVS: fraction of the normalised range above which a pixel is predicted.
LERF_THRESHOLD = 0.7
#: Width of the LERF-OVS frames (pixels) the 30 px smoothing was designed for; the synthetic protocol
#: scales the box to its own image width so a 128 px image is not smoothed over a quarter of its width.
LERF_REFERENCE_WIDTH = 986
#: 3D-OVS: relevance threshold.
OVS3D_THRESHOLD = 0.5


def polygon_mask(polygons: Sequence[Sequence[Sequence[float]]], height: int, width: int) -> np.ndarray:
    """Fill polygons (each ``[[x, y], ...]`` in pixels) into a ``bool [H, W]`` mask (union)."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    pts = [np.round(np.asarray(p, dtype=np.float64).reshape(-1, 2)).astype(np.int32) for p in polygons if len(p) >= 3]
    if pts:
        cv2.fillPoly(canvas, pts, 1)
    return canvas.astype(bool)


def normalise_minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    lo = float(x.min())
    return (x - lo) / (float(x.max()) - lo + 1e-9)


def lerf_prediction(relevance: np.ndarray, threshold: float = LERF_THRESHOLD, size: int = SMOOTH_SIZE) -> np.ndarray:
    """LERF-OVS predicted mask of one (already chosen-level) relevance map: ``bool [H, W]``."""
    return normalise_minmax(smooth_relevance(relevance, size)) > threshold


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def argmax_pixel(x: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the maximum (first in row-major order on ties)."""
    y, xx = np.unravel_index(int(np.argmax(x)), np.asarray(x).shape)
    return int(xx), int(y)


def inside_any_box(point: tuple[int, int], boxes: Sequence[Sequence[float]]) -> bool:
    """Whether ``(x, y)`` lies in any ``[x1, y1, x2, y2]`` box (inclusive)."""
    x, y = point
    return any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes)


def localisation_hit(relevance: np.ndarray, boxes: Sequence[Sequence[float]], size: int = SMOOTH_SIZE) -> bool:
    """LERF-OVS localisation: argmax of the box-filtered map inside a GT box."""
    return inside_any_box(argmax_pixel(box_filter(relevance, size)), boxes)


@dataclass
class QueryResult2D:
    iou: float
    localised: bool
    level: str
    loc_level: str


def lerf_evaluate_query(
    maps: Mapping[str, np.ndarray],  # level -> [H, W] relevance
    gt_mask: np.ndarray,  # bool [H, W]
    boxes: Sequence[Sequence[float]],  # [x1, y1, x2, y2] per GT object of the category
    size: int = SMOOTH_SIZE,
) -> QueryResult2D:
    """One (frame, query) of the LERF-OVS protocol, with its level choices."""
    level = max(maps, key=lambda lv: float(smooth_relevance(maps[lv], size).max()))
    pred = lerf_prediction(maps[level], size=size)
    loc_level = max(maps, key=lambda lv: float(box_filter(maps[lv], size).max()))
    return QueryResult2D(iou(pred, gt_mask), localisation_hit(maps[loc_level], boxes, size), level, loc_level)


def ovs3d_image_miou(
    maps: Mapping[str, np.ndarray],  # query -> [H, W] relevance (level already chosen)
    gt_masks: Mapping[str, np.ndarray],  # query -> bool [H, W]
    threshold: float = OVS3D_THRESHOLD,
) -> float:
    """3D-OVS: mean over the image's queries of ``IoU(relevance >= 0.5, GT)``."""
    vals = [iou(np.asarray(maps[q]) >= threshold, gt_masks[q]) for q in gt_masks]
    return float(np.mean(vals)) if vals else float("nan")


def mask_boxes(mask: np.ndarray) -> list[list[int]]:
    """Bounding boxes ``[x1, y1, x2, y2]`` (inclusive) of the connected components of a mask."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask, dtype=np.uint8), connectivity=8)
    boxes = []
    for i in range(1, n):
        x, y, w, h = (int(v) for v in stats[i, :4])
        boxes.append([x, y, x + w - 1, y + h - 1])
    return boxes


def label_masks(instance_ids: np.ndarray, instances: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """GT mask per label (instances sharing a label merged), skipping ``background`` instances."""
    out: dict[str, np.ndarray] = {}
    for inst in instances:
        if inst.get("background"):
            continue
        m = np.asarray(instance_ids) == int(inst["id"])
        if m.any():
            label = str(inst["label"])
            out[label] = out[label] | m if label in out else m
    return out


def evaluate_synthetic_2d(
    scene_dir, capture, cfg, device: str = "cpu", out_dir=None, frames: Sequence[int] | None = None
) -> dict:  # noqa: ANN001 - Path-likes, Capture, Config
    """The ``synthetic`` 2D protocol on held-out views (see module docstring).

    Args:
        scene_dir: trained scene folder.
        capture: the capture with ``instances/`` ground truth and ``ccl_lgs.instances`` labels.
        cfg: configuration (``rgb.holdout_every`` split, ``query.negatives``, ``rgb.backend``).
        device: torch device.
        out_dir: when given, relevance heatmaps and predicted masks are written there as PNG.
        frames: frames to evaluate (default: the held-out split; all frames when there is none).

    Returns:
        ``{"protocol": "synthetic-2d", "miou", "loc_accuracy", "per_label": {label: {"miou",
        "loc_accuracy", "views"}}, "frames": [...]}``.
    """
    from pathlib import Path

    from ..semantics.relevance import RelevanceRenderer, safe_name, write_relevance_pngs
    from ..splat.data import split_indices

    renderer = RelevanceRenderer(scene_dir, cfg.query.negatives, device=device, backend=cfg.rgb.backend)
    if frames is None:
        train, test = split_indices(len(capture.frames), cfg.rgb.holdout_every)
        frames = test or train
    per_label: dict[str, dict[str, list]] = {}
    for i in frames:
        ids = capture.load_instances(i)
        if ids is None:
            continue
        gts = label_masks(ids, capture.instances)
        if not gts:
            continue
        labels = sorted(gts)
        h, w = ids.shape
        size = max(1, round(SMOOTH_SIZE * w / LERF_REFERENCE_WIDTH))
        maps = renderer.maps(capture, i, labels, width=w, height=h)
        for q, label in enumerate(labels):
            per_level = {lv: m[q] for lv, m in maps.items()}
            res = lerf_evaluate_query(per_level, gts[label], mask_boxes(gts[label]), size)
            rec = per_label.setdefault(label, {"iou": [], "loc": []})
            rec["iou"].append(res.iou)
            rec["loc"].append(float(res.localised))
            if out_dir is not None:
                rel = per_level[res.level]
                pred = lerf_prediction(rel, size=size)
                write_relevance_pngs(Path(out_dir), f"frame{i:05d}_{safe_name(label)}", rel, pred)
    summary = {
        label: {"miou": float(np.mean(r["iou"])), "loc_accuracy": float(np.mean(r["loc"])), "views": len(r["iou"])}
        for label, r in sorted(per_label.items())
    }
    return {
        "protocol": "synthetic-2d",
        "miou": float(np.mean([s["miou"] for s in summary.values()])) if summary else float("nan"),
        "loc_accuracy": float(np.mean([s["loc_accuracy"] for s in summary.values()])) if summary else float("nan"),
        "per_label": summary,
        "frames": [int(i) for i in frames],
    }
