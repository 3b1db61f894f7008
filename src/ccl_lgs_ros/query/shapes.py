"""Geometry of one instance: a surface point cloud sampled from its Gaussians, and its boxes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .index import quats_to_rotmats

#: Samples are drawn within this many standard deviations of a Gaussian's centre.
SAMPLE_SIGMAS = 2.0


def voxel_downsample(
    points: np.ndarray,  # [P, 3]
    spacing: float,
    colors: np.ndarray | None = None,  # [P, 3]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Average the points (and colours) falling into each cube of side ``spacing``."""
    if points.shape[0] == 0 or spacing <= 0:
        return points.astype(np.float32), None if colors is None else colors.astype(np.float32)
    cells = np.floor(points / spacing).astype(np.int64)
    _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    k = counts.shape[0]

    def mean(values: np.ndarray) -> np.ndarray:
        out = np.empty((k, values.shape[1]), dtype=np.float64)
        for c in range(values.shape[1]):
            out[:, c] = np.bincount(inverse, weights=values[:, c], minlength=k)
        return (out / counts[:, None]).astype(np.float32)

    return mean(points), None if colors is None else mean(colors)


def sample_surface(
    means: np.ndarray,  # [M, 3]
    quats: np.ndarray,  # [M, 4] wxyz
    scales: np.ndarray,  # [M, 3]
    colors: np.ndarray,  # [M, 3]
    spacing: float,
    max_per_gaussian: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Points sampled inside each Gaussian's ellipsoid, voxel-downsampled to ``spacing``.

    Each Gaussian gets about one sample per ``spacing**2`` of its ``2 sigma`` footprint (trained
    Gaussians are flat discs on the surface, so the two largest axes set the area), at least one
    (its centre) and at most ``max_per_gaussian``. Samples are truncated-normal in the Gaussian's
    own frame. Returns ``(points float32 [P, 3], colors float32 [P, 3])``.
    """
    m = means.shape[0]
    if m == 0 or spacing <= 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    s_sorted = np.sort(np.abs(scales.astype(np.float64)), axis=1)
    area = np.pi * (SAMPLE_SIGMAS * s_sorted[:, 2]) * (SAMPLE_SIGMAS * s_sorted[:, 1])
    per = np.clip(np.ceil(area / spacing**2), 1, max_per_gaussian).astype(np.int64)
    owner = np.repeat(np.arange(m), per)
    z = np.clip(rng.standard_normal((owner.shape[0], 3)), -SAMPLE_SIGMAS, SAMPLE_SIGMAS)
    first = np.concatenate([[0], np.cumsum(per)[:-1]])
    z[first] = 0.0  # every Gaussian contributes its centre
    rot = quats_to_rotmats(quats)  # [M, 3, 3]
    local = z * scales[owner].astype(np.float64)
    pts = means[owner].astype(np.float64) + np.einsum("nij,nj->ni", rot[owner], local)
    return voxel_downsample(pts, spacing, colors[owner].astype(np.float64))  # type: ignore[return-value]


@dataclass
class Box:
    """Oriented bounding box: ``center + rotation @ (u * extent / 2)`` for ``u`` in [-1, 1]^3."""

    center: np.ndarray  # [3]
    rotation: np.ndarray  # [3, 3], columns = box axes = principal axes, right-handed
    extent: np.ndarray  # [3], full side lengths along the columns of rotation
    axis_variances: np.ndarray  # [3], variance of the points along each axis (descending)

    def corners(self) -> np.ndarray:
        """``[8, 3]`` corners."""
        signs = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=np.float64)
        return self.center + (signs * self.extent / 2.0) @ self.rotation.T

    def to_json(self) -> dict:
        return {
            "center": self.center.tolist(),
            "rotation": self.rotation.tolist(),
            "extent": self.extent.tolist(),
            "axis_variances": self.axis_variances.tolist(),
        }


def pca_box(points: np.ndarray) -> Box:
    """Oriented box aligned with the principal axes of ``points [P, 3]`` (P >= 1)."""
    pts = np.asarray(points, dtype=np.float64)
    mean = pts.mean(axis=0)
    centred = pts - mean
    if pts.shape[0] >= 3:
        evals, evecs = np.linalg.eigh(centred.T @ centred / pts.shape[0])
        evals, axes = evals[::-1].clip(min=0.0), evecs[:, ::-1]
        if np.linalg.det(axes) < 0:
            axes[:, 2] = -axes[:, 2]
    else:
        evals, axes = np.zeros(3), np.eye(3)
    proj = centred @ axes
    lo, hi = proj.min(axis=0), proj.max(axis=0)
    return Box(center=mean + axes @ ((lo + hi) / 2.0), rotation=axes, extent=hi - lo, axis_variances=evals)
