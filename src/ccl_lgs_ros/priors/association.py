"""CCL-LGS stage 3: cross-view mask association with the SAM 2 video predictor.

The frames are put in a video order (timestamps when every frame has one, otherwise a greedy
nearest-camera-centre walk from the first frame, so unordered datasets still give the tracker
small steps). The masks of the first frame seed the tracker; in every later frame each own mask
takes the label of the propagated mask it overlaps most if that IoU exceeds ``iou_thresh``,
otherwise it stays -1 (the paper).

Beyond the paper (``reseed``): after a pass, the earliest frame that still has unlabelled masks
seeds a new pass with those masks under new labels, propagating forward from that frame; this
repeats until every mask is labelled or ``max_rounds`` passes ran. A pass stops early once every
object it tracks has been absent for ``patience`` consecutive frames, so the cost follows how
long objects stay in view rather than the length of the sequence.

SAM 2's loader reads JPEG folders or MP4 files only. The predictor's own ``init_state`` is used
with its frame loader swapped for :class:`VideoFrames` (in memory, loaded lazily, resized and
normalised the way sam2's loader does), so no temporary JPEGs are written and no frame is
re-compressed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

#: sam2's image normalisation (``sam2.utils.misc.load_video_frames`` defaults).
_SAM2_MEAN = (0.485, 0.456, 0.406)
_SAM2_STD = (0.229, 0.224, 0.225)


class VideoTracker(Protocol):
    """The part of sam2's video predictor the association uses."""

    image_size: int

    def init_state(self, video_path: Any) -> dict: ...

    def reset_state(self, inference_state: dict) -> None: ...

    def add_new_mask(self, inference_state: dict, frame_idx: int, obj_id: int, mask: Any) -> Any: ...

    def propagate_in_video(
        self, inference_state: dict, start_frame_idx: int | None = None
    ) -> Iterator[tuple[int, list, torch.Tensor]]: ...


def frame_order(c2ws: np.ndarray, timestamps: Sequence[float | None] | None = None) -> list[int]:
    """Video order of the frames.

    Args:
        c2ws: ``[F, 4, 4]`` camera-to-world poses.
        timestamps: per-frame times; used when every frame has one.

    Returns:
        Frame indices in tracking order: by timestamp, else a greedy nearest-camera-centre walk
        starting at frame 0.
    """
    n = len(c2ws)
    if timestamps is not None and n and all(t is not None for t in timestamps):
        return [int(i) for i in np.argsort(np.asarray(timestamps, dtype=np.float64), kind="stable")]
    centres = np.asarray(c2ws, dtype=np.float64)[:, :3, 3]
    order = [0] if n else []
    left = np.ones(n, dtype=bool)
    if n:
        left[0] = False
    for _ in range(n - 1):
        d = np.linalg.norm(centres - centres[order[-1]], axis=1)
        d[~left] = np.inf
        nxt = int(np.argmin(d))
        order.append(nxt)
        left[nxt] = False
    return order


class VideoFrames:
    """Lazy, in-memory stand-in for sam2's frame loader output.

    ``images[i]`` is ``float32 [3, S, S]`` normalised like sam2's loader (resized to the model's
    square input, ImageNet mean/std); frames are loaded on demand because a 1,000-frame capture
    at 1024 px would need 12 GB as one tensor.
    """

    def __init__(self, load_rgb: Callable[[int], np.ndarray], num_frames: int, image_size: int) -> None:
        self._load = load_rgb
        self._n = int(num_frames)
        self._size = int(image_size)
        self._mean = torch.tensor(_SAM2_MEAN).view(3, 1, 1)
        self._std = torch.tensor(_SAM2_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> torch.Tensor:
        rgb = torch.as_tensor(np.ascontiguousarray(self._load(int(i))))
        x = rgb.permute(2, 0, 1).float()[None] / 255.0
        x = F.interpolate(x, size=(self._size, self._size), mode="bilinear", antialias=True)[0]
        return (x - self._mean) / self._std


@contextmanager
def _frames_loader(predictor: VideoTracker, frames: VideoFrames, height: int, width: int) -> Iterator[None]:
    """Let ``predictor.init_state`` take ``frames`` instead of reading a JPEG folder."""
    module = sys.modules[type(predictor).__module__]
    original = getattr(module, "load_video_frames", None)
    if original is None:  # not a sam2 predictor (a test double): nothing to redirect
        yield
        return
    setattr(module, "load_video_frames", lambda **_: (frames, height, width))  # noqa: B010
    try:
        yield
    finally:
        setattr(module, "load_video_frames", original)  # noqa: B010


@dataclass
class AssociationStats:
    """What one level's association did."""

    masks_total: int = 0
    masks_labelled: int = 0
    objects: int = 0  # distinct labels handed out
    passes: int = 0  # tracker passes (one per seed frame and object chunk)
    frames_tracked: int = 0  # frame steps over all passes
    seed_frames: list[int] = field(default_factory=list)  # capture indices that seeded a pass

    @property
    def fraction_labelled(self) -> float:
        return self.masks_labelled / self.masks_total if self.masks_total else 1.0

    def to_json(self) -> dict:
        return {
            "masks_total": self.masks_total,
            "masks_labelled": self.masks_labelled,
            "fraction_labelled": self.fraction_labelled,
            "objects": self.objects,
            "passes": self.passes,
            "frames_tracked": self.frames_tracked,
            "seed_frames": list(self.seed_frames),
        }


def _mask_iou(id_map: torch.Tensor, k: int, tracked: torch.Tensor) -> torch.Tensor:
    """IoU ``[K, N]`` between the frame's own masks (id map, K ids) and tracked masks ``bool [N, H, W]``."""
    ids = id_map.flatten().long() + 1  # 0 = no mask
    trk = tracked.flatten(1).float()  # [N, HW]
    # Intersections by scattering the tracked masks into the own ids (no [HW, K] one-hot).
    inter = torch.zeros(trk.shape[0], k + 1, device=trk.device).index_add_(1, ids, trk)[:, 1:]  # [N, K]
    own_area = torch.bincount(ids, minlength=k + 1)[1:].float()
    union = own_area[None, :] + trk.sum(1)[:, None] - inter
    return (inter / union.clamp_min(1.0)).T


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


__all__ = ["AssociationStats", "VideoFrames", "VideoTracker", "associate_masks", "frame_order"]
