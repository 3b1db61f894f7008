"""2D open-vocabulary segmentation metrics: LERF-OVS, 3D-OVS and the synthetic protocol.

Protocol definitions (METHOD.md, from the anchors' public evaluation code); every number says
which protocol made it ("2D": thresholding rendered relevance maps):

- **LERF-OVS** (LangSplat's labels), implemented as LangSplat's script does it. Reference:
  repository ``minghanqin/LangSplat``, files ``eval/evaluate_iou_loc.py`` (``activate_stream``,
  ``lerf_localization``, ``evaluate``) and ``eval/utils.py`` (``smooth``, ``polygon_to_mask``),
  commit ``26ed214da9bad2648c7bf9c0a666081fc5670160`` (:data:`LANGSPLAT_REFERENCE`).

  * GT mask: each object's polygon filled on its own (vertices cast to integers, i.e. truncated)
    and the objects of a category OR-ed together.
  * IoU: the relevance map of each level is smoothed ``0.5 (r + box30(r))`` (a 30x30 mean kernel
    through ``cv2.filter2D``, reflected borders); the level with the highest smoothed maximum
    (first on ties) is chosen; its smoothed map is min-max normalised and pixels above ``0.7`` of
    the range form the prediction (LangSplat writes it ``clip((x - 0.5) * 2, 0, 1) > 0.4``, the
    same set); the prediction then takes a 7x7 majority vote (:func:`majority_vote`, with the
    reference's edge windows). IoU = ``|P & G| / |P | G|``, NaN for an empty union (0/0).
    mIoU = the plain mean over every (frame, category): one NaN makes it NaN, as ``sum / len``
    does in the reference.
  * Localisation: per level the box-filtered map (no 0.5 mix); the level with the highest maximum
    (first on ties); a hit if *any* pixel equal to that maximum lies inside *any* GT box of the
    category, box corners ordered (min/max) and bounds inclusive. Accuracy = hits / (frame,
    category) pairs.

  Each deviation the project used to make is an explicit option of :class:`LerfOptions`, whose
  defaults are the reference's behaviour.
- **3D-OVS** (LEGaussians' convention, see :mod:`.ovs3d` for the reference): prediction =
  relevance ``>= 0.5``; IoU ``|P & G| / (|P | G| + 1e-6)`` (0 for an empty union) averaged over
  the queries of an image, then over images.
- **synthetic** (the project's own protocol): captures with instance ground truth; held-out views
  (the RGB split); per label (instances sharing a label are one GT mask) LERF-style IoU and
  localisation (GT boxes = the bounding boxes of the label's instances); mIoU = mean over labels of
  the per-view mean. The smoothing box is scaled with the image width (``30 * width / 986``, at
  least 1 px). It keeps the project's earlier choices (:data:`SYNTHETIC_OPTIONS`: no majority
  vote, first maximum, ``cv2.blur``) so the numbers in ``docs/BENCHMARKS.md`` stay comparable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..capture.format import Capture
from ..config import Config
from ..semantics.relevance import SMOOTH_SIZE, RelevanceRenderer, box_filter, safe_name, write_relevance_pngs
from ..splat.data import split_indices

#: The LERF-OVS reference implementation this module follows (repository, files, commit).
LANGSPLAT_REFERENCE = (
    "minghanqin/LangSplat eval/evaluate_iou_loc.py + eval/utils.py @ 26ed214da9bad2648c7bf9c0a666081fc5670160"
)
#: LERF-OVS: fraction of the normalised range above which a pixel is predicted.
LERF_THRESHOLD = 0.7
#: Width of the LERF-OVS frames (pixels) the 30 px smoothing was designed for; the synthetic protocol
#: scales the box to its own image width so a 128 px image is not smoothed over a quarter of its width.
LERF_REFERENCE_WIDTH = 986
#: LERF-OVS: half size of the majority vote window on the predicted mask (7x7).
VOTE_RADIUS = 3
#: 3D-OVS: relevance threshold.
OVS3D_THRESHOLD = 0.5


@dataclass(frozen=True)
class LerfOptions:
    """How the LERF-OVS protocol is computed; every default is LangSplat's behaviour.

    Attributes:
        vote: 7x7 majority vote on the predicted mask (LangSplat's ``smooth``); False skips it.
        vote_edges: ``"langsplat"``: the window of pixel ``i`` spans ``max(0, i-3) .. min(i+4, n-1)``
            (end exclusive), so the last row and column never vote and edge windows are smaller;
            ties go to "not predicted". ``"clamp"``: the window is clipped to the image only.
        vertices: GT polygon vertices ``"truncate"`` (an integer cast, the reference) or ``"round"``.
        ties: localisation with several pixels at the maximum: ``"any"`` (a hit if any lies in a box,
            the reference) or ``"first"`` (the first in row-major order only).
        order_boxes: sort each box's corners (min/max) so reversed corners still count.
        empty_union: IoU when prediction and GT are both empty (reference: NaN, a 0/0).
        nan_mean: ``"propagate"`` (the reference's ``sum / len``: one NaN makes the mean NaN) or
            ``"omit"`` (mean over the finite values).
        box: the box filter: ``"filter2d"`` (``cv2.filter2D`` with a ``1/size^2`` kernel, the
            reference's call, whose float rounding decides ties) or ``"blur"`` (``cv2.blur``).
    """

    vote: bool = True
    vote_edges: str = "langsplat"
    vertices: str = "truncate"
    ties: str = "any"
    order_boxes: bool = True
    empty_union: float = math.nan
    nan_mean: str = "propagate"
    box: str = "filter2d"

    def __post_init__(self) -> None:
        for name, value, allowed in (("vote_edges", self.vote_edges, ("langsplat", "clamp")),
                                     ("vertices", self.vertices, ("truncate", "round")),
                                     ("ties", self.ties, ("any", "first")),
                                     ("nan_mean", self.nan_mean, ("propagate", "omit")),
                                     ("box", self.box, ("filter2d", "blur"))):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"LerfOptions.{name} must be one of {allowed}, not {value!r}")


#: LangSplat's protocol (the default everywhere LERF-OVS is computed).
LANGSPLAT_OPTIONS = LerfOptions()
#: The synthetic protocol's choices (unchanged since the benchmarks were run).
SYNTHETIC_OPTIONS = LerfOptions(vote=False, vertices="round", ties="first", order_boxes=False, empty_union=1.0,
                                nan_mean="omit", box="blur")  # fmt: skip


def polygon_mask(
    polygons: Sequence[Sequence[Sequence[float]]], height: int, width: int, vertices: str = "truncate"
) -> np.ndarray:
    """Fill polygons (each ``[[x, y], ...]`` in pixels) into a ``bool [H, W]`` mask (union).

    Each polygon is filled on its own (as LangSplat fills each object) and the results OR-ed, so
    overlapping polygons never cancel. ``vertices``: ``"truncate"`` casts coordinates to integers
    (toward zero, LangSplat's ``np.asarray(..., dtype=np.int32)``), ``"round"`` rounds them.
    Polygons with fewer than 3 vertices are ignored.
    """
    if vertices not in ("truncate", "round"):
        raise ValueError(f"vertices must be 'truncate' or 'round', not {vertices!r}")
    out = np.zeros((height, width), dtype=bool)
    for p in polygons:
        if len(p) < 3:
            continue
        xy = np.asarray(p, dtype=np.float64).reshape(-1, 2)
        pts = np.trunc(xy) if vertices == "truncate" else np.round(xy)
        canvas = np.zeros((height, width), dtype=np.uint8)
        cv2.fillPoly(canvas, [pts.astype(np.int32)], 1)
        out |= canvas.astype(bool)
    return out


def mean_box(x: np.ndarray, size: int = SMOOTH_SIZE, box: str = "filter2d") -> np.ndarray:
    """Mean over a ``size x size`` window (reflected borders), float32, by ``cv2.filter2D`` or ``cv2.blur``."""
    x = np.asarray(x, dtype=np.float32)
    if box == "blur":
        return box_filter(x, size)
    return cv2.filter2D(x, -1, np.ones((size, size), np.float64) / float(size * size))


def smooth_map(x: np.ndarray, size: int = SMOOTH_SIZE, box: str = "filter2d") -> np.ndarray:
    """LERF-OVS smoothing ``0.5 * (x + mean_box(x))``."""
    x = np.asarray(x, dtype=np.float32)
    return 0.5 * (x + mean_box(x, size, box))


def normalise_minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    lo = float(x.min())
    return (x - lo) / (float(x.max()) - lo + 1e-9)


def majority_vote(mask: np.ndarray, radius: int = VOTE_RADIUS, edges: str = "langsplat") -> np.ndarray:
    """Majority vote of a binary mask over a ``(2r+1)^2`` window: ``bool [H, W]``.

    A pixel is set when strictly more than half of its window is set (ties: not set). Windows (rows
    shown; columns alike): ``edges="langsplat"`` spans rows ``max(0, i-r)`` up to but excluding
    ``min(i+r+1, H-1)``, so the last row never takes part and windows near the far edges are smaller
    (LangSplat's ``smooth``); ``"clamp"`` spans ``max(0, i-r) .. min(i+r, H-1)`` inclusive. An empty
    window (an image one pixel high or wide under ``"langsplat"``) gives "not set".
    Computed with a summed-area table, O(HW).
    """
    if edges not in ("langsplat", "clamp"):
        raise ValueError(f"edges must be 'langsplat' or 'clamp', not {edges!r}")
    m = np.asarray(mask).astype(bool)
    h, w = m.shape
    sat = np.zeros((h + 1, w + 1), np.int64)
    sat[1:, 1:] = m.astype(np.int64).cumsum(0).cumsum(1)
    stop_h, stop_w = (h - 1, w - 1) if edges == "langsplat" else (h, w)
    i, j = np.arange(h), np.arange(w)
    r0, r1 = np.maximum(0, i - radius), np.maximum(np.minimum(i + radius + 1, stop_h), 0)
    c0, c1 = np.maximum(0, j - radius), np.maximum(np.minimum(j + radius + 1, stop_w), 0)
    r1, c1 = np.maximum(r1, r0), np.maximum(c1, c0)
    ones = sat[r1][:, c1] - sat[r0][:, c1] - sat[r1][:, c0] + sat[r0][:, c0]
    count = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return 2 * ones > count


def lerf_prediction(
    relevance: np.ndarray,
    threshold: float = LERF_THRESHOLD,
    size: int = SMOOTH_SIZE,
    options: LerfOptions = LANGSPLAT_OPTIONS,
) -> np.ndarray:
    """LERF-OVS predicted mask of one (already chosen-level) relevance map: ``bool [H, W]``."""
    pred = normalise_minmax(smooth_map(relevance, size, options.box)) > threshold
    return majority_vote(pred, VOTE_RADIUS, options.vote_edges) if options.vote else pred


def iou(pred: np.ndarray, gt: np.ndarray, empty: float = math.nan) -> float:
    """Intersection over union of two boolean masks; ``empty`` (default NaN, a 0/0) when both are empty."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    union = np.logical_or(pred, gt).sum()
    return float(empty) if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def protocol_mean(values: Sequence[float], nan_mean: str = "propagate") -> float:
    """Mean of per-query values: ``"propagate"`` (any NaN -> NaN; no values -> NaN) or ``"omit"`` NaNs."""
    v = np.asarray(values, dtype=np.float64)
    if nan_mean == "omit":
        v = v[np.isfinite(v)]
    return float(v.sum() / len(v)) if len(v) else float("nan")


def argmax_pixel(x: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the maximum (first in row-major order on ties)."""
    y, xx = np.unravel_index(int(np.argmax(x)), np.asarray(x).shape)
    return int(xx), int(y)


def max_pixels(x: np.ndarray) -> np.ndarray:
    """Every ``(x, y)`` whose value equals the maximum: ``int [K, 2]`` in row-major order."""
    x = np.asarray(x)
    ys, xs = np.nonzero(x == x.max())
    return np.stack([xs, ys], axis=1)


def _ordered(box: Sequence[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def inside_any_box(point: tuple[int, int], boxes: Sequence[Sequence[float]], order: bool = True) -> bool:
    """Whether ``(x, y)`` lies in any ``[x1, y1, x2, y2]`` box (inclusive; corners sorted when ``order``)."""
    x, y = point
    for b in boxes:
        x1, y1, x2, y2 = _ordered(b) if order else (float(v) for v in b)
        if x1 <= x <= x2 and y1 <= y <= y2:
            return True
    return False


def localisation_hit(
    relevance: np.ndarray,
    boxes: Sequence[Sequence[float]],
    size: int = SMOOTH_SIZE,
    options: LerfOptions = LANGSPLAT_OPTIONS,
) -> bool:
    """LERF-OVS localisation: a maximum of the box-filtered map inside a GT box (see :class:`LerfOptions`)."""
    filtered = mean_box(relevance, size, options.box)
    points = max_pixels(filtered) if options.ties == "any" else [argmax_pixel(filtered)]
    return any(inside_any_box((int(p[0]), int(p[1])), boxes, options.order_boxes) for p in points)


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
    options: LerfOptions = LANGSPLAT_OPTIONS,
) -> QueryResult2D:
    """One (frame, query) of the LERF-OVS protocol, with its level choices (first level on ties)."""
    level = max(maps, key=lambda lv: float(smooth_map(maps[lv], size, options.box).max()))
    pred = lerf_prediction(maps[level], size=size, options=options)
    loc_level = max(maps, key=lambda lv: float(mean_box(maps[lv], size, options.box).max()))
    hit = localisation_hit(maps[loc_level], boxes, size, options)
    return QueryResult2D(iou(pred, gt_mask, options.empty_union), hit, level, loc_level)


def ovs3d_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """3D-OVS IoU as LEGaussians computes it: ``|P & G| / (|P | G| + 1e-6)`` (0 for an empty union)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    inter = float(np.logical_and(pred, gt).sum())
    return inter / (float(np.logical_or(pred, gt).sum()) + 1e-6)


def ovs3d_image_miou(
    maps: Mapping[str, np.ndarray],  # query -> [H, W] relevance (level already chosen)
    gt_masks: Mapping[str, np.ndarray],  # query -> bool [H, W]
    threshold: float = OVS3D_THRESHOLD,
) -> float:
    """3D-OVS: mean over the image's queries of ``IoU(relevance >= 0.5, GT)`` (NaN with no queries)."""
    vals = [ovs3d_iou(np.asarray(maps[q]) >= threshold, gt_masks[q]) for q in gt_masks]
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
    scene_dir: str | Path,
    capture: Capture,
    cfg: Config,
    device: str = "cpu",
    out_dir: str | Path | None = None,
    frames: Sequence[int] | None = None,
) -> dict[str, Any]:
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
    renderer = RelevanceRenderer(scene_dir, cfg.query.negatives, device=device, backend=cfg.rgb.backend,
                                 temperature=cfg.query.temperature)
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
            res = lerf_evaluate_query(per_level, gts[label], mask_boxes(gts[label]), size, SYNTHETIC_OPTIONS)
            rec = per_label.setdefault(label, {"iou": [], "loc": []})
            rec["iou"].append(res.iou)
            rec["loc"].append(float(res.localised))
            if out_dir is not None:
                rel = per_level[res.level]
                pred = lerf_prediction(rel, size=size, options=SYNTHETIC_OPTIONS)
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
