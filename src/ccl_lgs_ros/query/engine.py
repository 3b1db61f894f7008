"""Text in, object instances out: the 3D semantic query engine.

Pipeline of :meth:`QueryEngine.query`:

1. validate the text; embed it with the text encoder (LRU cached);
2. relevance of every codebook entry against the canonical and user negatives (LERF: for each
   negative ``softmax(T * [s_pos, s_neg])[0]``, minimum over the negatives);
3. per-Gaussian relevance = that table indexed by the Gaussian's code (no per-Gaussian network);
   levels combined by ``cfg.level_mode``;
4. threshold, only over Gaussians that passed the static filters (opacity, huge splats,
   floaters isolated in the whole scene, low code confidence) — an inverted index (Gaussians
   sorted by code) makes the selection cost proportional to what is selected, not to N;
5. instances by clustering the selected Gaussians (:mod:`.cluster`);
6. per instance: score, Gaussians, a sampled surface cloud, centroid, oriented box, axes. The
   centroid and boxes come from the Gaussian centres; the cloud (samples up to 2 sigma from each
   centre) is clipped to the centres' axis-aligned box grown by about one typical Gaussian
   radius (``cfg.clip_cloud``), which drops the tails that the instance's largest Gaussians
   sample past the object.

With the default settings (``level_mode="best"``, ``cluster_method="voxel"``) steps 4-6 work on
*units*: the eligible Gaussians of one code inside one voxel of the clustering grid. A query
selects whole codes and the clustering labels whole voxels, so a unit lies entirely inside one
instance or outside all of them; per-unit sums prepared once per scene (count, opacity,
opacity-weighted centre, bounds) give the clustering, scores, centroids and boxes without
touching the Gaussians, and the surface cloud is precomputed per unit (at ``point_spacing`` when
the scene is loaded, at other spacings per code on first use). What is left per query in
proportion to the selection is copying out the ids (and parameters) of the selected Gaussians
and the points of the cloud.

Everything the engine returns is in the index's world frame (``index.frame_id``).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..config import QueryConfig
from ..relevance import lerf_relevance
from .cluster import VoxelGrid, dbscan_open3d
from .index import LevelCodes, SemanticIndex
from .shapes import (
    Box,
    clip_to_box,
    downsample_by_owner,
    pca_box,
    sample_surface,
    samples_per_gaussian,
    surface_samples,
    typical_radius,
)
from .text import QueryError, validate_text

__all__ = [
    "Instance",
    "LevelCodes",
    "QueryEngine",
    "QueryError",
    "QueryResult",
    "SemanticIndex",
    "relevance_table",
]


#: Accepted surface-cloud spacings (m): below 0.1 mm a cloud would have billions of points (and
#: float32 sums lose precision), above 10 m it is empty.
POINT_SPACING_BOUNDS = (1e-4, 10.0)


class TextEncoderLike(Protocol):
    """What the engine needs from :class:`ccl_lgs_ros.priors.types.TextEncoder`."""

    def encode_text(self, texts: Sequence[str]) -> np.ndarray: ...


#: The codebook's relevance table is the one LERF formula (:mod:`ccl_lgs_ros.relevance`) applied to its entries.
relevance_table = lerf_relevance


@dataclass
class Instance:
    """One object instance, world frame."""

    score: float  # opacity-weighted mean relevance of its Gaussians
    level: str
    num_gaussians: int
    centroid: np.ndarray  # [3], opacity-weighted mean of the Gaussian centres
    box: Box  # oriented box along the principal axes of the Gaussian centres
    aabb_min: np.ndarray  # [3], of the Gaussian centres
    aabb_max: np.ndarray  # [3]
    gaussian_ids: np.ndarray  # int64 [M], rows of the index
    # float32 [P, 3], sampled surface cloud (empty when spacing is 0); with cfg.clip_cloud inside
    # aabb_min..aabb_max grown by cfg.clip_cloud_margin typical Gaussian radii.
    points: np.ndarray
    point_colors: np.ndarray  # float32 [P, 3]
    # The Gaussians themselves; empty arrays when the query asked for include_gaussians=False.
    means: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    quats: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scales: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    opacities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    relevance: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def axes(self) -> np.ndarray:
        """Principal axes ``[3, 3]`` (columns, descending variance)."""
        return self.box.rotation

    def to_json(self) -> dict[str, Any]:
        return {
            "score": round(float(self.score), 6),
            "level": self.level,
            "num_gaussians": int(self.num_gaussians),
            "num_points": int(self.points.shape[0]),
            "centroid": self.centroid.tolist(),
            "box": self.box.to_json(),
            "aabb": {"min": self.aabb_min.tolist(), "max": self.aabb_max.tolist()},
        }


@dataclass
class QueryResult:
    """Answer to one text query. ``found=False`` is a valid answer (``best_score`` says how close)."""

    text: str
    found: bool
    best_score: float  # highest relevance of any eligible Gaussian (chosen level)
    threshold: float
    level: str  # level used ("max" when levels were combined per Gaussian)
    frame_id: str
    instances: list[Instance]
    num_selected: int  # Gaussians above the threshold before clustering
    negatives: list[str]
    message: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "found": self.found,
            "best_score": round(float(self.best_score), 6),
            "threshold": self.threshold,
            "level": self.level,
            "frame_id": self.frame_id,
            "num_selected": self.num_selected,
            "negatives": list(self.negatives),
            "message": self.message,
            "instances": [inst.to_json() for inst in self.instances],
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


@dataclass
class _LevelLookup:
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

    def nbytes(self) -> int:
        """Memory of the lookup (the level's codes and confidences not counted)."""
        return int(
            sum(
                a.nbytes
                for a in (
                    self.sorted_ids, self.offsets, self.present, self.unit_offsets, self.unit_start,
                    self.unit_code, self.unit_voxel, self.unit_opacity, self.unit_weighted,
                    self.unit_lo, self.unit_hi,
                )
            )
        )


@dataclass
class _Cloud:
    """Surface cloud of the units of one code (or a run of units) at one spacing."""

    points: np.ndarray  # float32 [K, 3], sorted by unit
    colors: np.ndarray  # float32 [K, 3]
    starts: np.ndarray  # int64 [units + 1], unit j owns points[starts[j]:starts[j + 1]]

    @property
    def nbytes(self) -> int:
        return int(self.points.nbytes + self.colors.nbytes + self.starts.nbytes)


#: Gaussians per instance used to fit the oriented box.
STATS_POINTS = 8192

#: Gaussians per instance whose scales give its typical radius (the margin of ``clip_cloud``): a
#: median of 512 evenly strided ones is within a few per cent of the full one.
RADIUS_POINTS = 512

#: Raw surface samples processed at once when a scene's clouds are precomputed (bounds memory).
CLOUD_CHUNK_SAMPLES = 2_000_000


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
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


def _join_clouds(parts: list[_Cloud]) -> _Cloud:
    """Clouds of consecutive unit runs -> one cloud of all their units."""
    sizes = np.array([p.points.shape[0] for p in parts], dtype=np.int64)
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    starts = np.concatenate([*(p.starts[:-1] + b for p, b in zip(parts, base)), [int(sizes.sum())]])
    return _Cloud(
        np.concatenate([p.points for p in parts]), np.concatenate([p.colors for p in parts]), starts.astype(np.int64)
    )


def _normalise_phrase(text: str) -> str:
    return " ".join(text.split()).casefold()


class QueryEngine:
    """Answers text queries over a :class:`SemanticIndex`.

    The constructor does the per-scene work once (filters, inverted index, voxel grid); each query
    then costs a codebook-sized relevance table plus work proportional to the selection.
    """

    def __init__(self, index: SemanticIndex, text_encoder: TextEncoderLike, cfg: QueryConfig | None = None) -> None:
        self.index = index
        self.encoder = text_encoder
        self.cfg = cfg if cfg is not None else QueryConfig()
        enc_dim = getattr(text_encoder, "dim", None)
        if isinstance(enc_dim, int) and enc_dim != index.dim:
            raise ValueError(f"text encoder dimension {enc_dim} != codebook dimension {index.dim}")
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.eligible = self._static_filter()
        self._any_eligible = bool(self.eligible.any())
        self._levels = {name: self._build_lookup(lv) for name, lv in index.levels.items()}
        # Surface clouds: the default spacing's for the whole scene (pinned), others per code (LRU).
        self._cloud_budget = int(self.cfg.cloud_cache_mb * 2**20)
        self._pinned: dict[tuple[str, int], _Cloud] = {}
        self._pinned_spacing = 0.0
        self._pinned_bytes = 0
        self._cloud_lru: OrderedDict[tuple[str, float, int], _Cloud] = OrderedDict()
        self._lru_bytes = 0
        self.cloud_prepare_s = 0.0
        if self._fast_path() and self._cloud_budget > 0 and self.cfg.point_spacing > 0 and self._any_eligible:
            t0 = time.perf_counter()
            self._pin_clouds(float(self.cfg.point_spacing))
            self.cloud_prepare_s = time.perf_counter() - t0

    # ---- per-scene preparation -------------------------------------------------------------

    def _static_filter(self) -> np.ndarray:
        """bool ``[N]``: Gaussians a query may select (opaque enough, not huge, not floaters)."""
        idx, cfg = self.index, self.cfg
        ok = (idx.opacities >= cfg.min_opacity) & np.isfinite(idx.means).all(axis=1)
        self.grid: VoxelGrid | None = None
        if not ok.any():
            return ok
        lo, hi = idx.means[ok].min(axis=0), idx.means[ok].max(axis=0)
        diag = float(np.linalg.norm(hi - lo))
        if diag > 0 and cfg.max_scale_fraction > 0:
            ok &= idx.scales.max(axis=1) <= cfg.max_scale_fraction * diag
        if cfg.cluster_eps > 0 and ok.any():
            self.grid = VoxelGrid(idx.means, cfg.cluster_eps, include=ok)
            # Floaters: too few Gaussians around them in the whole scene to ever form an object.
            dense = self.grid.neighbourhood_counts() >= cfg.cluster_min_points
            vox = self.grid.voxel_of
            ok &= (vox >= 0) & np.append(dense, False)[vox]
        return ok

    def _build_lookup(self, level: LevelCodes) -> _LevelLookup:
        idx = self.index
        ok = self.eligible
        if self.cfg.min_confidence > 0:
            ok = ok & (level.confidence >= math.ceil(self.cfg.min_confidence * 255))
        ids = np.flatnonzero(ok)
        nc = level.num_codes
        codes = level.codes[ids].astype(np.int64)
        # Eligible Gaussians always lie in the grid (the floater filter needs their voxel).
        nv = self.grid.num_voxels if self.grid is not None else 1
        vox = self.grid.voxel_of[ids].astype(np.int64) if self.grid is not None else np.zeros(ids.shape[0], np.int64)
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
        return _LevelLookup(
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

    def _fast_path(self) -> bool:
        """Whether queries run on units (the default settings; see the module docstring)."""
        return self.cfg.level_mode == "best" and self.cfg.cluster_method == "voxel"

    def index_bytes_per_gaussian(self) -> dict[str, float]:
        """Memory of the query path per Gaussian: codes + confidence, inverted index with its
        per-unit sums, voxel grid, precomputed surface clouds."""
        n = max(self.index.num_gaussians, 1)
        ids = sum(lk.sorted_ids.nbytes + lk.offsets.nbytes for lk in self._levels.values())
        units = sum(lk.nbytes() for lk in self._levels.values()) - ids
        grid = self.grid.nbytes() if self.grid is not None else 0
        codebooks = sum(lv.codebook.nbytes for lv in self.index.levels.values())
        pinned = self._pinned_bytes
        return {
            "codes_and_confidence": self.index.semantic_bytes_per_gaussian(),
            "inverted_index": ids / n,
            "unit_sums": units / n,
            "voxel_grid": grid / n,
            "surface_cloud": pinned / n,
            "surface_cloud_other_spacings_total_bytes": float(self._lru_bytes),
            "num_units": float(sum(lk.unit_code.shape[0] for lk in self._levels.values())),
            "codebooks_total_bytes": float(codebooks),
        }

    # ---- surface clouds ------------------------------------------------------------------------

    def _sampled_clouds(
        self, ids: np.ndarray, means: np.ndarray, groups: np.ndarray, num_instances: int, spacing: float
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Surface clouds sampled now (no cache) for Gaussians ``ids`` (centres ``means``) whose
        instance is ``groups`` (sorted): one ``(points, colors)`` per instance."""
        idx = self.index
        rng = np.random.default_rng(0)  # deterministic clouds for a given scene and query
        pts, pcols, pgrp = sample_surface(
            means,
            np.take(idx.quats, ids, axis=0),
            np.take(idx.scales, ids, axis=0),
            np.take(idx.colors, ids, axis=0),
            spacing,
            self.cfg.max_points_per_gaussian,
            rng,
            groups=groups,
        )
        psplit = np.searchsorted(pgrp, np.arange(1, num_instances))
        return list(zip(np.split(pts, psplit), np.split(pcols, psplit)))

    def _clip_clouds(
        self,
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
        if not self.cfg.clip_cloud:
            return clouds
        out = []
        for i, (pts, cols) in enumerate(clouds):
            s, n = int(starts[i]), int(counts[i])
            step = -(-n // RADIUS_POINTS)  # at most about RADIUS_POINTS evenly strided Gaussians
            radius = typical_radius(np.take(self.index.scales, ids[s : s + n : step], axis=0))
            out.append(clip_to_box(pts, cols, lo[i], hi[i], self.cfg.clip_cloud_margin * radius))
        return out

    def _unit_cloud(self, level: str, u0: int, u1: int, spacing: float) -> _Cloud:
        """Surface cloud of the units ``u0..u1-1`` of ``level``: samples of their Gaussians
        averaged per cube of side ``spacing`` (cubes never merge across codes), each point owned
        by the unit that put the most samples into its cube."""
        lk, idx = self._levels[level], self.index
        g = lk.sorted_ids[lk.unit_start[u0] : lk.unit_start[u1]]
        nu = u1 - u0
        unit_of = np.repeat(np.arange(nu, dtype=np.int64), np.diff(lk.unit_start[u0 : u1 + 1]))
        level_no = list(self._levels).index(level)
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
        return _Cloud(p, c, starts)

    def _pin_clouds(self, spacing: float) -> None:
        """Precompute every code's cloud at ``spacing``, in chunks of about CLOUD_CHUNK_SAMPLES
        raw samples: consecutive codes share a chunk, a code bigger than one chunk is split
        between units and its pieces merged per cube afterwards. Gives up, keeping nothing, when
        the clouds outgrow ``cfg.cloud_cache_mb`` (queries then sample and cache per code)."""
        pinned: dict[tuple[str, int], _Cloud] = {}
        total = 0

        def keep(level: str, codes: list[int], cloud: _Cloud, u0: int) -> bool:
            nonlocal total
            total += cloud.nbytes
            lk = self._levels[level]
            for c in codes:  # views into the chunk's arrays
                i0, i1 = int(lk.unit_offsets[c]) - u0, int(lk.unit_offsets[c + 1]) - u0
                p0, p1 = int(cloud.starts[i0]), int(cloud.starts[i1])
                pinned[(level, c)] = _Cloud(cloud.points[p0:p1], cloud.colors[p0:p1], cloud.starts[i0 : i1 + 1] - p0)
            return total <= self._cloud_budget

        for level, lk in self._levels.items():
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
                    parts = [self._unit_cloud(level, int(u), int(v), spacing) for u, v in zip(cuts[:-1], cuts[1:])]
                    joined = _join_clouds(parts)
                    # Cubes the pieces share: one point again (the mean of the pieces' points).
                    owner = np.repeat(np.arange(b - a), np.diff(joined.starts))
                    merged = downsample_by_owner(
                        joined.points, joined.colors, np.zeros(owner.shape[0], np.int64), owner, b - a, spacing
                    )
                    if not keep(level, [code], _Cloud(*merged), a):
                        return
                    continue
                group.append(code)
                last = i + 1 == len(present)
                if last or cum[int(lk.unit_offsets[present[i + 1] + 1])] - cum[int(lk.unit_offsets[group[0]])] > (
                    CLOUD_CHUNK_SAMPLES
                ):
                    u0, u1 = int(lk.unit_offsets[group[0]]), int(lk.unit_offsets[group[-1] + 1])
                    if not keep(level, group, self._unit_cloud(level, u0, u1, spacing), u0):
                        return
                    group = []
        self._pinned, self._pinned_spacing, self._pinned_bytes = pinned, spacing, total

    def _code_cloud(self, level: str, code: int, spacing: float) -> _Cloud:
        if spacing == self._pinned_spacing and (level, code) in self._pinned:
            return self._pinned[(level, code)]
        key = (level, spacing, code)
        cloud = self._cloud_lru.get(key)
        if cloud is not None:
            self._cloud_lru.move_to_end(key)
            return cloud
        lk = self._levels[level]
        cloud = self._unit_cloud(level, int(lk.unit_offsets[code]), int(lk.unit_offsets[code + 1]), spacing)
        room = self._cloud_budget - self._pinned_bytes
        if cloud.nbytes <= room:
            self._cloud_lru[key] = cloud
            self._lru_bytes += cloud.nbytes
            while self._lru_bytes > room:
                _, old = self._cloud_lru.popitem(last=False)
                self._lru_bytes -= old.nbytes
        return cloud

    # ---- text --------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit embeddings ``float32 [Q, D]``; one encoder call for the phrases not cached."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            emb = np.asarray(self.encoder.encode_text(missing), dtype=np.float32)
            if emb.shape != (len(missing), self.index.dim) or not np.isfinite(emb).all():
                raise ValueError(f"text encoder returned {emb.shape}, expected ({len(missing)}, {self.index.dim})")
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            for t, e in zip(missing, emb):
                self._cache[t] = e
        out = np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, self.index.dim), np.float32)
        for t in texts:
            self._cache.move_to_end(t)
        while len(self._cache) > max(self.cfg.embedding_cache_size, len(texts)):
            self._cache.popitem(last=False)
        return out

    def relevance_tables(self, text: str, negatives: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Per level, the relevance of every codebook entry: ``float32 [Nc]``."""
        negs = self._negatives(negatives)
        emb = self.embed([text, *negs])
        return {
            name: relevance_table(lv.codebook, emb[0], emb[1:], self.cfg.temperature)
            for name, lv in self.index.levels.items()
        }

    def relevance(self, text: str, negatives: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Per level, every Gaussian's relevance ``float32 [N]`` (a table lookup by code)."""
        text = validate_text(text, self.cfg.max_query_chars)
        tables = self.relevance_tables(text, negatives)
        return {name: tables[name][lv.codes] for name, lv in self.index.levels.items()}

    def _negatives(self, user: Sequence[str] | None) -> list[str]:
        negs = [validate_text(n, self.cfg.max_query_chars, "negative") for n in (user or [])]
        return list(dict.fromkeys([*self.cfg.negatives, *negs]))

    # ---- queries -----------------------------------------------------------------------------

    def query_many(self, texts: Sequence[str], **kwargs: Any) -> list[QueryResult]:
        """Several queries; their uncached embeddings are computed in one encoder call."""
        clean = [validate_text(t, self.cfg.max_query_chars) for t in texts]
        self.embed([*clean, *self._negatives(kwargs.get("negatives"))])
        return [self.query(t, **kwargs) for t in clean]

    def query(
        self,
        text: str,
        *,
        negatives: list[str] | None = None,
        threshold: float | None = None,
        max_instances: int | None = None,
        point_spacing: float | None = None,
        include_gaussians: bool = True,
    ) -> QueryResult:
        """Find the instances matching ``text``. See the module docstring for the pipeline.

        Args:
            text: the phrase ("red mug"). Unknown words are valid and simply match nothing.
            negatives: extra negative phrases on top of ``cfg.negatives``.
            threshold: relevance a Gaussian must exceed (default ``cfg.threshold``), in [0, 1].
            max_instances: keep the best k instances (0 = all; default ``cfg.max_instances``).
            point_spacing: spacing of the sampled surface cloud in metres (0 = no cloud).
            include_gaussians: copy the instances' Gaussian parameters into the result.

        Raises:
            QueryError: invalid text or options.
        """
        cfg = self.cfg
        t0 = time.perf_counter()
        text = validate_text(text, cfg.max_query_chars)
        thr = self._check_number("threshold", cfg.threshold if threshold is None else threshold, upper=1.0)
        spacing = self._check_number("point_spacing", cfg.point_spacing if point_spacing is None else point_spacing)
        if spacing > 0 and not POINT_SPACING_BOUNDS[0] <= spacing <= POINT_SPACING_BOUNDS[1]:
            raise QueryError(f"point_spacing {spacing:g} m is outside {list(POINT_SPACING_BOUNDS)} m (0 = no cloud)")
        k = cfg.max_instances if max_instances is None else max_instances
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise QueryError(f"max_instances must be a non-negative integer, got {k!r}")
        negs = self._negatives(negatives)
        timings: dict[str, float] = {}

        def result(found: bool, best: float, level: str, instances: list[Instance], n_sel: int, msg: str):
            timings["total"] = (time.perf_counter() - t0) * 1e3
            return QueryResult(text, found, best, thr, level, self.index.frame_id, instances, n_sel, negs, msg, timings)

        if _normalise_phrase(text) in {_normalise_phrase(n) for n in negs}:
            return result(
                False, 0.0, "", [], 0, "the query is one of the negative phrases; nothing can be more relevant"
            )
        tables = self.relevance_tables(text, negatives)
        timings["relevance"] = (time.perf_counter() - t0) * 1e3
        if not self._any_eligible:
            return result(False, 0.0, "", [], 0, "the scene has no selectable Gaussians")

        if self._fast_path():
            level, codes, best = self._select_codes(tables, thr)
            lk = self._levels[level]
            n_sel = int((lk.offsets[codes + 1] - lk.offsets[codes]).sum())
            timings["select"] = (time.perf_counter() - t0) * 1e3
            if n_sel == 0:
                return result(False, best, level, [], 0, "no Gaussian is above the threshold")
            instances = self._unit_instances(level, tables[level], codes, spacing, include_gaussians, k, timings, t0)
        else:
            ids, rel, level, best = self._select(tables, thr)
            n_sel = int(ids.size)
            timings["select"] = (time.perf_counter() - t0) * 1e3
            if n_sel == 0:
                return result(False, best, level, [], 0, "no Gaussian is above the threshold")
            labels = self._cluster(ids)
            timings["cluster"] = (time.perf_counter() - t0) * 1e3
            instances = self._instances(ids, rel, labels, level, spacing, include_gaussians)
            instances.sort(key=lambda inst: (-inst.score, -inst.num_gaussians))
            if k:
                instances = instances[:k]
        timings["instances"] = (time.perf_counter() - t0) * 1e3
        if not instances:
            return result(False, best, level, [], n_sel, "selected Gaussians form no instance large enough")
        return result(True, best, level, instances, n_sel, "")

    @staticmethod
    def _check_number(name: str, value: Any, upper: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise QueryError(f"{name} must be a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v) or v < 0 or (upper is not None and v > upper):
            bound = f"[0, {upper}]" if upper is not None else ">= 0"
            raise QueryError(f"{name} must be a finite number {bound}, got {value!r}")
        return v

    def _level_codes(self, name: str, table: np.ndarray, thr: float) -> tuple[np.ndarray, float]:
        """Codes of level ``name`` a query selects (sorted) and the best relevance of any code."""
        lk = self._levels[name]
        best = float(table[lk.present].max()) if lk.present.any() else 0.0
        # 0.5 is the relevance of text that matches a code no better than a generic negative
        # does; a code must also come close to the best code's margin over that point, or a
        # query would pick up every code that drifts slightly above 0.5.
        floor = max(thr, 0.5 + self.cfg.relative_threshold * (best - 0.5))
        return np.flatnonzero((table > thr) & (table >= floor) & lk.present), best

    def _select_codes(self, tables: dict[str, np.ndarray], thr: float) -> tuple[str, np.ndarray, float]:
        """``level_mode="best"``: the level with the highest best relevance, its codes, that relevance."""
        per_level = {name: self._level_codes(name, tables[name], thr) for name in self._levels}
        level = max(per_level, key=lambda name: per_level[name][1])
        return level, per_level[level][0], per_level[level][1]

    def _select_level(self, name: str, table: np.ndarray, thr: float) -> tuple[np.ndarray, float]:
        lk = self._levels[name]
        codes, best = self._level_codes(name, table, thr)
        parts = [lk.sorted_ids[lk.offsets[c] : lk.offsets[c + 1]] for c in codes]
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return ids, best

    def _select(self, tables: dict[str, np.ndarray], thr: float) -> tuple[np.ndarray, np.ndarray, str, float]:
        """Selected Gaussian ids, their relevance, the level name and the best score seen."""
        per_level = {name: self._select_level(name, tables[name], thr) for name in self._levels}
        if self.cfg.level_mode == "best":
            level = max(per_level, key=lambda name: per_level[name][1])
            ids, best = per_level[level]
            return ids, tables[level][self.index.levels[level].codes[ids]], level, best
        best = max(b for _, b in per_level.values())
        ids = np.unique(np.concatenate([i for i, _ in per_level.values()]))
        rel = np.zeros(ids.shape[0], dtype=np.float32)
        for name, lk in self._levels.items():
            r = tables[name][lk.codes.codes[ids]]
            if self.cfg.min_confidence > 0:
                r = np.where(lk.codes.confidence[ids] >= math.ceil(self.cfg.min_confidence * 255), r, 0.0)
            rel = np.maximum(rel, r)
        return ids, rel, "max", best

    def _cluster(self, ids: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        if cfg.cluster_method == "dbscan":
            return dbscan_open3d(np.take(self.index.means, ids, axis=0), cfg.cluster_eps, cfg.cluster_min_points)
        if self.grid is None:  # eps = 0: no spatial splitting, one instance
            return np.zeros(ids.shape[0], dtype=np.int64)
        return self.grid.cluster(ids, cfg.cluster_min_points)

    def _unit_instances(
        self,
        level: str,
        table: np.ndarray,
        codes: np.ndarray,
        spacing: float,
        include_gaussians: bool,
        k: int,
        timings: dict[str, float],
        t0: float,
    ) -> list[Instance]:
        """Instances of the selected ``codes`` of ``level``, best first, at most ``k`` (0 = all)."""
        idx, cfg, lk = self.index, self.cfg, self._levels[level]
        units = _ranges(lk.unit_offsets[codes], lk.unit_offsets[codes + 1])  # code order
        n_u = lk.unit_start[units + 1] - lk.unit_start[units]
        if self.grid is None:  # eps = 0: no spatial splitting, one instance
            ulab = np.zeros(units.shape[0], dtype=np.int64)
        else:
            occupied, inverse = np.unique(lk.unit_voxel[units], return_inverse=True)
            inverse = inverse.reshape(-1)
            per_voxel = np.bincount(inverse, weights=n_u, minlength=occupied.shape[0])
            labels = self.grid.cluster_voxels(occupied, np.rint(per_voxel).astype(np.int64), cfg.cluster_min_points)
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
        ids = lk.sorted_ids[_ranges(lk.unit_start[u], lk.unit_start[u + 1])].astype(np.int64)
        rel = np.repeat(table[lk.unit_code[u]], n_u[sel]).astype(np.float32, copy=False)
        g_start = np.concatenate([[0], np.cumsum(counts)])
        means = np.take(idx.means, ids, axis=0) if include_gaussians else None
        boxes = []
        for i in range(nk):
            s, n = int(g_start[i]), int(counts[i])
            step = -(-n // STATS_POINTS)  # at most about STATS_POINTS evenly strided centres
            sub = means[s : s + n : step] if means is not None else np.take(idx.means, ids[s : s + n : step], axis=0)
            boxes.append(pca_box(sub))
        if spacing <= 0:
            empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
            clouds = [empty] * nk
        elif self._cloud_budget > 0:
            clouds = self._cached_clouds(level, codes, units, sel, lab, nk, spacing)
        else:
            m = np.take(idx.means, ids, axis=0) if means is None else means
            clouds = self._sampled_clouds(ids, m, np.repeat(np.arange(nk), counts), nk, spacing)
        if spacing > 0:
            clouds = self._clip_clouds(clouds, ids, g_start, counts, lo, hi)
        if include_gaussians:
            quats, scales = np.take(idx.quats, ids, axis=0), np.take(idx.scales, ids, axis=0)
            opac, colors = idx.opacities[ids], np.take(idx.colors, ids, axis=0)
        out: list[Instance] = []
        for i in range(nk):
            s, e = int(g_start[i]), int(g_start[i + 1])
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

    def _cached_clouds(
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
        parts = [self._code_cloud(level, int(c), spacing) for c in codes]
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
        pos = _ranges(first[sel], last[sel])
        pts, cols = np.take(all_pts, pos, axis=0), np.take(all_cols, pos, axis=0)
        per_inst = np.bincount(lab, weights=last[sel] - first[sel], minlength=nk)
        split = np.rint(np.cumsum(per_inst)[:-1]).astype(np.int64)
        return list(zip(np.split(pts, split), np.split(cols, split)))

    def _instances(
        self,
        ids: np.ndarray,
        rel: np.ndarray,
        labels: np.ndarray,
        level: str,
        spacing: float,
        include_gaussians: bool,
    ) -> list[Instance]:
        idx, cfg = self.index, self.cfg
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
        # Oriented boxes from (at most about STATS_POINTS evenly strided) Gaussian centres per
        # instance: the extreme centres a subsample misses lie within about one Gaussian spacing.
        boxes = [pca_box(means[s : s + n : -(-n // STATS_POINTS)]) for s, n in zip(starts, counts)]
        if spacing > 0:
            clouds = self._sampled_clouds(ids, means, labels, counts.shape[0], spacing)
            clouds = self._clip_clouds(clouds, ids, starts, counts, lo, hi)
        else:
            empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
            clouds = [empty] * counts.shape[0]
        out: list[Instance] = []
        for i, (s, n) in enumerate(zip(starts, counts)):
            inst = Instance(
                score=float(scores[i]),
                level=level,
                num_gaussians=int(n),
                centroid=centroids[i],
                box=boxes[i],
                aabb_min=lo[i],
                aabb_max=hi[i],
                gaussian_ids=ids[s : s + n],
                points=clouds[i][0],
                point_colors=clouds[i][1],
            )
            if include_gaussians:
                g = inst.gaussian_ids
                inst.means, inst.quats = means[s : s + n], np.take(idx.quats, g, axis=0)
                inst.scales = np.take(idx.scales, g, axis=0)
                inst.opacities, inst.colors, inst.relevance = (
                    op[s : s + n],
                    np.take(idx.colors, g, axis=0),
                    rel[s : s + n],
                )
            out.append(inst)
        return out
