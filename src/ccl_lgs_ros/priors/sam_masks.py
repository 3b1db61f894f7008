"""CCL-LGS stage 1: SAM two-level masks (and GAGS's three raw levels).

``segment_anything.SamAutomaticMaskGenerator`` merges SAM's three outputs per prompt into one
pool, so it cannot produce the level sets the method needs. This module drives
:class:`segment_anything.SamPredictor` directly: the image embedding is computed once per image,
the point prompts are decoded in batches with ``multimask_output=True``, and every mask keeps the
index of the SAM output it came from: 0 = sub-part (``"s"``), 1 = part (``"p"``), 2 = whole
(``"w"``). The levels are then assembled from those pools:

- ``"sp"`` = sub-part + part, ``"wp"`` = whole + part (CCL-LGS), ``"s"``, ``"p"``, ``"w"`` (GAGS).

Per level the masks are filtered (predicted IoU, stability score, area), de-duplicated (box NMS,
then mask containment ``overlap_thresh``) and painted into a non-overlapping map. Painting order:
masks are ranked by predicted IoU x stability and the best mask is painted LAST, so wherever two
masks overlap the pixel belongs to the more reliable one; a mask left with fewer than
``min_mask_area`` visible pixels is dropped and the map repainted.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor
from segment_anything.utils.amg import batched_mask_to_box, build_point_grid, calculate_stability_score
from torchvision.ops.boxes import batched_nms

#: SAM's multimask output index of each raw granularity.
SAM_OUTPUT_LEVELS = ("s", "p", "w")
#: Which raw granularities make up each level set.
LEVEL_SOURCES: dict[str, tuple[str, ...]] = {
    "sp": ("s", "p"),
    "wp": ("w", "p"),
    "s": ("s",),
    "p": ("p",),
    "w": ("w",),
}
#: Longest side of the masks used for the pairwise containment test (a memory bound: the
#: K x K intersection counts are taken on area-downsampled masks).
_OVERLAP_SIDE = 256


@dataclass
class MaskSettings:
    """Thresholds of the mask generation (mirrors the ``priors`` config section)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.7
    stability_score_thresh: float = 0.85
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    overlap_thresh: float = 0.8
    min_mask_area: int = 100


@dataclass
class MaskCandidates:
    """All masks that survived the per-mask filters, pooled over the three SAM outputs."""

    masks: torch.Tensor  # bool [M, H, W] on the model's device
    iou: torch.Tensor  # float32 [M], SAM's predicted IoU
    stability: torch.Tensor  # float32 [M]
    level: torch.Tensor  # int64 [M], 0 = sub-part, 1 = part, 2 = whole
    boxes: torch.Tensor  # float32 [M, 4], x0 y0 x1 y1 (inclusive pixel bounds)

    @property
    def score(self) -> torch.Tensor:  # [M]
        return self.iou * self.stability

    def __len__(self) -> int:
        return int(self.masks.shape[0])


@dataclass
class LevelMasks:
    """One level of one frame: the non-overlapping map and where each mask came from."""

    id_map: np.ndarray  # int32 [H, W], 0..K-1, -1 = no mask
    candidate_index: np.ndarray  # int64 [K], index of mask k in the MaskCandidates pool


def grid_points(points_per_side: int, height: int, width: int) -> np.ndarray:
    """Uniform prompt grid (SAM's layout) in pixel coordinates ``float64 [P, 2]`` (x, y)."""
    return build_point_grid(points_per_side) * np.array([[width, height]], dtype=np.float64)


def predict_candidates(
    predictor: SamPredictor,
    image: np.ndarray,  # uint8 [H, W, 3] RGB
    points: np.ndarray,  # float [P, 2] pixel (x, y)
    settings: MaskSettings,
    autocast: AbstractContextManager | None = None,
) -> MaskCandidates:
    """Run SAM on one image with single-point prompts and keep all three outputs per prompt.

    Args:
        predictor: a SamPredictor; its model sets the device.
        image: RGB image ``uint8 [H, W, 3]``.
        points: prompt positions ``[P, 2]`` in pixels.
        settings: thresholds; ``pred_iou_thresh`` / ``stability_score_thresh`` of 0 keep all.
        autocast: mixed-precision context (e.g. bf16 on CUDA); ``None`` runs in the model's dtype.

    Returns:
        The filtered pool; duplicates within a batch and level are already removed by box NMS.
    """
    autocast = autocast or nullcontext()
    height, width = image.shape[:2]
    with torch.inference_mode(), autocast:
        predictor.set_image(image)  # the one image-encoder pass of this frame
    device = predictor.device
    thr = predictor.model.mask_threshold
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, len(points), settings.points_per_batch):
        batch = points[start : start + settings.points_per_batch]
        coords = torch.as_tensor(predictor.transform.apply_coords(batch, (height, width)), device=device)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=device)
        with torch.inference_mode(), autocast:
            logits, iou, _ = predictor.predict_torch(
                coords[:, None, :].float(), labels[:, None], multimask_output=True, return_logits=True
            )
        logits = logits.float().flatten(0, 1)  # [B*3, H, W]
        iou = iou.float().flatten(0, 1)
        level = torch.arange(3, device=device).repeat(coords.shape[0])
        keep = iou >= settings.pred_iou_thresh
        stability = calculate_stability_score(logits, thr, settings.stability_score_offset)
        keep &= stability >= settings.stability_score_thresh
        masks = logits > thr
        area = masks.flatten(1).sum(1)
        keep &= area >= max(int(settings.min_mask_area), 1)
        masks, iou, stability, level = masks[keep], iou[keep], stability[keep], level[keep]
        boxes = batched_mask_to_box(masks).float()
        # Neighbouring prompts mostly return the same mask: drop those duplicates now, per level,
        # so the pool kept on the device stays small.
        nms = batched_nms(boxes, iou, level, settings.box_nms_thresh)
        parts.append((masks[nms], iou[nms], stability[nms], level[nms], boxes[nms]))
        del logits
    predictor.reset_image()
    if not parts:
        empty = torch.zeros(0, device=device)
        return MaskCandidates(
            torch.zeros(0, height, width, dtype=torch.bool, device=device),
            empty,
            empty,
            torch.zeros(0, dtype=torch.long, device=device),
            torch.zeros(0, 4, device=device),
        )
    cat = [torch.cat(items) for items in zip(*parts)]
    return MaskCandidates(*cat)


def _containment(masks: torch.Tensor) -> torch.Tensor:
    """``[K, K]`` fraction of mask i covered by mask j (on area-downsampled masks)."""
    k, h, w = masks.shape
    scale = min(1.0, _OVERLAP_SIDE / max(h, w))
    x = masks[:, None].float()
    if scale < 1.0:
        x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    x = x.flatten(1)  # [K, hw]
    dtype = torch.float16 if x.is_cuda else torch.float32
    inter = (x.to(dtype) @ x.to(dtype).T).float()  # [K, K]
    area = x.sum(1).clamp_min(1e-6)
    return inter / area[:, None]


def paint_non_overlapping(masks: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Map pixel -> mask index, the best-scoring mask painted last (it wins overlaps).

    Args:
        masks: ``bool [K, H, W]``.
        score: ``[K]`` ranking score (higher = more reliable).

    Returns:
        ``int64 [H, W]`` with values in ``0..K-1`` and -1 where no mask covers the pixel.
    """
    k, h, w = masks.shape
    if k == 0:
        return torch.full((h, w), -1, dtype=torch.long, device=masks.device)
    order = torch.argsort(score)  # ascending: rank r paints over ranks < r
    best_rank = torch.full((h, w), -1, dtype=torch.int32, device=masks.device)
    for start in range(0, k, 32):  # chunked to bound memory at int32 [32, H, W]
        idx = order[start : start + 32]
        ranks = torch.arange(start, start + idx.numel(), dtype=torch.int32, device=masks.device)
        chunk = torch.where(masks[idx], ranks[:, None, None], torch.full_like(ranks[:, None, None], -1))
        best_rank = torch.maximum(best_rank, chunk.max(0).values)
    best_rank = best_rank.long()
    return torch.where(best_rank >= 0, order[best_rank.clamp_min(0)], best_rank)


def select_level(cands: MaskCandidates, level: str, settings: MaskSettings) -> LevelMasks:
    """Assemble one level set from the pool: de-duplicate, suppress contained masks, paint.

    Args:
        cands: the frame's candidate pool.
        level: ``"sp"``, ``"wp"``, ``"s"``, ``"p"`` or ``"w"``.
        settings: ``box_nms_thresh``, ``overlap_thresh``, ``min_mask_area``.
    """
    wanted = [SAM_OUTPUT_LEVELS.index(s) for s in LEVEL_SOURCES[level]]
    device = cands.masks.device
    h, w = cands.masks.shape[1:]
    sel = torch.nonzero(torch.isin(cands.level, torch.tensor(wanted, device=device))).flatten()
    if sel.numel():
        # Level-agnostic NMS: a part mask returned as "sub-part" by another prompt is the same mask.
        keep = batched_nms(cands.boxes[sel], cands.score[sel], torch.zeros_like(sel), settings.box_nms_thresh)
        sel = sel[keep]  # sorted by descending score
    if sel.numel() > 1:
        covered = _containment(cands.masks[sel])  # [K, K], row i covered by column j
        kept: list[int] = []
        for i in range(sel.numel()):  # greedy in descending score order
            if not kept or float(covered[i, kept].max()) <= settings.overlap_thresh:
                kept.append(i)
        sel = sel[torch.tensor(kept, device=device)]
    min_area = max(int(settings.min_mask_area), 1)
    while True:
        local = paint_non_overlapping(cands.masks[sel], cands.score[sel])
        visible = torch.bincount(local[local >= 0], minlength=sel.numel())
        ok = visible >= min_area
        if bool(ok.all()):
            break
        sel = sel[ok]  # a mask hidden under better ones carries no supervision of its own
    return LevelMasks(
        id_map=local.to(torch.int32).cpu().numpy() if sel.numel() else np.full((h, w), -1, np.int32),
        candidate_index=sel.cpu().numpy().astype(np.int64),
    )


def generate_level_masks(
    predictor: SamPredictor,
    image: np.ndarray,  # uint8 [H, W, 3]
    levels: tuple[str, ...] | list[str],
    settings: MaskSettings,
    points: np.ndarray | None = None,  # [P, 2] pixel (x, y); default: the uniform grid
    autocast: AbstractContextManager | None = None,
) -> tuple[MaskCandidates, dict[str, LevelMasks]]:
    """Masks of one frame for each requested level (one SAM image encoding for all levels)."""
    unknown = [lv for lv in levels if lv not in LEVEL_SOURCES]
    if unknown:
        raise ValueError(f"unknown mask levels {unknown}; known: {sorted(LEVEL_SOURCES)}")
    if points is None:
        points = grid_points(settings.points_per_side, image.shape[0], image.shape[1])
    cands = predict_candidates(predictor, image, points, settings, autocast)
    return cands, {lv: select_level(cands, lv, settings) for lv in levels}


__all__ = [
    "LEVEL_SOURCES",
    "SAM_OUTPUT_LEVELS",
    "LevelMasks",
    "MaskCandidates",
    "MaskSettings",
    "generate_level_masks",
    "grid_points",
    "paint_non_overlapping",
    "predict_candidates",
    "select_level",
]
