"""Surface clouds of query instances: sampled on the fly, or precomputed per unit and cached.

:class:`CloudCache` owns the only mutable state of a loaded scene's query path: the clouds
pinned at the default spacing (built once when the scene loads, read-only afterwards) and an
LRU of per-code clouds at other spacings, guarded by the cache's own lock. Building a missing
cloud happens outside the lock (two queries may build the same cloud at once; both get the
same, deterministic result), so a query only waits for another one while an LRU entry is read
or stored.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..config import QueryConfig
from .index import SemanticIndex
from .shapes import (
    clip_to_box,
    downsample_by_owner,
    sample_surface,
    samples_per_gaussian,
    surface_samples,
    typical_radius,
)
from .units import UnitIndex, ranges

#: Gaussians per instance whose scales give its typical radius (the margin of ``clip_cloud``): a
#: median of 512 evenly strided ones is within a few per cent of the full one.
RADIUS_POINTS = 512

#: Raw surface samples processed at once when a scene's clouds are precomputed (bounds memory).
CLOUD_CHUNK_SAMPLES = 2_000_000



@dataclass
class Cloud:
    """Surface cloud of the units of one code (or a run of units) at one spacing."""

    points: np.ndarray  # float32 [K, 3], sorted by unit
    colors: np.ndarray  # float32 [K, 3]
    starts: np.ndarray  # int64 [units + 1], unit j owns points[starts[j]:starts[j + 1]]

    @property
    def nbytes(self) -> int:
        return int(self.points.nbytes + self.colors.nbytes + self.starts.nbytes)


def join_clouds(parts: list[Cloud]) -> Cloud:
    """Clouds of consecutive unit runs -> one cloud of all their units."""
    sizes = np.array([p.points.shape[0] for p in parts], dtype=np.int64)
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    starts = np.concatenate([*(p.starts[:-1] + b for p, b in zip(parts, base)), [int(sizes.sum())]])
    return Cloud(
        np.concatenate([p.points for p in parts]), np.concatenate([p.colors for p in parts]), starts.astype(np.int64)
    )


def sampled_clouds(
    index: SemanticIndex, cfg: QueryConfig, ids: np.ndarray, means: np.ndarray, groups: np.ndarray,
    num_instances: int, spacing: float,
) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Surface clouds sampled now (no cache) for Gaussians ``ids`` (centres ``means``) whose
    instance is ``groups`` (sorted): one ``(points, colors)`` per instance."""
    idx = index
    rng = np.random.default_rng(0)  # deterministic clouds for a given scene and query
    pts, pcols, pgrp = sample_surface(
        means,
        np.take(idx.quats, ids, axis=0),
        np.take(idx.scales, ids, axis=0),
        np.take(idx.colors, ids, axis=0),
        spacing,
        cfg.max_points_per_gaussian,
        rng,
        groups=groups,
    )
    psplit = np.searchsorted(pgrp, np.arange(1, num_instances))
    return list(zip(np.split(pts, psplit), np.split(pcols, psplit)))


def clip_clouds(
    index: SemanticIndex,
    cfg: QueryConfig,
    clouds: list[tuple[np.ndarray, np.ndarray]],
    ids: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``cfg.clip_cloud``: each instance's cloud without the points outside the box ``lo[i]..hi[i]``
    of its Gaussian centres (``ids[starts[i]:starts[i] + counts[i]]``) grown by
    ``cfg.clip_cloud_margin`` typical radii (:func:`.shapes.typical_radius`).

    Surface samples reach 2 sigma from their Gaussian's centre along every axis, so the few
    Gaussians much larger than the instance's typical one put points several centimetres past
    the object (below a table top, into the air) and stretch everything computed from the
    cloud. A real surface point lies about one Gaussian radius past the outermost centres at
    most; the centres themselves are not touched."""
    if not cfg.clip_cloud:
        return clouds
    out = []
    for i, (pts, cols) in enumerate(clouds):
        s, n = int(starts[i]), int(counts[i])
        step = -(-n // RADIUS_POINTS)  # at most about RADIUS_POINTS evenly strided Gaussians
        radius = typical_radius(np.take(index.scales, ids[s : s + n : step], axis=0))
        out.append(clip_to_box(pts, cols, lo[i], hi[i], cfg.clip_cloud_margin * radius))
    return out


class CloudCache:
    """Per-unit surface clouds of one scene: pinned at ``cfg.point_spacing`` when the whole scene
    fits ``cfg.cloud_cache_mb``, per code in an LRU otherwise (thread-safe, see the module doc)."""

    def __init__(self, index: SemanticIndex, units: UnitIndex, cfg: QueryConfig, pin: bool) -> None:
        self.index, self.units, self.cfg = index, units, cfg
        self.budget = int(cfg.cloud_cache_mb * 2**20)
        self._lock = threading.Lock()
        self.pinned: dict[tuple[str, int], Cloud] = {}
        self.pinned_spacing = 0.0
        self.pinned_bytes = 0
        self.lru: OrderedDict[tuple[str, float, int], Cloud] = OrderedDict()
        self.lru_bytes = 0
        if pin and self.budget > 0 and cfg.point_spacing > 0 and units.any_eligible:
            self._pin_clouds(float(cfg.point_spacing))

    def unit_cloud(self, level: str, u0: int, u1: int, spacing: float) -> Cloud:
        """Surface cloud of the units ``u0..u1-1`` of ``level``: samples of their Gaussians
        averaged per cube of side ``spacing`` (cubes never merge across codes), each point owned
        by the unit that put the most samples into its cube."""
        lk, idx = self.units.levels[level], self.index
        g = lk.sorted_ids[lk.unit_start[u0] : lk.unit_start[u1]]
        nu = u1 - u0
        unit_of = np.repeat(np.arange(nu, dtype=np.int64), np.diff(lk.unit_start[u0 : u1 + 1]))
        level_no = list(self.units.levels).index(level)
        rng = np.random.default_rng([level_no, u0, int(round(spacing * 1e9))])  # deterministic per scene
        pts, owner = surface_samples(
            np.take(idx.means, g, axis=0),
            np.take(idx.quats, g, axis=0),
            np.take(idx.scales, g, axis=0),
            spacing,
            self.cfg.max_points_per_gaussian,
            rng,
        )
        owner_unit = unit_of[owner]
        p, c, starts = downsample_by_owner(
            pts, np.take(idx.colors, g, axis=0)[owner], lk.unit_code[u0 + owner_unit], owner_unit, nu, spacing
        )
        return Cloud(p, c, starts)

    def _pin_clouds(self, spacing: float) -> None:
        """Precompute every code's cloud at ``spacing``, in chunks of about CLOUD_CHUNK_SAMPLES
        raw samples: consecutive codes share a chunk, a code bigger than one chunk is split
        between units and its pieces merged per cube afterwards. Gives up, keeping nothing, when
        the clouds outgrow ``cfg.cloud_cache_mb`` (queries then sample and cache per code)."""
        pinned: dict[tuple[str, int], Cloud] = {}
        total = 0

        def keep(level: str, codes: list[int], cloud: Cloud, u0: int) -> bool:
            nonlocal total
            total += cloud.nbytes
            lk = self.units.levels[level]
            for c in codes:  # views into the chunk's arrays
                i0, i1 = int(lk.unit_offsets[c]) - u0, int(lk.unit_offsets[c + 1]) - u0
                p0, p1 = int(cloud.starts[i0]), int(cloud.starts[i1])
                pinned[(level, c)] = Cloud(cloud.points[p0:p1], cloud.colors[p0:p1], cloud.starts[i0 : i1 + 1] - p0)
            return total <= self.budget

        for level, lk in self.units.levels.items():
            per_gaussian = samples_per_gaussian(
                np.take(self.index.scales, lk.sorted_ids, axis=0), spacing, self.cfg.max_points_per_gaussian
            )
            unit_samples = np.add.reduceat(per_gaussian, lk.unit_start[:-1]) if lk.unit_code.size else per_gaussian[:0]
            cum = np.concatenate([[0], np.cumsum(unit_samples)])
            group: list[int] = []
            present = [int(c) for c in np.flatnonzero(lk.present)]
            for i, code in enumerate(present):
                a, b = int(lk.unit_offsets[code]), int(lk.unit_offsets[code + 1])
                if cum[b] - cum[a] > CLOUD_CHUNK_SAMPLES:  # a big code on its own, in pieces
                    marks = np.arange(cum[a] + CLOUD_CHUNK_SAMPLES, cum[b], CLOUD_CHUNK_SAMPLES)
                    cuts = np.unique(np.concatenate([[a], np.searchsorted(cum, marks).clip(a + 1, b), [b]]))
                    parts = [self.unit_cloud(level, int(u), int(v), spacing) for u, v in zip(cuts[:-1], cuts[1:])]
                    joined = join_clouds(parts)
                    # Cubes the pieces share: one point again (the mean of the pieces' points).
                    owner = np.repeat(np.arange(b - a), np.diff(joined.starts))
                    merged = downsample_by_owner(
                        joined.points, joined.colors, np.zeros(owner.shape[0], np.int64), owner, b - a, spacing
                    )
                    if not keep(level, [code], Cloud(*merged), a):
                        return
                    continue
                group.append(code)
                last = i + 1 == len(present)
                if last or cum[int(lk.unit_offsets[present[i + 1] + 1])] - cum[int(lk.unit_offsets[group[0]])] > (
                    CLOUD_CHUNK_SAMPLES
                ):
                    u0, u1 = int(lk.unit_offsets[group[0]]), int(lk.unit_offsets[group[-1] + 1])
                    if not keep(level, group, self.unit_cloud(level, u0, u1, spacing), u0):
                        return
                    group = []
        self.pinned, self.pinned_spacing, self.pinned_bytes = pinned, spacing, total

    def code_cloud(self, level: str, code: int, spacing: float) -> Cloud:
        if spacing == self.pinned_spacing and (level, code) in self.pinned:
            return self.pinned[(level, code)]  # read-only after loading: no lock
        key = (level, spacing, code)
        with self._lock:
            cloud = self.lru.get(key)
            if cloud is not None:
                self.lru.move_to_end(key)
                return cloud
        lk = self.units.levels[level]
        cloud = self.unit_cloud(level, int(lk.unit_offsets[code]), int(lk.unit_offsets[code + 1]), spacing)
        room = self.budget - self.pinned_bytes
        if cloud.nbytes <= room:
            with self._lock:
                if key not in self.lru:  # another query may have stored it meanwhile
                    self.lru[key] = cloud
                    self.lru_bytes += cloud.nbytes
                while self.lru_bytes > room:
                    _, old = self.lru.popitem(last=False)
                    self.lru_bytes -= old.nbytes
        return cloud

    def instance_clouds(
        self,
        level: str,
        codes: np.ndarray,
        units: np.ndarray,
        sel: np.ndarray,
        lab: np.ndarray,
        nk: int,
        spacing: float,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per instance the precomputed cloud points of its units (``units[sel]``, grouped by
        instance label ``lab``)."""
        parts = [self.code_cloud(level, int(c), spacing) for c in codes]
        # Point ranges of every selected unit inside the concatenation of the codes' clouds: the
        # clouds are concatenated in code order, the order of `units`.
        sizes = np.array([p.points.shape[0] for p in parts], dtype=np.int64)
        base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        first = np.concatenate([p.starts[:-1] + b for p, b in zip(parts, base)])
        last = np.concatenate([p.starts[1:] + b for p, b in zip(parts, base)])
        if len(parts) == 1:
            all_pts, all_cols = parts[0].points, parts[0].colors
        else:
            all_pts = np.concatenate([p.points for p in parts])
            all_cols = np.concatenate([p.colors for p in parts])
        pos = ranges(first[sel], last[sel])
        pts, cols = np.take(all_pts, pos, axis=0), np.take(all_cols, pos, axis=0)
        per_inst = np.bincount(lab, weights=last[sel] - first[sel], minlength=nk)
        split = np.rint(np.cumsum(per_inst)[:-1]).astype(np.int64)
        return list(zip(np.split(pts, split), np.split(cols, split)))


__all__ = [
    "CLOUD_CHUNK_SAMPLES", "RADIUS_POINTS", "Cloud", "CloudCache", "clip_clouds", "join_clouds", "sampled_clouds",
]  # fmt: skip
