"""Every ROS message <-> numpy / library conversion of the node, in one module.

- images: ``sensor_msgs/Image`` and ``CompressedImage`` -> numpy (cv_bridge where importable,
  else :mod:`ccl_lgs_ros.capture.image_codec`, which gives the same arrays);
- ``CameraInfo`` -> :class:`~ccl_lgs_ros.capture.format.Intrinsics` + distortion;
- poses (``PoseStamped``, ``Odometry``, ``TransformStamped``) <-> 4x4 matrices; the optical ->
  OpenGL axis change of capture poses goes through :func:`optical_to_capture_pose` only;
- ``PointCloud2`` <-> numpy (x y z, rgb packed in a float32 like PCL, extra scalar fields);
- :class:`~ccl_lgs_ros.query.engine.QueryResult` -> ``SemanticQuery`` response,
  ``ObjectInstance``, ``GaussianArray``, and an RViz ``MarkerArray`` (and back, for the
  offscreen RViz picture: :func:`markers_to_viz`).

Everything that can fail on bad input raises :class:`ConversionError` (a ``ValueError``) with a
message naming the problem; callers log it and drop the message.
"""

from __future__ import annotations

import array
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion, Transform, Vector3
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ..capture import image_codec
from ..capture.camera_model import Distortion, intrinsics_from_camera_info
from ..capture.format import Intrinsics
from ..capture.pose_sync import camera_c2w_gl, check_pose
from ..geometry import matrix_to_quat_xyzw, pose_to_matrix, quat_multiply_wxyz, rotmat_to_quat_wxyz

try:  # cv_bridge is part of every system ROS 2, not of the index's wheels
    from cv_bridge import CvBridge as _CvBridge
except Exception:  # noqa: BLE001 - any failure (missing, broken binary) means "not available"
    _CvBridge = None

HAVE_CV_BRIDGE = _CvBridge is not None


class ConversionError(ValueError):
    """A message cannot be converted; the text says why."""


# ---------------------------------------------------------------------------------- time


def stamp_to_sec(stamp: Any) -> float:
    """``builtin_interfaces/Time`` -> float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def sec_to_stamp(t: float) -> Time:
    sec = math.floor(t)
    nsec = int(round((t - sec) * 1e9))
    if nsec >= 1_000_000_000:
        sec, nsec = sec + 1, nsec - 1_000_000_000
    return Time(sec=int(sec), nanosec=nsec)


def make_header(frame_id: str, stamp: Time | None = None) -> Header:
    return Header(frame_id=frame_id, stamp=stamp if stamp is not None else Time())


# ---------------------------------------------------------------------------------- images


def decode_image_msg(msg: Any, max_pixels: int | None = None, use_cv_bridge: bool | None = None) -> np.ndarray:
    """``sensor_msgs/Image`` -> array in the message's own channel order (``passthrough``).

    The size limit and the byte layout are checked before anything is decoded, so an oversized or
    inconsistent message costs nothing. ``use_cv_bridge=None`` uses cv_bridge when importable.
    """
    enc = str(msg.encoding)
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if max_pixels is not None and h * w > max_pixels:
        raise ConversionError(f"image {w}x{h} has more than max_pixels={max_pixels} pixels")
    bridge = HAVE_CV_BRIDGE if use_cv_bridge is None else (use_cv_bridge and HAVE_CV_BRIDGE)
    try:
        if bridge:
            # Validate the layout with our own checks first: cv_bridge's messages on bad input
            # are less helpful and some versions read past a short buffer.
            image_codec.decode_image(enc, h, w, step, msg.data, bool(msg.is_bigendian))
            return np.asarray(_CvBridge().imgmsg_to_cv2(msg, desired_encoding="passthrough"))
        return image_codec.decode_image(enc, h, w, step, msg.data, bool(msg.is_bigendian), max_pixels=max_pixels)
    except image_codec.ImageDecodeError as exc:
        raise ConversionError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - cv_bridge raises its own error types
        raise ConversionError(f"cannot decode image ({enc} {w}x{h}): {exc}") from None


def image_msg_to_rgb(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """Colour ``sensor_msgs/Image`` -> RGB ``uint8 [H,W,3]``."""
    arr = decode_image_msg(msg, max_pixels)
    try:
        return image_codec.to_rgb(arr, str(msg.encoding))
    except image_codec.ImageDecodeError as exc:
        raise ConversionError(str(exc)) from None


def compressed_msg_to_rgb(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg/png) -> RGB ``uint8 [H,W,3]``."""
    try:
        return image_codec.decode_compressed(str(msg.format), bytes(msg.data), max_pixels=max_pixels)
    except image_codec.ImageDecodeError as exc:
        raise ConversionError(str(exc)) from None


def depth_msg_to_metres(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """Depth ``Image`` (``16UC1`` mm or ``32FC1`` m) -> metres ``float32 [H,W]`` (0 = invalid)."""
    arr = decode_image_msg(msg, max_pixels)
    try:
        return image_codec.depth_to_metres(arr, str(msg.encoding))
    except image_codec.ImageDecodeError as exc:
        raise ConversionError(str(exc)) from None


def rgb_to_image_msg(rgb: np.ndarray, header: Header, encoding: str = "rgb8") -> Any:
    """numpy image -> ``sensor_msgs/Image`` (``encoding`` as in :data:`image_codec.ENCODINGS`)."""
    from sensor_msgs.msg import Image

    h, w, step, data = image_codec.encode_image(rgb, encoding)
    return Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=step, data=data)


# ---------------------------------------------------------------------------------- camera info


def camera_info_to_intrinsics(msg: Any) -> tuple[Intrinsics, Distortion]:
    """``sensor_msgs/CameraInfo`` -> (pinhole intrinsics, lens distortion).

    Raises:
        ConversionError: uncalibrated (zero K), bad size or unknown distortion model.
    """
    try:
        return intrinsics_from_camera_info(msg.width, msg.height, list(msg.k), list(msg.d), str(msg.distortion_model))
    except ValueError as exc:
        raise ConversionError(str(exc)) from None


def intrinsics_to_camera_info(intr: Intrinsics, header: Header) -> Any:
    from sensor_msgs.msg import CameraInfo

    k = [intr.fx, 0.0, intr.cx, 0.0, intr.fy, intr.cy, 0.0, 0.0, 1.0]
    p = [intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    d = (list(intr.distortion) + [0.0] * 5)[:5]
    return CameraInfo(
        header=header,
        width=int(intr.width),
        height=int(intr.height),
        distortion_model="plumb_bob",
        d=[float(v) for v in d],
        k=k,
        r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
        p=p,
    )


# ---------------------------------------------------------------------------------- poses


def _tq_to_matrix(t: Any, q: Any, what: str) -> np.ndarray:
    trans = [float(t.x), float(t.y), float(t.z)]
    quat = [float(q.x), float(q.y), float(q.z), float(q.w)]
    reason = check_pose(trans, quat)
    if reason is not None:
        raise ConversionError(f"{what}: {reason}")
    return pose_to_matrix(np.asarray(trans), np.asarray(quat))


def pose_to_matrix_msg(pose: Pose) -> np.ndarray:
    """``geometry_msgs/Pose`` -> 4x4 (raises on NaN / non-unit quaternion)."""
    return _tq_to_matrix(pose.position, pose.orientation, "pose")


def transform_to_matrix_msg(tf: Transform) -> np.ndarray:
    return _tq_to_matrix(tf.translation, tf.rotation, "transform")


def pose_source_to_matrix(msg: Any) -> tuple[float, str, np.ndarray]:
    """``PoseStamped`` / ``Odometry`` / ``TransformStamped`` -> ``(stamp_s, parent_frame, T)``.

    ``T`` is ``parent_from_child`` (the body or camera pose in the parent frame).
    """
    name = type(msg).__name__
    if name == "PoseStamped":
        return stamp_to_sec(msg.header.stamp), msg.header.frame_id, pose_to_matrix_msg(msg.pose)
    if name == "Odometry":
        return stamp_to_sec(msg.header.stamp), msg.header.frame_id, pose_to_matrix_msg(msg.pose.pose)
    if name == "TransformStamped":
        return stamp_to_sec(msg.header.stamp), msg.header.frame_id, transform_to_matrix_msg(msg.transform)
    raise ConversionError(f"unsupported pose message type {name}")


def matrix_to_pose_msg(T: np.ndarray) -> Pose:
    T = np.asarray(T, dtype=np.float64)
    q = matrix_to_quat_xyzw(T[:3, :3])
    return Pose(
        position=Point(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
        orientation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
    )


def matrix_to_transform_msg(T: np.ndarray) -> Transform:
    p = matrix_to_pose_msg(T)
    return Transform(translation=Vector3(x=p.position.x, y=p.position.y, z=p.position.z), rotation=p.orientation)


def optical_to_capture_pose(world_from_optical: np.ndarray, body_from_optical: np.ndarray | None = None) -> np.ndarray:
    """Pose of a ROS camera optical frame (x right, y down, z forward) -> capture pose
    (camera-to-world, OpenGL axes). The node's only place for this axis change
    (it delegates to :func:`ccl_lgs_ros.capture.pose_sync.camera_c2w_gl` ->
    :func:`ccl_lgs_ros.geometry.optical_to_opengl_c2w`)."""
    return camera_c2w_gl(world_from_optical, body_from_optical)


# ---------------------------------------------------------------------------------- point clouds

_NP_OF_FIELD = {
    PointField.INT8: np.int8,
    PointField.UINT8: np.uint8,
    PointField.INT16: np.int16,
    PointField.UINT16: np.uint16,
    PointField.INT32: np.int32,
    PointField.UINT32: np.uint32,
    PointField.FLOAT32: np.float32,
    PointField.FLOAT64: np.float64,
}
_FIELD_OF_NP = {np.dtype(v).str.lstrip("<>|="): k for k, v in _NP_OF_FIELD.items()}


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """Colours ``[N,3]`` (float 0..1 or uint8) -> ``uint32 [N]`` 0x00RRGGBB (PCL's packed rgb)."""
    c = np.asarray(colors).reshape(-1, 3)
    if c.dtype != np.uint8:
        f = c.astype(np.float64) * 255.0 + 0.5
        np.fmax(f, 0.0, out=f)  # fmax / fmin drop NaN: NaN -> 0, +inf -> 255, -inf -> 0
        np.fmin(f, 255.0, out=f)
        c = f.astype(np.uint8)
    # Little-endian bytes (b, g, r, 0) read as one uint32 are 0x00RRGGBB.
    out = np.zeros((c.shape[0], 4), dtype=np.uint8)
    out[:, 0], out[:, 1], out[:, 2] = c[:, 2], c[:, 1], c[:, 0]
    return out.view("<u4").reshape(-1).astype(np.uint32, copy=False)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_rgb` (accepts the float32 view too) -> ``uint8 [N,3]``."""
    p = np.ascontiguousarray(packed)
    if p.dtype != np.uint32:
        p = p.view(np.uint32) if p.dtype.itemsize == 4 else p.astype(np.uint32)
    return np.stack([(p >> 16) & 255, (p >> 8) & 255, p & 255], axis=1).astype(np.uint8)


def arrays_to_cloud(
    points: np.ndarray,  # [N, 3]
    header: Header,
    colors: np.ndarray | None = None,  # [N, 3] float 0..1 or uint8
    fields: Mapping[str, np.ndarray] | None = None,  # name -> [N] scalar (float32 / uint32 / ...)
) -> PointCloud2:
    """numpy -> unordered ``PointCloud2`` (``height = 1``): x y z float32, ``rgb`` as a float32
    holding the packed 0x00RRGGBB bits (what RViz and PCL expect), then the extra fields."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    n = pts.shape[0]
    dtype_fields: list[tuple[str, Any]] = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        dtype_fields.append(("rgb", "<u4"))
    extra = {k: np.asarray(v).reshape(-1) for k, v in (fields or {}).items()}
    for name, arr in extra.items():
        if arr.shape[0] != n:
            raise ConversionError(f"field {name!r} has {arr.shape[0]} values for {n} points")
        if arr.dtype.str.lstrip("<>|=") not in _FIELD_OF_NP:
            raise ConversionError(f"field {name!r} has unsupported dtype {arr.dtype}")
        dtype_fields.append((name, arr.dtype.newbyteorder("<")))
    rec = np.empty(n, dtype=dtype_fields)  # packed fields, every one written below
    rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
    if colors is not None:
        rec["rgb"] = pack_rgb(np.asarray(colors).reshape(-1, 3))
    for name, arr in extra.items():
        rec[name] = arr
    msg = PointCloud2(header=header, height=1, width=n, is_bigendian=False, is_dense=bool(np.isfinite(pts).all()))
    names, layout = rec.dtype.names, rec.dtype.fields
    assert names is not None and layout is not None  # a structured dtype, built above
    for name in names:
        dt, offset = layout[name][:2]
        datatype = PointField.FLOAT32 if name == "rgb" else _FIELD_OF_NP[dt.str.lstrip("<>|=")]
        msg.fields.append(PointField(name=name, offset=int(offset), datatype=datatype, count=1))
    msg.point_step = rec.dtype.itemsize
    msg.row_step = msg.point_step * n
    msg.data = rec.tobytes()
    return msg


def cloud_to_arrays(msg: PointCloud2) -> dict[str, np.ndarray]:
    """``PointCloud2`` -> ``{"points": float32 [N,3], "colors": uint8 [N,3] (if rgb/rgba),
    <other field>: [N] ...}``. Handles any offsets, padding, row_step, endianness and height."""
    n = int(msg.width) * int(msg.height)
    names, formats, offsets = [], [], []
    endian: Literal["<", ">"] = ">" if msg.is_bigendian else "<"
    for f in msg.fields:
        if f.datatype not in _NP_OF_FIELD:
            raise ConversionError(f"field {f.name!r} has unknown datatype {f.datatype}")
        dt = np.dtype(_NP_OF_FIELD[f.datatype]).newbyteorder(endian)
        names.append(f.name)
        formats.append(dt if f.count <= 1 else (dt, (int(f.count),)))
        offsets.append(int(f.offset))
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    try:
        dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})
    except (ValueError, TypeError) as exc:
        raise ConversionError(f"inconsistent PointCloud2 fields: {exc}") from None
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if row_step < point_step * int(msg.width) or raw.size < row_step * int(msg.height):
        raise ConversionError(
            f"PointCloud2 has {raw.size} bytes; {msg.height} rows of row_step {row_step} "
            f"(width {msg.width} x point_step {point_step}) are needed"
        )
    rows = raw[: row_step * int(msg.height)].reshape(int(msg.height), row_step)[:, : point_step * int(msg.width)]
    rec = np.ascontiguousarray(rows).reshape(-1).view(dtype).reshape(n)
    out: dict[str, np.ndarray] = {}
    if all(c in names for c in "xyz"):
        out["points"] = np.stack([rec[c].astype(np.float32) for c in "xyz"], axis=1)
    for name in names:
        if name in ("x", "y", "z"):
            continue
        if name in ("rgb", "rgba"):
            bits = np.ascontiguousarray(rec[name]).astype(rec[name].dtype.newbyteorder("="))
            out["colors"] = unpack_rgb(bits.view(np.uint32))
        else:
            out[name] = np.ascontiguousarray(rec[name]).astype(rec[name].dtype.newbyteorder("="))
    return out


# ---------------------------------------------------------------------------------- query results


def _transform_quats_wxyz(R: np.ndarray, quats: np.ndarray) -> np.ndarray:
    """Rotate Gaussian orientations (wxyz) by ``R``: q' = q_R * q."""
    if quats.shape[0] == 0:
        return quats.astype(np.float32)
    return quat_multiply_wxyz(rotmat_to_quat_wxyz(R), np.asarray(quats, dtype=np.float64)).astype(np.float32)


def _apply(T: np.ndarray | None, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    return pts if T is None else pts @ T[:3, :3].T + T[:3, 3]


def _apply_f32(T: np.ndarray | None, pts: np.ndarray) -> np.ndarray:
    """:func:`_apply` for clouds: float32 out, no copy when there is nothing to move."""
    if T is None:
        return np.asarray(pts, dtype=np.float32).reshape(-1, 3)
    return _apply(T, pts).astype(np.float32)


def gaussians_to_msg(inst: Any, header: Header, T: np.ndarray | None = None) -> Any:
    """The instance's Gaussians -> ``GaussianArray`` (flat float32 arrays), moved by ``T``."""
    from ccl_lgs_interfaces.msg import GaussianArray

    n = int(np.asarray(inst.means).reshape(-1, 3).shape[0])
    quats = np.asarray(inst.quats, dtype=np.float32).reshape(-1, 4)
    if T is not None:
        quats = _transform_quats_wxyz(T[:3, :3], quats)
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    quats = quats / np.maximum(norm, 1e-12)

    def flat(a: Any) -> array.array:
        # array('f') is taken as is by the message; a Python list is checked element by element
        # (~20x slower for 150k floats).
        out = array.array("f")
        out.frombytes(np.ascontiguousarray(a, dtype=np.float32).reshape(-1).tobytes())
        return out

    return GaussianArray(
        header=header,
        count=n,
        means=flat(_apply(T, inst.means)),
        quats=flat(quats),
        scales=flat(inst.scales),
        opacities=flat(inst.opacities),
        colors=flat(np.clip(np.asarray(inst.colors).reshape(-1, 3)[:, :3], 0, 1)),
        relevance=flat(inst.relevance),
    )


#: Values of ``SemanticQuery.Request.clouds`` (the .srv's CLOUDS_* constants).
CLOUDS_BOTH, CLOUDS_COMBINED, CLOUDS_PER_INSTANCE = 0, 1, 2


def instance_to_msg(
    inst: Any,
    instance_id: int,
    label: str,
    header: Header,
    T: np.ndarray | None = None,
    include_gaussians: bool = False,
    with_points: bool = True,
) -> Any:
    """A :class:`~ccl_lgs_ros.query.engine.Instance` -> ``ObjectInstance`` in ``header.frame_id``.

    ``T`` maps the engine's world frame to the target frame (``None`` = identity); without
    ``with_points`` the instance's ``points`` cloud is left empty (its fields still declared).
    """
    from ccl_lgs_interfaces.msg import GaussianArray, ObjectInstance

    c = _apply(T, inst.centroid)[0]
    box_T = np.eye(4)
    box_T[:3, :3] = np.asarray(inst.box.rotation, dtype=np.float64)
    if np.linalg.det(box_T[:3, :3]) < 0:  # keep the box pose a proper rotation
        box_T[:3, 2] *= -1
    box_T[:3, 3] = np.asarray(inst.box.center, dtype=np.float64)
    if T is not None:
        box_T = T @ box_T
    ext = np.asarray(inst.box.extent, dtype=np.float64)
    pts = _apply_f32(T, inst.points) if with_points else np.zeros((0, 3), np.float32)
    cloud = arrays_to_cloud(
        pts,
        header,
        colors=np.asarray(inst.point_colors).reshape(-1, 3)[: pts.shape[0]],
        fields={"relevance": np.full(pts.shape[0], inst.score, np.float32)},
    )
    msg = ObjectInstance(
        label=label,
        instance_id=int(instance_id),
        score=float(inst.score),
        centroid=Point(x=float(c[0]), y=float(c[1]), z=float(c[2])),
        box_pose=matrix_to_pose_msg(box_T),
        box_size=Vector3(x=float(ext[0]), y=float(ext[1]), z=float(ext[2])),
        points=cloud,
        gaussians=gaussians_to_msg(inst, header, T) if include_gaussians else GaussianArray(header=header),
    )
    return msg


def result_to_cloud(result: Any, header: Header, T: np.ndarray | None = None) -> PointCloud2:
    """All instances' points in one cloud: x y z rgb relevance instance."""
    pts, cols, rel, ids = [], [], [], []
    for i, inst in enumerate(result.instances):
        p = np.asarray(inst.points).reshape(-1, 3)
        pts.append(_apply_f32(T, p))
        cols.append(np.asarray(inst.point_colors).reshape(-1, 3))
        rel.append(np.full(p.shape[0], inst.score, np.float32))
        ids.append(np.full(p.shape[0], i, np.uint32))
    if not pts:
        pts, cols, rel, ids = (
            [np.zeros((0, 3))],
            [np.zeros((0, 3))],
            [np.zeros(0, np.float32)],
            [np.zeros(0, np.uint32)],
        )
    return arrays_to_cloud(
        np.concatenate(pts),
        header,
        colors=np.concatenate(cols),
        fields={"relevance": np.concatenate(rel).astype(np.float32), "instance": np.concatenate(ids).astype(np.uint32)},
    )


def fill_query_response(
    resp: Any,
    result: Any,
    header: Header,
    T: np.ndarray | None = None,
    include_gaussians: bool = False,
    clouds: int = CLOUDS_BOTH,
) -> Any:
    """Fill a ``SemanticQuery.Response`` from a :class:`QueryResult` (success = True).

    ``clouds`` (the request field): :data:`CLOUDS_BOTH` fills each instance's points and the
    combined cloud, :data:`CLOUDS_COMBINED` only the combined cloud, :data:`CLOUDS_PER_INSTANCE`
    only the instances' points (the combined cloud is then empty, with its fields declared)."""
    if clouds not in (CLOUDS_BOTH, CLOUDS_COMBINED, CLOUDS_PER_INSTANCE):
        raise ConversionError(f"clouds is {clouds}; use 0 (both), 1 (combined only) or 2 (per instance only)")
    resp.success = True
    resp.found = bool(result.found)
    resp.best_score = float(result.best_score)
    resp.message = result.message or f"{len(result.instances)} instance(s)"
    per_instance = clouds != CLOUDS_COMBINED
    resp.instances = [
        instance_to_msg(inst, i, result.text, header, T, include_gaussians, with_points=per_instance)
        for i, inst in enumerate(result.instances)
    ]
    if clouds == CLOUDS_PER_INSTANCE:
        resp.cloud = result_to_cloud(dataclasses.replace(result, instances=[]), header, T)
    else:
        resp.cloud = result_to_cloud(result, header, T)
    return resp


def _color(r: float, g: float, b: float, a: float) -> ColorRGBA:
    return ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(a))


_PALETTE = np.array(
    [[0.9, 0.2, 0.2], [0.2, 0.7, 0.2], [0.2, 0.4, 0.9], [0.9, 0.7, 0.1], [0.7, 0.2, 0.8], [0.1, 0.8, 0.8]]
)


def instances_to_markers(instances: Sequence[Any], header: Header, ns: str = "semantic_query") -> MarkerArray:
    """``ObjectInstance`` messages -> RViz markers: a DELETEALL, then per instance a translucent
    oriented box (CUBE), a text label with the score above it and a sphere at the centroid."""
    out = MarkerArray()
    out.markers.append(Marker(header=header, ns=ns, action=Marker.DELETEALL))
    for i, inst in enumerate(instances):
        col = _PALETTE[i % len(_PALETTE)]
        size = inst.box_size
        box = Marker(header=header, ns=ns + "/boxes", id=i, type=Marker.CUBE, action=Marker.ADD, pose=inst.box_pose)
        box.scale = Vector3(x=max(size.x, 1e-3), y=max(size.y, 1e-3), z=max(size.z, 1e-3))
        box.color = _color(col[0], col[1], col[2], 0.35)
        text = Marker(header=header, ns=ns + "/labels", id=i, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        text.pose.position = Point(
            x=inst.box_pose.position.x,
            y=inst.box_pose.position.y,
            z=inst.box_pose.position.z + 0.5 * max(size.x, size.y, size.z) + 0.05,
        )
        text.pose.orientation.w = 1.0
        text.scale.z = 0.05
        text.color = _color(1.0, 1.0, 1.0, 1.0)
        text.text = f"{inst.label} #{inst.instance_id} ({inst.score:.2f})"
        sphere = Marker(header=header, ns=ns + "/centroids", id=i, type=Marker.SPHERE, action=Marker.ADD)
        sphere.pose.position = inst.centroid
        sphere.pose.orientation.w = 1.0
        sphere.scale = Vector3(x=0.03, y=0.03, z=0.03)
        sphere.color = _color(col[0], col[1], col[2], 1.0)
        out.markers += [box, text, sphere]
    return out


def markers_to_viz(msg: Any) -> tuple[list, list, list]:
    """``visualization_msgs/MarkerArray`` -> (boxes, texts, spheres) of :mod:`ccl_lgs_ros.viz`.

    Only the marker types the node publishes (CUBE, TEXT_VIEW_FACING, SPHERE) are drawn; a
    DELETEALL clears what came before it in the same array, as in RViz."""
    from ..viz import BoxMarker, SphereMarker, TextMarker

    boxes: list = []
    texts: list = []
    spheres: list = []
    for m in msg.markers:
        if m.action == Marker.DELETEALL:
            boxes, texts, spheres = [], [], []
            continue
        if m.action != Marker.ADD:
            continue
        p, q = m.pose.position, m.pose.orientation
        pos = np.array([p.x, p.y, p.z])
        rgba = (m.color.r, m.color.g, m.color.b, m.color.a)
        if m.type == Marker.CUBE:
            boxes.append(
                BoxMarker(pos, np.array([q.x, q.y, q.z, q.w]), np.array([m.scale.x, m.scale.y, m.scale.z]), rgba)
            )
        elif m.type == Marker.TEXT_VIEW_FACING:
            texts.append(TextMarker(pos, m.text, rgba))
        elif m.type == Marker.SPHERE:
            spheres.append(SphereMarker(pos, float(m.scale.x), rgba))
    return boxes, texts, spheres


__all__ = [
    "CLOUDS_BOTH",
    "CLOUDS_COMBINED",
    "CLOUDS_PER_INSTANCE",
    "HAVE_CV_BRIDGE",
    "ConversionError",
    "arrays_to_cloud",
    "camera_info_to_intrinsics",
    "cloud_to_arrays",
    "compressed_msg_to_rgb",
    "decode_image_msg",
    "depth_msg_to_metres",
    "fill_query_response",
    "gaussians_to_msg",
    "image_msg_to_rgb",
    "instance_to_msg",
    "instances_to_markers",
    "intrinsics_to_camera_info",
    "make_header",
    "markers_to_viz",
    "matrix_to_pose_msg",
    "matrix_to_transform_msg",
    "optical_to_capture_pose",
    "pack_rgb",
    "pose_source_to_matrix",
    "pose_to_matrix_msg",
    "result_to_cloud",
    "rgb_to_image_msg",
    "sec_to_stamp",
    "stamp_to_sec",
    "transform_to_matrix_msg",
    "unpack_rgb",
]
