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

Roles (each its own module): :mod:`.units` the immutable unit index, :mod:`.selection` which codes
and Gaussians a query picks, :mod:`.instances` the one instance assembly, :mod:`.clouds` the
surface-cloud cache (its own lock), :mod:`.embedding` the text-embedding cache (its own lock),
:mod:`.text` the query-text check, :mod:`ccl_lgs_ros.relevance` the relevance formula. This class
is the facade that joins them. Everything it holds is either immutable after construction or
guarded by its own lock, so any number of threads may call :meth:`QueryEngine.query` at once
(there is no engine-wide lock, and no query waits for another one's work).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import QueryConfig
from ..relevance import lerf_relevance
from .clouds import CloudCache
from .embedding import EmbeddingCache, TextEncoderLike
from .index import LevelCodes, SemanticIndex
from .instances import gaussian_instances, unit_instances
from .result import Instance, QueryResult
from .selection import cluster, select_codes, select_gaussians
from .text import QueryError, validate_text
from .units import LevelLookup, UnitIndex

__all__ = [
    "Instance",
    "LevelCodes",
    "QueryEngine",
    "QueryError",
    "QueryResult",
    "SemanticIndex",
    "TextEncoderLike",
    "relevance_table",
]

#: Accepted surface-cloud spacings (m): below 0.1 mm a cloud would have billions of points (and
#: float32 sums lose precision), above 10 m it is empty.
POINT_SPACING_BOUNDS = (1e-4, 10.0)

#: The codebook's relevance table is the one LERF formula (:mod:`ccl_lgs_ros.relevance`) applied to its entries.
relevance_table = lerf_relevance


def _normalise_phrase(text: str) -> str:
    return " ".join(text.split()).casefold()


class QueryEngine:
    """Answers text queries over a :class:`SemanticIndex` (thread-safe; see the module docstring).

    The constructor does the per-scene work once (filters, inverted index, voxel grid, clouds);
    each query then costs a codebook-sized relevance table plus work proportional to the selection.
    """

    def __init__(self, index: SemanticIndex, text_encoder: TextEncoderLike, cfg: QueryConfig | None = None) -> None:
        self.index = index
        self.encoder = text_encoder
        self.cfg = cfg if cfg is not None else QueryConfig()
        enc_dim = getattr(text_encoder, "dim", None)
        if isinstance(enc_dim, int) and enc_dim != index.dim:
            raise ValueError(f"text encoder dimension {enc_dim} != codebook dimension {index.dim}")
        self.embeddings = EmbeddingCache(text_encoder, index.dim, self.cfg.embedding_cache_size)
        self.units = UnitIndex.build(index, self.cfg)
        # Surface clouds: the default spacing's for the whole scene (pinned), others per code (LRU).
        t0 = time.perf_counter()
        self.clouds = CloudCache(index, self.units, self.cfg, pin=self._fast_path())
        self.cloud_prepare_s = time.perf_counter() - t0

    # ---- per-scene structures (read-only) ---------------------------------------------------

    @property
    def eligible(self) -> np.ndarray:
        """bool ``[N]``: Gaussians a query may select (opaque enough, not huge, not floaters)."""
        return self.units.eligible

    @property
    def grid(self) -> Any:
        """The clustering :class:`~.cluster.VoxelGrid` (None when ``cluster_eps`` is 0)."""
        return self.units.grid

    @property
    def levels(self) -> dict[str, LevelLookup]:
        return self.units.levels

    def _fast_path(self) -> bool:
        """Whether queries run on units (the default settings; see the module docstring)."""
        return self.cfg.level_mode == "best" and self.cfg.cluster_method == "voxel"

    def index_bytes_per_gaussian(self) -> dict[str, float]:
        """Memory of the query path per Gaussian: codes + confidence, inverted index with its
        per-unit sums, voxel grid, precomputed surface clouds."""
        n = max(self.index.num_gaussians, 1)
        levels = self.units.levels
        ids = sum(lk.sorted_ids.nbytes + lk.offsets.nbytes for lk in levels.values())
        units = sum(lk.nbytes() for lk in levels.values()) - ids
        grid = self.grid.nbytes() if self.grid is not None else 0
        codebooks = sum(lv.codebook.nbytes for lv in self.index.levels.values())
        return {
            "codes_and_confidence": self.index.semantic_bytes_per_gaussian(),
            "inverted_index": ids / n,
            "unit_sums": units / n,
            "voxel_grid": grid / n,
            "surface_cloud": self.clouds.pinned_bytes / n,
            "surface_cloud_other_spacings_total_bytes": float(self.clouds.lru_bytes),
            "num_units": float(sum(lk.unit_code.shape[0] for lk in levels.values())),
            "codebooks_total_bytes": float(codebooks),
        }

    # ---- text --------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit embeddings ``float32 [Q, D]``; one encoder call for the phrases not cached."""
        return self.embeddings.embed(texts)

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
        if not self.units.any_eligible:
            return result(False, 0.0, "", [], 0, "the scene has no selectable Gaussians")

        if self._fast_path():
            level, codes, best = select_codes(self.units, cfg, tables, thr)
            lk = self.units.levels[level]
            n_sel = int((lk.offsets[codes + 1] - lk.offsets[codes]).sum())
            timings["select"] = (time.perf_counter() - t0) * 1e3
            if n_sel == 0:
                return result(False, best, level, [], 0, "no Gaussian is above the threshold")
            instances = unit_instances(self.index, self.units, cfg, self.clouds, level, tables[level], codes, spacing,
                                       include_gaussians, k, timings, t0)  # fmt: skip
        else:
            ids, rel, level, best = select_gaussians(self.index, self.units, cfg, tables, thr)
            n_sel = int(ids.size)
            timings["select"] = (time.perf_counter() - t0) * 1e3
            if n_sel == 0:
                return result(False, best, level, [], 0, "no Gaussian is above the threshold")
            labels = cluster(self.index, self.units, cfg, ids)
            timings["cluster"] = (time.perf_counter() - t0) * 1e3
            instances = gaussian_instances(self.index, cfg, ids, rel, labels, level, spacing, include_gaussians)
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
