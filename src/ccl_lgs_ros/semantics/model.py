"""The trained semantic field in memory and on disk (``SCENE/field/field.npz``).

A :class:`SemanticField` holds, per level, one low-dimensional feature per Gaussian and what turns
a (rendered or per-Gaussian) feature into semantics:

- ``ccl`` (CCL-LGS): an MLP decoder to logits over the level's codebook ``T [Nc, D]``; a
  location's CLIP-space prototype is ``T[argmax]``.
- ``cgc`` (contrastive Gaussian clustering): no decoder; unit features are compared with cluster
  centroids ``[Nc, d_f]`` (logits ``cos / temperature``), each cluster carries a CLIP prototype
  (the codebook row) averaged from the masks its pixels fall in.
- ``gags`` (granularity-aware distillation): one level ``"g"`` whose MLP decoder predicts a CLIP
  vector ``[D]`` plus granularity logits; the codebook is a spherical k-means of the decoded
  per-Gaussian vectors, used by the query index (pixels decode their vectors directly).

The decoding itself belongs to the method (``FieldMethod.logits`` in :mod:`.methods`, picked once
from the recorded ``method``): every method turns features ``[..., d_f]`` into logits ``[..., Nc]``
against a codebook, which is what the query index (:func:`.field.gaussian_code_probs`) and the 2D
relevance read. This module only holds the arrays and the file.

``field.npz`` keys: ``format_version``, ``method``, ``levels`` (str array), ``temperature``,
``features.<level> float32 [N, d_f]``, ``codebook.<level> float32 [Nc, D]``,
``decoder.<level>.<i>.weight|bias`` (ccl, gags), ``centroids.<level>`` (cgc).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io import atomic_save_npz, load_npz

FIELD_FORMAT_VERSION = 1
DECODER_HIDDEN = 64
#: Level name of the single GAGS field.
GAGS_LEVEL = "g"


class MLPDecoder(nn.Module):
    """The light decoder: ``d_in -> hidden -> ReLU -> d_out``."""

    def __init__(self, d_in: int, d_out: int, hidden: int = DECODER_HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., d_in] -> [..., d_out]
        return self.net(x)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.{k}": v.detach().cpu().numpy().astype(np.float32) for k, v in self.state_dict().items()}

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray], prefix: str) -> MLPDecoder:
        w0, w2 = arrays[f"{prefix}.net.0.weight"], arrays[f"{prefix}.net.2.weight"]
        dec = MLPDecoder(w0.shape[1], w2.shape[0], w0.shape[0])
        state = {
            k[len(prefix) + 1 :]: torch.from_numpy(np.asarray(v))
            for k, v in arrays.items()
            if k.startswith(prefix + ".")
        }
        dec.load_state_dict(state)
        return dec


@dataclass
class SemanticField:
    """Per-level Gaussian features plus their decoding (see module docstring)."""

    method: str
    features: dict[str, np.ndarray]  # level -> float32 [N, d_f]
    codebooks: dict[str, np.ndarray]  # level -> float32 [Nc, D] unit rows
    decoders: dict[str, MLPDecoder] = field(default_factory=dict)
    centroids: dict[str, np.ndarray] = field(default_factory=dict)  # cgc: level -> [Nc, d_f] unit
    temperature: float = 0.1

    @property
    def levels(self) -> list[str]:
        return list(self.features)

    @property
    def num_gaussians(self) -> int:
        return int(next(iter(self.features.values())).shape[0])

    @property
    def dim(self) -> int:
        return int(next(iter(self.codebooks.values())).shape[1])

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(FIELD_FORMAT_VERSION),
            "method": np.array(self.method),
            "levels": np.array(self.levels),
            "temperature": np.array(self.temperature, dtype=np.float32),
        }
        for lv in self.levels:
            arrays[f"features.{lv}"] = np.asarray(self.features[lv], dtype=np.float32)
            arrays[f"codebook.{lv}"] = np.asarray(self.codebooks[lv], dtype=np.float32)
            if lv in self.decoders:
                arrays.update(self.decoders[lv].arrays(f"decoder.{lv}"))
            if lv in self.centroids:
                arrays[f"centroids.{lv}"] = np.asarray(self.centroids[lv], dtype=np.float32)
        atomic_save_npz(path, arrays)

    @staticmethod
    def load(path: str | Path) -> SemanticField:
        data = load_npz(path)
        version = int(data.get("format_version", -1))
        if version != FIELD_FORMAT_VERSION:
            raise ValueError(f"{path}: field format_version {version}, this code reads {FIELD_FORMAT_VERSION}")
        levels = [str(x) for x in data["levels"].tolist()]
        decoders = {
            lv: MLPDecoder.from_arrays(data, f"decoder.{lv}") for lv in levels if f"decoder.{lv}.net.0.weight" in data
        }
        for dec in decoders.values():
            dec.eval()
        return SemanticField(
            method=str(data["method"]),
            features={lv: data[f"features.{lv}"] for lv in levels},
            codebooks={lv: data[f"codebook.{lv}"] for lv in levels},
            decoders=decoders,
            centroids={lv: data[f"centroids.{lv}"] for lv in levels if f"centroids.{lv}" in data},
            temperature=float(data["temperature"]),
        )
