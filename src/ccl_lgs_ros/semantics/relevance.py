"""2D relevance of text queries: render the field for a camera, decode, compare with text.

As in LERF / LangSplat (METHOD.md, CCL-LGS step 6): every pixel takes a CLIP-space vector
(``ccl``/``cgc``: the prototype ``T[argmax]`` of the decoded distribution; ``gags``: the decoded
vector itself) and its relevance is :func:`ccl_lgs_ros.relevance.lerf_relevance` against the
canonical negatives (``query.negatives``) at ``query.temperature``, the same formula and setting
the 3D query engine uses. For codebook methods the relevance is computed once per prototype and
looked up per pixel.

Level selection (several levels): the level whose smoothed map ``0.5 (r + box30(r))`` has the
highest maximum (LangSplat's rule), see :func:`pick_level`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from ..capture.format import Capture, write_image
from ..priors.stage import build_text_encoder
from ..priors.types import TextEncoder
from ..scene.layout import SceneDir
from .methods import field_method
from .methods.base import pixel_codes
from .model import SemanticField
from .views import FrozenGaussians, camera_view, render_field

#: Box-filter size of the LERF-OVS smoothing (pixels).
SMOOTH_SIZE = 30


def box_filter(x: np.ndarray, size: int = SMOOTH_SIZE) -> np.ndarray:
    """Mean over a ``size x size`` window (OpenCV's reflected border), float32."""
    return cv2.blur(np.asarray(x, dtype=np.float32), (size, size))


def smooth_relevance(x: np.ndarray, size: int = SMOOTH_SIZE) -> np.ndarray:
    """LERF-OVS smoothing: ``0.5 * (x + box_filter(x))``."""
    x = np.asarray(x, dtype=np.float32)
    return 0.5 * (x + box_filter(x, size))


def pick_level(maps: dict[str, np.ndarray], size: int = SMOOTH_SIZE) -> str:
    """The level whose smoothed relevance map has the highest maximum."""
    return max(maps, key=lambda lv: float(smooth_relevance(maps[lv], size).max()))


@torch.no_grad()
def relevance_maps(
    field: SemanticField,
    rendered: dict[str, torch.Tensor],  # level -> [B, H, W, d_f]
    text_embeddings: np.ndarray,  # [Q, D] unit, the queries
    negative_embeddings: np.ndarray,  # [K, D] unit
    temperature: float,
) -> dict[str, np.ndarray]:
    """Relevance per level: ``float32 [B, Q, H, W]`` (how pixels read the field: the field's method)."""
    queries = np.asarray(text_embeddings, dtype=np.float32).reshape(-1, field.dim)
    method = field_method(field.method)
    return {lv: method.pixel_relevance(field, lv, feats, queries, negative_embeddings, temperature)
            for lv, feats in rendered.items()}  # fmt: skip


def heatmap_image(relevance: np.ndarray) -> np.ndarray:
    """``[H, W]`` relevance in 0..1 -> RGB ``uint8 [H, W, 3]`` (turbo colour map)."""
    u8 = np.clip(np.asarray(relevance, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)


def write_relevance_pngs(out_dir: str | Path, name: str, relevance: np.ndarray, mask: np.ndarray) -> tuple[Path, Path]:
    """Write ``<name>_relevance.png`` (heatmap) and ``<name>_mask.png`` (0/255) atomically."""
    out_dir = Path(out_dir)
    heat, mpath = out_dir / f"{name}_relevance.png", out_dir / f"{name}_mask.png"
    write_image(heat, heatmap_image(relevance))
    m = np.asarray(mask).astype(bool).astype(np.uint8) * 255
    write_image(mpath, np.repeat(m[..., None], 3, axis=2))
    return heat, mpath


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def safe_name(text: str) -> str:
    """A file-name-safe version of a query."""
    keep = "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip())
    return keep[:64] or "query"


class RelevanceRenderer:
    """A trained scene ready to render relevance maps for capture cameras.

    ``negatives`` and ``temperature`` are the query settings (``cfg.query.negatives``,
    ``cfg.query.temperature``), the same the 3D engine answers with. Loads the field, the frozen
    Gaussians, ``scene_from_world`` and the text encoder recorded with the scene (``scene.json``
    ``text_encoder``, else the priors cache's ``meta.json``).
    """

    def __init__(self, scene_dir: str | Path, negatives: Sequence[str], device: str = "cpu", backend: str = "auto",
                 text_encoder: TextEncoder | None = None, *, temperature: float) -> None:  # fmt: skip
        scene = SceneDir(scene_dir)
        self.field = SemanticField.load(scene.field)
        self.gaussians = FrozenGaussians.load(scene.gaussians, device)
        self.scene_from_world = scene.scene_from_world()
        self.device = device
        self.backend = backend
        if text_encoder is None:
            spec = scene.text_encoder_spec()
            if spec is None:
                raise ValueError(f"{scene.root}: no text encoder recorded (scene.json or priors/meta.json)")
            text_encoder = build_text_encoder(spec, device)
        self.text_encoder = text_encoder
        self.negatives = list(negatives)
        self.temperature = float(temperature)
        self._neg = unit_rows(text_encoder.encode_text(self.negatives)) if self.negatives else np.zeros((0, 1))

    def maps(
        self, capture: Capture, index: int, texts: Sequence[str], width: int | None = None, height: int | None = None
    ) -> dict[str, np.ndarray]:
        """Relevance of each text for frame ``index``: ``level -> float32 [Q, H, W]``."""
        view = camera_view(capture, index, self.scene_from_world, width, height, self.device)
        rendered = render_field(self.field, self.gaussians, [view], self.backend)
        emb = unit_rows(self.text_encoder.encode_text(list(texts)))
        neg = self._neg if len(self._neg) else np.zeros((0, emb.shape[1]), np.float32)
        return {lv: m[0] for lv, m in relevance_maps(self.field, rendered, emb, neg, self.temperature).items()}


__all__ = [
    "RelevanceRenderer",
    "box_filter",
    "heatmap_image",
    "pick_level",
    "pixel_codes",
    "relevance_maps",
    "render_field",
    "safe_name",
    "smooth_relevance",
    "unit_rows",
    "write_relevance_pngs",
]
