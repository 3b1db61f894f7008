"""CCL-LGS stage 3: cross-view mask association with the SAM 2 video predictor.

The frames are put in a video order (timestamps when every frame has one, otherwise a greedy
nearest-camera-centre walk from the first frame, so unordered datasets still give the tracker
small steps). The masks of the first frame seed the tracker; in every later frame each own mask
takes the label of the propagated mask it overlaps most if that IoU exceeds ``iou_thresh``,
otherwise it stays -1 (the paper).

Beyond the paper (``reseed``): masks left unlabelled seed the tracker themselves under new
labels, all unlabelled masks of a frame in one pass, and labels the tracker shows to be one
object (an object re-seeded after a tracker miss that finds its earlier label again) are joined
at the end, never two labels that hold different masks of one frame. The cost is bounded:
passes run inside overlapping propagation windows (``window`` frames, ``overlap`` shared; every
object labelled in the overlap is seeded again at the next window's start, so it keeps its label
across the boundary), a pass stops once none of its objects has given its label to a new mask
for ``patience`` frames, and the propagated frames are capped (``budget`` x the frame count,
spent window by window; passes the cap refuses are logged and their masks keep labels of their
own, so every mask ends labelled). Without that a tracker that follows nothing (e.g. wrong
weights) made every frame start a pass to the end of the video: frames x re-seeds propagated
frames. See :func:`associate_masks`.

SAM 2's loader reads JPEG folders or MP4 files only. The predictor's own ``init_state`` is used
with its frame loader swapped for :class:`VideoFrames` (in memory, loaded lazily, resized and
normalised the way sam2's loader does), so no temporary JPEGs are written and no frame is
re-compressed.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
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
    capped: bool = False  # the cap refused some passes (their seeds were not tracked)
    untracked_objects: int = 0  # seeded objects whose pass the cap refused (their masks keep own labels)

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
            "untracked_objects": self.untracked_objects,
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


def window_starts(n: int, window: int, overlap: int = 1) -> list[int]:
    """First frame of each propagation window: ``window`` frames each, consecutive windows sharing ``overlap``."""
    if n <= 1:
        return [0]
    overlap = min(max(int(overlap), 1), int(window) - 1)
    starts, a = [0], 0
    while a + window - 1 < n - 1:
        a += int(window) - overlap
        starts.append(a)
    return starts


@dataclass
class _Seed:
    """One object seeded in a pass: its label, the frame (video position) and the mask there."""

    label: int
    pos: int
    mask: torch.Tensor  # bool [H, W]


def associate_masks(
    predictor: VideoTracker,
    frames: VideoFrames,
    id_maps: Sequence[np.ndarray],  # per frame in VIDEO order: int32 [H, W]
    *,
    iou_thresh: float = 0.5,
    reseed: bool = True,
    max_objects_per_pass: int = 64,
    window: int = 32,
    overlap: int = 8,
    patience: int = 2,
    budget: float = 3.0,
    autocast: AbstractContextManager | None = None,
    frame_names: Sequence[int] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[np.ndarray], AssociationStats]:
    """Associate the masks of one level across frames, in overlapping propagation windows.

    The video is cut into windows of ``window`` frames; consecutive windows share ``overlap``
    frames. Per window:

    1. **Carry pass** (from the window's first frame, or its earliest seed frame; seeds may lie in
       later overlap frames, as SAM 2 conditions on any frame): every object labelled in the overlap with
       the previous window is seeded with its mask in the latest overlap frame where it has one
       (an object tracked to the previous window's last frame without an own mask there is seeded
       with its tracked mask), so an object keeps its label across the boundary even when SAM or
       the tracker missed it in some overlap frames. The unlabelled masks of the first frame are
       seeded beside them under new labels (``reseed``; in the first frame always, as in the
       paper). The pass goes on while its carried objects are found again on their own masks in
       the overlap, and may still label the overlap's unlabelled masks.
    2. **Re-seed passes** (``reseed``): each frame of the window before the next window's overlap
       that still has unlabelled masks seeds all of them at once under new labels (unlabelled
       masks in the overlap wait for the next window's carry pass, which may give them a carried
       object's label).

    Every pass runs forward to the window's last frame and stops early once none of its objects
    has given its label to a mask for ``patience`` consecutive frames. A mask takes the label of
    the tracked object it overlaps most when that IoU exceeds ``iou_thresh`` and it has no label
    yet; otherwise it stays unlabelled for the next pass. When a tracked object matches a mask
    that already holds another label (a re-seeded object finding its earlier label), that is
    counted as evidence the two labels are one object; at the end labels are joined, most
    evidence first, unless they hold different masks of one frame (then they are two objects).
    A pass whose every object was found this way stops.

    ``budget`` caps the propagated frames at ``budget x`` the frame count, spent as a running
    allowance (by the end of a window at most ``budget x`` the frames up to it), so an early
    window cannot starve later ones. A pass the allowance does not allow is not run: with
    ``reseed`` its masks get labels of their own (one object per mask, untracked, still carried
    into the next window if they lie in the overlap), so every mask ends with a label, and ``log``
    says once how many objects that concerned. Without ``reseed`` (the paper) masks no tracked
    object reached stay -1. Labels are renumbered ``0..objects-1`` in order of first appearance.

    Args:
        predictor: a sam2 video predictor (``init_state`` / ``add_new_mask`` /
            ``propagate_in_video`` / ``reset_state``).
        frames: the frames in video order, the same order as ``id_maps``.
        id_maps: each frame's non-overlapping mask map (``-1`` = none), at one common size.
        iou_thresh: a mask takes a tracked label only above this IoU.
        reseed: give unlabelled masks of later frames new labels and track them.
        max_objects_per_pass: objects tracked together (memory bound); more seeds -> more passes.
        window: frames per propagation window (>= 2).
        overlap: frames shared by consecutive windows (1 .. ``window - 1``).
        patience: a pass stops after this many consecutive frames in which none of its objects
            gave its label to an unlabelled mask (or, carried, was found on its own mask).
        budget: cap on propagated frames as a multiple of the frame count (0 = no cap).
        autocast: mixed-precision context (bf16 on CUDA).
        frame_names: capture index of each video position (for the stats and the log).
        log: receives one line when the cap is reached (default: the module logger's warning).

    Returns:
        Labels ``int32 [K_t]`` per frame (video order; -1 = unlabelled, only without ``reseed``)
        and the stats.
    """
    autocast = autocast or nullcontext()
    log = log or _LOG.warning
    n = len(id_maps)
    if len(frames) != n:
        raise ValueError(f"{len(frames)} frames but {n} mask maps")
    if window < 2:
        raise ValueError(f"the association window must hold at least 2 frames, got {window}")
    if not 1 <= overlap < window:
        raise ValueError(
            f"priors.association_overlap ({overlap}) must be 1 .. priors.association_window - 1 ({window - 1}) frames"
        )
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
    refused: list[int] = []  # video positions whose pass the allowance refused
    same: Counter = Counter()  # (tracked label, label of the mask it matched): evidence of one object

    def fresh(pos: int, mask_ids: np.ndarray) -> np.ndarray:
        """New labels for the unlabelled ``mask_ids`` of frame ``pos``."""
        nonlocal next_label
        free = mask_ids[labels[pos][mask_ids] < 0]
        labels[pos][free] = next_label + np.arange(len(free), dtype=np.int32)
        next_label += len(free)
        return free

    def own_seeds(pos: int, mask_ids: np.ndarray) -> list[_Seed]:
        """One seed per label among ``mask_ids`` of frame ``pos`` (two masks may carry one object)."""
        id_map = torch.as_tensor(id_maps[pos], device=device)
        lab = labels[pos]
        return [
            _Seed(int(obj), pos, torch.isin(id_map, torch.as_tensor(mask_ids[lab[mask_ids] == obj], device=device)))
            for obj in np.unique(lab[mask_ids])
        ]

    def run(seeds: list[_Seed], end: int, allowance: int, carry: dict | None) -> bool:
        """Track ``seeds`` to ``end`` in chunks; False when the allowance refused a chunk.

        A chunk's pass starts at its earliest seed frame: sam2 (legacy predictor, fp32) cannot
        start from a frame before every conditioning frame (its memory would hold no object pointer).
        """
        for chunk_start in range(0, len(seeds), max_objects_per_pass):
            chunk = seeds[chunk_start : chunk_start + max_objects_per_pass]
            start = min(seed.pos for seed in chunk)
            if start >= n - 1:
                continue  # nothing after the seed frame to track into
            if stats.budget and stats.frames_tracked >= allowance:
                stats.untracked_objects += len(seeds) - chunk_start
                return False
            if chunk_start == 0:
                stats.seed_frames.append(name(start))
            _track_pass(
                predictor, state, id_maps, labels, start, chunk, end, iou_thresh, patience, autocast, device,
                stats, limit=stats.budget, carry=carry, same=same,
            )
        return True

    starts = window_starts(n, window, overlap)
    # Objects tracked to a window's last frame whose own mask is missing there (SAM missed it, or
    # the match failed): their tracked mask seeds them in the next window, so they carry on.
    carry: dict[int, torch.Tensor] = {}
    prev_end = -1
    for w_index, a in enumerate(starts):
        end = min(a + window - 1, n - 1)
        last_window = w_index == len(starts) - 1
        allowance = int(np.ceil(budget * (end + 1))) if stats.budget else 0
        # 1. carry pass: the objects of the overlap (latest own mask, else the tracked one) + new masks at `a`
        latest: dict[int, _Seed] = {}
        for pos in range(a, prev_end + 1):
            for seed in own_seeds(pos, np.flatnonzero(labels[pos] >= 0)):
                latest[seed.label] = seed
        for obj, mask in carry.items():
            if obj not in latest or latest[obj].pos < prev_end:
                latest[obj] = _Seed(obj, prev_end, mask)
        carry = {}
        new = fresh(a, np.flatnonzero(labels[a] < 0)) if (reseed or a == 0) else np.zeros(0, np.int64)
        seeds = sorted(latest.values(), key=lambda s: -s.pos) + own_seeds(a, new)
        if not run(seeds, end, allowance, None if last_window else carry):
            refused.append(a)
        # 2. re-seed passes up to the next window's overlap
        last_seed = end if last_window else starts[w_index + 1] - 1
        for pos in range(a + 1, last_seed + 1):
            if not reseed:
                break
            new = fresh(pos, np.flatnonzero(labels[pos] < 0))
            if len(new) and not run(own_seeds(pos, new), end, allowance, None if last_window else carry):
                refused.append(pos)  # the new labels stand untracked: objects of their own
        prev_end = end
    if reseed:
        labels = _merge_labels(labels, same)
    stats.masks_labelled = int(sum((lab >= 0).sum() for lab in labels))
    stats.objects = int(max((int(lab.max()) for lab in labels if len(lab)), default=-1)) + 1
    if refused:
        stats.capped = True
        log(
            f"SAM 2 association reached its cap of {stats.budget} propagated frames "
            f"(priors.association_budget={budget:g} x {n} frames, spent window by window): "
            f"{stats.untracked_objects} objects seeded in {len(refused)} frames (first frame {name(refused[0])}) "
            "were not tracked; their masks keep labels of their own, so one object may carry several labels. "
            "Few masks were matched from frame to frame: raise "
            "priors.association_budget (0 = no cap) to spend more, or check priors.sam2_checkpoint (with a "
            "tracker that follows the masks a frame costs about one propagated frame)."
        )
    return labels, stats


def _merge_labels(labels: list[np.ndarray], same: Counter) -> list[np.ndarray]:
    """Join labels the tracker showed to be one object; labels renumbered densely in first-seen order.

    ``same[(a, b)]`` counts the frames in which object ``a``, tracked, matched a mask already
    labelled ``b`` (above the IoU threshold: the match that would have given a free mask label
    ``a``), e.g. an object re-seeded after a tracker miss that finds its earlier label again. Pairs
    are joined most evidence first; two labels that hold different masks of one frame are
    different objects and are never joined.
    """
    frames_of: dict[int, set[int]] = {}
    for pos, lab in enumerate(labels):
        for x in np.unique(lab[lab >= 0]):
            frames_of.setdefault(int(x), set()).add(pos)
    parent = {x: x for x in frames_of}

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (a, b), _ in sorted(same.items(), key=lambda kv: (-kv[1], kv[0])):
        ra, rb = root(a), root(b)
        if ra == rb or frames_of[ra] & frames_of[rb]:
            continue
        ra, rb = min(ra, rb), max(ra, rb)
        parent[rb] = ra
        frames_of[ra] |= frames_of.pop(rb)
    dense: dict[int, int] = {}
    for x in sorted(parent):
        dense.setdefault(root(x), len(dense))
    lut = {x: dense[root(x)] for x in parent}
    return [np.array([lut[int(x)] if x >= 0 else -1 for x in lab], dtype=np.int32) for lab in labels]


def _track_pass(
    predictor: VideoTracker,
    state: dict,
    id_maps: Sequence[np.ndarray],
    labels: list[np.ndarray],
    start: int,
    seeds: list[_Seed],
    end: int,
    iou_thresh: float,
    patience: int,
    autocast: AbstractContextManager,
    device: torch.device,
    stats: AssociationStats,
    *,
    limit: int,
    carry: dict[int, torch.Tensor] | None = None,
    same: Counter | None = None,
) -> None:
    """One pass: seed ``seeds`` (frames >= ``start``), label free masks from ``start`` up to ``end``.

    The pass stops at ``end``, once ``limit`` propagated frames are spent (0 = no limit), or after
    ``patience`` frames in which none of its objects labelled a free mask or was found again on a
    mask carrying its own label (a carried object crossing the overlap).
    """
    stats.passes += 1
    with torch.inference_mode(), autocast:
        predictor.reset_state(state)
        for seed in seeds:
            predictor.add_new_mask(state, frame_idx=seed.pos, obj_id=seed.label, mask=seed.mask.to(device))
        missed = 0
        known: set[int] = set()  # objects found on masks of another label (re-seeded after a miss)
        for t, obj_ids, logits in predictor.propagate_in_video(state, start_frame_idx=start):
            stats.frames_tracked += 1
            if limit and stats.frames_tracked >= limit:
                break
            if t == start:
                continue
            tracked = logits[:, 0] > 0.0  # [N, H, W]
            k = len(labels[t])
            if k:
                id_map = torch.as_tensor(id_maps[t], device=device)
                iou = _mask_iou(id_map, k, tracked).cpu().numpy()  # [K, N]
                best = iou.argmax(1)
                ids = np.asarray(obj_ids, dtype=np.int32)
                match = iou[np.arange(k), best] > iou_thresh
                take = match & (labels[t] < 0)
                # A tracked object on a mask another label holds (its best own mask, above the IoU
                # threshold): evidence that both labels are one object.
                mask_of = iou.argmax(0)  # [N] best own mask of each tracked object
                for n_obj in np.flatnonzero(iou[mask_of, np.arange(len(ids))] > iou_thresh):
                    obj, other = int(ids[n_obj]), int(labels[t][mask_of[n_obj]])
                    if other >= 0 and other != obj:
                        known.add(obj)
                        if same is not None:
                            same[(obj, other)] += 1
                refound = bool((match & (labels[t] == ids[best])).any())
                labels[t][take] = ids[best[take]]
            else:
                take, refound = np.zeros(0, bool), False
            # Progress = a new label given, or a carried object found again on its own label; objects
            # that only overlap masks labelled already (by an earlier pass, or the same object
            # re-seeded after a tracker miss) add nothing, so their pass ends.
            missed = 0 if take.any() or refound else missed + 1
            if t == end and carry is not None:
                kept = set(labels[t].tolist())
                for j, obj in enumerate(obj_ids):
                    if int(obj) not in kept and bool(tracked[j].any()):
                        carry[int(obj)] = tracked[j].clone()
            # A pass whose every object turned out to be a known one has nothing left to find.
            if missed >= patience or t >= end or len(known) == len(obj_ids):
                break


__all__ = ["AssociationStats", "VideoFrames", "VideoTracker", "associate_masks", "frame_order", "window_starts"]
