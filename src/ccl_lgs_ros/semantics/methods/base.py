"""The semantic-field methods behind one protocol, picked once from ``field.method``.

A method says which 2D priors it needs, which levels it trains, how its features decode to logits
over a codebook (the one decoding every reader uses: the query index, pixel codes, 2D relevance),
what it learns before the field (CCL-LGS: the contrastive codebook), its training objective, how
a rendered pixel reads as relevance, and which 2D index maps the query index lifts onto the
Gaussians. Everything else
(views, the optimiser, checkpoints, the field file, the query index) is shared. A new method is
one module here plus one line in :data:`METHODS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ...capture.format import Capture
from ...config import Config
from ...priors.types import FramePriors
from ..codebook import LevelCodebook
from ..model import SemanticField
from ..training import FieldObjective
from ..views import FieldView, FrozenGaussians

#: Per level: the 2D index maps of the training views and their cameras ``(viewmat, K)``.
LiftMaps = dict[str, tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]]


class FieldMethod(Protocol):
    name: str

    def prior_levels(self, cfg: Config) -> tuple[str, ...]:
        """Mask levels the priors stage must produce."""
        ...

    def train_levels(self, cfg: Config, present: list[str]) -> list[str]:
        """Levels to train, given the levels ``present`` in the priors."""
        ...

    def codebooks(self, codebook_path: Path, priors: list[FramePriors], meta: dict[str, Any], levels: list[str],
                  cfg: Config, device: str, progress: bool) -> dict[str, LevelCodebook]:  # fmt: skip
        """What is learnt before the field (CCL-LGS's codebook, cached in ``codebook_path``); ``{}`` if nothing."""
        ...

    def objective(self, n_gaussians: int, levels: list[str], views: list[FieldView],
                  codebooks: dict[str, LevelCodebook], cfg: Config,
                  device: str) -> tuple[FieldObjective, float]:  # fmt: skip
        """The training objective and the weight of the 3D spatial regulariser."""
        ...

    def reported_levels(self, field: SemanticField) -> list[str]:
        ...

    def logits(self, field: SemanticField, level: str, feats: torch.Tensor) -> torch.Tensor:
        """Logits over the level's codebook of features ``[..., d_f]`` -> ``[..., Nc]``."""
        ...

    def pixel_relevance(self, field: SemanticField, level: str, feats: torch.Tensor, queries: np.ndarray,
                        negatives: np.ndarray, temperature: float) -> np.ndarray:  # fmt: skip
        """Relevance ``float32 [B, Q, H, W]`` of rendered features ``[B, H, W, d_f]`` of ``level``."""
        ...

    def lift_maps(self, field: SemanticField, capture: Capture, priors: list[FramePriors], train_idx: list[int],
                  scene_from_world: np.ndarray, gaussians: FrozenGaussians, codebook_path: Path, cfg: Config,
                  device: str) -> tuple[LiftMaps, dict[str, int]]:  # fmt: skip
        """Per level, the 2D index maps the query index lifts (and the number of codes)."""
        ...


@torch.no_grad()
def pixel_codes(method: FieldMethod, field: SemanticField, level: str, rendered: torch.Tensor) -> np.ndarray:
    """Codebook index per pixel ``int64 [..., H, W]`` of rendered features ``[..., H, W, d_f]``."""
    return method.logits(field, level, rendered.cpu()).argmax(-1).numpy()
