"""Data types and backend interfaces of the 2D semantic priors.

A priors backend turns the frames of a capture into, per frame and per level, a non-overlapping
mask map, one unit CLIP-space feature per mask, and cross-view association labels.
Two implementations exist behind the same interfaces: the real models (SAM, SAM 2, OpenCLIP;
:mod:`.models`) and the simulator (:mod:`.simulator`), the documented stand-in used by tests
and the demo. Nothing silently falls back from one to the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

#: Levels produced for each method: CCL-LGS merges SAM's three outputs into two sets.
CCL_LEVELS = ("sp", "wp")
#: GAGS distils against SAM's three raw granularities.
GAGS_LEVELS = ("s", "p", "w")


@dataclass
class LevelPriors:
    """One frame, one level."""

    masks: np.ndarray  # int32 [H, W], mask index 0..K-1, -1 = no mask
    features: np.ndarray  # float16/32 [K, D], unit vectors in the text encoder's space
    labels: np.ndarray  # int32 [K], cross-view object id, -1 = unlabelled

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=np.int32)
        self.labels = np.asarray(self.labels, dtype=np.int32)
        k = self.features.shape[0]
        if self.labels.shape != (k,):
            raise ValueError(f"labels shape {self.labels.shape} != ({k},)")
        if self.masks.size and self.masks.max() >= k:
            raise ValueError("mask map refers to a mask without a feature")


@dataclass
class FramePriors:
    levels: dict[str, LevelPriors] = field(default_factory=dict)


class TextEncoder(Protocol):
    """Maps phrases into the space of the mask features."""

    @property
    def dim(self) -> int: ...

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """``float32 [Q, D]`` unit vectors."""
        ...

    def spec(self) -> dict:
        """JSON-serialisable description from which :func:`priors.build_text_encoder` rebuilds it."""
        ...
