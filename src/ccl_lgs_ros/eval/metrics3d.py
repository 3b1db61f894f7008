"""3D retrieval metrics: returned instances (point sets) against ground-truth objects.

For one query label with G ground-truth objects and P returned instances:

- predictions are matched to objects one-to-one by the Hungarian algorithm on centroid distance
  (scipy ``linear_sum_assignment``); a pair farther apart than ``max_match_dist`` (default: the
  object's bounding radius, i.e. the prediction's centroid must lie within the object's bounding
  sphere) stays unmatched;
- per object: precision (share of the matched instance's points within ``dist_thresh`` of the
  object's points), recall (share of the object's points within ``dist_thresh`` of the
  instance's), F1, centroid error and box IoU. Boxes are AXIS-ALIGNED in the world frame (the
  IoU of two oriented boxes needs a polytope intersection; the AABB is what the synthetic GT
  gives and is stable to compute). An unmatched object scores 0 and its centroid error is NaN;
- instance count accuracy: ``P == G``; the label is *separated* when in addition every object is
  matched with F1 >= ``separation_f1``.

Nearest-neighbour distances use scipy's cKDTree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree


@dataclass
class PointMetrics:
    precision: float
    recall: float
    f1: float
    num_pred: int
    num_gt: int


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r <= 0 else 2 * p * r / (p + r)


def point_metrics(pred: np.ndarray, gt: np.ndarray, dist_thresh: float) -> PointMetrics:
    """Precision / recall / F1 of predicted points ``[P, 3]`` against GT points ``[G, 3]``."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 3)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 3)
    if not dist_thresh > 0:
        raise ValueError("dist_thresh must be positive")
    if gt.shape[0] == 0:
        raise ValueError("a ground-truth object needs at least one point")
    if pred.shape[0] == 0:
        return PointMetrics(0.0, 0.0, 0.0, 0, gt.shape[0])
    d_pred, _ = cKDTree(gt).query(pred, k=1, distance_upper_bound=dist_thresh * 1.0001)
    d_gt, _ = cKDTree(pred).query(gt, k=1, distance_upper_bound=dist_thresh * 1.0001)
    p = float(np.mean(d_pred <= dist_thresh))
    r = float(np.mean(d_gt <= dist_thresh))
    return PointMetrics(p, r, _f1(p, r), pred.shape[0], gt.shape[0])


def aabb(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return pts.min(axis=0), pts.max(axis=0)


def aabb_iou(min_a: np.ndarray, max_a: np.ndarray, min_b: np.ndarray, max_b: np.ndarray) -> float:
    """IoU of two axis-aligned boxes (volume; 0 when either is degenerate and they are disjoint)."""
    min_a, max_a, min_b, max_b = (np.asarray(v, dtype=np.float64) for v in (min_a, max_a, min_b, max_b))
    inter = np.prod(np.clip(np.minimum(max_a, max_b) - np.maximum(min_a, min_b), 0.0, None))
    union = np.prod(max_a - min_a) + np.prod(max_b - min_b) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class ObjectMatch:
    """One ground-truth object and the instance matched to it (``pred_index`` -1: none)."""

    gt_index: int
    pred_index: int
    precision: float
    recall: float
    f1: float
    centroid_error: float  # metres, NaN when unmatched
    box_iou: float  # axis-aligned


@dataclass
class LabelEvaluation:
    label: str
    num_pred: int
    num_gt: int
    objects: list[ObjectMatch]
    union: PointMetrics  # all returned points vs all GT points of the label
    count_correct: bool
    separated: bool
    extra: dict = field(default_factory=dict)

    @property
    def mean_f1(self) -> float:
        return float(np.mean([o.f1 for o in self.objects])) if self.objects else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean_f1"] = self.mean_f1
        for obj in data["objects"]:
            if isinstance(obj["centroid_error"], float) and math.isnan(obj["centroid_error"]):
                obj["centroid_error"] = None  # JSON has no NaN
        return data


def evaluate_label(
    pred_instances: Sequence[np.ndarray],
    gt_objects: Sequence[np.ndarray],
    dist_thresh: float,
    *,
    label: str = "",
    max_match_dist: float | None = None,
    separation_f1: float = 0.5,
) -> LabelEvaluation:
    """Evaluate one query's instances (point sets ``[P_i, 3]``) against the GT objects of its label.

    Args:
        pred_instances: returned instances' points (surface clouds or Gaussian centres), world frame.
        gt_objects: GT points of every object with that label, world frame (at least one).
        dist_thresh: a point is correct within this distance (metres).
        max_match_dist: largest centroid distance of a match (default: the object's bounding radius).
        separation_f1: F1 every object needs for the label to count as separated.
    """
    preds = [np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in pred_instances]
    preds = [p for p in preds if p.shape[0]]
    gts = [np.asarray(g, dtype=np.float64).reshape(-1, 3) for g in gt_objects]
    if not gts or any(g.shape[0] == 0 for g in gts):
        raise ValueError("every ground-truth object needs points")
    gt_c = np.stack([g.mean(axis=0) for g in gts])
    radius = np.array([np.linalg.norm(g - c, axis=1).max() for g, c in zip(gts, gt_c)])
    limit = radius if max_match_dist is None else np.full(len(gts), float(max_match_dist))
    matched: dict[int, int] = {}
    if preds:
        pred_c = np.stack([p.mean(axis=0) for p in preds])
        cost = np.linalg.norm(gt_c[:, None, :] - pred_c[None, :, :], axis=2)
        rows, cols = linear_sum_assignment(cost)
        matched = {int(r): int(c) for r, c in zip(rows, cols) if cost[r, c] <= max(limit[r], 1e-9)}
    objects = []
    for gi, g in enumerate(gts):
        pi = matched.get(gi, -1)
        if pi < 0:
            objects.append(ObjectMatch(gi, -1, 0.0, 0.0, 0.0, float("nan"), 0.0))
            continue
        pm = point_metrics(preds[pi], g, dist_thresh)
        err = float(np.linalg.norm(preds[pi].mean(axis=0) - gt_c[gi]))
        iou = aabb_iou(*aabb(preds[pi]), *aabb(g))
        objects.append(ObjectMatch(gi, pi, pm.precision, pm.recall, pm.f1, err, iou))
    all_pred = np.concatenate(preds) if preds else np.zeros((0, 3))
    union = point_metrics(all_pred, np.concatenate(gts), dist_thresh)
    count_correct = len(preds) == len(gts)
    separated = count_correct and all(o.pred_index >= 0 and o.f1 >= separation_f1 for o in objects)
    return LabelEvaluation(label, len(preds), len(gts), objects, union, count_correct, separated)


def summarise(evaluations: Sequence[LabelEvaluation]) -> dict:
    """Scene-level numbers: mean F1 over objects, count accuracy, separation rate of shared labels."""
    objects = [o for e in evaluations for o in e.objects]
    shared = [e for e in evaluations if e.num_gt >= 2]
    errors = [o.centroid_error for o in objects if not math.isnan(o.centroid_error)]
    return {
        "num_labels": len(evaluations),
        "num_objects": len(objects),
        "mean_f1": float(np.mean([o.f1 for o in objects])) if objects else 0.0,
        "mean_precision": float(np.mean([o.precision for o in objects])) if objects else 0.0,
        "mean_recall": float(np.mean([o.recall for o in objects])) if objects else 0.0,
        "mean_box_iou_aabb": float(np.mean([o.box_iou for o in objects])) if objects else 0.0,
        "mean_centroid_error": float(np.mean(errors)) if errors else None,
        "count_accuracy": float(np.mean([e.count_correct for e in evaluations])) if evaluations else 0.0,
        "shared_labels": len(shared),
        "separation_rate": float(np.mean([e.separated for e in shared])) if shared else None,
    }


def instance_points(result: object) -> list[np.ndarray]:
    """Points of each instance of a :class:`~ccl_lgs_ros.query.engine.QueryResult`: the sampled
    surface cloud, or the Gaussian centres when the query asked for no cloud."""
    out = []
    for inst in getattr(result, "instances", []):
        pts = inst.points if inst.points.shape[0] else inst.means
        if pts.shape[0] == 0:
            raise ValueError("instance has neither a cloud nor Gaussians (query with include_gaussians=True)")
        out.append(pts)
    return out
