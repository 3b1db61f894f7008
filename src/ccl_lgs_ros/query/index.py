"""The per-Gaussian semantic index the query engine searches.

Everything here is plain numpy and in the capture's WORLD frame: the trained scene's Gaussians
(mapped out of the normalised training frame with :meth:`SemanticIndex.from_scene_arrays`) plus,
per level, each Gaussian's top codebook entry and its probability. The semantic part costs
``1-2 + 1`` bytes per Gaussian and level (a ``uint8``/``uint16`` code and a ``uint8``
confidence), because a query only ever needs the relevance of the Gaussian's prototype, which is a
lookup into a table of ``Nc`` relevances computed once per query (CCL-LGS, step 6: each location
takes the prototype ``T_{argmax}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..geometry import quat_multiply_wxyz, rotmat_to_quat_wxyz, split_similarity
from ..io import atomic_save_npz, load_npz
from ..splat.project import SH_C0

INDEX_FORMAT_VERSION = 1


@dataclass
class LevelCodes:
    """One level's semantics: each Gaussian's top codebook entry and how sure the field is."""

    codes: np.ndarray  # uint8 / uint16 [N], index of the top codebook entry
    confidence: np.ndarray  # uint8 [N], top probability * 255
    codebook: np.ndarray  # float32 [Nc, D], unit rows in the text encoder's space

    def __post_init__(self) -> None:
        cb = np.asarray(self.codebook, dtype=np.float32)
        if cb.ndim != 2 or cb.shape[0] == 0:
            raise ValueError(f"codebook must be [Nc, D] with Nc > 0, got {cb.shape}")
        norm = np.linalg.norm(cb, axis=1, keepdims=True)
        self.codebook = cb / np.where(norm > 1e-12, norm, 1.0)
        self.codes = np.asarray(self.codes)
        if self.codes.ndim != 1 or self.codes.dtype.kind not in "ui":
            raise ValueError("codes must be a 1-D integer array")
        if self.codes.size and (int(self.codes.min()) < 0 or int(self.codes.max()) >= cb.shape[0]):
            raise ValueError("codes refer to entries outside the codebook")
        self.codes = np.ascontiguousarray(self.codes.astype(_code_dtype(cb.shape[0]), copy=False))
        self.confidence = np.asarray(self.confidence, dtype=np.uint8)
        if self.confidence.shape != self.codes.shape:
            raise ValueError("confidence and codes must have the same length")

    @property
    def num_codes(self) -> int:
        return int(self.codebook.shape[0])

    @classmethod
    def from_probs(cls, code_probs: np.ndarray, codebook: np.ndarray, chunk: int = 262_144) -> LevelCodes:
        """Compact a per-Gaussian codebook distribution (``float16 [N, Nc]``) to top-1 codes."""
        probs = np.asarray(code_probs)
        if probs.ndim != 2 or probs.shape[1] != np.asarray(codebook).shape[0]:
            raise ValueError(f"code_probs {probs.shape} does not match codebook {np.asarray(codebook).shape}")
        n = probs.shape[0]
        codes = np.empty(n, dtype=np.int64)
        conf = np.empty(n, dtype=np.uint8)
        # Chunked so a 1M x 256 float16 array is never promoted to float32 as a whole.
        for start in range(0, n, chunk):
            part = probs[start : start + chunk]
            top = np.argmax(part, axis=1)
            codes[start : start + chunk] = top
            p = part[np.arange(part.shape[0]), top].astype(np.float32)
            conf[start : start + chunk] = np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)
        return cls(codes=codes, confidence=conf, codebook=codebook)


def _code_dtype(num_codes: int) -> np.dtype:
    if num_codes <= 256:
        return np.dtype(np.uint8)
    if num_codes <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


@dataclass
class SemanticIndex:
    """Gaussians plus per-level codes, all in the world frame ``frame_id``."""

    means: np.ndarray  # float32 [N, 3], metres
    quats: np.ndarray  # float32 [N, 4], (w, x, y, z)
    scales: np.ndarray  # float32 [N, 3], activated, metres
    opacities: np.ndarray  # float32 [N], activated 0..1
    colors: np.ndarray  # float32 [N, 3], 0..1
    levels: dict[str, LevelCodes] = field(default_factory=dict)
    frame_id: str = "world"

    def __post_init__(self) -> None:
        # C-contiguous float32: row gathers of strided arrays are an order of magnitude slower.
        self.means = np.ascontiguousarray(np.asarray(self.means, dtype=np.float32).reshape(-1, 3))
        n = self.means.shape[0]
        self.quats = np.ascontiguousarray(np.asarray(self.quats, dtype=np.float32).reshape(n, 4))
        self.scales = np.ascontiguousarray(np.asarray(self.scales, dtype=np.float32).reshape(n, 3))
        self.opacities = np.ascontiguousarray(np.asarray(self.opacities, dtype=np.float32).reshape(n))
        colors = np.asarray(self.colors, dtype=np.float32)
        if colors.ndim == 3:  # SH coefficients [N, K, 3]: keep the view-independent colour
            colors = np.clip(0.5 + SH_C0 * colors[:, 0, :], 0.0, 1.0)
        self.colors = np.ascontiguousarray(colors.reshape(n, 3))
        if not self.levels:
            raise ValueError("a semantic index needs at least one level")
        dims = {lv.codebook.shape[1] for lv in self.levels.values()}
        if len(dims) != 1:
            raise ValueError(f"codebooks of different dimensions: {sorted(dims)}")
        for name, lv in self.levels.items():
            if lv.codes.shape != (n,):
                raise ValueError(f"level {name!r}: {lv.codes.shape[0]} codes for {n} Gaussians")

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(next(iter(self.levels.values())).codebook.shape[1])

    def semantic_bytes_per_gaussian(self) -> float:
        """Bytes per Gaussian of the per-level codes and confidences (the codebooks excluded)."""
        total = sum(lv.codes.itemsize + lv.confidence.itemsize for lv in self.levels.values())
        return float(total)

    @classmethod
    def from_scene_arrays(
        cls,
        means: np.ndarray,  # [N, 3] normalised scene frame
        quats: np.ndarray,  # [N, 4] wxyz
        scales: np.ndarray,  # [N, 3] activated
        opacities: np.ndarray,  # [N]
        colors: np.ndarray,  # [N, 3] or SH [N, K, 3]
        levels: dict[str, LevelCodes],
        world_from_scene: np.ndarray,  # [4, 4] similarity
        frame_id: str = "world",
    ) -> SemanticIndex:
        """Build an index from Gaussians in the normalised training frame, mapped to the world.

        ``world_from_scene = s [R | t]`` scales means and scales by ``s``, rotates means and
        orientations by ``R`` and translates means by ``t``.
        """
        s, R, t = split_similarity(world_from_scene)
        means_w = np.asarray(means, dtype=np.float64).reshape(-1, 3) @ (s * R).T + t
        quats_w = quat_multiply_wxyz(rotmat_to_quat_wxyz(R)[None, :], np.asarray(quats, np.float64).reshape(-1, 4))
        return cls(
            means=means_w,
            quats=quats_w,
            scales=np.asarray(scales, dtype=np.float64) * s,
            opacities=opacities,
            colors=colors,
            levels=levels,
            frame_id=frame_id,
        )

    def save(self, path: str | Path) -> None:
        """Write the index as one ``.npz`` (atomic, no pickle)."""
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(INDEX_FORMAT_VERSION),
            "frame_id": np.array(self.frame_id),
            "level_names": np.array(list(self.levels)),
            "means": self.means,
            "quats": self.quats,
            "scales": self.scales,
            "opacities": self.opacities,
            "colors": self.colors,
        }
        for name, lv in self.levels.items():
            arrays[f"{name}.codes"] = lv.codes
            arrays[f"{name}.confidence"] = lv.confidence
            # float32 (a few hundred kB): the engine's relevance then equals the 2D maps', which
            # read the field's float32 codebook (float16 moved relevance by ~1e-4).
            arrays[f"{name}.codebook"] = lv.codebook.astype(np.float32)
        atomic_save_npz(path, arrays)

    @classmethod
    def load(cls, path: str | Path, max_bytes: int | None = None) -> SemanticIndex:
        """Read an index file; with ``max_bytes`` a file declaring more is refused before it is
        inflated (``query.max_index_bytes``)."""
        data = load_npz(path, max_bytes=max_bytes)
        version = int(data["format_version"])
        if version != INDEX_FORMAT_VERSION:
            raise ValueError(f"{path}: index format {version}, this build reads {INDEX_FORMAT_VERSION}")
        levels = {
            str(name): LevelCodes(
                codes=data[f"{name}.codes"],
                confidence=data[f"{name}.confidence"],
                codebook=data[f"{name}.codebook"].astype(np.float32),
            )
            for name in data["level_names"].tolist()
        }
        return cls(
            means=data["means"],
            quats=data["quats"],
            scales=data["scales"],
            opacities=data["opacities"],
            colors=data["colors"],
            levels=levels,
            frame_id=str(data["frame_id"]),
        )
