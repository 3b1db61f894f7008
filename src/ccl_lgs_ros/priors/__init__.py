"""2D semantic priors: two-level masks, mask features, cross-view association, and their cache.

Backends: the real foundation models (:mod:`.models`: SAM, SAM 2, OpenCLIP) and the simulator
(:mod:`.simulator`), the documented stand-in used by tests and the demo. The stage entry point
is :func:`compute_priors`; nothing here imports torch or the model packages eagerly.
"""

from .stage import PriorsError, build_text_encoder, compute_priors, load_priors
from .types import CCL_LEVELS, GAGS_LEVELS, FramePriors, LevelPriors, PriorsBackend, TextEncoder

__all__ = [
    "CCL_LEVELS",
    "GAGS_LEVELS",
    "FramePriors",
    "LevelPriors",
    "PriorsBackend",
    "PriorsError",
    "TextEncoder",
    "build_text_encoder",
    "compute_priors",
    "load_priors",
]
