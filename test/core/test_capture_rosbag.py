"""rosbag2 import (sqlite3 and mcap) through the live-capture synchronisation and keyframe code."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ccl_lgs_ros.capture.format import Capture
from ccl_lgs_ros.capture.image_codec import encode_image
from ccl_lgs_ros.capture.importers import CaptureImportError, capture_info, detect_format, import_capture
from ccl_lgs_ros.config import Config
from ccl_lgs_ros.geometry import GL_FROM_CV, pose_to_matrix, rotation_angle

rosbags = pytest.importorskip("rosbags")
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

W, H = 40, 30
K = [50.0, 0.0, 20.0, 0.0, 50.0, 15.0, 0.0, 0.0, 1.0]
T0 = 1_700_000_000.0


def _stamp(ts, t):
    sec = math.floor(t)
    return ts.types["builtin_interfaces/msg/Time"](sec=int(sec), nanosec=int(round((t - sec) * 1e9)))


def _header(ts, t, frame):
    return ts.types["std_msgs/msg/Header"](stamp=_stamp(ts, t), frame_id=frame)


def _image(ts, t, rgb, encoding="rgb8", frame="camera_optical"):
    h, w, step, data = encode_image(rgb, encoding)
    return ts.types["sensor_msgs/msg/Image"](header=_header(ts, t, frame), height=h, width=w, encoding=encoding,
                                             is_bigendian=0, step=step, data=np.frombuffer(data, np.uint8))  # fmt: skip


def _camera_info(ts, t):
    roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return ts.types["sensor_msgs/msg/CameraInfo"](
        header=_header(ts, t, "camera_optical"), height=H, width=W, distortion_model="plumb_bob",
        d=np.zeros(5), k=np.array(K), r=np.eye(3).reshape(-1), p=np.zeros(12), binning_x=0, binning_y=0, roi=roi,
    )  # fmt: skip


def _pose_xyzq(ts, x, q):
    P = ts.types
    return P["geometry_msgs/msg/Pose"](
        position=P["geometry_msgs/msg/Point"](x=float(x[0]), y=float(x[1]), z=float(x[2])),
        orientation=P["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
    )


def _yaw_q(a):
    return (0.0, 0.0, math.sin(a / 2), math.cos(a / 2))


def _truth(t):
    """Body pose (world from camera optical frame) at time t: moving along x, turning slowly."""
    dt = t - T0
    return np.array([0.5 * dt, 0.0, 1.0]), _yaw_q(0.1 * dt)


def _rgb(i):
    rng = np.random.default_rng(i)
    board = (np.indices((H, W)).sum(0) // 4 % 2 * 180).astype(np.uint8)
    return np.clip(board[..., None] + rng.integers(0, 60, (H, W, 3)), 0, 255).astype(np.uint8)


def _write_bag(path, storage, pose_mode="topic"):
    ts = get_typestore(Stores.ROS2_HUMBLE)
    with Writer(path, version=9, storage_plugin=storage) as w:
        img = w.add_connection("/camera/color/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        depth = w.add_connection("/camera/depth", "sensor_msgs/msg/Image", typestore=ts)
        info = w.add_connection("/camera/color/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        if pose_mode == "topic":
            pose = w.add_connection("/camera/pose", "geometry_msgs/msg/PoseStamped", typestore=ts)
        else:
            tf = w.add_connection("/tf", "tf2_msgs/msg/TFMessage", typestore=ts)
            tf_static = w.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=ts)

        def put(conn, t, msg):
            w.write(conn, int(t * 1e9), ts.serialize_cdr(msg, conn.msgtype))

        def transform(t, parent, child, x, q):
            P = ts.types
            tr = P["geometry_msgs/msg/Transform"](
                translation=P["geometry_msgs/msg/Vector3"](x=float(x[0]), y=float(x[1]), z=float(x[2])),
                rotation=P["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
            )
            return P["geometry_msgs/msg/TransformStamped"](header=_header(ts, t, parent), child_frame_id=child,
                                                           transform=tr)  # fmt: skip

        if pose_mode == "tf":
            put(tf_static, T0, ts.types["tf2_msgs/msg/TFMessage"](
                transforms=[transform(T0, "base", "camera_optical", (0, 0, 0), (0, 0, 0, 1))]))  # fmt: skip
        # poses at 20 Hz, one NaN pose in between (ignored)
        for k in range(0, 41):
            t = T0 + 0.05 * k
            x, q = _truth(t)
            if k == 7:
                x = np.array([np.nan, 0, 0])
            if pose_mode == "topic":
                PS = ts.types["geometry_msgs/msg/PoseStamped"]
                put(pose, t, PS(header=_header(ts, t, "map"), pose=_pose_xyzq(ts, x, q)))
            else:
                put(tf, t, ts.types["tf2_msgs/msg/TFMessage"](transforms=[transform(t, "map", "base", x, q)]))
        # images at 10 Hz between poses (interpolated); the first one before any CameraInfo
        put(img, T0 + 0.01, _image(ts, T0 + 0.01, _rgb(0)))
        put(info, T0 + 0.02, _camera_info(ts, T0 + 0.02))
        for k in range(1, 19):
            t = T0 + 0.1 * k + 0.025
            msg = _image(ts, t, _rgb(k))
            if k == 3:
                msg.encoding = "yuv422"  # wrong encoding: skipped, no crash
            put(img, t, msg)
            mm = np.full((H, W), 1000 + k, np.uint16)
            put(depth, t + 0.001, _image(ts, t + 0.001, mm, "16UC1"))  # aligned depth, 1 ms later
        put(img, T0 + 5.0, _image(ts, T0 + 5.0, _rgb(99)))  # long after the last pose: no pose
    return path


def _cfg(pose_source="topic"):
    cfg = Config()
    cfg.node.pose_source = pose_source
    cfg.capture.min_translation = 0.1  # the camera moves 0.05 m per image
    cfg.capture.min_rotation_deg = 45.0
    cfg.capture.blur_rejection = False
    cfg.node.depth_topic = "/camera/depth"
    return cfg


@pytest.mark.parametrize("storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP])
def test_rosbag_import_pose_topic(tmp_path, storage):
    bag = _write_bag(tmp_path / "bag", storage)
    assert detect_format(bag) == "rosbag2"
    cap = import_capture(bag, tmp_path / "out", cfg=_cfg())
    back = Capture.load(tmp_path / "out")
    assert len(back.frames) == len(cap.frames) > 3
    stamps = [f.timestamp for f in back.frames]
    assert all(b - a >= 0.2 - 1e-6 for a, b in zip(stamps, stamps[1:]))  # keyframes: >= 0.1 m apart
    for f in back.frames:
        x, q = _truth(f.timestamp)
        expected = pose_to_matrix(x, q) @ GL_FROM_CV  # optical -> OpenGL
        np.testing.assert_allclose(f.c2w[:3, 3], expected[:3, 3], atol=1e-3)
        assert rotation_angle(f.c2w[:3, :3].T @ expected[:3, :3]) < 0.01
        assert f.intrinsics.fx == 50.0 and (f.intrinsics.width, f.intrinsics.height) == (W, H)
    k = round((back.frames[1].timestamp - T0 - 0.025) / 0.1)
    np.testing.assert_array_equal(back.load_image(1), _rgb(k))
    rejected = back.ccl_extra["import"]["rejected"]
    assert rejected.get("missing CameraInfo") == 1
    assert rejected.get("decode error") == 1
    assert rejected.get("no pose") == 1
    assert rejected.get("too little motion", 0) > 5
    for i, f in enumerate(back.frames):  # each frame got the depth recorded with it
        k = round((f.timestamp - T0 - 0.025) / 0.1)
        np.testing.assert_allclose(back.load_depth(i), (1000 + k) / 1000.0, rtol=1e-6)
    info = capture_info(bag, _cfg())
    assert info["num_frames"] == 20 and info["image_sizes"] == [[W, H]] and info["has_depth"]
    assert info["camera_center_bbox"] is not None


def test_rosbag_import_tf_and_max_frames(tmp_path):
    bag = _write_bag(tmp_path / "bag", StoragePlugin.SQLITE3, pose_mode="tf")
    cap = import_capture(bag, tmp_path / "out", cfg=_cfg("tf"), max_frames=3)
    assert len(cap.frames) == 3
    for f in cap.frames:
        x, q = _truth(f.timestamp)
        np.testing.assert_allclose(f.c2w, pose_to_matrix(x, q) @ GL_FROM_CV, atol=1e-6)
    assert cap.ccl_extra["import"]["pose_source"] == "tf"


def test_rosbag_missing_topic(tmp_path):
    bag = _write_bag(tmp_path / "bag", StoragePlugin.SQLITE3)
    cfg = _cfg()
    cfg.node.pose_topic = "/nope"
    cfg.node.pose_source = "topic"
    # the only pose topic in the bag is used instead of the missing one
    assert len(import_capture(bag, tmp_path / "a", cfg=cfg).frames) > 0
    cfg.node.pose_topic_type = "Odometry"
    cfg2 = _cfg("tf")  # no TF in the bag, falls back to the pose topic
    assert len(import_capture(bag, tmp_path / "b", cfg=cfg2).frames) > 0
    cfg3 = _cfg()
    cfg3.capture.max_image_pixels = 10  # every image is too large
    with pytest.raises(CaptureImportError, match="no frame kept"):
        import_capture(bag, tmp_path / "c", cfg=cfg3)
