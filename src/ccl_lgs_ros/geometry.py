"""Pose conventions, in one place.

- Capture files: camera-to-world, OpenGL camera axes (x right, y up, looking along -z).
- ROS camera optical frames and gsplat/OpenCV: x right, y down, z forward.
- gsplat ``viewmats``: world-to-camera in OpenCV axes.

Quaternions are (x, y, z, w) where they come from or go to ROS messages, and (w, x, y, z) in
Gaussian parameters (gsplat's convention); the function names say which.

This module is also the only home of the quaternion product, the split of a similarity transform
(one tolerance, :data:`SIMILARITY_ATOL`) and the Gaussian parameter activations
(:func:`activate_scales`, :func:`activate_opacities`, for numpy arrays and torch tensors alike).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")

#: How far ``R R^T`` of a similarity's rotation part may be from the identity (float32-stored
#: matrices pass with room to spare; a shear or non-uniform scale of 1e-4 does not).
SIMILARITY_ATOL = 1e-4

#: Flips y and z: OpenGL camera axes <-> OpenCV/optical camera axes (its own inverse).
GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def optical_to_opengl_c2w(c2w_optical: np.ndarray) -> np.ndarray:
    """Camera-to-world with optical (OpenCV) axes -> camera-to-world with OpenGL axes."""
    return np.asarray(c2w_optical, dtype=np.float64) @ GL_FROM_CV


def opengl_to_optical_c2w(c2w_gl: np.ndarray) -> np.ndarray:
    """Inverse of :func:`optical_to_opengl_c2w`."""
    return np.asarray(c2w_gl, dtype=np.float64) @ GL_FROM_CV


def opengl_c2w_to_viewmat(c2w_gl: np.ndarray) -> np.ndarray:
    """Capture pose (OpenGL c2w) -> gsplat viewmat (world-to-camera, OpenCV axes). Batched."""
    c2w_cv = np.asarray(c2w_gl, dtype=np.float64) @ GL_FROM_CV
    return np.linalg.inv(c2w_cv)


def quat_xyzw_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> 3x3 rotation. Raises on a zero or non-finite quaternion."""
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(q).all() or n < 1e-12:
        raise ValueError(f"invalid quaternion {q.tolist()}")
    x, y, z, w = q / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat_xyzw(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit quaternion (x, y, z, w) with w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        w, x, y, z = 0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        w, x, y, z = (R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s
    elif R[1, 1] > R[2, 2]:
        s = np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        w, x, y, z = (R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s
    else:
        s = np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        w, x, y, z = (R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s
    q = np.array([x, y, z, w])
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def pose_to_matrix(translation: np.ndarray, quat_xyzw: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = quat_xyzw_to_matrix(quat_xyzw)
    T[:3, 3] = np.asarray(translation, dtype=np.float64)
    return T


def slerp_xyzw(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (x, y, z, w)."""
    q0 = np.asarray(q0, dtype=np.float64) / np.linalg.norm(q0)
    q1 = np.asarray(q1, dtype=np.float64) / np.linalg.norm(q1)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    return (np.sin((1 - t) * theta) * q0 + np.sin(t * theta) * q1) / np.sin(theta)


def orthonormalize_rotation(R: np.ndarray) -> tuple[np.ndarray, float]:
    """Nearest rotation to ``R`` (SVD) and the mean scale it carried."""
    R = np.asarray(R, dtype=np.float64)
    U, S, Vt = np.linalg.svd(R)
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))
    return U @ D @ Vt, float(S.mean())


def is_valid_pose(T: np.ndarray, tol: float = 1e-3) -> bool:
    """Finite 4x4 rigid transform with an orthonormal, right-handed rotation."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        return False
    R = T[:3, :3]
    return bool(
        np.allclose(R @ R.T, np.eye(3), atol=tol)
        and abs(np.linalg.det(R) - 1.0) < tol
        and np.allclose(T[3], [0, 0, 0, 1], atol=tol)
    )


def rotation_angle(R: np.ndarray) -> float:
    """Angle (rad) of a rotation matrix."""
    c = (np.trace(np.asarray(R, dtype=np.float64)) - 1.0) / 2.0
    return float(np.arccos(np.clip(c, -1.0, 1.0)))


def similarity(scale: float, center: np.ndarray) -> np.ndarray:
    """4x4 ``scene_from_world``: x_scene = scale * (x_world - center)."""
    T = np.eye(4)
    T[:3, :3] *= scale
    T[:3, 3] = -scale * np.asarray(center, dtype=np.float64)
    return T


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    return points @ T[:3, :3].T + T[:3, 3]


def box_corners(center: np.ndarray, rotation: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """``[8, 3]`` corners of an oriented box (full side lengths ``extent`` along ``rotation``'s columns),
    ordered by the signs ``(-,-,-), (-,-,+), ..., (+,+,+)`` of the local x, y, z."""
    signs = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=np.float64)
    return np.asarray(center, dtype=np.float64) + (signs * np.asarray(extent, dtype=np.float64) / 2.0) @ np.asarray(
        rotation, dtype=np.float64).T


def quat_multiply_wxyz(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` of (w, x, y, z) quaternions (broadcasting)."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def quats_to_rotmats(quats: np.ndarray) -> np.ndarray:
    """(w, x, y, z) quaternions ``[N, 4]`` (any norm) -> rotation matrices ``[N, 3, 3]``."""
    q = np.asarray(quats, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    q = q / np.where(norm > 1e-12, norm, 1.0)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def rotmat_to_quat_wxyz(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> (w, x, y, z) quaternion (Gaussian convention)."""
    x, y, z, w = matrix_to_quat_xyzw(R)
    return np.array([w, x, y, z])


def split_similarity(world_from_scene: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """4x4 similarity ``x_w = s R x + t`` -> ``(s, R [3,3], t [3])``. Raises if it is not one."""
    T = np.asarray(world_from_scene, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError("world_from_scene must be a finite 4x4 matrix")
    A = T[:3, :3]
    det = np.linalg.det(A)
    if det <= 0:
        raise ValueError("world_from_scene must preserve orientation (positive determinant)")
    s = float(np.cbrt(det))
    R = A / s
    if not np.allclose(R @ R.T, np.eye(3), atol=SIMILARITY_ATOL) or not np.allclose(T[3], [0, 0, 0, 1]):
        raise ValueError("world_from_scene is not a similarity transform (uniform scale, rotation, translation)")
    return s, R, T[:3, 3].copy()


def activate_scales(log_scales: ArrayT) -> ArrayT:
    """Gaussian scales (metres) from the trainable ``log_scales``: ``exp``."""
    return np.exp(log_scales) if isinstance(log_scales, np.ndarray) else log_scales.exp()


def activate_opacities(logits: ArrayT) -> ArrayT:
    """Gaussian opacities in 0..1 from the trainable ``opacity_logits``: the logistic sigmoid."""
    if isinstance(logits, np.ndarray):
        return 1.0 / (1.0 + np.exp(-logits))
    return logits.sigmoid()
