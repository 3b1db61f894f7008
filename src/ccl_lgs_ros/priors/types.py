"""Data types and backend interfaces of the 2D semantic priors.

A priors backend turns the frames of a capture into, per frame and per level, a non-overlapping
mask map, one unit CLIP-space feature per mask, and cross-view association labels.
Two implementations exist behind the same interfaces: the real models (SAM, SAM 2, OpenCLIP;
:mod:`.models`) and the simulator (:mod:`.simulator`), the documented stand-in used by tests
and the demo. Nothing silently falls back from one to the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..capture.format import Capture

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
    """All levels of one frame (keys from :data:`CCL_LEVELS` / :data:`GAGS_LEVELS`)."""

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


@runtime_checkable
class PriorsBackend(Protocol):
    """What the priors stage (:func:`priors.stage.compute_priors`) needs from a backend.

    Implementations: the real models and the simulator (``priors.simulator.SimulatorBackend``).
    The stage calls :meth:`frame_priors` once per frame (results are cached per frame, so a
    backend must not rely on being called for every frame in one process, nor keep state between
    frames), then :meth:`associate` once over all frames in capture order.

    Entry points the stage imports lazily from ``priors.models`` for the real backend:

    - ``build_real_backend(cfg: Config, device: str) -> PriorsBackend``
    - ``build_clip_text_encoder(spec: dict, device: str) -> TextEncoder`` for any ``spec`` whose
      ``"kind"`` is not ``"simulator"`` (``TextEncoder.spec()`` of the real encoder).
    """

    #: Short name recorded in the cache metadata and the trained scene ("real", "simulator").
    name: str

    def frame_priors(self, capture: Capture, index: int, levels: Sequence[str]) -> FramePriors:
        """Masks and mask features of frame ``index`` for each of ``levels``.

        Returns one :class:`LevelPriors` per requested level with a non-overlapping mask map,
        unit features in the text encoder's space, and all labels -1 (association fills them).
        The mask map has the capture's image size, or a smaller one of the same aspect ratio when
        ``cfg.priors.image_size`` limits it; consumers resize it with nearest-neighbour sampling.
        """
        ...

    def associate(self, capture: Capture, priors: Sequence[FramePriors], levels: Sequence[str]) -> None:
        """Cross-view association: fill ``priors[i].levels[level].labels`` in place.

        ``priors[i]`` belongs to ``capture.frames[i]``. Labels are consistent object ids across
        frames (>= 0) or -1 for unlabelled masks; only ``labels`` may be modified.
        """
        ...

    def text_encoder(self) -> TextEncoder:
        """The text encoder whose space the mask features live in."""
        ...
