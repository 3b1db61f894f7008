"""Splitting selected Gaussians into object instances.

The default is a DBSCAN-like clustering on a sparse voxel grid whose cell side is ``eps``:
a voxel is *core* when it and its 26 neighbours hold at least ``min_points`` selected Gaussians,
core voxels touching each other form a cluster, non-core voxels join a neighbouring core voxel's
cluster (DBSCAN's border points) or are noise. The grid (voxel of every Gaussian and each voxel's
26 neighbours) is built once per scene, so a query only touches the voxels its selection
occupies: :meth:`VoxelGrid.cluster_voxels` works from per-voxel counts alone (the query engine
keeps them per code and voxel), no per-query KD-tree or sort over the points.

It links points up to ``2 * sqrt(3) * eps`` apart (two diagonally adjacent cells) and never
separates points closer than ``eps``, so two objects are always split when their gap exceeds
``2 * sqrt(3) * eps``. :func:`dbscan_open3d` is the exact alternative (much slower).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .._compat import import_open3d

#: The 26 neighbour offsets of a voxel.
_OFFSETS = np.array(
    [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)],
    dtype=np.int64,
)


class VoxelGrid:
    """Sparse voxel grid of side ``eps`` over a fixed point set (the scene's Gaussians).

    Attributes:
        voxel_of: int32 ``[N]``, voxel of each point (-1 where the point was excluded).
        neighbours: int32 ``[V, 26]``, neighbouring occupied voxels (``V`` = none).
        counts: int64 ``[V]``, points per voxel.
    """

    def __init__(self, points: np.ndarray, eps: float, include: np.ndarray | None = None) -> None:
        """Args:
        points: ``[N, 3]`` positions.
        eps: voxel side (> 0).
        include: optional bool ``[N]``; excluded points get voxel -1.
        """
        if not eps > 0:
            raise ValueError("voxel size must be positive")
        self.eps = float(eps)
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        n = pts.shape[0]
        ids = np.arange(n) if include is None else np.flatnonzero(include)
        self.voxel_of = np.full(n, -1, dtype=np.int32)
        if ids.size == 0:
            self.neighbours = np.zeros((0, 26), dtype=np.int32)
            self.counts = np.zeros(0, dtype=np.int64)
            return
        sub = pts[ids]
        # Shift so every cell index is >= 1: neighbour keys of border cells never wrap around.
        origin = sub.min(axis=0) - self.eps
        ijk = np.floor((sub - origin) / self.eps).astype(np.int64)
        dims = ijk.max(axis=0) + 2
        strides = np.array([dims[1] * dims[2], dims[2], 1], dtype=np.int64)
        keys = ijk @ strides
        ukeys, inverse = np.unique(keys, return_inverse=True)
        v = ukeys.shape[0]
        self.voxel_of[ids] = inverse.astype(np.int32)
        self.counts = np.bincount(inverse, minlength=v).astype(np.int64)
        neighbours = np.full((v, 26), v, dtype=np.int32)
        for o, off_key in enumerate(_OFFSETS @ strides):
            target = ukeys + off_key
            pos = np.searchsorted(ukeys, target)
            pos_c = np.minimum(pos, v - 1)
            hit = ukeys[pos_c] == target
            neighbours[hit, o] = pos_c[hit]
        self.neighbours = neighbours

    @property
    def num_voxels(self) -> int:
        return int(self.counts.shape[0])

    def nbytes(self) -> int:
        return int(self.voxel_of.nbytes + self.neighbours.nbytes + self.counts.nbytes)

    def neighbourhood_counts(self) -> np.ndarray:
        """Points in each voxel plus its 26 neighbours, over the whole point set: int64 ``[V]``."""
        ext = np.append(self.counts, 0)
        return self.counts + ext[self.neighbours].sum(axis=1)

    def cluster(self, ids: np.ndarray, min_points: int) -> np.ndarray:
        """DBSCAN-like labels of the points ``ids`` (indices into the grid's point set).

        Returns:
            int64 ``[len(ids)]``, cluster label 0..C-1 or -1 (noise / excluded point).
        """
        vox = self.voxel_of[np.asarray(ids)]
        labels = np.full(vox.shape[0], -1, dtype=np.int64)
        ok = vox >= 0  # points outside the grid are noise
        if not ok.any():
            return labels
        occupied, inverse, counts = np.unique(vox[ok], return_inverse=True, return_counts=True)
        labels[ok] = self.cluster_voxels(occupied, counts, min_points)[inverse.reshape(-1)]
        return labels

    def cluster_voxels(self, voxels: np.ndarray, counts: np.ndarray, min_points: int) -> np.ndarray:
        """The same clustering from per-voxel counts of the selection.

        Args:
            voxels: sorted, unique voxel ids ``[m]`` the selection occupies.
            counts: selected points in each of them ``[m]``.

        Returns:
            int64 ``[m]``, cluster label 0..C-1 (in order of each cluster's lowest voxel) or -1.
            Costs ``O(m log m)``: nothing proportional to the grid or to the points.
        """
        vox = np.asarray(voxels, dtype=np.int64)
        m = vox.shape[0]
        if m == 0:
            return np.zeros(0, dtype=np.int64)
        cnt = np.asarray(counts, dtype=np.int64)
        nb = np.take(self.neighbours, vox, axis=0)  # [m, 26] global ids, sentinel V = none
        pos = np.minimum(np.searchsorted(vox, nb), m - 1)
        hit = vox[pos] == nb  # the sentinel V is never an occupied voxel id
        core = cnt + np.where(hit, cnt[pos], 0).sum(axis=1) >= min_points
        nb_core = hit & core[pos]  # [m, 26], neighbour occupied by the selection and core
        rows, cols = np.nonzero(nb_core & core[:, None])
        comp = connected_labels(m, rows, pos[rows, cols])
        # Border voxels take any core neighbour's cluster; the rest is noise.
        border = np.where(nb_core, comp[pos], -1).max(axis=1)
        voxel_label = np.where(core, comp, border)
        # Compact the labels that survived to 0..C-1.
        used, compact = np.unique(voxel_label, return_inverse=True)
        compact = compact.reshape(-1)
        return compact - 1 if used.size and used[0] == -1 else compact


def connected_labels(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the undirected graph with edges ``a[i] - b[i]`` over ``n`` nodes:
    int64 ``[n]`` labels 0..C-1 numbered in order of each component's lowest node (what
    ``scipy.sparse.csgraph.connected_components`` returns), by min-label hooking and pointer
    jumping: a few vectorised rounds instead of scipy's per-call sparse-matrix overhead."""
    label = np.arange(n, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    while a.size:
        la, lb = label[a], label[b]
        differ = la != lb
        if not differ.any():
            break
        la, lb = la[differ], lb[differ]
        low = np.minimum(la, lb)
        np.minimum.at(label, la, low)  # hook each component's label node under the smaller label
        np.minimum.at(label, lb, low)
        while True:  # compress: every node points at its component's current label
            nxt = label[label]
            if np.array_equal(nxt, label):
                break
            label = nxt
        a, b = a[differ], b[differ]
    roots = label == np.arange(n)
    return (np.cumsum(roots) - 1)[label]


def dbscan_open3d(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """Exact DBSCAN (open3d) of ``[M, 3]`` points -> int64 labels ``[M]`` (-1 = noise)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if pts.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    o3d = import_open3d()
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    return np.asarray(pcd.cluster_dbscan(eps=float(eps), min_points=int(min_points)), dtype=np.int64)


def kdtree_components(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """Connected components of the ``eps``-radius graph over core points (scipy cKDTree).

    Kept for comparison in the benchmark; DBSCAN-equivalent up to border-point ties.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    m = pts.shape[0]
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    tree = cKDTree(pts)
    pairs = tree.query_pairs(eps, output_type="ndarray")
    degree = np.bincount(pairs.reshape(-1), minlength=m) + 1
    core = degree >= min_points
    keep = core[pairs[:, 0]] & core[pairs[:, 1]]
    cp = pairs[keep]
    graph = coo_matrix((np.ones(cp.shape[0], dtype=np.int8), (cp[:, 0], cp[:, 1])), shape=(m, m))
    _, comp = connected_components(graph.tocsr(), directed=False)
    labels = np.where(core, comp, -1)
    # Border points: attach to a core neighbour.
    border = pairs[core[pairs[:, 0]] ^ core[pairs[:, 1]]]
    for a, b in border:
        if labels[a] < 0 and core[b]:
            labels[a] = comp[b]
        elif labels[b] < 0 and core[a]:
            labels[b] = comp[a]
    used, compact = np.unique(labels, return_inverse=True)
    if used.size and used[0] == -1:
        compact = compact - 1
    return compact.reshape(-1).astype(np.int64)
