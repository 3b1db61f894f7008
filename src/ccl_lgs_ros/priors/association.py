"""CCL-LGS stage 3: cross-view mask association with the SAM 2 video predictor.

The frames are put in a video order (timestamps when every frame has one, otherwise a greedy
nearest-camera-centre walk from the first frame, so unordered datasets still give the tracker
small steps). The masks of the first frame seed the tracker; in every later frame each own mask
takes the label of the propagated mask it overlaps most if that IoU exceeds ``iou_thresh``,
otherwise it stays -1 (the paper).

Beyond the paper (``reseed``): masks left unlabelled seed the tracker themselves under new
labels, all unlabelled masks of a frame in one pass. The cost is bounded: passes run inside
propagation windows (``window`` frames; each window's first frame re-seeds every object seen
there, so labels carry across windows), a pass stops once none of its objects has given its label to a
new mask for ``patience`` frames, and the total number of propagated frames is capped (``budget`` x the
frame count; a log line says when the cap is reached). Without that a tracker that follows
nothing (e.g. wrong weights) made every frame start a pass to the end of the video: frames x
re-seeds propagated frames. See :func:`associate_masks`.

SAM 2's loader reads JPEG folders or MP4 files only. The predictor's own ``init_state`` is used
with its frame loader swapped for :class:`VideoFrames` (in memory, loaded lazily, resized and
normalised the way sam2's loader does), so no temporary JPEGs are written and no frame is
re-compressed.
"""

from __future__ import annotations

import logging
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
_LOG = logging.getLogger(__name__)


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
    frames_tracked: int = 0  # frames propagated over all passes (the seed frame counts)
    seed_frames: list[int] = field(default_factory=list)  # capture indices that seeded a pass
    frames: int = 0  # frames in the video
    budget: int = 0  # cap on frames_tracked (0 = none)
    capped: bool = False  # the cap stopped association before every mask had its chance

    @property
    def fraction_labelled(self) -> float:
        return self.masks_labelled / self.masks_total if self.masks_total else 1.0

    @property
    def propagated_per_frame(self) -> float:
        """Frames propagated per input frame (the stage's cost in units of one tracker step)."""
        return self.frames_tracked / self.frames if self.frames else 0.0

    def to_json(self) -> dict:
        return {
            "masks_total": self.masks_total,
            "masks_labelled": self.masks_labelled,
            "fraction_labelled": self.fraction_labelled,
            "objects": self.objects,
            "passes": self.passes,
            "frames_tracked": self.frames_tracked,
            "frames": self.frames,
            "propagated_per_frame": self.propagated_per_frame,
            "budget": self.budget,
            "capped": self.capped,
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


def window_starts(n: int, window: int) -> list[int]:
    """First frame of each propagation window: windows of ``window`` frames sharing their end frames."""
    step = max(int(window) - 1, 1)
    return list(range(0, max(n - 1, 1), step)) if n > 1 else [0]


def associate_masks(
    predictor: VideoTracker,
    frames: VideoFrames,
    id_maps: Sequence[np.ndarray],  # per frame in VIDEO order: int32 [H, W]
    *,
    iou_thresh: float = 0.5,
    reseed: bool = True,
    max_objects_per_pass: int = 64,
    window: int = 32,
    patience: int = 2,
    budget: float = 3.0,
    autocast: AbstractContextManager | None = None,
    frame_names: Sequence[int] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[np.ndarray], AssociationStats]:
    """Associate the masks of one level across frames, in propagation windows.

    The video is cut into windows of ``window`` frames; consecutive windows share one frame
    (the *boundary*). Per window:

    1. **Carry pass**: the window's first frame seeds the tracker with all of its masks at once:
       masks labelled in the previous window keep their label (the object is carried on; an
       object tracked to the boundary without an own mask there is seeded with its tracked
       mask), the others get new labels (``reseed``; in the first frame always, as in the paper).
    2. **Re-seed passes** (``reseed``): the earliest frame of the window that still has
       unlabelled masks seeds all of them at once under new labels; repeated until none is left.

    Every pass runs forward to the window's last frame (the next window's boundary, so what it
    labels there is carried on) and stops early once none of its objects has given its label to
    a mask for ``patience`` consecutive frames. A mask takes the label of the tracked object it
    overlaps most when that IoU exceeds ``iou_thresh`` and it has no label yet; otherwise it
    stays -1. When nothing tracks each frame thus costs at most ``1 + patience`` propagated
    frames; when everything tracks about one (plus what objects appearing later cost).
    ``budget`` caps the total at ``budget x`` the frame count: when
    reached, association stops and ``log`` says so (masks left unlabelled stay -1).

    Args:
        predictor: a sam2 video predictor (``init_state`` / ``add_new_mask`` /
            ``propagate_in_video`` / ``reset_state``).
        frames: the frames in video order, the same order as ``id_maps``.
        id_maps: each frame's non-overlapping mask map (``-1`` = none), at one common size.
        iou_thresh: a mask takes a tracked label only above this IoU.
        reseed: give unlabelled masks of later frames new labels and track them.
        max_objects_per_pass: objects tracked together (memory bound); more seeds -> more passes.
        window: frames per propagation window (>= 2).
        patience: a pass stops after this many consecutive frames in which none of its objects
            gave its label to an unlabelled mask.
        budget: cap on propagated frames as a multiple of the frame count (0 = no cap).
        autocast: mixed-precision context (bf16 on CUDA).
        frame_names: capture index of each video position (for the stats and the log).
        log: receives one line when the cap is reached (default: the module logger's warning).

    Returns:
        Labels ``int32 [K_t]`` per frame (video order; -1 = unlabelled) and the stats.
    """
    autocast = autocast or nullcontext()
    log = log or _LOG.warning
    n = len(id_maps)
    if len(frames) != n:
        raise ValueError(f"{len(frames)} frames but {n} mask maps")
    if window < 2:
        raise ValueError(f"the association window must hold at least 2 frames, got {window}")
    stats = AssociationStats(frames=n)
    counts = [int(m.max()) + 1 if m.size and m.max() >= 0 else 0 for m in id_maps]
    labels = [np.full(k, -1, dtype=np.int32) for k in counts]
    stats.masks_total = sum(counts)
    stats.budget = int(np.ceil(budget * n)) if budget > 0 else 0
    if n == 0 or stats.masks_total == 0:
        return labels, stats
    height, width = id_maps[0].shape
    with _frames_loader(predictor, frames, height, width), torch.inference_mode(), autocast:
        state = predictor.init_state(video_path="<in-memory frames>")
    device = state["device"]
    name = (lambda pos: int(frame_names[pos])) if frame_names is not None else (lambda pos: pos)
    next_label = 0

    # Objects tracked to a window's last frame whose own mask is missing there (SAM missed it, or
    # the match failed): their tracked mask seeds them in the next window, so they carry on.
    carry: dict[int, torch.Tensor] = {}

    def run(seed_pos: int, mask_ids: np.ndarray, end: int, extra: dict[int, torch.Tensor] | None = None) -> bool:
        """Seed ``mask_ids`` of ``seed_pos`` (new labels where unlabelled) in chunks; False once capped."""
        nonlocal next_label
        fresh = mask_ids[labels[seed_pos][mask_ids] < 0]
        labels[seed_pos][fresh] = next_label + np.arange(len(fresh), dtype=np.int32)
        next_label += len(fresh)
        extra = extra or {}
        if not (len(mask_ids) or extra) or seed_pos >= n - 1:
            return True  # nothing to seed, or nothing after the seed frame to track into
        stats.seed_frames.append(name(seed_pos))
        own = np.unique(labels[seed_pos][mask_ids])  # two masks may carry one object: seeded as one
        objects = np.concatenate([own, np.array(sorted(set(extra) - set(own.tolist())), dtype=own.dtype)])
        for chunk_start in range(0, len(objects), max_objects_per_pass):
            if stats.budget and stats.frames_tracked >= stats.budget:
                return False
            chunk = objects[chunk_start : chunk_start + max_objects_per_pass]
            _track_pass(
                predictor, state, id_maps, labels, seed_pos, chunk, end, iou_thresh, patience, autocast, device,
                stats, extra, carry,
            )
        return True

    starts = window_starts(n, window)
    completed = True
    for w_index, a in enumerate(starts):
        end = min(a + window - 1, n - 1)  # last frame of the window = the next window's first
        carried = np.flatnonzero(labels[a] >= 0)
        new = np.flatnonzero(labels[a] < 0) if (reseed or a == 0) else np.zeros(0, np.int64)
        extra, carry = carry, {}
        completed = run(a, np.concatenate([carried, new]).astype(np.int64), end, extra)
        # Unlabelled masks of the boundary frame are seeded by the next window's carry pass.
        last = end if end == n - 1 else end - 1
        for pos in range(a + 1, last + 1):
            if not (completed and reseed):
                break
            if (labels[pos] < 0).any():
                completed = run(pos, np.flatnonzero(labels[pos] < 0), end)
        left = sum(int((lab < 0).sum()) for lab in labels)
        if not completed and left:
            frames_left = sum(1 for lab in labels if (lab < 0).any())
            log(
                f"SAM 2 association stopped at its cap of {stats.budget} propagated frames "
                f"(priors.association_budget={budget:g} x {n} frames) in window {w_index + 1}/{len(starts)} "
                f"(frames {name(a)}..{name(end)}): {left} masks in {frames_left} frames stay unlabelled. "
                "Few masks were matched from frame to frame: raise priors.association_budget (0 = no cap) to "
                "spend more, or check priors.sam2_checkpoint (with a tracker that follows the masks a frame "
                "costs about one propagated frame)."
            )
            stats.capped = True
        if not completed:
            break
    stats.masks_labelled = int(sum((lab >= 0).sum() for lab in labels))
    stats.objects = next_label
    return labels, stats


def _track_pass(
    predictor: VideoTracker,
    state: dict,
    id_maps: Sequence[np.ndarray],
    labels: list[np.ndarray],
    seed_pos: int,
    seed_objects: np.ndarray,
    end: int,
    iou_thresh: float,
    patience: int,
    autocast: AbstractContextManager,
    device: torch.device,
    stats: AssociationStats,
    extra: dict[int, torch.Tensor] | None = None,
    carry: dict[int, torch.Tensor] | None = None,
) -> None:
    """One pass: seed the masks of ``seed_objects`` (labels) in frame ``seed_pos``; label free masks up to ``end``."""
    stats.passes += 1
    with torch.inference_mode(), autocast:
        predictor.reset_state(state)
        seed_map = torch.as_tensor(id_maps[seed_pos], device=device)
        seed_labels = torch.as_tensor(labels[seed_pos], device=device)
        for obj in seed_objects:
            ids = torch.nonzero(seed_labels == int(obj)).flatten().to(seed_map.dtype)
            mask = torch.isin(seed_map, ids) if len(ids) or extra is None else extra[int(obj)].to(device)
            predictor.add_new_mask(state, frame_idx=seed_pos, obj_id=int(obj), mask=mask)
        missed = 0
        for t, obj_ids, logits in predictor.propagate_in_video(state, start_frame_idx=seed_pos):
            stats.frames_tracked += 1
            if t == seed_pos:
                continue
            tracked = logits[:, 0] > 0.0  # [N, H, W]
            k = len(labels[t])
            if k:
                id_map = torch.as_tensor(id_maps[t], device=device)
                iou = _mask_iou(id_map, k, tracked).cpu().numpy()  # [K, N]
                best = iou.argmax(1)
                take = (iou[np.arange(k), best] > iou_thresh) & (labels[t] < 0)
                labels[t][take] = np.asarray(obj_ids, dtype=np.int32)[best[take]]
            else:
                take = np.zeros(0, bool)
            # Only new labels count: objects that overlap masks labelled already (by an earlier pass,
            # or the same object re-seeded after a tracker miss) add nothing, so their pass ends.
            missed = 0 if take.any() else missed + 1
            if t == end and carry is not None:
                kept = set(labels[t].tolist())
                for j, obj in enumerate(obj_ids):
                    if int(obj) not in kept and bool(tracked[j].any()):
                        carry[int(obj)] = tracked[j].clone()
            if missed >= patience or t >= end:
                break


__all__ = ["AssociationStats", "VideoFrames", "VideoTracker", "associate_masks", "frame_order", "window_starts"]
