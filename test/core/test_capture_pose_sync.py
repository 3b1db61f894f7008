"""capture/pose_sync.py: interpolation, bad poses, gaps, TF tree, image/depth pairing."""

from __future__ import annotations

import numpy as np
import pytest

from ccl_lgs_ros.capture.pose_sync import (
    ImageDepthPairer,
    PoseBuffer,
    TfBuffer,
    camera_c2w_gl,
    extrinsic_from_list,
)
from ccl_lgs_ros.geometry import matrix_to_quat_xyzw, pose_to_matrix, rotation_angle


def _qz(angle: float) -> np.ndarray:
    return np.array([0.0, 0.0, np.sin(angle / 2), np.cos(angle / 2)])


def test_interpolation_linear_and_slerp():
    buf = PoseBuffer(max_gap=1.0)
    assert buf.add(1.0, [0, 0, 0], _qz(0.0))[0]
    assert buf.add(2.0, [1, 2, 0], _qz(1.0))[0]
    T = buf.lookup(1.25)
    np.testing.assert_allclose(T[:3, 3], [0.25, 0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(T[:3, :3], pose_to_matrix([0, 0, 0], _qz(0.25))[:3, :3], atol=1e-12)
    np.testing.assert_allclose(buf.lookup(2.0)[:3, 3], [1, 2, 0])  # exact stamp
    T, reason = buf.lookup_with_reason(1.5)
    assert reason == "interpolated" and abs(rotation_angle(T[:3, :3]) - 0.5) < 1e-9


def test_out_of_order_insertion():
    buf = PoseBuffer(max_gap=1.0)
    for t in (3.0, 1.0, 2.0):
        buf.add(t, [t, 0, 0], _qz(0))
    assert buf.span == (1.0, 3.0)
    np.testing.assert_allclose(buf.lookup(2.5)[:3, 3], [2.5, 0, 0])


def test_gaps_and_extrapolation():
    buf = PoseBuffer(max_gap=0.1)
    buf.add(0.0, [0, 0, 0], _qz(0))
    buf.add(1.0, [1, 0, 0], _qz(0))
    T, reason = buf.lookup_with_reason(0.5)
    assert T is None and reason.startswith("stale")
    T, reason = buf.lookup_with_reason(1.05)
    assert T is None and reason.startswith("future")
    T, reason = buf.lookup_with_reason(-0.05)
    assert T is None and reason.startswith("stale")
    assert PoseBuffer(0.1).lookup_with_reason(0.0) == (None, "no poses")
    held = PoseBuffer(max_gap=0.1, max_extrapolation=0.1)
    held.add(1.0, [1, 0, 0], _qz(0))
    np.testing.assert_allclose(held.lookup(1.05)[:3, 3], [1, 0, 0])
    assert held.lookup(1.2) is None


def test_rejects_bad_poses():
    buf = PoseBuffer(max_gap=0.1)
    ok, reason = buf.add(0.0, [np.nan, 0, 0], _qz(0))
    assert not ok and "NaN" in reason
    ok, reason = buf.add(0.0, [0, 0, 0], [0, 0, 0, 2.0])
    assert not ok and "not 1" in reason
    ok, reason = buf.add(0.0, [0, 0, 0], [0, 0, 0, 0])
    assert not ok
    sheared = np.eye(4)
    sheared[0, 1] = 0.3
    ok, reason = buf.add_matrix(0.0, sheared)
    assert not ok and "orthonormal" in reason
    nan = np.eye(4)
    nan[2, 2] = np.nan
    assert not buf.add_matrix(0.0, nan)[0]
    assert len(buf) == 0
    assert buf.add_matrix(0.0, pose_to_matrix([1, 2, 3], _qz(0.3)))[0]
    np.testing.assert_allclose(buf.lookup(0.0), pose_to_matrix([1, 2, 3], _qz(0.3)), atol=1e-12)


def test_capacity_and_prune():
    buf = PoseBuffer(max_gap=1.0, capacity=3)
    for t in range(5):
        buf.add(float(t), [t, 0, 0], _qz(0))
    assert buf.span == (2.0, 4.0)
    buf.prune_before(3.5)
    assert buf.span == (3.0, 4.0)


def test_tf_tree_lookup():
    tf = TfBuffer(max_gap=1.0)
    map_from_odom = pose_to_matrix([1, 0, 0], _qz(0.5))
    tf.add("map", "odom", 0.0, [1, 0, 0], _qz(0.5), static=True)
    for t in (0.0, 1.0):
        tf.add("odom", "base", t, [t, 0, 0], _qz(0.0))
    tf.add("base", "/camera_optical", 0.0, [0, 0, 0.5], [0.5, -0.5, 0.5, -0.5], static=True)
    T = tf.lookup("map", "camera_optical", 0.9)
    expected = map_from_odom @ pose_to_matrix([0.9, 0, 0], _qz(0)) @ pose_to_matrix([0, 0, 0.5], [0.5, -0.5, 0.5, -0.5])
    np.testing.assert_allclose(T, expected, atol=1e-12)
    # the inverse direction and a sibling lookup
    np.testing.assert_allclose(tf.lookup("camera_optical", "map", 0.9), np.linalg.inv(expected), atol=1e-12)
    T, reason = tf.lookup_with_reason("map", "camera_optical", 5.0)
    assert T is None and "future" in reason
    tight = TfBuffer(max_gap=0.2)
    tight.add("odom", "base", 0.0, [0, 0, 0], _qz(0.0))
    tight.add("odom", "base", 1.0, [1, 0, 0], _qz(0.0))
    T, reason = tight.lookup_with_reason("odom", "base", 0.5)  # both poses 0.5 s away
    assert T is None and "stale" in reason
    T, reason = tf.lookup_with_reason("map", "unknown_frame", 0.0)
    assert T is None and "no transform" in reason


def test_camera_pose_conversion():
    # An optical frame looking along world +x (z forward), with image-down along world -z.
    R_optical = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)
    world_from_body = pose_to_matrix([1, 2, 3], matrix_to_quat_xyzw(np.eye(3)))
    body_from_optical = np.eye(4)
    body_from_optical[:3, :3] = R_optical
    c2w = camera_c2w_gl(world_from_body, body_from_optical)
    # OpenGL: camera looks along -z, y is up.
    np.testing.assert_allclose(-c2w[:3, 2], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 1], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 0], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 3], [1, 2, 3])
    np.testing.assert_allclose(extrinsic_from_list([0, 0, 0, 0, 0, 0, 1]), np.eye(4))
    with pytest.raises(ValueError):
        extrinsic_from_list([0, 0, 0])


def test_image_depth_pairer():
    pairer = ImageDepthPairer(tolerance=0.02, use_depth=True)
    assert pairer.push_image(1.0, "rgb1") == []  # waits for its depth
    assert pairer.push_depth(1.001, "d1") == [(1.0, "rgb1", "d1")]
    assert pairer.push_depth(2.0, "d2") == []  # depth first, image later
    assert pairer.push_image(2.0, "rgb2") == [(2.0, "rgb2", "d2")]
    assert pairer.push_image(3.0, "rgb3") == []
    assert pairer.push_image(3.5, "rgb4") == [(3.0, "rgb3", None)]  # timed out without depth
    assert pairer.flush() == [(3.5, "rgb4", None)]
    plain = ImageDepthPairer(tolerance=0.02, use_depth=False)
    assert plain.push_image(1.0, "x") == [(1.0, "x", None)]
