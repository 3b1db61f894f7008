"""The SAM 2 association as it was before issue 22 (commit 3472de2), kept only to compare with.

Every frame that still had unlabelled masks after a pass seeded a new pass that ran forward to
the end of the video (or until its objects had been invisible for ``patience`` frames), so a
tracker that follows nothing costs about frames^2 / 2 propagated frames. ``bench_association.py``
runs it beside the current :func:`ccl_lgs_ros.priors.association.associate_masks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from ccl_lgs_ros.priors.association import (
    AssociationStats,
    VideoFrames,
    VideoTracker,
    _frames_loader,
    _mask_iou,
)


def associate_masks(
    predictor: VideoTracker,
    frames: VideoFrames,
    id_maps: Sequence[np.ndarray],  # per frame in VIDEO order: int32 [H, W]
    *,
    iou_thresh: float = 0.5,
    reseed: bool = True,
    max_objects_per_pass: int = 64,
    max_rounds: int = 64,
    patience: int = 10,
    autocast: AbstractContextManager | None = None,
    frame_names: Sequence[int] | None = None,
) -> tuple[list[np.ndarray], AssociationStats]:
    """Associate the masks of one level across frames.

    Args:
        predictor: a sam2 video predictor (``init_state`` / ``add_new_mask`` /
            ``propagate_in_video`` / ``reset_state``).
        frames: the frames in video order, the same order as ``id_maps``.
        id_maps: each frame's non-overlapping mask map (``-1`` = none), at one common size.
        iou_thresh: a mask takes a tracked label only above this IoU.
        reseed: re-seed the tracker with unlabelled masks of later frames.
        max_objects_per_pass: objects tracked together (memory bound); more seeds -> more passes.
        max_rounds: cap on seed frames.
        patience: a pass stops after this many frames in which no tracked object is visible.
        autocast: mixed-precision context (bf16 on CUDA).
        frame_names: capture index of each video position (only for the stats).

    Returns:
        Labels ``int32 [K_t]`` per frame (video order; -1 = unlabelled) and the stats.
    """
    autocast = autocast or nullcontext()
    n = len(id_maps)
    if len(frames) != n:
        raise ValueError(f"{len(frames)} frames but {n} mask maps")
    stats = AssociationStats()
    counts = [int(m.max()) + 1 if m.size and m.max() >= 0 else 0 for m in id_maps]
    labels = [np.full(k, -1, dtype=np.int32) for k in counts]
    stats.masks_total = sum(counts)
    if n == 0 or stats.masks_total == 0:
        return labels, stats
    height, width = id_maps[0].shape
    with _frames_loader(predictor, frames, height, width), torch.inference_mode(), autocast:
        state = predictor.init_state(video_path="<in-memory frames>")
    device = state["device"]
    next_label = 0
    seed_pos = 0
    for _ in range(max_rounds):
        seeds = np.flatnonzero(labels[seed_pos] < 0)
        if seed_pos == 0 or reseed:
            for chunk_start in range(0, len(seeds), max_objects_per_pass):
                chunk = seeds[chunk_start : chunk_start + max_objects_per_pass]
                obj_labels = next_label + np.arange(len(chunk), dtype=np.int32)
                next_label += len(chunk)
                labels[seed_pos][chunk] = obj_labels
                _track_pass(
                    predictor,
                    state,
                    id_maps,
                    labels,
                    seed_pos,
                    chunk,
                    obj_labels,
                    iou_thresh,
                    patience,
                    autocast,
                    device,
                    stats,
                )
            if len(seeds):
                stats.seed_frames.append(int(frame_names[seed_pos]) if frame_names is not None else seed_pos)
        if not reseed:
            break
        later = [t for t in range(seed_pos + 1, n) if (labels[t] < 0).any()]
        if not later:
            break
        seed_pos = later[0]
    stats.masks_labelled = int(sum((lab >= 0).sum() for lab in labels))
    stats.objects = next_label
    return labels, stats


def _track_pass(
    predictor: VideoTracker,
    state: dict,
    id_maps: Sequence[np.ndarray],
    labels: list[np.ndarray],
    seed_pos: int,
    seed_ids: np.ndarray,
    obj_labels: np.ndarray,
    iou_thresh: float,
    patience: int,
    autocast: AbstractContextManager,
    device: torch.device,
    stats: AssociationStats,
) -> None:
    """One tracker pass: seed ``seed_ids`` of frame ``seed_pos``, label unlabelled masks forward."""
    stats.passes += 1
    with torch.inference_mode(), autocast:
        predictor.reset_state(state)
        seed_map = torch.as_tensor(id_maps[seed_pos], device=device)
        for mask_id, label in zip(seed_ids, obj_labels):
            predictor.add_new_mask(state, frame_idx=seed_pos, obj_id=int(label), mask=seed_map == int(mask_id))
        absent = 0
        for t, obj_ids, logits in predictor.propagate_in_video(state, start_frame_idx=seed_pos):
            stats.frames_tracked += 1
            tracked = logits[:, 0] > 0.0  # [N, H, W]
            visible = tracked.flatten(1).any(1)
            absent = 0 if bool(visible.any()) else absent + 1
            if absent >= patience:
                break
            if t == seed_pos:
                continue
            free = labels[t] < 0
            if not free.any():
                continue
            id_map = torch.as_tensor(id_maps[t], device=device)
            iou = _mask_iou(id_map, len(labels[t]), tracked).cpu().numpy()  # [K, N]
            best = iou.argmax(1)
            take = free & (iou[np.arange(len(best)), best] > iou_thresh)
            ids = np.asarray(obj_ids, dtype=np.int32)
            labels[t][take] = ids[best[take]]


