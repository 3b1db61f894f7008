"""Selection: which codes / Gaussians a query's relevance tables pick, and their clustering.

Pure functions of the immutable :class:`~.units.UnitIndex`, the index and the settings.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import QueryConfig
from .cluster import dbscan_open3d
from .index import SemanticIndex
from .units import UnitIndex


def level_codes(units: UnitIndex, cfg: QueryConfig, name: str, table: np.ndarray, thr: float
                ) -> tuple[np.ndarray, float]:  # fmt: skip
    """Codes of level ``name`` a query selects (sorted) and the best relevance of any code."""
    lk = units.levels[name]
    best = float(table[lk.present].max()) if lk.present.any() else 0.0
    # 0.5 is the relevance of text that matches a code no better than a generic negative
    # does; a code must also come close to the best code's margin over that point, or a
    # query would pick up every code that drifts slightly above 0.5.
    floor = max(thr, 0.5 + cfg.relative_threshold * (best - 0.5))
    return np.flatnonzero((table > thr) & (table >= floor) & lk.present), best


def select_codes(units: UnitIndex, cfg: QueryConfig, tables: dict[str, np.ndarray], thr: float
                 ) -> tuple[str, np.ndarray, float]:  # fmt: skip
    """``level_mode="best"``: the level with the highest best relevance, its codes, that relevance."""
    per_level = {name: level_codes(units, cfg, name, tables[name], thr) for name in units.levels}
    level = max(per_level, key=lambda name: per_level[name][1])
    return level, per_level[level][0], per_level[level][1]


def _select_level(units: UnitIndex, cfg: QueryConfig, name: str, table: np.ndarray, thr: float
                  ) -> tuple[np.ndarray, float]:  # fmt: skip
    lk = units.levels[name]
    codes, best = level_codes(units, cfg, name, table, thr)
    parts = [lk.sorted_ids[lk.offsets[c] : lk.offsets[c + 1]] for c in codes]
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return ids, best


def select_gaussians(index: SemanticIndex, units: UnitIndex, cfg: QueryConfig, tables: dict[str, np.ndarray],
                     thr: float) -> tuple[np.ndarray, np.ndarray, str, float]:  # fmt: skip
    """Selected Gaussian ids, their relevance, the level name and the best score seen."""
    per_level = {name: _select_level(units, cfg, name, tables[name], thr) for name in units.levels}
    if cfg.level_mode == "best":
        level = max(per_level, key=lambda name: per_level[name][1])
        ids, best = per_level[level]
        return ids, tables[level][index.levels[level].codes[ids]], level, best
    best = max(b for _, b in per_level.values())
    ids = np.unique(np.concatenate([i for i, _ in per_level.values()]))
    rel = np.zeros(ids.shape[0], dtype=np.float32)
    for name, lk in units.levels.items():
        r = tables[name][lk.codes.codes[ids]]
        if cfg.min_confidence > 0:
            r = np.where(lk.codes.confidence[ids] >= math.ceil(cfg.min_confidence * 255), r, 0.0)
        rel = np.maximum(rel, r)
    return ids, rel, "max", best


def cluster(index: SemanticIndex, units: UnitIndex, cfg: QueryConfig, ids: np.ndarray) -> np.ndarray:
    """Instance label per selected Gaussian (-1: noise)."""
    if cfg.cluster_method == "dbscan":
        return dbscan_open3d(np.take(index.means, ids, axis=0), cfg.cluster_eps, cfg.cluster_min_points)
    if units.grid is None:  # eps = 0: no spatial splitting, one instance
        return np.zeros(ids.shape[0], dtype=np.int64)
    return units.grid.cluster(ids, cfg.cluster_min_points)


__all__ = ["cluster", "level_codes", "select_codes", "select_gaussians"]
