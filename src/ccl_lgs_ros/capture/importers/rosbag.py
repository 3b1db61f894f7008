"""rosbag2 (sqlite3 and mcap) import through ``rosbags``, the live capture path offline.

Topics and pose source come from the ``node`` config section (the same parameters the live node
uses); images go through :mod:`..image_codec`, poses through :mod:`..pose_sync` (TF tree or a
PoseStamped / Odometry / TransformStamped topic plus the ``camera_in_body`` extrinsic, with the
same ``max_pose_gap``), colour and depth are paired with :class:`..pose_sync.ImageDepthPairer`,
and keyframes are chosen and written by :class:`..session.CaptureSession`. Images are
undistorted with their CameraInfo before keyframe selection.

Two passes over the bag: poses first (so an image can be interpolated between the poses around
it, whatever order they were recorded in), then images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...config import Config
from ..camera_model import Distortion, Undistorter, intrinsics_from_camera_info
from ..format import Capture, Intrinsics
from ..image_codec import ImageDecodeError, decode_compressed, decode_image, depth_to_metres, to_rgb
from ..pose_sync import ImageDepthPairer, PoseBuffer, TfBuffer, camera_c2w_gl, extrinsic_from_list
from ..session import CaptureSession
from ._scene import CaptureImportError, check_destination

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
INFO_TYPE = "sensor_msgs/msg/CameraInfo"
POSE_TYPES = {
    "PoseStamped": "geometry_msgs/msg/PoseStamped",
    "Odometry": "nav_msgs/msg/Odometry",
    "TransformStamped": "geometry_msgs/msg/TransformStamped",
}
TF_TYPE = "tf2_msgs/msg/TFMessage"
#: Depth images pair with colour images stamped within this many seconds.
DEPTH_TOLERANCE = 0.02


def is_rosbag(src: Path) -> bool:
    folder = src if src.is_dir() else src.parent
    if not (folder / "metadata.yaml").is_file():
        return False
    return any(folder.glob("*.db3")) or any(folder.glob("*.mcap"))


def stamp_seconds(header: Any) -> float:
    return float(header.stamp.sec) + 1e-9 * float(header.stamp.nanosec)


def _typestore(reader: Any) -> Any:
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    extra: dict[str, Any] = {}
    for conn in reader.connections:
        if conn.msgtype not in store.types and conn.msgdef and conn.msgdef.data:
            try:
                extra.update(get_types_from_msg(conn.msgdef.data, conn.msgtype))
            except Exception:  # an exotic definition only matters if we need that topic
                log.debug("cannot parse the definition of %s", conn.msgtype)
    if extra:
        store.register(extra)
    return store


def _pick(reader: Any, wanted: str, types: tuple[str, ...], role: str, required: bool) -> Any:
    """The connection of ``wanted``; when absent, the only topic of an accepted type."""
    conns = [c for c in reader.connections if c.msgtype in types]
    exact = [c for c in conns if c.topic == wanted]
    if exact:
        return exact[0]
    if not required and not wanted:
        return None
    topics = sorted({c.topic for c in conns})
    if len(topics) == 1:
        log.info("%s topic %r not in the bag; using %r", role, wanted, topics[0])
        return next(c for c in conns if c.topic == topics[0])
    if required:
        listing = ", ".join(f"{c.topic} [{c.msgtype}]" for c in reader.connections) or "none"
        raise CaptureImportError(
            f"no {role} topic {wanted!r} of type {' or '.join(types)} in the bag (topics: {listing})"
        )
    return None


def _read_poses(reader: Any, store: Any, cfg: Config) -> tuple[Any, str, np.ndarray | None]:
    """Pass 1. Returns ``(buffer, mode, body_from_optical)``; ``mode`` is ``"tf"`` or ``"topic"``."""
    node = cfg.node
    gap = node.max_pose_gap
    tf_conns = [c for c in reader.connections if c.msgtype == TF_TYPE]
    use_tf = node.pose_source == "tf" and bool(tf_conns)
    if node.pose_source == "tf" and not tf_conns:
        log.info("no TF in the bag; trying the pose topic %r", node.pose_topic)
    rejected = 0
    if use_tf:
        tf = TfBuffer(gap)
        for conn, _, raw in reader.messages(connections=tf_conns):
            msg = store.deserialize_cdr(raw, conn.msgtype)
            static = conn.topic.endswith("tf_static")
            for ts in msg.transforms:
                tr, q = ts.transform.translation, ts.transform.rotation
                ok, _ = tf.add(
                    ts.header.frame_id,
                    ts.child_frame_id,
                    stamp_seconds(ts.header),
                    (tr.x, tr.y, tr.z),
                    (q.x, q.y, q.z, q.w),
                    static=static,
                )
                rejected += not ok
        if rejected:
            log.warning("%d invalid transforms ignored", rejected)
        return tf, "tf", None
    conn = _pick(reader, node.pose_topic, tuple(POSE_TYPES.values()), "pose", required=True)
    buf = PoseBuffer(gap, capacity=10**8)
    for c, _, raw in reader.messages(connections=[conn]):
        msg = store.deserialize_cdr(raw, c.msgtype)
        if c.msgtype == POSE_TYPES["TransformStamped"]:
            p, q = msg.transform.translation, msg.transform.rotation
        else:
            pose = msg.pose.pose if c.msgtype == POSE_TYPES["Odometry"] else msg.pose
            p, q = pose.position, pose.orientation
        ok, _ = buf.add(stamp_seconds(msg.header), (p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
        rejected += not ok
    if rejected:
        log.warning("%d invalid poses ignored (NaN or non-unit quaternion)", rejected)
    return buf, "topic", extrinsic_from_list(node.camera_in_body)


def _lookup(
    poses: Any, mode: str, extrinsic: np.ndarray | None, fixed_frame: str, frame_id: str, t: float
) -> tuple[np.ndarray | None, str]:
    if mode == "tf":
        T, reason = poses.lookup_with_reason(fixed_frame, frame_id, t)
        return (None, reason) if T is None else (camera_c2w_gl(T), reason)
    T, reason = poses.lookup_with_reason(t)
    return (None, reason) if T is None else (camera_c2w_gl(T, extrinsic), reason)


def import_rosbag(
    src: Path, out: Path, *, cfg: Config | None = None, max_frames: int | None = None, downscale: int = 1
) -> Capture:
    """Import a rosbag2 folder into a capture folder at ``out`` (keyframes only).

    Raises:
        CaptureImportError: unreadable bag, missing topics, or no frame kept.
    """
    from rosbags.rosbag2 import Reader

    cfg = cfg or Config()
    bag = src if src.is_dir() else src.parent
    check_destination(bag, out)
    node = cfg.node
    max_pixels = cfg.capture.max_image_pixels
    counts: dict[str, int] = {}

    def skip(reason: str) -> None:
        key = reason.split(":")[0].split(" (")[0]  # the kind of reason, without its numbers
        counts[key] = counts.get(key, 0) + 1

    with Reader(bag) as reader:
        store = _typestore(reader)
        poses, mode, extrinsic = _read_poses(reader, store, cfg)
        img_conn = _pick(reader, node.image_topic, IMAGE_TYPES, "image", required=True)
        info_conn = _pick(reader, node.camera_info_topic, (INFO_TYPE,), "camera_info", required=False)
        depth_conn = (
            _pick(reader, node.depth_topic, ("sensor_msgs/msg/Image",), "depth", required=False)
            if node.depth_topic
            else None
        )
        conns = [c for c in (img_conn, info_conn, depth_conn) if c is not None]
        session = CaptureSession(out, node.fixed_frame, cfg.capture)
        pairer = ImageDepthPairer(DEPTH_TOLERANCE, use_depth=depth_conn is not None)
        undistort = Undistorter()
        camera: tuple[Intrinsics, Distortion] | None = None

        def handle(ready: list[tuple[float, Any, Any]]) -> None:
            for t, (rgb, frame_id, camera), depth in ready:
                if max_frames is not None and len(session.writer) >= max_frames:
                    return
                if camera is None:
                    skip("missing CameraInfo")
                    continue
                intr, dist = camera
                if rgb.shape[:2] != (intr.height, intr.width):
                    skip("image size differs from CameraInfo")
                    continue
                c2w, reason = _lookup(poses, mode, extrinsic, node.fixed_frame, frame_id, t)
                if c2w is None:
                    skip(f"no pose: {reason}")
                    continue
                rgb = undistort(rgb, intr, dist)
                if depth is not None:
                    depth = depth if depth.shape == rgb.shape[:2] else None
                    depth = undistort(depth, intr, dist, nearest=True) if depth is not None else None
                if downscale > 1:
                    import cv2

                    size = (intr.width // downscale, intr.height // downscale)
                    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
                    depth = None if depth is None else cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
                    intr = intr.scaled(*size)
                frame, reason = session.offer(rgb, c2w, intr, depth, t)
                if frame is None:
                    skip(reason)

        for conn, _, raw in reader.messages(connections=conns):
            if max_frames is not None and len(session.writer) >= max_frames:
                break
            msg = store.deserialize_cdr(raw, conn.msgtype)
            try:
                if conn is info_conn:
                    try:
                        camera = intrinsics_from_camera_info(msg.width, msg.height, msg.k, msg.d, msg.distortion_model)
                    except ValueError as exc:
                        skip(f"bad CameraInfo: {exc}")
                elif conn is depth_conn:
                    arr = decode_image(
                        msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian), max_pixels
                    )
                    handle(pairer.push_depth(stamp_seconds(msg.header), depth_to_metres(arr, msg.encoding)))
                else:
                    if conn.msgtype == IMAGE_TYPES[1]:
                        rgb = decode_compressed(msg.format, msg.data, max_pixels)
                    else:
                        arr = decode_image(
                            msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian), max_pixels
                        )
                        rgb = to_rgb(arr, msg.encoding)
                    # the CameraInfo current when the image arrived goes with it (depth may delay it)
                    handle(pairer.push_image(stamp_seconds(msg.header), (rgb, msg.header.frame_id, camera)))
            except ImageDecodeError as exc:
                skip(f"decode error: {exc}")
                log.warning("%s: %s", conn.topic, exc)
        handle(pairer.flush())

    if not len(session.writer):
        raise CaptureImportError(f"{bag}: no frame kept (reasons: {counts or 'no images'})")
    capture = session.writer.capture
    capture.ccl_extra["import"] = {
        "source": str(bag),
        "format": "rosbag2",
        "undistorted": True,
        "downscale": int(downscale),
        "pose_source": mode,
        "image_topic": img_conn.topic,
        "depth_topic": depth_conn.topic if depth_conn else None,
        "rejected": counts,
    }
    capture.save()
    return capture


def rosbag_info(src: Path, cfg: Config | None = None) -> dict[str, Any]:
    """Summary of a bag for ``ccl-lgs info``: ``num_frames`` counts colour image messages (before
    keyframe selection); the camera-centre box is taken at the image record times."""
    from rosbags.rosbag2 import Reader

    cfg = cfg or Config()
    bag = src if src.is_dir() else src.parent
    with Reader(bag) as reader:
        store = _typestore(reader)
        img_conn = _pick(reader, cfg.node.image_topic, IMAGE_TYPES, "image", required=True)
        info_conn = _pick(reader, cfg.node.camera_info_topic, (INFO_TYPE,), "camera_info", required=False)
        intr = None
        if info_conn is not None:
            for c, _, raw in reader.messages(connections=[info_conn]):
                msg = store.deserialize_cdr(raw, c.msgtype)
                try:
                    intr = intrinsics_from_camera_info(msg.width, msg.height, msg.k, msg.d, msg.distortion_model)
                except ValueError:
                    continue
                break
        centres = []
        try:
            poses, mode, extrinsic = _read_poses(reader, store, cfg)
        except CaptureImportError:
            poses = None
        frame_id = ""
        for c, t_ns, raw in reader.messages(connections=[img_conn]):
            if not frame_id:
                frame_id = store.deserialize_cdr(raw, c.msgtype).header.frame_id
            if poses is not None:
                T, _ = _lookup(poses, mode, extrinsic, cfg.node.fixed_frame, frame_id, t_ns * 1e-9)
                if T is not None:
                    centres.append(T[:3, 3])
        depth_count = sum(
            c.msgcount for c in reader.connections if cfg.node.depth_topic and c.topic == cfg.node.depth_topic
        )
        pts = np.array(centres)
        return {
            "format": "rosbag2",
            "path": str(bag),
            "num_frames": int(img_conn.msgcount),
            "image_sizes": [[intr[0].width, intr[0].height]] if intr else [],
            "intrinsics": [intr[0].to_json()] if intr else [],
            "distorted": bool(intr and not intr[1].is_identity),
            "camera_center_bbox": {"min": pts.min(0).tolist(), "max": pts.max(0).tolist()} if len(pts) else None,
            "frame_id": cfg.node.fixed_frame,
            "has_depth": depth_count > 0,
            "has_masks": False,
            "has_instances": False,
            "has_points": False,
            "topics": {c.topic: {"type": c.msgtype, "count": c.msgcount} for c in reader.connections},
            "duration_s": reader.duration * 1e-9,
        }
