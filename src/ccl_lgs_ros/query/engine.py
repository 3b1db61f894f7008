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
6. per instance: score, Gaussians, a sampled surface cloud, centroid, oriented box, axes.

Everything the engine returns is in the index's world frame (``index.frame_id``).
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..config import QueryConfig
from .cluster import VoxelGrid, dbscan_open3d
from .index import LevelCodes, SemanticIndex
from .shapes import Box, pca_box, sample_surface

__all__ = [
    "Instance",
    "LevelCodes",
    "QueryEngine",
    "QueryError",
    "QueryResult",
    "SemanticIndex",
    "relevance_table",
]


class QueryError(ValueError):
    """The query (text or options) is invalid; the message says why."""


class TextEncoderLike(Protocol):
    """What the engine needs from :class:`ccl_lgs_ros.priors.types.TextEncoder`."""

    def encode_text(self, texts: Sequence[str]) -> np.ndarray: ...


def relevance_table(
    codebook: np.ndarray,  # [Nc, D] unit rows
    positive: np.ndarray,  # [D] unit
    negatives: np.ndarray,  # [K, D] unit
    temperature: float,
) -> np.ndarray:
    """LERF relevance of each codebook entry: ``min_k softmax(T [s_pos, s_neg_k])[0]``.

    Returns:
        float32 ``[Nc]`` in [0, 1]. Without negatives a zero-similarity negative is assumed.
    """
    cb = np.asarray(codebook, dtype=np.float32)
    s_pos = cb @ np.asarray(positive, dtype=np.float32)
    negs = np.asarray(negatives, dtype=np.float32).reshape(-1, cb.shape[1])
    s_neg = cb @ negs.T if negs.shape[0] else np.zeros((cb.shape[0], 1), np.float32)
    # softmax of two logits = sigmoid of their difference
    diff = temperature * (s_pos[:, None] - s_neg)
    return (1.0 / (1.0 + np.exp(-diff))).min(axis=1).astype(np.float32)


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
    points: np.ndarray  # float32 [P, 3], sampled surface cloud (empty when spacing is 0)
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
    """Per level: eligible Gaussians grouped by code (an inverted index)."""

    codes: LevelCodes
    sorted_ids: np.ndarray  # int32/int64 [E], eligible Gaussian ids ordered by code
    offsets: np.ndarray  # int64 [Nc + 1], code c owns sorted_ids[offsets[c]:offsets[c+1]]
    present: np.ndarray  # bool [Nc], code owned by at least one eligible Gaussian


#: Gaussians per instance used to fit the oriented box.
STATS_POINTS = 8192


def _normalise_phrase(text: str) -> str:
    return " ".join(text.split()).casefold()


def validate_text(text: Any, max_chars: int, what: str = "query") -> str:
    """Stripped ``text`` or :class:`QueryError` (empty, too long, control characters)."""
    if not isinstance(text, str):
        raise QueryError(f"{what} must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise QueryError(f"{what} is empty")
    if len(stripped) > max_chars:
        raise QueryError(f"{what} is {len(stripped)} characters long; at most {max_chars} are accepted")
    bad = [c for c in stripped if unicodedata.category(c)[0] == "C"]
    if bad:
        raise QueryError(f"{what} contains control or non-printable characters: {bad[:5]!r}")
    return stripped


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
        ok = self.eligible
        if self.cfg.min_confidence > 0:
            ok = ok & (level.confidence >= math.ceil(self.cfg.min_confidence * 255))
        ids = np.flatnonzero(ok)
        codes = level.codes[ids]
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=level.num_codes)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        id_dtype = np.int32 if self.index.num_gaussians < 2**31 else np.int64
        return _LevelLookup(level, ids[order].astype(id_dtype), offsets, counts > 0)

    def index_bytes_per_gaussian(self) -> dict[str, float]:
        """Memory of the query path per Gaussian: codes + confidence, inverted index, voxel grid."""
        n = max(self.index.num_gaussians, 1)
        lookup = sum(lk.sorted_ids.nbytes + lk.offsets.nbytes for lk in self._levels.values())
        grid = self.grid.nbytes() if self.grid is not None else 0
        codebooks = sum(lv.codebook.nbytes for lv in self.index.levels.values())
        return {
            "codes_and_confidence": self.index.semantic_bytes_per_gaussian(),
            "inverted_index": lookup / n,
            "voxel_grid": grid / n,
            "codebooks_total_bytes": float(codebooks),
        }

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

        ids, rel, level, best = self._select(tables, thr)
        timings["select"] = (time.perf_counter() - t0) * 1e3
        if ids.size == 0:
            return result(False, best, level, [], 0, "no Gaussian is above the threshold")

        labels = self._cluster(ids)
        timings["cluster"] = (time.perf_counter() - t0) * 1e3
        instances = self._instances(ids, rel, labels, level, spacing, include_gaussians)
        instances.sort(key=lambda inst: (-inst.score, -inst.num_gaussians))
        if k:
            instances = instances[:k]
        timings["instances"] = (time.perf_counter() - t0) * 1e3
        if not instances:
            return result(False, best, level, [], int(ids.size), "selected Gaussians form no instance large enough")
        return result(True, best, level, instances, int(ids.size), "")

    @staticmethod
    def _check_number(name: str, value: Any, upper: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise QueryError(f"{name} must be a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v) or v < 0 or (upper is not None and v > upper):
            bound = f"[0, {upper}]" if upper is not None else ">= 0"
            raise QueryError(f"{name} must be a finite number {bound}, got {value!r}")
        return v

    def _select_level(self, name: str, table: np.ndarray, thr: float) -> tuple[np.ndarray, float]:
        lk = self._levels[name]
        best = float(table[lk.present].max()) if lk.present.any() else 0.0
        # 0.5 is the relevance of text that matches a code no better than a generic negative
        # does; a code must also come close to the best code's margin over that point, or a
        # query would pick up every code that drifts slightly above 0.5.
        floor = max(thr, 0.5 + self.cfg.relative_threshold * (best - 0.5))
        codes = np.flatnonzero((table > thr) & (table >= floor) & lk.present)
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
            rng = np.random.default_rng(0)  # deterministic clouds for a given scene and query
            pts, pcols, pgrp = sample_surface(
                means,
                np.take(idx.quats, ids, axis=0),
                np.take(idx.scales, ids, axis=0),
                np.take(idx.colors, ids, axis=0),
                spacing,
                cfg.max_points_per_gaussian,
                rng,
                groups=labels,
            )
            psplit = np.searchsorted(pgrp, np.arange(1, counts.shape[0]))
            clouds = list(zip(np.split(pts, psplit), np.split(pcols, psplit)))
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
