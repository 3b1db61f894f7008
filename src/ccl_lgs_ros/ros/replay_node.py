"""Replay a capture folder as live ROS 2 topics (test and demo the live path without a robot).

Per frame, in this order, all with the same stamp: the camera pose (``PoseStamped`` of the
camera *optical* frame in the fixed frame, and a TF ``fixed -> camera`` when tf2_ros is
importable), ``CameraInfo``, the optional depth image (``16UC1`` millimetres) and the colour
image (``rgb8``). Frames go out at ``--rate`` Hz with stamps from the node's clock; the tool exits
after the last frame (or loops with ``--loop``).

    replay CAPTURE [--rate 2] [--loop] [--wait-subscribers 1] [--image-topic ...] ...
    python -m ccl_lgs_ros.ros.replay_node CAPTURE ...

A rosbag2 (sqlite3 or mcap) is accepted too: it goes through the same importer as
``ccl-lgs import`` (same topic settings, ``--config``/``--set`` as for the node, keyframe motion
thresholds off so every synchronised frame is kept) into a temporary capture folder, which is
then replayed; ``--keep-import DIR`` keeps that folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CameraInfo, Image

from ..capture.format import Capture, CaptureError
from ..capture.writer import depth_to_units
from ..geometry import opengl_to_optical_c2w
from . import conversions as conv

try:
    import tf2_ros
    from geometry_msgs.msg import TransformStamped
except Exception:  # noqa: BLE001 - optional: pose topic only
    tf2_ros = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="replay", description="Publish a capture folder as live ROS 2 topics.")
    p.add_argument("capture", type=Path, help="capture folder (transforms.json + images/) or a rosbag2")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="bag import settings (node.image_topic, node.pose_topic, ...); repeatable")
    p.add_argument("--keep-import", type=Path, default=None, help="bags: keep the imported capture here")
    p.add_argument("--rate", type=float, default=2.0, help="frames per second (default 2)")
    p.add_argument("--loop", action="store_true", help="start over after the last frame")
    p.add_argument("--max-frames", type=int, default=0, help="publish at most this many frames (0 = all)")
    p.add_argument("--image-topic", default="/camera/color/image_raw")
    p.add_argument("--camera-info-topic", default="/camera/color/camera_info")
    p.add_argument("--depth-topic", default="", help="publish depth here when the capture has it (empty = no)")
    p.add_argument("--pose-topic", default="/camera/pose", help="PoseStamped of the optical frame (empty = none)")
    p.add_argument("--fixed-frame", default="", help="frame of the poses (default: the capture's frame_id)")
    p.add_argument("--camera-frame", default="camera_color_optical_frame", help="the images' frame_id")
    p.add_argument("--no-tf", action="store_true", help="do not broadcast TF even when tf2_ros is available")
    p.add_argument(
        "--wait-subscribers",
        type=int,
        default=0,
        help="wait until the image topic has this many subscribers (and their nodes' CameraInfo, depth "
        "and pose subscriptions are matched) before starting",
    )
    p.add_argument("--wait-timeout", type=float, default=30.0, help="seconds to wait for subscribers")
    p.add_argument("--linger", type=float, default=1.0, help="seconds to stay up after the last frame")
    return p


class ReplayNode(Node):
    """Publishes the frames of a :class:`Capture`."""

    def __init__(self, capture: Capture, args: argparse.Namespace) -> None:
        super().__init__("ccl_lgs_replay")
        self.capture = capture
        self.args = args
        self.fixed_frame = args.fixed_frame or capture.frame_id
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.create_publisher(Image, args.image_topic, qos)
        self.info_pub = self.create_publisher(CameraInfo, args.camera_info_topic, qos)
        self.depth_pub = self.create_publisher(Image, args.depth_topic, qos) if args.depth_topic else None
        self.pose_pub = (
            self.create_publisher(PoseStamped, args.pose_topic, QoSProfile(depth=100)) if args.pose_topic else None
        )
        self.tf = tf2_ros.TransformBroadcaster(self) if tf2_ros is not None and not args.no_tf else None

    def publish_frame(self, i: int) -> None:
        cap, args = self.capture, self.args
        frame = cap.frames[i]
        stamp = self.get_clock().now().to_msg()
        world_from_optical = opengl_to_optical_c2w(frame.c2w)
        if self.pose_pub is not None:
            ps = PoseStamped()
            ps.header = conv.make_header(self.fixed_frame, stamp)
            ps.pose = conv.matrix_to_pose_msg(world_from_optical)
            self.pose_pub.publish(ps)
        if self.tf is not None:
            ts = TransformStamped()
            ts.header = conv.make_header(self.fixed_frame, stamp)
            ts.child_frame_id = args.camera_frame
            ts.transform = conv.matrix_to_transform_msg(world_from_optical)
            self.tf.sendTransform(ts)
        cam_header = conv.make_header(args.camera_frame, stamp)
        self.info_pub.publish(conv.intrinsics_to_camera_info(frame.intrinsics, cam_header))
        if self.depth_pub is not None:
            depth = cap.load_depth(i)
            if depth is not None:
                mm = depth_to_units(depth, 0.001)
                self.depth_pub.publish(conv.rgb_to_image_msg(mm, cam_header, "16UC1"))
        rgb = np.ascontiguousarray(cap.load_image(i))
        self.image_pub.publish(conv.rgb_to_image_msg(rgb, cam_header, "rgb8"))

    def wait_for_subscribers(self) -> bool:
        """Wait until the image topic is matched with ``--wait-subscribers`` subscriptions and every
        other topic this node publishes (CameraInfo, depth, pose) with as many subscriptions as there
        are image subscribers' nodes that subscribe to it (``get_subscription_count`` is the DDS
        match count: an incompatible subscription is not counted). Waiting for the image topic
        alone let the first frames go out before the mapping node's pose and CameraInfo
        subscriptions had matched: those frames were lost."""
        want = int(self.args.wait_subscribers)
        deadline = time.monotonic() + float(self.args.wait_timeout)
        while self.image_pub.get_subscription_count() < want or self._unmatched_topics():
            if time.monotonic() > deadline:
                return False
            rclpy.spin_once(self, timeout_sec=0.1)
        return True

    def _unmatched_topics(self) -> list[str]:
        """Topics we publish that an image subscriber's node subscribes to but that are not yet
        matched to as many subscriptions as there are such nodes."""
        infos = self.get_subscriptions_info_by_topic(self.image_pub.topic_name)
        if len(infos) < self.image_pub.get_subscription_count():
            # DDS matched an image subscription before the ROS graph's endpoint list had it: which
            # other topics its node subscribes to is not known yet.
            return [f"{self.image_pub.topic_name} (its subscribers' nodes are not in the ROS graph yet)"]
        # The endpoint info gives the root namespace as "", which the by-node query refuses.
        nodes = {(i.node_name, "/" + i.node_namespace.lstrip("/")) for i in infos}
        subscribed: list[set[str]] = []
        for name, ns in nodes:
            try:
                subscribed.append({t for t, _ in self.get_subscriber_names_and_types_by_node(name, ns)})
            except Exception:  # noqa: BLE001 - NodeNameNonExistentError: its node list has not arrived
                return [f"{self.image_pub.topic_name} (node {ns.rstrip('/')}/{name} is not in the ROS graph yet)"]
        missing = []
        for pub in (self.info_pub, self.depth_pub, self.pose_pub):
            if pub is not None and pub.get_subscription_count() < sum(pub.topic_name in s for s in subscribed):
                missing.append(pub.topic_name)
        return missing


def _load_source(args: argparse.Namespace) -> Capture:
    """The capture to publish: a capture folder as is, or a bag imported into one."""
    from ..capture.importers import detect_format, import_capture

    src = Path(args.capture)
    if detect_format(src) != "rosbag2":
        return Capture.load(src)
    import tempfile

    from ..config import load_config, parse_assignments

    cfg = load_config(overrides={"capture.min_translation": 0.0, "capture.min_rotation_deg": 0.0,
                                 "capture.blur_rejection": False, **parse_assignments(args.overrides)})
    out = args.keep_import or Path(tempfile.mkdtemp(prefix="ccl_lgs_replay_")) / "capture"
    print(f"replay: importing bag {src} into {out}", flush=True)
    return import_capture(src, out, fmt="rosbag2", cfg=cfg)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    rclpy.init(args=argv)
    args = build_parser().parse_args(remove_ros_args(argv)[1:])
    try:
        capture = _load_source(args)
    except (CaptureError, ValueError, OSError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        rclpy.shutdown()
        return 2
    if not capture.frames or args.rate <= 0:
        print("replay: nothing to publish (no frames, or --rate <= 0)", file=sys.stderr)
        rclpy.shutdown()
        return 2
    node = ReplayNode(capture, args)
    n = len(capture.frames) if args.max_frames <= 0 else min(args.max_frames, len(capture.frames))
    code = 0
    try:
        if args.wait_subscribers and not node.wait_for_subscribers():
            unmatched = node._unmatched_topics()
            if node.image_pub.get_subscription_count() >= args.wait_subscribers and unmatched:
                why = f"the image subscribers' subscriptions to {', '.join(unmatched)} did not match (QoS?)"
            else:
                why = f"fewer than {args.wait_subscribers} subscriber(s) on {args.image_topic}"
            print(f"replay: not started after {args.wait_timeout} s: {why}", file=sys.stderr)
            return 3
        period = 1.0 / args.rate
        print(f"replay: publishing {n} frames at {args.rate} Hz", flush=True)
        while True:
            t_next = time.monotonic()
            for i in range(n):
                node.publish_frame(i)
                t_next += period
                # Sleep in small spins so shutdown requests (SIGINT/SIGTERM) are seen promptly.
                while (left := t_next - time.monotonic()) > 0:
                    rclpy.spin_once(node, timeout_sec=min(left, 0.1))
            print(f"replay: published {n} frames", flush=True)
            if not args.loop:
                break
        end = time.monotonic() + args.linger
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        code = 0
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
