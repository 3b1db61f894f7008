"""Synthetic Gaussian scenes with known instances, for tests and the query benchmark.

Objects are spheres of flat Gaussians (tangent discs, like a trained 3DGS surface) standing on
a floor plane; every Gaussian's code is its object's codebook entry. Nothing here is used by the
pipeline itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import matrix_to_quat_xyzw
from ..query.index import LevelCodes, SemanticIndex


@dataclass
class BlobScene:
    """Arrays of a synthetic scene (one frame, chosen by the caller) and its ground truth."""

    means: np.ndarray  # [N, 3]
    quats: np.ndarray  # [N, 4] wxyz
    scales: np.ndarray  # [N, 3]
    opacities: np.ndarray  # [N]
    colors: np.ndarray  # [N, 3]
    object_id: np.ndarray  # int64 [N], -1 = floor
    codes: np.ndarray  # int64 [N]

    def index(self, codebook: np.ndarray, level: str = "wp", frame_id: str = "world") -> SemanticIndex:
        conf = np.full(self.codes.shape[0], 230, np.uint8)
        levels = {level: LevelCodes(codes=self.codes, confidence=conf, codebook=codebook)}
        return SemanticIndex(self.means, self.quats, self.scales, self.opacities, self.colors, levels, frame_id)


def _tangent_quats(normals: np.ndarray) -> np.ndarray:
    """wxyz quaternions whose local z axis is ``normals [N, 3]`` (so scale z is the thin axis)."""
    z = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    helper = np.where(np.abs(z[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    x = np.cross(helper, z)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.cross(z, x)
    rots = np.stack([x, y, z], axis=2)
    return _fast_quats(rots)[:, [3, 0, 1, 2]]


def _fast_quats(rots: np.ndarray) -> np.ndarray:
    """Vectorised rotation -> (x, y, z, w) for proper rotations (trace branch + safe fallback)."""
    tr = np.trace(rots, axis1=1, axis2=2)
    w = np.sqrt(np.maximum(1.0 + tr, 1e-12)) / 2.0
    x = (rots[:, 2, 1] - rots[:, 1, 2]) / (4 * w)
    y = (rots[:, 0, 2] - rots[:, 2, 0]) / (4 * w)
    z = (rots[:, 1, 0] - rots[:, 0, 1]) / (4 * w)
    q = np.stack([x, y, z, w], axis=1)
    bad = tr < -0.9  # near 180 degrees the trace branch is inaccurate
    if bad.any():
        q[bad] = np.array([matrix_to_quat_xyzw(r) for r in rots[bad]])
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def blob_scene(
    num_gaussians: int,
    centers: np.ndarray,  # [K, 3]
    object_codes: np.ndarray,  # [K] codebook entry of each object
    floor_code: int,
    *,
    radius: float = 0.1,
    floor_fraction: float = 0.3,
    floor_extent: float | None = None,
    seed: int = 0,
) -> BlobScene:
    """Spheres of ``radius`` at ``centers`` plus a floor at ``z = min(center z) - radius``.

    Gaussians are spread so each object gets the same share; Gaussian size follows the density
    (about the spacing between neighbours), as in a trained scene.
    """
    rng = np.random.default_rng(seed)
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    k = centers.shape[0]
    n_floor = int(round(num_gaussians * floor_fraction)) if k else num_gaussians
    per_obj = np.full(k, (num_gaussians - n_floor) // max(k, 1), dtype=np.int64)
    if k:
        per_obj[: (num_gaussians - n_floor) - int(per_obj.sum())] += 1
    means, normals, obj, codes, sizes = [], [], [], [], []
    for i in range(k):
        d = rng.standard_normal((per_obj[i], 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        means.append(centers[i] + radius * d)
        normals.append(d)
        obj.append(np.full(per_obj[i], i))
        codes.append(np.full(per_obj[i], int(object_codes[i])))
        spacing = np.sqrt(4 * np.pi * radius**2 / max(per_obj[i], 1))
        sizes.append(np.full(per_obj[i], spacing))
    if n_floor:
        lo = centers.min(axis=0) if k else np.zeros(3)
        hi = centers.max(axis=0) if k else np.zeros(3)
        ext = floor_extent if floor_extent is not None else float((hi - lo)[:2].max()) + 6 * radius
        mid = (lo + hi) / 2.0
        xy = mid[:2] + (rng.random((n_floor, 2)) - 0.5) * ext
        z = np.full((n_floor, 1), lo[2] - radius - 0.02)
        means.append(np.concatenate([xy, z], axis=1))
        normals.append(np.tile([0.0, 0.0, 1.0], (n_floor, 1)))
        obj.append(np.full(n_floor, -1))
        codes.append(np.full(n_floor, int(floor_code)))
        sizes.append(np.full(n_floor, ext / np.sqrt(n_floor)))
    m = np.concatenate(means) if means else np.zeros((0, 3))
    nrm = np.concatenate(normals) if normals else np.zeros((0, 3))
    size = np.concatenate(sizes) if sizes else np.zeros(0)
    n = m.shape[0]
    scales = np.stack([size * 0.6, size * 0.6, size * 0.05], axis=1)
    quats = _tangent_quats(nrm) if n else np.zeros((0, 4))
    colors = rng.random((n, 3)) * 0.2 + 0.4
    return BlobScene(
        means=m,
        quats=quats,
        scales=scales,
        opacities=np.full(n, 0.9),
        colors=colors,
        object_id=np.concatenate(obj) if obj else np.zeros(0, np.int64),
        codes=np.concatenate(codes) if codes else np.zeros(0, np.int64),
    )
