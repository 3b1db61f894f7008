"""The immutable unit index of a scene: which Gaussians a query may select, grouped by code and
by voxel of the clustering grid (*units*, see :mod:`.engine`), with per-unit sums.

Built once per scene (:meth:`UnitIndex.build`) and never changed afterwards, so any number of
queries read it at once without a lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import QueryConfig
from .cluster import VoxelGrid
from .index import LevelCodes, SemanticIndex


@dataclass
class LevelLookup:
    """Per level: eligible Gaussians grouped by code (an inverted index) and, inside a code, by
    voxel of the clustering grid. Each (code, voxel) group is a *unit* (see the module doc)."""

    codes: LevelCodes
    sorted_ids: np.ndarray  # int32/int64 [E], eligible Gaussian ids ordered by (code, voxel, id)
    offsets: np.ndarray  # int64 [Nc + 1], code c owns sorted_ids[offsets[c]:offsets[c+1]]
    present: np.ndarray  # bool [Nc], code owned by at least one eligible Gaussian
    unit_offsets: np.ndarray  # int64 [Nc + 1], code c owns units unit_offsets[c]:unit_offsets[c+1]
    unit_start: np.ndarray  # int64 [U + 1], unit u owns sorted_ids[unit_start[u]:unit_start[u+1]]
    unit_code: np.ndarray  # int32 [U]
    unit_voxel: np.ndarray  # int32 [U], voxel of the clustering grid (0 without a grid)
    unit_opacity: np.ndarray  # float64 [U], sum of the opacities
    unit_weighted: np.ndarray  # float64 [U, 3], sum of opacity * centre
    unit_lo: np.ndarray  # float32 [U, 3], per-axis minimum of the centres
    unit_hi: np.ndarray  # float32 [U, 3], per-axis maximum

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (
            self.sorted_ids, self.offsets, self.present, self.unit_offsets, self.unit_start,
            self.unit_code, self.unit_voxel, self.unit_opacity, self.unit_weighted,
            self.unit_lo, self.unit_hi,
        )  # fmt: skip

    def nbytes(self) -> int:
        """Memory of the lookup (the level's codes and confidences not counted)."""
        return int(sum(a.nbytes for a in self.arrays()))


@dataclass(frozen=True)
class UnitIndex:
    """Per-scene selection structures (read-only after :meth:`build`)."""

    eligible: np.ndarray  # bool [N], Gaussians a query may select
    grid: VoxelGrid | None  # clustering grid (None when cluster_eps is 0)
    levels: dict[str, LevelLookup]

    @property
    def any_eligible(self) -> bool:
        return bool(self.eligible.any())

    @staticmethod
    def build(index: SemanticIndex, cfg: QueryConfig) -> UnitIndex:
        eligible, grid = static_filter(index, cfg)
        levels = {name: build_lookup(index, cfg, eligible, grid, lv) for name, lv in index.levels.items()}
        for arr in (eligible, *(a for lk in levels.values() for a in lk.arrays())):
            arr.flags.writeable = False  # immutable: shared by concurrent queries without a lock
        return UnitIndex(eligible=eligible, grid=grid, levels=levels)


def ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` over the pairs, vectorised: int64 ``[sum(e - s)]``."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(ends, dtype=np.int64) - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    if lengths.shape[0] == 1:
        return np.arange(starts[0], starts[0] + total, dtype=np.int64)
    shift = starts - (np.cumsum(lengths) - lengths)
    return np.arange(total, dtype=np.int64) + np.repeat(shift, lengths)


def static_filter(index: SemanticIndex, cfg: QueryConfig) -> tuple[np.ndarray, VoxelGrid | None]:
    """bool ``[N]``: Gaussians a query may select (opaque enough, not huge, not floaters)."""
    idx = index
    ok = (idx.opacities >= cfg.min_opacity) & np.isfinite(idx.means).all(axis=1)
    grid: VoxelGrid | None = None
    if not ok.any():
        return ok, grid
    lo, hi = idx.means[ok].min(axis=0), idx.means[ok].max(axis=0)
    diag = float(np.linalg.norm(hi - lo))
    if diag > 0 and cfg.max_scale_fraction > 0:
        ok &= idx.scales.max(axis=1) <= cfg.max_scale_fraction * diag
    if cfg.cluster_eps > 0 and ok.any():
        grid = VoxelGrid(idx.means, cfg.cluster_eps, include=ok)
        # Floaters: too few Gaussians around them in the whole scene to ever form an object.
        dense = grid.neighbourhood_counts() >= cfg.cluster_min_points
        vox = grid.voxel_of
        ok &= (vox >= 0) & np.append(dense, False)[vox]
    return ok, grid


def build_lookup(index: SemanticIndex, cfg: QueryConfig, eligible: np.ndarray, grid: VoxelGrid | None,
                 level: LevelCodes) -> LevelLookup:  # fmt: skip
    """One level's inverted index and units (see :class:`LevelLookup`)."""
    idx = index
    ok = eligible
    if cfg.min_confidence > 0:
        ok = ok & (level.confidence >= math.ceil(cfg.min_confidence * 255))
    ids = np.flatnonzero(ok)
    nc = level.num_codes
    codes = level.codes[ids].astype(np.int64)
    # Eligible Gaussians always lie in the grid (the floater filter needs their voxel).
    nv = grid.num_voxels if grid is not None else 1
    vox = grid.voxel_of[ids].astype(np.int64) if grid is not None else np.zeros(ids.shape[0], np.int64)
    key = codes * nv + vox
    order = np.argsort(key, kind="stable")  # stable: ids ascending inside a unit
    id_dtype = np.int32 if idx.num_gaussians < 2**31 else np.int64
    sorted_ids = ids[order].astype(id_dtype)
    skey = key[order]
    counts = np.bincount(codes, minlength=nc)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    first = np.concatenate([[0], np.flatnonzero(skey[1:] != skey[:-1]) + 1]) if skey.size else np.zeros(0, np.int64)
    first = first.astype(np.int64)
    ukey = skey[first]
    unit_code = (ukey // nv).astype(np.int32)
    if first.size:
        op = idx.opacities[sorted_ids].astype(np.float64)
        means = np.take(idx.means, sorted_ids, axis=0)
        unit_opacity = np.add.reduceat(op, first)
        unit_weighted = np.add.reduceat(means * op[:, None], first, axis=0)
        unit_lo = np.minimum.reduceat(means, first, axis=0)
        unit_hi = np.maximum.reduceat(means, first, axis=0)
    else:
        unit_opacity, unit_weighted = np.zeros(0), np.zeros((0, 3))
        unit_lo, unit_hi = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    return LevelLookup(
        codes=level,
        sorted_ids=sorted_ids,
        offsets=offsets,
        present=counts > 0,
        unit_offsets=np.searchsorted(unit_code, np.arange(nc + 1)).astype(np.int64),
        unit_start=np.append(first, skey.size).astype(np.int64),
        unit_code=unit_code,
        unit_voxel=(ukey % nv).astype(np.int32),
        unit_opacity=unit_opacity,
        unit_weighted=unit_weighted,
        unit_lo=unit_lo,
        unit_hi=unit_hi,
    )


__all__ = ["LevelLookup", "UnitIndex", "build_lookup", "ranges", "static_filter"]
