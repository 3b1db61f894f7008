"""Instance assembly: selected Gaussians, grouped into instances, become :class:`~.result.Instance`.

Two front ends group the Gaussians (:func:`unit_instances`: whole units, the default settings;
:func:`gaussian_instances`: labelled Gaussians, any settings) and both end in :func:`assemble`,
the one place that computes boxes, surface clouds (cached or sampled, then clipped) and copies
the Gaussians out.
"""

from __future__ import annotations

import time

import numpy as np

from ..config import QueryConfig
from .clouds import CloudCache, clip_clouds, sampled_clouds
from .index import SemanticIndex
from .result import Instance
from .shapes import pca_box
from .units import UnitIndex, ranges

#: Gaussians per instance used to fit the oriented box.
STATS_POINTS = 8192


def assemble(
    index: SemanticIndex,
    cfg: QueryConfig,
    level: str,
    ids: np.ndarray,  # int64 [M], the instances' Gaussians, instance after instance
    counts: np.ndarray,  # int64 [K], Gaussians per instance
    scores: np.ndarray,  # [K]
    centroids: np.ndarray,  # [K, 3]
    lo: np.ndarray,  # [K, 3], per-axis minimum of the centres
    hi: np.ndarray,  # [K, 3]
    rel: np.ndarray,  # float32 [M], relevance per Gaussian
    spacing: float,
    include_gaussians: bool,
    means: np.ndarray | None = None,  # [M, 3] centres of ids when already gathered
    cached: CloudCache | None = None,
    cached_args: tuple | None = None,  # (codes, units, sel, lab) for CloudCache.instance_clouds
) -> list[Instance]:
    """Boxes, clouds and the Instance objects of ``K`` instances (see the module docstring)."""
    nk = int(counts.shape[0])
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    boxes = []
    for i in range(nk):
        # Oriented boxes from (at most about STATS_POINTS evenly strided) Gaussian centres per
        # instance: the extreme centres a subsample misses lie within about one Gaussian spacing.
        s, n = int(starts[i]), int(counts[i])
        step = -(-n // STATS_POINTS)
        sub = means[s : s + n : step] if means is not None else np.take(index.means, ids[s : s + n : step], axis=0)
        boxes.append(pca_box(sub))
    if spacing <= 0:
        empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
        clouds = [empty] * nk
    elif cached is not None and cached_args is not None:
        codes, units, sel, lab = cached_args
        clouds = cached.instance_clouds(level, codes, units, sel, lab, nk, spacing)
    else:
        m = np.take(index.means, ids, axis=0) if means is None else means
        clouds = sampled_clouds(index, cfg, ids, m, np.repeat(np.arange(nk), counts), nk, spacing)
    if spacing > 0:
        clouds = clip_clouds(index, cfg, clouds, ids, starts, counts, lo, hi)
    if include_gaussians:
        if means is None:
            means = np.take(index.means, ids, axis=0)
        quats, scales = np.take(index.quats, ids, axis=0), np.take(index.scales, ids, axis=0)
        opac, colors = index.opacities[ids], np.take(index.colors, ids, axis=0)
    out: list[Instance] = []
    for i in range(nk):
        s, e = int(starts[i]), int(starts[i + 1])
        inst = Instance(
            score=float(scores[i]),
            level=level,
            num_gaussians=e - s,
            centroid=centroids[i],
            box=boxes[i],
            aabb_min=lo[i],
            aabb_max=hi[i],
            gaussian_ids=ids[s:e],
            points=clouds[i][0],
            point_colors=clouds[i][1],
        )
        if include_gaussians:
            assert means is not None
            inst.means, inst.quats, inst.scales = means[s:e], quats[s:e], scales[s:e]
            inst.opacities, inst.colors, inst.relevance = opac[s:e], colors[s:e], rel[s:e]
        out.append(inst)
    return out


def unit_instances(
    index: SemanticIndex,
    units_index: UnitIndex,
    cfg: QueryConfig,
    clouds: CloudCache | None,
    level: str,
    table: np.ndarray,
    codes: np.ndarray,
    spacing: float,
    include_gaussians: bool,
    k: int,
    timings: dict[str, float],
    t0: float,
) -> list[Instance]:
    """Instances of the selected ``codes`` of ``level``, best first, at most ``k`` (0 = all).

    The surface clouds come from ``clouds`` (per-unit cache) when it has a budget, else are sampled."""
    idx, lk, grid = index, units_index.levels[level], units_index.grid
    units = ranges(lk.unit_offsets[codes], lk.unit_offsets[codes + 1])  # code order
    n_u = lk.unit_start[units + 1] - lk.unit_start[units]
    if grid is None:  # eps = 0: no spatial splitting, one instance
        ulab = np.zeros(units.shape[0], dtype=np.int64)
    else:
        occupied, inverse = np.unique(lk.unit_voxel[units], return_inverse=True)
        inverse = inverse.reshape(-1)
        per_voxel = np.bincount(inverse, weights=n_u, minlength=occupied.shape[0])
        labels = grid.cluster_voxels(occupied, np.rint(per_voxel).astype(np.int64), cfg.cluster_min_points)
        ulab = labels[inverse]
    timings["cluster"] = (time.perf_counter() - t0) * 1e3
    if ulab.size == 0 or ulab.max() < 0:
        return []
    sizes = np.bincount(ulab + 1, weights=n_u)[1:]  # label -1 (noise) lands in the dropped slot 0
    big = sizes >= cfg.min_instance_gaussians  # smaller groups: floaters or fragments
    sel = np.flatnonzero(np.append(big, False)[ulab])  # positions in `units`
    if sel.size == 0:
        return []
    lab = (np.cumsum(big) - 1)[ulab[sel]]
    ni = int(big.sum())
    op_u = lk.unit_opacity[units[sel]]
    w = np.maximum(np.bincount(lab, weights=op_u, minlength=ni), 1e-12)
    scores = np.bincount(lab, weights=op_u * table[lk.unit_code[units[sel]]], minlength=ni) / w
    counts = np.rint(np.bincount(lab, weights=n_u[sel], minlength=ni)).astype(np.int64)
    # Best score first, then the larger instance (rounded: instances of one code tie exactly).
    rank = np.lexsort((-counts, -np.round(scores, 9)))
    if k:
        rank = rank[:k]
    nk = rank.shape[0]
    new_label = np.full(ni, -1, dtype=np.int64)
    new_label[rank] = np.arange(nk)
    lab = new_label[lab]
    kept = lab >= 0
    sel, lab = sel[kept], lab[kept]
    order = np.argsort(lab, kind="stable")
    sel, lab = sel[order], lab[order]
    u = units[sel]
    w, scores, counts = w[rank], scores[rank], counts[rank]
    u_first = np.concatenate([[0], np.cumsum(np.bincount(lab, minlength=nk))[:-1]])
    centroids = np.add.reduceat(lk.unit_weighted[u], u_first, axis=0) / w[:, None]
    lo = np.minimum.reduceat(lk.unit_lo[u], u_first, axis=0).astype(np.float64)
    hi = np.maximum.reduceat(lk.unit_hi[u], u_first, axis=0).astype(np.float64)
    ids = lk.sorted_ids[ranges(lk.unit_start[u], lk.unit_start[u + 1])].astype(np.int64)
    rel = np.repeat(table[lk.unit_code[u]], n_u[sel]).astype(np.float32, copy=False)
    means = np.take(idx.means, ids, axis=0) if include_gaussians else None
    use_cache = clouds is not None and clouds.budget > 0
    return assemble(idx, cfg, level, ids, counts, scores, centroids, lo, hi, rel, spacing, include_gaussians,
                    means=means, cached=clouds if use_cache else None,
                    cached_args=(codes, units, sel, lab) if use_cache else None)  # fmt: skip


def gaussian_instances(
    index: SemanticIndex,
    cfg: QueryConfig,
    ids: np.ndarray,
    rel: np.ndarray,
    labels: np.ndarray,
    level: str,
    spacing: float,
    include_gaussians: bool,
) -> list[Instance]:
    """Instances of labelled Gaussians (``labels``: instance per Gaussian, -1 = noise), unsorted."""
    idx = index
    sizes = np.bincount(labels + 1)[1:]  # label -1 (noise) lands in the dropped slot 0
    big = sizes >= cfg.min_instance_gaussians  # smaller groups: floaters or fragments
    keep = np.append(big, False)[labels]  # -1 indexes the appended False
    if not keep.any():
        return []
    if not keep.all():
        labels, ids, rel = labels[keep], ids[keep], rel[keep]
    if big.sum() == 1:  # the common case: one instance, no grouping needed
        labels = np.zeros(labels.shape[0], dtype=np.int64)
    else:
        labels = (np.cumsum(big) - 1)[labels]
        # Small non-negative ints: numpy's stable sort is then a linear-time radix sort.
        order = np.argsort(labels.astype(np.int16 if big.sum() < 2**15 else np.int64), kind="stable")
        ids, rel, labels = ids[order], rel[order], labels[order]
    ids = ids.astype(np.int64, copy=False)
    counts = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    op = idx.opacities[ids]
    # np.take: row gathers through fancy indexing are several times slower.
    means = np.take(idx.means, ids, axis=0)
    w_sum = np.maximum(np.add.reduceat(op, starts, dtype=np.float64), 1e-12)
    centroids = (
        np.stack(
            [op[s : s + n].astype(np.float64) @ means[s : s + n].astype(np.float64) for s, n in zip(starts, counts)]
        )
        / w_sum[:, None]
    )
    scores = np.add.reduceat(rel * op, starts, dtype=np.float64) / w_sum
    lo = np.minimum.reduceat(means, starts, axis=0).astype(np.float64)
    hi = np.maximum.reduceat(means, starts, axis=0).astype(np.float64)
    return assemble(idx, cfg, level, ids, counts, scores, centroids, lo, hi, rel, spacing, include_gaussians,
                    means=means)  # fmt: skip


__all__ = ["STATS_POINTS", "assemble", "gaussian_instances", "unit_instances"]
