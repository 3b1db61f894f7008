"""Time synchronisation of images with poses, ROS-free.

Used by the live node (pose-topic mode; TF mode uses tf2_ros there) and by the rosbag importer
(both modes), so a bag imports exactly as the robot would have captured it.

- :class:`PoseBuffer`: timestamped poses of one frame pair, looked up at an image stamp with
  linear interpolation of the translation and slerp of the rotation.
- :class:`TfBuffer`: a minimal TF tree (dynamic + static edges), each edge a PoseBuffer.
- :class:`ImageDepthPairer`: pairs colour and depth images by stamp (message_filters is not
  available everywhere).
- :func:`camera_c2w_gl`: world-from-body pose + body-from-optical extrinsic -> capture pose; the
  one place the optical -> OpenGL axis change happens for robot poses.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..geometry import is_valid_pose, matrix_to_quat_xyzw, optical_to_opengl_c2w, pose_to_matrix, slerp_xyzw

#: Stamps closer than this are the same instant (float seconds from ROS sec+nanosec).
_TIME_EPS = 1e-6


def extrinsic_from_list(values: Sequence[float]) -> np.ndarray:
    """``[x, y, z, qx, qy, qz, qw]`` (NodeConfig.camera_in_body) -> 4x4 transform."""
    if len(values) != 7:
        raise ValueError(f"expected x y z qx qy qz qw (7 numbers), got {len(values)}")
    return pose_to_matrix(np.asarray(values[:3], dtype=np.float64), np.asarray(values[3:], dtype=np.float64))


def camera_c2w_gl(world_from_body: np.ndarray, body_from_optical: np.ndarray | None = None) -> np.ndarray:
    """Capture pose (camera-to-world, OpenGL axes) of a camera whose ROS optical frame
    (x right, y down, z forward) sits at ``body_from_optical`` in a body at ``world_from_body``."""
    T = np.asarray(world_from_body, dtype=np.float64)
    if body_from_optical is not None:
        T = T @ np.asarray(body_from_optical, dtype=np.float64)
    return optical_to_opengl_c2w(T)


def check_pose(
    translation: Sequence[float] | np.ndarray, quat_xyzw: Sequence[float] | np.ndarray, quat_tol: float = 1e-2
) -> str | None:
    """Reason a pose is unusable (``None`` when it is fine): non-finite values or a quaternion
    whose norm is far from 1 (a rotation that is not orthonormal)."""
    t = np.asarray(translation, dtype=np.float64)
    q = np.asarray(quat_xyzw, dtype=np.float64)
    if t.shape != (3,) or q.shape != (4,):
        return "pose must have 3 translation and 4 quaternion values"
    if not (np.isfinite(t).all() and np.isfinite(q).all()):
        return "pose contains NaN or infinite values"
    if abs(np.linalg.norm(q) - 1.0) > quat_tol:
        return f"quaternion norm {np.linalg.norm(q):.4f} is not 1 (non-orthonormal rotation)"
    return None


class PoseBuffer:
    """Timestamped poses (translation + quaternion x y z w), interpolated at lookup.

    Args:
        max_gap: a lookup at ``t`` interpolates between the samples before and after ``t`` only
            when both lie within ``max_gap`` seconds of ``t``; an exact stamp always matches.
        max_extrapolation: ``t`` up to this many seconds outside the buffered span takes the
            nearest sample unchanged (0 = never extrapolate).
        capacity: oldest samples are dropped beyond this many.
    """

    def __init__(self, max_gap: float, max_extrapolation: float = 0.0, capacity: int = 10_000) -> None:
        self.max_gap = float(max_gap)
        self.max_extrapolation = float(max_extrapolation)
        self.capacity = int(capacity)
        self._times: list[float] = []
        self._trans: list[np.ndarray] = []
        self._quats: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._times)

    @property
    def span(self) -> tuple[float, float] | None:
        return (self._times[0], self._times[-1]) if self._times else None

    def add(
        self, t: float, translation: Sequence[float] | np.ndarray, quat_xyzw: Sequence[float] | np.ndarray
    ) -> tuple[bool, str]:
        """Store a pose. Returns ``(accepted, reason)``; invalid poses are refused, not raised."""
        reason = check_pose(translation, quat_xyzw)
        if reason is not None:
            return False, reason
        if not np.isfinite(t):
            return False, "pose stamp is not finite"
        q = np.asarray(quat_xyzw, dtype=np.float64)
        q = q / np.linalg.norm(q)
        i = bisect.bisect_left(self._times, float(t))
        if i < len(self._times) and abs(self._times[i] - t) < _TIME_EPS:
            self._trans[i], self._quats[i] = np.asarray(translation, dtype=np.float64), q
            return True, "replaced a pose with the same stamp"
        self._times.insert(i, float(t))
        self._trans.insert(i, np.asarray(translation, dtype=np.float64))
        self._quats.insert(i, q)
        if len(self._times) > self.capacity:
            del self._times[0], self._trans[0], self._quats[0]
        return True, "ok"

    def add_matrix(self, t: float, T: np.ndarray) -> tuple[bool, str]:
        """Store a 4x4 rigid transform; non-finite or non-orthonormal matrices are refused."""
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not np.isfinite(T).all():
            return False, "pose contains NaN or infinite values"
        if not is_valid_pose(T):
            return False, "rotation is not orthonormal"
        return self.add(t, T[:3, 3], matrix_to_quat_xyzw(T[:3, :3]))

    def lookup(self, t: float) -> np.ndarray | None:
        """The 4x4 pose at ``t``, or ``None`` (see :meth:`lookup_with_reason` for why)."""
        return self.lookup_with_reason(t)[0]

    def lookup_with_reason(self, t: float) -> tuple[np.ndarray | None, str]:
        """``(pose or None, reason)``. Reasons when ``None``: ``"no poses"``, ``"future: ..."``
        (``t`` after the newest pose: a live caller may wait and retry), ``"stale: ..."``
        (too far from any pose, before the oldest, or between two far-apart poses)."""
        times = self._times
        if not times:
            return None, "no poses"
        t = float(t)
        i = bisect.bisect_left(times, t)
        if i < len(times) and abs(times[i] - t) < _TIME_EPS:
            return pose_to_matrix(self._trans[i], self._quats[i]), "exact"
        if i > 0 and abs(times[i - 1] - t) < _TIME_EPS:
            return pose_to_matrix(self._trans[i - 1], self._quats[i - 1]), "exact"
        if i == len(times):
            dt = t - times[-1]
            if dt <= self.max_extrapolation:
                return pose_to_matrix(self._trans[-1], self._quats[-1]), "held newest pose"
            return None, f"future: image is {dt:.3f} s after the newest pose"
        if i == 0:
            dt = times[0] - t
            if dt <= self.max_extrapolation:
                return pose_to_matrix(self._trans[0], self._quats[0]), "held oldest pose"
            return None, f"stale: image is {dt:.3f} s before the oldest pose"
        t0, t1 = times[i - 1], times[i]
        if t - t0 > self.max_gap or t1 - t > self.max_gap:
            return (
                None,
                f"stale: nearest poses are {t - t0:.3f} s before and {t1 - t:.3f} s after (max_gap {self.max_gap})",
            )
        a = (t - t0) / (t1 - t0)
        trans = (1.0 - a) * self._trans[i - 1] + a * self._trans[i]
        return pose_to_matrix(trans, slerp_xyzw(self._quats[i - 1], self._quats[i], a)), "interpolated"

    def drop_outside(self, lo: float, hi: float) -> int:
        """Forget samples stamped outside ``[lo, hi]`` (after a clock jump). Returns how many."""
        keep = [i for i, t in enumerate(self._times) if lo <= t <= hi]
        dropped = len(self._times) - len(keep)
        if dropped:
            self._times = [self._times[i] for i in keep]
            self._trans = [self._trans[i] for i in keep]
            self._quats = [self._quats[i] for i in keep]
        return dropped

    def prune_before(self, t: float) -> None:
        """Forget samples older than ``t`` (keeps the one just before, for interpolation)."""
        i = max(bisect.bisect_left(self._times, float(t)) - 1, 0)
        del self._times[:i], self._trans[:i], self._quats[:i]


class StampGate:
    """Keeps stamps far from the image stream out, so one bad stamp never stops capture.

    The image stream defines "now": the newest accepted image stamp. A pose stamped more than
    ``max_skew`` seconds before or after it is refused on its own (it never enters the pose
    buffer, so it cannot block the lookups of later frames). An image more than ``max_skew``
    seconds from the newest accepted image is refused too, unless ``jump_frames`` images in a
    row agree with each other (each within ``max_skew`` of the first of them): then the clock
    really jumped (a robot's clock reset, a bag replayed from another start) and the new time
    is accepted; :meth:`check_image` then says so with a reason starting ``"clock jump"``, and
    the caller forgets the poses far from the new time (:meth:`PoseBuffer.drop_outside`).

    Before the first image every finite pose is accepted; the first accepted image then lets
    the caller drop the poses far from it (its reason starts ``"first image"``).
    """

    def __init__(self, max_skew: float, jump_frames: int = 5) -> None:
        self.max_skew = float(max_skew)
        self.jump_frames = max(int(jump_frames), 1)
        self.reference: float | None = None
        self._candidates: list[float] = []

    def check_pose(self, t: float) -> tuple[bool, str]:
        """``(accepted, reason)`` for a pose stamped ``t``."""
        if not np.isfinite(t):
            return False, "pose stamp is not finite"
        ref = self.reference
        if ref is None or abs(t - ref) <= self.max_skew:
            return True, "ok"
        side = "after" if t > ref else "before"
        return False, (
            f"pose stamp {t:.3f} is {abs(t - ref):.3f} s {side} the newest image ({ref:.3f}); more than "
            f"node.max_stamp_skew = {self.max_skew} s"
        )

    def check_image(self, t: float) -> tuple[bool, str]:
        """``(accepted, reason)`` for an image stamped ``t`` (accepted images move "now")."""
        if not np.isfinite(t):
            return False, "image stamp is not finite"
        ref = self.reference
        if ref is None:
            self.reference = t
            return True, "first image"
        if abs(t - ref) <= self.max_skew:
            self.reference = max(ref, t)
            self._candidates.clear()
            return True, "ok"
        if self._candidates and abs(t - self._candidates[0]) > self.max_skew:
            self._candidates.clear()
        self._candidates.append(t)
        if len(self._candidates) >= self.jump_frames:
            self.reference = max(self._candidates)
            self._candidates.clear()
            return True, f"clock jump: {self.jump_frames} images in a row are {t - ref:+.3f} s from the old time"
        side = "after" if t > ref else "before"
        return False, (
            f"image stamp {t:.3f} is {abs(t - ref):.3f} s {side} the newest image ({ref:.3f}); more than "
            f"node.max_stamp_skew = {self.max_skew} s (a clock jump is accepted after {self.jump_frames} "
            "such images in a row)"
        )


class TfBuffer:
    """A minimal TF tree for offline use (bags): ``lookup(target, source, t)`` gives
    ``target_from_source`` like tf2's ``lookup_transform(target, source, t)``."""

    def __init__(self, max_gap: float, max_extrapolation: float = 0.0) -> None:
        self.max_gap = max_gap
        self.max_extrapolation = max_extrapolation
        self._parent: dict[str, str] = {}
        self._dynamic: dict[str, PoseBuffer] = {}
        self._static: dict[str, np.ndarray] = {}

    @staticmethod
    def _clean(frame: str) -> str:
        return frame.lstrip("/")

    def add(
        self,
        parent: str,
        child: str,
        t: float,
        translation: Sequence[float],
        quat_xyzw: Sequence[float],
        static: bool = False,
    ) -> tuple[bool, str]:
        """Store ``parent_from_child`` at ``t``. Returns ``(accepted, reason)``."""
        parent, child = self._clean(parent), self._clean(child)
        reason = check_pose(translation, quat_xyzw)
        if reason is not None:
            return False, reason
        if child == parent:
            return False, f"transform from {child!r} to itself"
        self._parent[child] = parent
        if static:
            self._static[child] = pose_to_matrix(np.asarray(translation, float), np.asarray(quat_xyzw, float))
            return True, "ok"
        buf = self._dynamic.setdefault(child, PoseBuffer(self.max_gap, self.max_extrapolation))
        return buf.add(t, translation, quat_xyzw)

    def _root_chain(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._parent and len(chain) < 64:
            chain.append(self._parent[chain[-1]])
        return chain

    def _edge(self, child: str, t: float) -> tuple[np.ndarray | None, str]:
        if child in self._static:
            return self._static[child], "static"
        return self._dynamic[child].lookup_with_reason(t)

    def lookup_with_reason(self, target: str, source: str, t: float) -> tuple[np.ndarray | None, str]:
        target, source = self._clean(target), self._clean(source)
        up_src, up_tgt = self._root_chain(source), self._root_chain(target)
        common = next((f for f in up_src if f in up_tgt), None)
        if common is None:
            return None, f"no transform between {target!r} and {source!r}"
        root_from_src, root_from_tgt = np.eye(4), np.eye(4)
        for chain, acc_name in ((up_src, "src"), (up_tgt, "tgt")):
            acc = np.eye(4)
            for child in chain[: chain.index(common)]:
                edge, reason = self._edge(child, t)
                if edge is None:
                    return None, f"{self._parent[child]} -> {child}: {reason}"
                acc = edge @ acc
            if acc_name == "src":
                root_from_src = acc
            else:
                root_from_tgt = acc
        return np.linalg.inv(root_from_tgt) @ root_from_src, "ok"

    def lookup(self, target: str, source: str, t: float) -> np.ndarray | None:
        return self.lookup_with_reason(target, source, t)[0]


class ImageDepthPairer:
    """Pairs colour images with depth images of (nearly) the same stamp, in arrival order.

    Push images and depths as they come; :meth:`push_image` / :meth:`push_depth` return the
    colour images that are ready, each as ``(t, image, depth or None)``. An image waits for its
    depth until a later message is ``tolerance`` seconds newer, then leaves without depth. With
    ``use_depth=False`` images are ready at once.
    """

    def __init__(self, tolerance: float, use_depth: bool, window: int = 16) -> None:
        self.tolerance = float(tolerance)
        self.use_depth = use_depth
        self._images: deque[tuple[float, Any]] = deque()
        self._depths: deque[tuple[float, Any]] = deque(maxlen=window)
        self._window = window

    def _match(self, t: float) -> Any | None:
        best = None
        for td, depth in self._depths:
            if abs(td - t) <= self.tolerance and (best is None or abs(td - t) < abs(best[0] - t)):
                best = (td, depth)
        return None if best is None else best[1]

    def _release(self, now: float) -> list[tuple[float, Any, Any | None]]:
        ready = []
        while self._images:
            t, img = self._images[0]
            depth = self._match(t)
            if depth is None and now - t <= self.tolerance and len(self._images) <= self._window:
                break
            self._images.popleft()
            ready.append((t, img, depth))
        return ready

    def push_image(self, t: float, image: Any) -> list[tuple[float, Any, Any | None]]:
        if not self.use_depth:
            return [(t, image, None)]
        self._images.append((t, image))
        return self._release(t)

    def push_depth(self, t: float, depth: Any) -> list[tuple[float, Any, Any | None]]:
        self._depths.append((t, depth))
        return self._release(t) if self.use_depth else []

    def flush(self) -> list[tuple[float, Any, Any | None]]:
        """Everything still waiting (end of a bag)."""
        return self._release(float("inf"))
