"""Geometry of one instance: a surface point cloud sampled from its Gaussians, and its boxes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import box_corners, quats_to_rotmats

#: Samples are drawn within this many standard deviations of a Gaussian's centre.
SAMPLE_SIGMAS = 2.0


def voxel_downsample(
    points: np.ndarray,  # [P, 3]
    spacing: float,
    colors: np.ndarray | None = None,  # [P, 3]
    groups: np.ndarray | None = None,  # int [P], points of different groups never merge
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Average the points (and colours) falling into each cube of side ``spacing``.

    Returns:
        ``(points float32 [K, 3], colors float32 [K, 3] or None, groups int64 [K])``, sorted by
        group.
    """
    pts = np.asarray(points, dtype=np.float64)
    grp = np.zeros(pts.shape[0], np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    if pts.shape[0] == 0 or spacing <= 0:
        return pts.astype(np.float32), None if colors is None else colors.astype(np.float32), grp
    cells = np.floor(pts / spacing).astype(np.int64)
    cells -= cells.min(axis=0)
    dims = cells.max(axis=0) + 1
    # One int64 key per (group, cell): a 1-D unique is far faster than unique(axis=0).
    key = ((grp * dims[0] + cells[:, 0]) * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    ukey, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    k = counts.shape[0]

    def mean(values: np.ndarray) -> np.ndarray:
        out = np.empty((k, values.shape[1]), dtype=np.float64)
        for c in range(values.shape[1]):
            out[:, c] = np.bincount(inverse, weights=values[:, c], minlength=k)
        return (out / counts[:, None]).astype(np.float32)

    out_groups = ukey // (dims[0] * dims[1] * dims[2])
    return mean(pts), None if colors is None else mean(np.asarray(colors, np.float64)), out_groups


def samples_per_gaussian(scales: np.ndarray, spacing: float, max_per_gaussian: int) -> np.ndarray:
    """int64 ``[M]``: how many samples :func:`surface_samples` draws from each Gaussian (>= 1)."""
    s_sorted = np.sort(np.abs(np.asarray(scales, dtype=np.float64).reshape(-1, 3)), axis=1)
    area = np.pi * (SAMPLE_SIGMAS * s_sorted[:, 2]) * (SAMPLE_SIGMAS * s_sorted[:, 1])
    return np.clip(np.ceil(area / spacing**2), 1, max_per_gaussian).astype(np.int64)


def surface_samples(
    means: np.ndarray,  # [M, 3]
    quats: np.ndarray,  # [M, 4] wxyz
    scales: np.ndarray,  # [M, 3]
    spacing: float,
    max_per_gaussian: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw (not yet downsampled) surface samples of ``M`` Gaussians.

    Each Gaussian gets about one sample per ``spacing**2`` of its ``2 sigma`` footprint (trained
    Gaussians are flat discs on the surface, so the two largest axes set the area), at least one
    (its centre) and at most ``max_per_gaussian``. Samples are truncated-normal in the Gaussian's
    own frame.

    Returns:
        ``(points float64 [S, 3], owner int64 [S])``: the ``M`` centres first (owner ``0..M-1``),
        then the extra samples; ``owner`` is the row of the Gaussian each sample came from.
    """
    m = means.shape[0]
    centres = np.asarray(means, dtype=np.float64).reshape(-1, 3)
    if m == 0 or spacing <= 0:
        return centres, np.arange(m, dtype=np.int64)
    extra = samples_per_gaussian(scales, spacing, max_per_gaussian) - 1
    # Every Gaussian contributes its centre; only those larger than the spacing get more.
    big = np.flatnonzero(extra)
    if not big.size:
        return centres, np.arange(m, dtype=np.int64)
    owner = np.repeat(big, extra[big])
    z = np.clip(rng.standard_normal((owner.shape[0], 3)), -SAMPLE_SIGMAS, SAMPLE_SIGMAS)
    rot = quats_to_rotmats(quats[big])[np.repeat(np.arange(big.size), extra[big])]
    local = z * scales[owner].astype(np.float64)
    pts = np.concatenate([centres, centres[owner] + np.einsum("nij,nj->ni", rot, local)])
    return pts, np.concatenate([np.arange(m, dtype=np.int64), owner])


def sample_surface(
    means: np.ndarray,  # [M, 3]
    quats: np.ndarray,  # [M, 4] wxyz
    scales: np.ndarray,  # [M, 3]
    colors: np.ndarray,  # [M, 3]
    spacing: float,
    max_per_gaussian: int,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,  # int [M], instance of each Gaussian
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points sampled inside each Gaussian's ellipsoid (:func:`surface_samples`),
    voxel-downsampled to ``spacing``. Returns ``(points float32 [P, 3], colors float32 [P, 3],
    groups int64 [P])``, sorted by group."""
    m = means.shape[0]
    grp = np.zeros(m, np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    if m == 0 or spacing <= 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.int64)
    pts, owner = surface_samples(means, quats, scales, spacing, max_per_gaussian, rng)
    cols = np.asarray(colors, dtype=np.float64)[owner]
    p, c, g = voxel_downsample(pts, spacing, cols, grp[owner])
    return p, c, g  # type: ignore[return-value]


def typical_radius(scales: np.ndarray) -> float:
    """Typical radius of a set of Gaussians ``scales [M, 3]`` (M >= 1): the median of their middle
    axis scale (1 sigma). The middle axis, because trained surface Gaussians are flat discs whose
    smallest axis is the disc's thickness, and a median, so that a few large Gaussians (the ones
    whose samples stray) do not set it."""
    s = np.abs(np.asarray(scales, dtype=np.float32).reshape(-1, 3))
    a, b, c = s[:, 0], s[:, 1], s[:, 2]
    # Column-wise: numpy's axis-1 reductions of narrow [M, 3] arrays are several times slower.
    middle = np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
    return float(np.median(middle))


def clip_to_box(
    points: np.ndarray,  # [P, 3]
    colors: np.ndarray,  # [P, 3]
    lo: np.ndarray,  # [3]
    hi: np.ndarray,  # [3]
    margin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The points (and their colours) inside the axis-aligned box ``[lo - margin, hi + margin]``."""
    if points.shape[0] == 0:
        return points, colors
    lo_m = np.asarray(lo, dtype=np.float64) - margin
    hi_m = np.asarray(hi, dtype=np.float64) + margin
    keep = np.ones(points.shape[0], dtype=bool)
    for axis in range(3):
        col = points[:, axis]
        keep &= (col >= col.dtype.type(lo_m[axis])) & (col <= col.dtype.type(hi_m[axis]))
    if keep.all():
        return points, colors
    return points[keep], colors[keep]


def _cell_keys(cells: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """One int64 key per (group, cell) row; equal keys <=> equal rows."""
    cells = cells - cells.min(axis=0)
    dims = cells.max(axis=0) + 1
    span = float(dims[0]) * float(dims[1]) * float(dims[2]) * float(int(groups.max()) + 1)
    if span < 2.0**62:
        return ((groups * dims[0] + cells[:, 0]) * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    # Huge extent at a fine spacing: rank the rows instead (slower, but never overflows).
    rows = np.concatenate([groups[:, None], cells], axis=1)
    _, inverse = np.unique(rows, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def downsample_by_owner(
    points: np.ndarray,  # [S, 3]
    colors: np.ndarray,  # [S, 3]
    groups: np.ndarray,  # int [S], samples of different groups never merge
    owners: np.ndarray,  # int [S] in [0, num_owners)
    num_owners: int,
    spacing: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the samples per (group, cube of side ``spacing``) on the fixed world grid
    ``floor(p / spacing)``; each averaged point belongs to the owner that put most samples in it.

    Returns:
        ``(points float32 [K, 3], colors float32 [K, 3], starts int64 [num_owners + 1])``, points
        sorted by owner: owner ``o`` has ``points[starts[o]:starts[o + 1]]``.
    """
    s = points.shape[0]
    if s == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), np.zeros(num_owners + 1, np.int64)
    pts = np.asarray(points, dtype=np.float64)
    key = _cell_keys(np.floor(pts / spacing).astype(np.int64), np.asarray(groups, dtype=np.int64))
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    k = counts.shape[0]

    def mean(values: np.ndarray) -> np.ndarray:
        out = np.empty((k, 3), dtype=np.float64)
        for c in range(3):
            out[:, c] = np.bincount(inverse, weights=values[:, c], minlength=k)
        return (out / counts[:, None]).astype(np.float32)

    # The owner of each cell: most samples, ties to the lowest owner.
    own = np.asarray(owners, dtype=np.int64)
    pair, pair_counts = np.unique(inverse * num_owners + own, return_counts=True)
    pair_cell, pair_owner = pair // num_owners, pair % num_owners
    order = np.lexsort((pair_owner, -pair_counts, pair_cell))
    first = order[np.concatenate([[0], np.flatnonzero(np.diff(pair_cell[order])) + 1])]
    cell_owner = pair_owner[first]  # cells come out 0..k-1 in order
    by_owner = np.argsort(cell_owner, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(cell_owner, minlength=num_owners))]).astype(np.int64)
    return mean(pts)[by_owner], mean(np.asarray(colors, dtype=np.float64))[by_owner], starts


@dataclass
class Box:
    """Oriented bounding box: ``center + rotation @ (u * extent / 2)`` for ``u`` in [-1, 1]^3."""

    center: np.ndarray  # [3]
    rotation: np.ndarray  # [3, 3], columns = box axes = principal axes, right-handed
    extent: np.ndarray  # [3], full side lengths along the columns of rotation
    axis_variances: np.ndarray  # [3], variance of the points along each axis (descending)

    def corners(self) -> np.ndarray:
        """``[8, 3]`` corners."""
        return box_corners(self.center, self.rotation, self.extent)

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
    n = pts.shape[0]
    # Column reductions through BLAS / reduceat: numpy's axis-0 reductions of narrow [n, 3]
    # arrays are an order of magnitude slower.
    mean = np.ones(n) @ pts / n
    centred = pts - mean
    if n >= 3:
        evals, evecs = np.linalg.eigh(centred.T @ centred / n)
        evals, axes = evals[::-1].clip(min=0.0), evecs[:, ::-1]
        if np.linalg.det(axes) < 0:
            axes[:, 2] = -axes[:, 2]
    else:
        evals, axes = np.zeros(3), np.eye(3)
    proj = centred @ axes
    lo, hi = np.minimum.reduceat(proj, [0], axis=0)[0], np.maximum.reduceat(proj, [0], axis=0)[0]
    return Box(center=mean + axes @ ((lo + hi) / 2.0), rotation=axes, extent=hi - lo, axis_variances=evals)
