"""Live capture part of the mapping node: sensor subscriptions -> posed keyframes on disk.

Colour images (``Image`` or ``CompressedImage``), their ``CameraInfo``, an optional aligned depth
image and a pose source (TF via tf2_ros where importable, or a pose topic + static extrinsic
matched by stamp) are turned into posed frames and offered to a
:class:`~ccl_lgs_ros.capture.session.CaptureSession` (keyframe selection + crash-safe writing).

Every malformed input is dropped with a clear, throttled log line (:class:`ThrottledLog`); no
callback lets an exception escape, so bad sensor data never brings the node down.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

from ..capture.camera_model import Distortion, Undistorter
from ..capture.format import Intrinsics
from ..capture.pose_sync import PoseBuffer, StampGate, extrinsic_from_list
from ..capture.session import CaptureSession
from ..capture.writer import CaptureWriteError
from ..config import Config
from . import conversions as conv

try:  # every system ROS 2 has tf2_ros; the index's wheels do not
    import tf2_ros
    from rclpy.duration import Duration
    from rclpy.time import Time as RosTime
except Exception:  # noqa: BLE001 - missing or broken: fall back to the pose topic
    tf2_ros = None

HAVE_TF2 = tf2_ros is not None
#: How long (wall clock) an image waits for its depth image before it is stored without one.
DEPTH_WAIT_S = 0.5
#: How long an image waits for its pose or the first CameraInfo before it is dropped.
MAX_WAIT_S = 2.0
_NUMBERS = re.compile(r"[-+]?\d[\d.e+-]*")


class ThrottledLog:
    """At most one log line per ``period`` seconds per problem, with a count of the rest.

    A problem is its kind plus its message with the numbers blanked out, so a stream of the same
    bad frames logs once per period while a different problem is reported at once.
    """

    def __init__(self, logger: Any, period: float = 5.0) -> None:
        self.logger = logger
        self.period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        key = kind + ":" + _NUMBERS.sub("#", message)
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if now - self._last.get(key, -1e9) < self.period:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            n = self._suppressed.pop(key, 0)
            self._last[key] = now
            if len(self._last) > 1000:  # bounded memory whatever the input
                self._last.clear()
        more = f" ({n} more like this since the last report)" if n else ""
        self.logger.warning(f"[{kind}] {message}{more}")


class CaptureFrontend:
    """Subscriptions and per-frame processing. Owned by the mapping node.

    Thread safety: all sensor callbacks share one mutually exclusive callback group; the capture
    session is additionally guarded by :attr:`lock` for the node's services (switch folder,
    snapshot for training).
    """

    def __init__(self, node: Node, cfg: Config, bad: ThrottledLog) -> None:
        self.node = node
        self.cfg = cfg
        self.bad = bad
        self.lock = threading.RLock()
        self.session: CaptureSession | None = None
        self.enabled = False
        self.last_error = ""
        self.intrinsics: Intrinsics | None = None
        self.distortion = Distortion()
        self._undistort = Undistorter()
        self._depths: deque[tuple[float, Any]] = deque(maxlen=30)
        # (arrival time.monotonic(), message): images waiting for a pose, CameraInfo or depth.
        self._pending: deque[tuple[float, Any]] = deque(maxlen=max(int(cfg.node.max_pending_images), 1))
        self.poses = PoseBuffer(max_gap=cfg.node.max_pose_gap)
        # One bad stamp (a clock jump, a bag with the wrong clock) must not stop capture: poses and
        # images far from the image stream are refused one by one (capture/pose_sync.py).
        self.stamps = StampGate(max_skew=cfg.node.max_stamp_skew)
        self.frames_seen = 0
        ncfg = cfg.node
        self.group = MutuallyExclusiveCallbackGroup()
        if ncfg.sensor_qos == "reliable":
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        else:
            qos = qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        compressed = ncfg.image_topic.rstrip("/").endswith("compressed")
        self.node.create_subscription(
            CompressedImage if compressed else Image,
            ncfg.image_topic,
            self._on_compressed if compressed else self._on_image,
            qos,
            callback_group=self.group,
        )
        self.node.create_subscription(
            CameraInfo, ncfg.camera_info_topic, self._on_camera_info, qos, callback_group=self.group
        )
        if ncfg.depth_topic:
            self.node.create_subscription(Image, ncfg.depth_topic, self._on_depth, qos, callback_group=self.group)
        self.tf_buffer = None
        if ncfg.pose_source == "topic":
            self._subscribe_pose_topic()
        elif HAVE_TF2:
            self.tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self.tf_buffer, node, spin_thread=True)
        else:
            self.last_error = (
                "pose_source 'tf' needs tf2_ros, which is not importable here (no system ROS 2 sourced); "
                "set node.pose_source:=topic with node.pose_topic, or source a ROS 2 installation"
            )
            node.get_logger().error(self.last_error)

    # ------------------------------------------------------------------ session

    def open(self, folder: str | Path) -> None:
        """Start (or continue) the capture in ``folder``. Raises CaptureWriteError."""
        with self.lock:
            self.session = CaptureSession(folder, self.cfg.node.fixed_frame, self.cfg.capture)
            self.node.get_logger().info(
                f"capturing into {self.session.root} ({len(self.session.writer)} keyframes already there)"
            )

    @property
    def num_keyframes(self) -> int:
        s = self.session
        return len(s.writer) if s is not None else 0

    @property
    def folder(self) -> str:
        s = self.session
        return str(s.root) if s is not None else ""

    def snapshot(self, dest: Path) -> Path:
        with self.lock:
            if self.session is None:
                raise CaptureWriteError("no capture folder is open")
            return self.session.writer.snapshot(dest, confine_to=self.cfg.node.allowed_roots)

    def config_changed(self, name: str) -> None:
        """Apply runtime changes of capture.* / pose parameters to the running session."""
        with self.lock:
            if self.session is not None and name.startswith("capture."):
                sel = self.session.selector
                sel.set_threshold_scale(sel.threshold_scale)  # re-reads the thresholds from cfg
            if name == "node.max_pose_gap":
                self.poses.max_gap = float(self.cfg.node.max_pose_gap)
            if name == "node.max_stamp_skew":
                self.stamps.max_skew = float(self.cfg.node.max_stamp_skew)

    # ------------------------------------------------------------------ callbacks

    def _subscribe_pose_topic(self) -> None:
        ncfg = self.cfg.node
        if ncfg.pose_topic_type == "Odometry":
            from nav_msgs.msg import Odometry as PoseType
        elif ncfg.pose_topic_type == "TransformStamped":
            from geometry_msgs.msg import TransformStamped as PoseType
        else:
            from geometry_msgs.msg import PoseStamped as PoseType
        self.node.create_subscription(
            PoseType,
            ncfg.pose_topic,
            self._on_pose,
            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE),
            callback_group=self.group,
        )

    def _on_camera_info(self, msg: Any) -> None:
        try:
            intr, dist = conv.camera_info_to_intrinsics(msg)
        except conv.ConversionError as exc:
            self.bad.warn("camera_info", f"CameraInfo on {self.cfg.node.camera_info_topic} refused: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - never let a message kill the node
            self.bad.warn("camera_info", f"CameraInfo could not be read: {exc}")
            return
        first = self.intrinsics is None
        self.intrinsics, self.distortion = intr, dist
        if first:
            self._retry_pending()

    def _on_depth(self, msg: Any) -> None:
        try:
            self._depths.append((conv.stamp_to_sec(msg.header.stamp), msg))
            self._retry_pending()
        except Exception as exc:  # noqa: BLE001 - never let a message kill the node
            self.bad.warn("depth", f"depth image could not be read: {type(exc).__name__}: {exc}")

    def _implausible_position(self, T: np.ndarray) -> str:
        """Why a camera/body pose is implausible (``capture.max_position``), or ''."""
        dist = float(np.abs(np.asarray(T, dtype=np.float64)[:3, 3]).max())
        limit = float(self.cfg.capture.max_position)
        if not dist <= limit:
            return f"position coordinate {dist:.3g} m is beyond capture.max_position = {limit:g} m"
        return ""

    def _check_image_stamp(self, msg: Any) -> bool:
        """The image-stream stamp check (:class:`StampGate`); False = the image is refused."""
        t = conv.stamp_to_sec(msg.header.stamp)
        ok, reason = self.stamps.check_image(t)
        if not ok:
            self.bad.warn("image_stamp", f"image refused: {reason}")
            return False
        if reason != "ok":
            skew = float(self.stamps.max_skew)
            dropped = self.poses.drop_outside(t - skew, t + skew)
            if reason.startswith("clock jump"):
                self.bad.warn("clock_jump", f"{reason}; now at t={t:.3f} ({dropped} poses of the old time forgotten)")
            elif dropped:
                self.bad.warn(
                    "pose_stamp", f"{dropped} poses stamped more than {skew} s from the first image forgotten"
                )
        return True

    def _on_pose(self, msg: Any) -> None:
        try:
            t, frame, T = conv.pose_source_to_matrix(msg)
        except conv.ConversionError as exc:
            self.bad.warn("pose", f"pose on {self.cfg.node.pose_topic} refused: {exc}")
            return
        except Exception as exc:  # noqa: BLE001
            self.bad.warn("pose", f"pose could not be read: {exc}")
            return
        fixed = self.cfg.node.fixed_frame
        if frame and frame.lstrip("/") != fixed.lstrip("/"):
            self.bad.warn("pose_frame", f"pose is in frame {frame!r}, not the fixed frame {fixed!r}; dropped")
            return
        reason = self._implausible_position(T)
        if reason:
            self.bad.warn("pose", f"pose refused: {reason}")
            return
        ok, reason = self.stamps.check_pose(t)
        if not ok:
            self.bad.warn("pose_stamp", f"pose refused: {reason}")
            return
        ok, reason = self.poses.add_matrix(t, T)
        if not ok:
            self.bad.warn("pose", f"pose refused: {reason}")
            return
        self._retry_pending()

    def _on_image(self, msg: Any) -> None:
        self._guarded(msg, compressed=False)

    def _on_compressed(self, msg: Any) -> None:
        self._guarded(msg, compressed=True)

    def _guarded(self, msg: Any, compressed: bool) -> None:
        self.frames_seen += 1
        self._retry_pending()  # older waiting frames first (and give up on stale ones)
        try:
            if not self._check_image_stamp(msg):
                return
            self._process(msg, compressed, time.monotonic())
        except Exception as exc:  # noqa: BLE001 - last line of defence: log, never crash
            self.bad.warn("internal", f"frame dropped after an unexpected error: {type(exc).__name__}: {exc}")

    def _retry_pending(self) -> None:
        for _ in range(len(self._pending)):
            arrived, msg = self._pending.popleft()
            try:
                self._process(msg, isinstance_compressed(msg), arrived)
            except Exception as exc:  # noqa: BLE001
                self.bad.warn("internal", f"frame dropped after an unexpected error: {exc}")

    # ------------------------------------------------------------------ per frame

    def _may_wait(self, arrived: float) -> bool:
        return self.cfg.node.max_pending_images > 0 and time.monotonic() - arrived < MAX_WAIT_S

    def _process(self, msg: Any, compressed: bool, arrived: float) -> None:
        if not self.enabled or self.session is None:
            return
        t = conv.stamp_to_sec(msg.header.stamp)
        c2w, reason = self._pose_at(t, msg.header.frame_id)
        if c2w is None:
            if reason.startswith(("future", "no poses")) and self._may_wait(arrived):
                # The pose for this stamp has not arrived yet: wait (the oldest waiting image is
                # dropped when the queue is full).
                self._pending.append((arrived, msg))
            else:
                self.bad.warn("pose_lookup", f"no pose for the image at t={t:.3f}: {reason}; frame dropped")
            return
        intr = self.intrinsics
        if intr is None:
            if self._may_wait(arrived):
                self._pending.append((arrived, msg))  # CameraInfo comes on another topic: may be late
            self.bad.warn(
                "camera_info",
                f"no CameraInfo received yet on {self.cfg.node.camera_info_topic}; "
                "frame waits (or is dropped when more frames are waiting)",
            )
            return
        max_px = int(self.cfg.capture.max_image_pixels)
        try:
            rgb = conv.compressed_msg_to_rgb(msg, max_px) if compressed else conv.image_msg_to_rgb(msg, max_px)
        except conv.ConversionError as exc:
            self.bad.warn("image", f"image on {self.cfg.node.image_topic} refused: {exc}")
            return
        if rgb.shape[:2] != (intr.height, intr.width):
            self.bad.warn(
                "image_size",
                f"image is {rgb.shape[1]}x{rgb.shape[0]} but CameraInfo says {intr.width}x{intr.height}; frame dropped",
            )
            return
        depth, wait = self._depth_for(t, intr, arrived)
        if wait:
            self._pending.append((arrived, msg))  # its depth image may still be on the way
            return
        if not self.distortion.is_identity:
            rgb = self._undistort(rgb, intr, self.distortion)
            if depth is not None:
                depth = self._undistort(depth, intr, self.distortion, nearest=True)
        with self.lock:
            if self.session is None:
                return
            frame, why = self.session.offer(rgb, c2w, intr, depth, t)
        if frame is not None:
            self.node.get_logger().info(f"keyframe {self.num_keyframes}: {why}")
        elif why.startswith(("cannot", "write")):
            self.last_error = why
            self.bad.warn("write", why)
        elif why.startswith("invalid"):
            self.bad.warn("frame", f"frame at t={t:.3f} refused: {why}")

    def _pose_at(self, t: float, image_frame: str) -> tuple[np.ndarray | None, str]:
        ncfg = self.cfg.node
        if ncfg.pose_source == "topic":
            world_from_body, reason = self.poses.lookup_with_reason(t)
            if world_from_body is None:
                return None, reason
            try:
                extr = extrinsic_from_list(ncfg.camera_in_body)
            except ValueError as exc:
                return None, f"invalid node.camera_in_body: {exc}"
            return conv.optical_to_capture_pose(world_from_body, extr), "ok"
        if self.tf_buffer is None:
            return None, self.last_error or "tf2_ros is not available"
        if not image_frame:
            return None, "the image has no header.frame_id to look up in TF"
        try:
            tf = self.tf_buffer.lookup_transform(
                ncfg.fixed_frame,
                image_frame,
                _ros_time(t),
                timeout=Duration(seconds=float(ncfg.tf_timeout)),
            )
            T = conv.transform_to_matrix_msg(tf.transform)
            why = self._implausible_position(T)
            return (None, why) if why else (conv.optical_to_capture_pose(T), "ok")
        except conv.ConversionError as exc:
            return None, f"transform {ncfg.fixed_frame} <- {image_frame}: {exc}"
        except Exception as exc:  # noqa: BLE001 - tf2 lookup, connectivity, extrapolation errors
            return None, f"transform {ncfg.fixed_frame} <- {image_frame} at t={t:.3f}: {exc}"

    def _depth_for(self, t: float, intr: Intrinsics, arrived: float) -> tuple[np.ndarray | None, bool]:
        """``(depth in metres or None, wait)``; ``wait`` asks the caller to retry the frame later."""
        ncfg = self.cfg.node
        if not ncfg.depth_topic:
            return None, False
        best = None
        for td, msg in self._depths:
            if abs(td - t) <= ncfg.depth_max_gap and (best is None or abs(td - t) < abs(best[0] - t)):
                best = (td, msg)
        if best is None:
            newest = max((td for td, _ in self._depths), default=-math.inf)
            if newest < t + ncfg.depth_max_gap and time.monotonic() - arrived < DEPTH_WAIT_S:
                return None, True  # no newer depth yet: the matching one may still arrive
            self.bad.warn(
                "depth", f"no depth image within {ncfg.depth_max_gap} s of t={t:.3f}; keyframe stored without depth"
            )
            return None, False
        try:
            depth = conv.depth_msg_to_metres(best[1], int(self.cfg.capture.max_image_pixels))
        except conv.ConversionError as exc:
            self.bad.warn("depth", f"depth on {ncfg.depth_topic} refused: {exc}")
            return None, False
        if depth.shape != (intr.height, intr.width):
            self.bad.warn(
                "depth",
                f"depth is {depth.shape[1]}x{depth.shape[0]}, colour is {intr.width}x"
                f"{intr.height}; keyframe stored without depth",
            )
            return None, False
        return depth, False


def isinstance_compressed(msg: Any) -> bool:
    return type(msg).__name__ == "CompressedImage"


def _ros_time(t: float) -> Any:
    sec = int(t)
    return RosTime(seconds=sec, nanoseconds=int(round((t - sec) * 1e9)))


__all__ = ["HAVE_TF2", "CaptureFrontend", "ThrottledLog"]
