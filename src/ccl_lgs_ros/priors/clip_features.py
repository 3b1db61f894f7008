"""CCL-LGS stage 2: one OpenCLIP feature per mask, and the matching text encoder.

F_i = CLIP(I ⊙ M_i): the image with the background zeroed, cropped to the mask's box, padded to a
square (zeros, centred, so the object's aspect ratio survives the resize), resized to the model's
input size, normalised with the model's own mean/std, encoded in batches, L2-normalised, stored
as float16.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.amg import batched_mask_to_box


class OpenClip:
    """An OpenCLIP model with its tokenizer, preprocessing constants and rebuild spec.

    Args:
        model: ``open_clip.CLIP`` (or compatible: ``encode_image``, ``encode_text``, ``visual``).
        tokenizer: the model's tokenizer (``open_clip.get_tokenizer(name)``).
        spec: ``{"kind": "open_clip", "model", "pretrained", "checkpoint", ...}``; see
            :func:`ccl_lgs_ros.priors.models.build_clip_text_encoder`.
        device: torch device of the model.
        autocast: mixed-precision context for the encoders (``None``: the model's dtype).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        spec: dict,
        device: str | torch.device,
        autocast: AbstractContextManager | None = None,
    ) -> None:
        import open_clip

        self.model = model.eval()
        self.tokenizer = tokenizer
        self._spec = dict(spec)
        self.device = torch.device(device)
        self._autocast = autocast
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", model.visual.image_size)
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=self.device).view(3, 1, 1)
        self.std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=self.device).view(3, 1, 1)
        with torch.inference_mode():
            self._dim = int(self.encode_text(["object"]).shape[1])

    def _ctx(self) -> AbstractContextManager:
        return self._autocast if self._autocast is not None else nullcontext()

    @property
    def dim(self) -> int:
        return self._dim

    def spec(self) -> dict:
        return dict(self._spec)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """``float32 [Q, D]`` unit vectors."""
        if len(texts) == 0:
            return np.zeros((0, getattr(self, "_dim", 0)), np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), self._ctx():
            feats = self.model.encode_text(tokens).float()
        return F.normalize(feats, dim=-1).cpu().numpy().astype(np.float32)

    def encode_masks(
        self,
        image: np.ndarray | torch.Tensor,  # uint8 [H, W, 3]
        masks: torch.Tensor,  # bool [K, H, W]
        batch_size: int = 64,
    ) -> np.ndarray:
        """Features of the masked, box-cropped, square-padded crops: ``float16 [K, D]`` unit vectors."""
        if masks.shape[0] == 0:
            return np.zeros((0, self.dim), np.float16)
        out = []
        for start in range(0, masks.shape[0], batch_size):
            crops = masked_square_crops(image, masks[start : start + batch_size].to(self.device), self.input_size)
            crops = (crops - self.mean) / self.std
            with torch.inference_mode(), self._ctx():
                feats = self.model.encode_image(crops).float()
            out.append(F.normalize(feats, dim=-1))
        return torch.cat(out).to(torch.float16).cpu().numpy()


def masked_square_crops(
    image: np.ndarray | torch.Tensor,  # uint8 [H, W, 3]
    masks: torch.Tensor,  # bool [K, H, W]
    size: int,
) -> torch.Tensor:
    """``float32 [K, 3, size, size]`` in 0..1: image ⊙ mask, box crop, zero-pad to square, resize."""
    device = masks.device
    img = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image, device=device)
    img = img.permute(2, 0, 1).float() / 255.0  # [3, H, W]
    boxes = batched_mask_to_box(masks).long().cpu().tolist()  # inclusive x0 y0 x1 y1
    crops = torch.zeros(masks.shape[0], 3, size, size, device=device)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        crop = img[:, y0 : y1 + 1, x0 : x1 + 1] * masks[k, y0 : y1 + 1, x0 : x1 + 1]
        h, w = crop.shape[1:]
        side = max(h, w)
        square = torch.zeros(3, side, side, device=device)
        oy, ox = (side - h) // 2, (side - w) // 2
        square[:, oy : oy + h, ox : ox + w] = crop
        crops[k] = F.interpolate(square[None], size=(size, size), mode="bilinear", antialias=side > size)[0]
    return crops.clamp_(0.0, 1.0)


__all__ = ["OpenClip", "masked_square_crops"]
