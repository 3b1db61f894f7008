"""ros/conversions.py with hand-built messages (no DDS needed)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.timeout(60)]

conv = pytest.importorskip("ccl_lgs_ros.ros.conversions")
from builtin_interfaces.msg import Time  # noqa: E402
from geometry_msgs.msg import PoseStamped, TransformStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField  # noqa: E402

from ccl_lgs_ros.geometry import matrix_to_quat_xyzw, pose_to_matrix  # noqa: E402
from ccl_lgs_ros.query.engine import Instance, QueryResult  # noqa: E402
from ccl_lgs_ros.query.shapes import Box  # noqa: E402


def _image(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    row = arr.reshape(h, -1)
    if bigendian:
        row = row.astype(row.dtype.newbyteorder(">"))
    raw = row.view(np.uint8).reshape(h, -1)
    raw = np.concatenate([raw, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    return Image(
        height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=raw.shape[1], data=raw.tobytes()
    )


RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "encoding,arr",
    [
        ("rgb8", RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)),
        ("bgr8", RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)),
        ("rgba8", RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)),
        ("bgra8", RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)),
        ("mono8", RNG.integers(0, 256, (5, 7), dtype=np.uint8)),
        ("16UC1", RNG.integers(0, 65535, (5, 7), dtype=np.uint16)),
        ("32FC1", RNG.random((5, 7)).astype(np.float32)),
    ],
)
@pytest.mark.parametrize("pad", [0, 3])
def test_decode_image_with_padding(encoding, arr, pad):
    out = conv.decode_image_msg(_image(arr, encoding, pad), use_cv_bridge=False)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == arr.dtype


def test_decode_big_endian_depth():
    arr = RNG.integers(0, 65535, (4, 6), dtype=np.uint16)
    np.testing.assert_array_equal(conv.decode_image_msg(_image(arr, "16UC1", 2, bigendian=True)), arr)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1", "32FC1"])
def test_cv_bridge_gives_identical_arrays(encoding):
    if not conv.HAVE_CV_BRIDGE:
        pytest.skip("cv_bridge is not importable here (no system ROS; the index has no cv_bridge wheel)")
    shape = {"mono8": (5, 7), "16UC1": (5, 7), "32FC1": (5, 7)}.get(encoding, (5, 7, 4 if "a" in encoding else 3))
    dtype = {"16UC1": np.uint16, "32FC1": np.float32}.get(encoding, np.uint8)
    arr = (RNG.random(shape) * 200).astype(dtype)
    msg = _image(arr, encoding, pad=4)
    np.testing.assert_array_equal(
        conv.decode_image_msg(msg, use_cv_bridge=True), conv.decode_image_msg(msg, use_cv_bridge=False)
    )


def test_colour_and_depth_helpers():
    rgb = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(conv.image_msg_to_rgb(_image(rgb[..., ::-1], "bgr8")), rgb)
    mm = np.array([[0, 1000], [2500, 65535]], np.uint16)
    np.testing.assert_allclose(conv.depth_msg_to_metres(_image(mm, "16UC1")), mm * 0.001, rtol=1e-6)
    m = np.array([[np.nan, 1.5], [-1.0, np.inf]], np.float32)
    np.testing.assert_array_equal(conv.depth_msg_to_metres(_image(m, "32FC1")), [[0, 1.5], [0, 0]])
    with pytest.raises(conv.ConversionError, match="depth"):
        conv.depth_msg_to_metres(_image(rgb, "rgb8"))


def test_bad_images_raise_clear_errors():
    rgb = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    good = _image(rgb, "rgb8")
    bad_enc = _image(rgb, "yuv422")
    with pytest.raises(conv.ConversionError, match="unsupported image encoding"):
        conv.decode_image_msg(bad_enc)
    short_step = _image(rgb, "rgb8")
    short_step.step = 10
    with pytest.raises(conv.ConversionError, match="step"):
        conv.decode_image_msg(short_step)
    trunc = Image(height=4, width=5, encoding="rgb8", step=15, data=good.data[:-7])
    with pytest.raises(conv.ConversionError, match="bytes"):
        conv.decode_image_msg(trunc)
    with pytest.raises(conv.ConversionError, match="max_pixels"):
        conv.decode_image_msg(good, max_pixels=10)


def test_compressed_image():
    rgb = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    assert ok
    msg = CompressedImage(format="png", data=png.tobytes())
    np.testing.assert_array_equal(conv.compressed_msg_to_rgb(msg), rgb)
    with pytest.raises(conv.ConversionError):
        conv.compressed_msg_to_rgb(CompressedImage(format="jpeg", data=b"not an image"))


def test_camera_info():
    msg = CameraInfo(
        width=640,
        height=480,
        distortion_model="plumb_bob",
        k=[500.0, 0, 320, 0, 510.0, 240, 0, 0, 1],
        d=[0.1, -0.05, 0.001, 0.002, 0.01],
    )
    intr, dist = conv.camera_info_to_intrinsics(msg)
    assert (intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height) == (500, 510, 320, 240, 640, 480)
    assert dist.model == "opencv" and dist.coeffs == (0.1, -0.05, 0.001, 0.002, 0.01)
    with pytest.raises(conv.ConversionError, match="not calibrated"):
        conv.camera_info_to_intrinsics(CameraInfo(width=640, height=480))
    back = conv.intrinsics_to_camera_info(intr, conv.make_header("cam"))
    assert conv.camera_info_to_intrinsics(back)[0] == intr


def _pose_values():
    q = np.array([0.1, -0.2, 0.3, 0.9])
    q /= np.linalg.norm(q)
    return np.array([1.0, -2.0, 0.5]), q


def test_pose_messages_to_matrix():
    t, q = _pose_values()
    want = pose_to_matrix(t, q)
    ps = PoseStamped()
    ps.header.frame_id, ps.header.stamp = "map", Time(sec=12, nanosec=500_000_000)
    ps.pose = conv.matrix_to_pose_msg(want)
    od = Odometry()
    od.header = ps.header
    od.pose.pose = ps.pose
    ts = TransformStamped()
    ts.header = ps.header
    ts.transform = conv.matrix_to_transform_msg(want)
    for msg in (ps, od, ts):
        stamp, frame, T = conv.pose_source_to_matrix(msg)
        assert stamp == pytest.approx(12.5) and frame == "map"
        np.testing.assert_allclose(T, want, atol=1e-9)
    ps.pose.orientation.x = float("nan")
    with pytest.raises(conv.ConversionError, match="NaN"):
        conv.pose_source_to_matrix(ps)
    ps.pose.orientation.x, ps.pose.orientation.w = 0.0, 3.0  # not a unit quaternion
    with pytest.raises(conv.ConversionError, match="norm"):
        conv.pose_source_to_matrix(ps)


def test_optical_to_capture_pose():
    # Optical frame looking along world +x (z forward), image down = world -z, right = world -y.
    R = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, [1, 2, 3]
    c2w = conv.optical_to_capture_pose(T)
    np.testing.assert_allclose(-c2w[:3, 2], [1, 0, 0], atol=1e-12)  # OpenGL looks along -z
    np.testing.assert_allclose(c2w[:3, 1], [0, 0, 1], atol=1e-12)  # OpenGL y is up
    np.testing.assert_allclose(c2w[:3, 3], [1, 2, 3])
    body = pose_to_matrix([0.1, 0, 0], [0, 0, 0, 1])
    np.testing.assert_allclose(conv.optical_to_capture_pose(np.eye(4), body)[:3, 3], [0.1, 0, 0])


def test_stamps():
    for t in (0.0, 1.25, 1e9 + 0.999999999):
        assert conv.stamp_to_sec(conv.sec_to_stamp(t)) == pytest.approx(t, abs=1e-9 * max(1, t))


def test_point_cloud_round_trip():
    pts = RNG.random((50, 3)).astype(np.float32)
    cols = RNG.integers(0, 256, (50, 3), dtype=np.uint8)
    rel = RNG.random(50).astype(np.float32)
    inst = np.arange(50, dtype=np.uint32) % 3
    msg = conv.arrays_to_cloud(pts, conv.make_header("map"), colors=cols, fields={"relevance": rel, "instance": inst})
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb", "relevance", "instance"]
    assert msg.fields[3].datatype == PointField.FLOAT32 and msg.point_step == 24
    back = conv.cloud_to_arrays(msg)
    np.testing.assert_array_equal(back["points"], pts)
    np.testing.assert_array_equal(back["colors"], cols)
    np.testing.assert_array_equal(back["relevance"], rel)
    np.testing.assert_array_equal(back["instance"], inst)
    # Float colours 0..1 pack to the nearest byte.
    msg = conv.arrays_to_cloud(pts[:1], conv.make_header("map"), colors=np.array([[1.0, 0.5, 0.0]]))
    assert conv.cloud_to_arrays(msg)["colors"].tolist() == [[255, 128, 0]]


def test_pack_rgb_bits_and_odd_values():
    cols = RNG.integers(0, 256, (100, 3), dtype=np.uint8)
    packed = conv.pack_rgb(cols)
    c = cols.astype(np.uint32)
    assert packed.dtype == np.uint32
    np.testing.assert_array_equal(packed, (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2])
    np.testing.assert_array_equal(conv.unpack_rgb(packed), cols)
    # Floats round to the nearest byte; NaN and negatives give 0, +inf and > 1 give 255.
    odd = np.array([[np.nan, np.inf, -np.inf], [-0.5, 2.0, 0.5 / 255 - 1e-9], [0.5, 1.0, 0.0]])
    assert conv.unpack_rgb(conv.pack_rgb(odd)).tolist() == [[0, 255, 0], [0, 255, 0], [128, 255, 0]]


def test_hand_built_cloud_with_padding_and_rows():
    # 2 x 3 organised cloud: x y z at 0/4/8, 4 bytes padding, intensity float64 at 16, row padding 8.
    rec = np.zeros(
        (2, 3),
        dtype={
            "names": ["x", "y", "z", "i"],
            "formats": ["<f4"] * 3 + ["<f8"],
            "offsets": [0, 4, 8, 16],
            "itemsize": 24,
        },
    )
    rec["x"], rec["y"], rec["z"] = np.arange(6).reshape(2, 3), 1.0, 2.0
    rec["i"] = np.arange(6).reshape(2, 3) * 0.5
    raw = np.concatenate([rec.view(np.uint8).reshape(2, 72), np.zeros((2, 8), np.uint8)], axis=1)
    msg = PointCloud2(height=2, width=3, point_step=24, row_step=80, is_bigendian=False, data=raw.tobytes())
    msg.fields = [PointField(name=n, offset=o, datatype=PointField.FLOAT32, count=1) for n, o in zip("xyz", (0, 4, 8))]
    msg.fields.append(PointField(name="i", offset=16, datatype=PointField.FLOAT64, count=1))
    out = conv.cloud_to_arrays(msg)
    np.testing.assert_array_equal(out["points"][:, 0], np.arange(6))
    np.testing.assert_array_equal(out["i"], np.arange(6) * 0.5)
    msg.data = raw.tobytes()[:-20]
    with pytest.raises(conv.ConversionError, match="bytes"):
        conv.cloud_to_arrays(msg)


def _instance(center, score=0.8, n=30):
    pts = RNG.normal(center, 0.02, (n, 3)).astype(np.float32)
    rot = np.eye(3)
    return Instance(
        score=score,
        level="wp",
        num_gaussians=n,
        centroid=np.asarray(center, float),
        box=Box(np.asarray(center, float), rot, np.array([0.1, 0.2, 0.3]), np.ones(3)),
        aabb_min=pts.min(0),
        aabb_max=pts.max(0),
        gaussian_ids=np.arange(n),
        points=pts,
        point_colors=RNG.random((n, 3)).astype(np.float32),
        means=pts,
        quats=np.tile([1.0, 0, 0, 0], (n, 1)).astype(np.float32),
        scales=np.full((n, 3), 0.01, np.float32),
        opacities=np.full(n, 0.9, np.float32),
        colors=RNG.random((n, 3)).astype(np.float32),
        relevance=np.full(n, score, np.float32),
    )


def test_query_result_to_response_and_markers():
    from ccl_lgs_interfaces.srv import SemanticQuery

    insts = [_instance([1.0, 0.0, 0.5]), _instance([0.0, 2.0, 0.5], 0.6, 20)]
    result = QueryResult("red mug", True, 0.9, 0.5, "wp", "map", insts, 50, ["object"])
    # target frame: rotated 90 deg about z and shifted.
    T = pose_to_matrix([0.5, 0, 0], [0, 0, math.sin(math.pi / 4), math.cos(math.pi / 4)])
    resp = conv.fill_query_response(
        SemanticQuery.Response(), result, conv.make_header("base"), T, include_gaussians=True
    )
    assert resp.success and resp.found and len(resp.instances) == 2
    i0 = resp.instances[0]
    assert i0.label == "red mug" and i0.instance_id == 0 and i0.score == pytest.approx(0.8)
    assert (i0.centroid.x, i0.centroid.y, i0.centroid.z) == pytest.approx((0.5, 1.0, 0.5))
    q = [i0.box_pose.orientation.x, i0.box_pose.orientation.y, i0.box_pose.orientation.z, i0.box_pose.orientation.w]
    np.testing.assert_allclose(q, matrix_to_quat_xyzw(T[:3, :3]), atol=1e-9)
    assert (i0.box_size.x, i0.box_size.y, i0.box_size.z) == pytest.approx((0.1, 0.2, 0.3))
    g = i0.gaussians
    assert g.count == 30 and len(g.means) == 90 and len(g.quats) == 120 and len(g.relevance) == 30
    # identity Gaussians rotated by T: their quaternion (wxyz) is T's rotation.
    np.testing.assert_allclose(np.asarray(g.quats[:4])[[1, 2, 3, 0]], matrix_to_quat_xyzw(T[:3, :3]), atol=1e-6)
    cloud = conv.cloud_to_arrays(resp.cloud)
    assert cloud["points"].shape == (50, 3)
    np.testing.assert_allclose(cloud["points"][:30], insts[0].points @ T[:3, :3].T + T[:3, 3], atol=1e-5)
    assert cloud["instance"].tolist() == [0] * 30 + [1] * 20
    assert cloud["relevance"][0] == pytest.approx(0.8)
    assert resp.cloud.header.frame_id == "base"
    markers = conv.instances_to_markers(resp.instances, conv.make_header("base"))
    assert len(markers.markers) == 1 + 3 * 2
    assert "red mug" in markers.markers[2].text
    # no Gaussians unless asked
    resp = conv.fill_query_response(SemanticQuery.Response(), result, conv.make_header("map"))
    assert resp.instances[0].gaussians.count == 0


@pytest.mark.parametrize("clouds", [conv.CLOUDS_BOTH, conv.CLOUDS_COMBINED, conv.CLOUDS_PER_INSTANCE])
def test_response_carries_the_clouds_asked_for(clouds):
    from ccl_lgs_interfaces.srv import SemanticQuery

    insts = [_instance([1.0, 0.0, 0.5]), _instance([0.0, 2.0, 0.5], 0.6, 20)]
    result = QueryResult("red mug", True, 0.9, 0.5, "wp", "map", insts, 50, ["object"])
    req = SemanticQuery.Request()
    assert (req.CLOUDS_BOTH, req.CLOUDS_COMBINED, req.CLOUDS_PER_INSTANCE) == (0, 1, 2)  # the .srv constants
    resp = conv.fill_query_response(SemanticQuery.Response(), result, conv.make_header("map"), clouds=clouds)
    combined = conv.cloud_to_arrays(resp.cloud)
    own = [conv.cloud_to_arrays(i.points) for i in resp.instances]
    want_combined = 50 if clouds != conv.CLOUDS_PER_INSTANCE else 0
    want_own = [30, 20] if clouds != conv.CLOUDS_COMBINED else [0, 0]
    assert resp.cloud.width == want_combined and combined["points"].shape == (want_combined, 3)
    assert "instance" in combined and "relevance" in combined  # fields declared even when empty
    assert [o["points"].shape[0] for o in own] == want_own and all("relevance" in o for o in own)
    # centroids and boxes are there whichever clouds were asked for
    assert resp.instances[1].centroid.y == pytest.approx(2.0) and resp.instances[0].box_size.z == pytest.approx(0.3)
    with pytest.raises(conv.ConversionError, match="clouds is 3"):
        conv.fill_query_response(SemanticQuery.Response(), result, conv.make_header("map"), clouds=3)


def test_empty_result():
    from ccl_lgs_interfaces.srv import SemanticQuery

    result = QueryResult("unicorn", False, 0.1, 0.5, "wp", "map", [], 0, [], "no Gaussian is above the threshold")
    resp = conv.fill_query_response(SemanticQuery.Response(), result, conv.make_header("map"))
    assert resp.success and not resp.found and resp.cloud.width == 0 and "threshold" in resp.message
