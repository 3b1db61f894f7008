"""The real priors backend: SAM (masks), OpenCLIP (mask features), SAM 2 (association).

Loading never downloads at import time. Checkpoints come from the ``priors`` config section;
a missing one raises :class:`MissingCheckpointError` naming the parameter, the expected file and
where it is published. OpenCLIP may fetch its weights by tag only when the user opts in with
``priors.allow_download=true``.

For tests and benchmarks, ``build_random_*`` create the same library classes with random weights,
at full size or reduced (SAM: 256 px input, 4-layer 192-wide ViT; SAM 2: Hiera-T at 256 px;
OpenCLIP: ViT-S-32), so the real segment_anything / sam2 / open_clip code paths run on a CPU.
Random weights produce meaningful-looking nothing: use ``pred_iou_thresh=0`` and
``stability_score_thresh=0`` with them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from .association import AssociationStats, VideoFrames, associate_masks, frame_order
from .checkpoints import (
    _CLIP_SOURCE,
    _SAM2_SOURCE,
    _SAM_SOURCE,
    SAM_CHECKPOINTS,
    MissingCheckpointError,
    _clip_hub_name,
    _require_checkpoint,
    _sam2_expected_file,
)
from .clip_features import OpenClip
from .gags_prompts import granularity_points, min_depth_over_views
from .sam_masks import MaskSettings, generate_level_masks
from .types import FramePriors, LevelPriors

if TYPE_CHECKING:
    from ..capture.format import Capture
    from ..config import Config, PriorsConfig

# The checkpoint requirements (file names, where they are published, the error) live in
# .checkpoints, which imports no torch: the train checks run them before any stage starts.


# --------------------------------------------------------------------------- precision
class Precision(AbstractContextManager):
    """Re-entrant mixed-precision context: bf16 autocast on CUDA (``"auto"``/``"bf16"``), else a no-op.

    SAM, SAM 2 and CLIP are run under bf16 autocast by their authors' own demos; CPU runs fp32
    (bf16 matmuls on CPU are slow and less accurate).
    """

    def __init__(self, device: str | torch.device, precision: str = "auto") -> None:
        self.device = torch.device(device)
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
        use_bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        self.dtype = torch.bfloat16 if use_bf16 else torch.float32
        self._stack: list[Any] = []

    def __enter__(self) -> Any:
        ctx = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        self._stack.append(ctx)
        return ctx.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._stack.pop().__exit__(*exc)


# --------------------------------------------------------------------------- SAM
def _seeded(seed: int | None) -> Any:
    """Fork the global RNG so random-initialised test models are reproducible and leave no trace."""
    rng = torch.random.fork_rng(devices=[])
    rng.__enter__()
    if seed is not None:
        torch.manual_seed(seed)
    return rng


def build_random_sam(model_type: str = "reduced", device: str = "cpu", seed: int | None = 0) -> torch.nn.Module:
    """SAM with random weights: ``"vit_h"/"vit_l"/"vit_b"`` (full size) or ``"reduced"``.

    ``"reduced"``: 256 px input, 4-layer 192-wide ViT image encoder, 128-d prompt space, built from
    segment_anything's own ``ImageEncoderViT`` / ``PromptEncoder`` / ``MaskDecoder`` / ``Sam``.
    """
    from segment_anything import sam_model_registry
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    rng = _seeded(seed)
    try:
        if model_type != "reduced":
            model = sam_model_registry[model_type](checkpoint=None)
        else:
            img, patch, dim = 256, 16, 128
            model = Sam(
                image_encoder=ImageEncoderViT(
                    img_size=img,
                    patch_size=patch,
                    embed_dim=192,
                    depth=4,
                    num_heads=3,
                    mlp_ratio=4,
                    out_chans=dim,
                    qkv_bias=True,
                    norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                    use_rel_pos=True,
                    window_size=8,
                    global_attn_indexes=(1, 3),
                ),
                prompt_encoder=PromptEncoder(
                    embed_dim=dim,
                    image_embedding_size=(img // patch, img // patch),
                    input_image_size=(img, img),
                    mask_in_chans=16,
                ),
                mask_decoder=MaskDecoder(
                    num_multimask_outputs=3,
                    transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=512, num_heads=4),
                    transformer_dim=dim,
                    iou_head_depth=3,
                    iou_head_hidden_dim=128,
                ),
                pixel_mean=[123.675, 116.28, 103.53],
                pixel_std=[58.395, 57.12, 57.375],
            )
    finally:
        rng.__exit__(None, None, None)
    return model.to(device).eval()


def load_sam(model_type: str, checkpoint: str, device: str) -> torch.nn.Module:
    """SAM ``vit_h`` / ``vit_l`` / ``vit_b`` from an official checkpoint (``priors.sam_checkpoint``)."""
    from segment_anything import sam_model_registry

    if model_type not in SAM_CHECKPOINTS:
        raise ValueError(f"priors.sam_model_type must be one of {sorted(SAM_CHECKPOINTS)}, got {model_type!r}")
    path = _require_checkpoint(checkpoint, "priors.sam_checkpoint", SAM_CHECKPOINTS[model_type], _SAM_SOURCE)
    model = sam_model_registry[model_type](checkpoint=None)
    # Loaded here rather than by segment_anything so the file is never unpickled.
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()


# --------------------------------------------------------------------------- SAM 2
def _sam2_video_overrides(image_size: int | None, extra: Sequence[str] = ()) -> list[str]:
    # The legacy predictor batches all objects of a pass through one forward; the newer one loops
    # over objects one at a time (needed only for adding objects mid-propagation, which the
    # re-seeding here does with fresh passes instead).
    overrides = ["++model._target_=sam2.sam2_video_predictor_legacy.SAM2VideoPredictor"]
    if image_size:
        overrides.append(f"++model.image_size={int(image_size)}")
    return overrides + list(extra)


def load_sam2_video(config: str, checkpoint: str, device: str) -> Any:
    """SAM 2 video predictor from a config name (``priors.sam2_config``) and ``priors.sam2_checkpoint``."""
    from sam2.build_sam import build_sam2_video_predictor

    path = _require_checkpoint(checkpoint, "priors.sam2_checkpoint", _sam2_expected_file(config), _SAM2_SOURCE)
    return build_sam2_video_predictor(
        config, str(path), device=str(device), hydra_overrides_extra=_sam2_video_overrides(None)
    )


def build_random_sam2_video(
    config: str = "configs/sam2.1/sam2.1_hiera_t.yaml",
    device: str = "cpu",
    image_size: int | None = 256,
    seed: int | None = 0,
    hydra_overrides: Sequence[str] = (),
) -> Any:
    """SAM 2 video predictor with random weights (reduced: Hiera-T at ``image_size`` px).

    ``hydra_overrides`` shrink it further for fast tests (e.g. ``"++model.memory_attention.num_layers=1"``).
    """
    from sam2.build_sam import build_sam2_video_predictor

    rng = _seeded(seed)
    try:
        return build_sam2_video_predictor(
            config, None, device=str(device), hydra_overrides_extra=_sam2_video_overrides(image_size, hydra_overrides)
        )
    finally:
        rng.__exit__(None, None, None)


# --------------------------------------------------------------------------- OpenCLIP
def load_clip(
    model: str,
    pretrained: str,
    checkpoint: str,
    device: str,
    *,
    allow_download: bool = False,
    precision: str = "auto",
    seed: int | None = 0,
) -> OpenClip:
    """OpenCLIP from ``checkpoint``; by ``pretrained`` tag only with ``allow_download``.

    Both empty (``checkpoint=""``, ``pretrained=""``) builds random weights (``seed``): tests only.
    """
    import open_clip

    spec: dict[str, Any] = {"kind": "open_clip", "model": model, "pretrained": pretrained, "checkpoint": checkpoint}
    if checkpoint or not allow_download:
        if checkpoint or pretrained:
            source = _CLIP_SOURCE.format(hub=_clip_hub_name(model, pretrained))
            weights: str | None = str(
                _require_checkpoint(checkpoint, "priors.clip_checkpoint", "open_clip_pytorch_model.bin", source)
            )
        else:
            weights = None
            spec["seed"] = seed
    else:
        weights = pretrained  # open_clip resolves the tag (its cache first, then the hub)
        spec["allow_download"] = True
    rng = _seeded(seed if weights is None else None)
    try:
        net, _, _ = open_clip.create_model_and_transforms(model, pretrained=weights, device=device)
    except RuntimeError as exc:
        if weights == pretrained:
            raise MissingCheckpointError(
                f"OpenCLIP could not fetch {model} / {pretrained} ({exc}); set priors.clip_checkpoint to a local "
                f"open_clip_pytorch_model.bin (published on {_clip_hub_name(model, pretrained)})."
            ) from exc
        raise
    finally:
        rng.__exit__(None, None, None)
    return OpenClip(net, open_clip.get_tokenizer(model), spec, device, Precision(device, precision))


def build_clip_text_encoder(spec: dict, device: str) -> OpenClip:
    """Rebuild the OpenCLIP text encoder a scene was trained with (from ``OpenClip.spec()``)."""
    if spec.get("kind") != "open_clip":
        raise ValueError(f"not an OpenCLIP text-encoder spec: {spec!r}")
    return load_clip(
        spec["model"],
        spec.get("pretrained") or "",
        spec.get("checkpoint") or "",
        device,
        allow_download=bool(spec.get("allow_download", False)),
        seed=spec.get("seed", 0),
    )



# --------------------------------------------------------------------------- backend
class RealPriorsBackend:
    """SAM two-level masks + OpenCLIP mask features + SAM 2 association (``priors.types.PriorsBackend``).

    Args:
        sam: a segment_anything ``Sam``.
        sam2_video: a sam2 video predictor.
        clip: the OpenCLIP wrapper.
        cfg: the ``priors`` config section (thresholds, association, GAGS, image size).
        device: torch device of the models.
    """

    name = "real"

    def __init__(self, sam: torch.nn.Module, sam2_video: Any, clip: OpenClip, cfg: PriorsConfig, device: str) -> None:
        from segment_anything import SamPredictor

        self.cfg = cfg
        self.device = torch.device(device)
        self.precision = Precision(device, cfg.precision)
        self.predictor = SamPredictor(sam)
        self.sam2_video = sam2_video
        self.clip = clip
        self.settings = MaskSettings(
            points_per_side=cfg.points_per_side,
            points_per_batch=cfg.points_per_batch,
            pred_iou_thresh=cfg.pred_iou_thresh,
            stability_score_thresh=cfg.stability_score_thresh,
            box_nms_thresh=cfg.box_nms_thresh,
            overlap_thresh=cfg.overlap_thresh,
            min_mask_area=cfg.min_mask_area,
        )
        #: Depth per capture frame for GAGS prompting; default: the capture's depth images.
        #: The pipeline may set a callable returning the RGB reconstruction's rendered depth.
        self.depth_source: Callable[[Capture, int], np.ndarray | None] | None = None
        #: Per level, what the last :meth:`associate` did (fraction labelled etc.).
        self.association_stats: dict[str, AssociationStats] = {}

    # ----------------------------------------------------------------- inputs
    def working_size(self, capture: Capture, index: int) -> tuple[int, int]:
        """``(height, width)`` of the mask maps of frame ``index``."""
        intr = capture.frames[index].intrinsics
        h, w = intr.height, intr.width
        limit = self.cfg.image_size
        if limit and max(h, w) > limit:
            s = limit / max(h, w)
            return max(1, round(h * s)), max(1, round(w * s))
        return h, w

    def load_image(self, capture: Capture, index: int) -> np.ndarray:
        """RGB ``uint8 [h, w, 3]`` at the working size."""
        rgb = capture.load_image(index)
        h, w = self.working_size(capture, index)
        if rgb.shape[:2] != (h, w):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(rgb)

    def _depth(self, capture: Capture, index: int) -> np.ndarray | None:
        depth = self.depth_source(capture, index) if self.depth_source else capture.load_depth(index)
        if depth is None:
            return None
        h, w = self.working_size(capture, index)
        return cv2.resize(np.asarray(depth, np.float32), (w, h), interpolation=cv2.INTER_NEAREST)

    def _gags_points(self, capture: Capture, index: int) -> np.ndarray:
        depth = self._depth(capture, index)
        if depth is None:
            raise ValueError(
                f"priors.granularity_aware needs depth for frame {index}: the capture has no depth image "
                "and no rendered depth was provided (RealPriorsBackend.depth_source)"
            )
        c2ws = capture.c2w_all()
        by_distance = np.argsort(np.linalg.norm(c2ws[:, :3, 3] - c2ws[index, :3, 3], axis=1))
        views = [index] + [int(j) for j in by_distance if j != index][:16]  # nearest cameras bound the cost
        depths, Ks = [], []
        for j in views:
            d = depth if j == index else self._depth(capture, j)
            h, w = self.working_size(capture, j)
            Ks.append(capture.frames[j].intrinsics.scaled(w, h).K())
            depths.append(d if d is not None else np.zeros((h, w), np.float32))
        d_min = min_depth_over_views(depths, np.stack(Ks), c2ws[views], 0, neighbours=len(views) - 1)
        return granularity_points(
            depth,
            d_min,
            points_per_side=self.cfg.points_per_side,
            patches_per_side=self.cfg.gags_patches,
            seed=index,
        )

    # ----------------------------------------------------------------- protocol
    def frame_priors(self, capture: Capture, index: int, levels: Sequence[str]) -> FramePriors:
        image = self.load_image(capture, index)
        points = self._gags_points(capture, index) if self.cfg.granularity_aware else None
        cands, per_level = generate_level_masks(
            self.predictor, image, tuple(levels), self.settings, points=points, autocast=self.precision
        )
        # A part-level mask usually belongs to both "sp" and "wp": encode each candidate once.
        used = np.unique(np.concatenate([lm.candidate_index for lm in per_level.values()] + [np.zeros(0, np.int64)]))
        feats = self.clip.encode_masks(
            image, cands.masks[torch.as_tensor(used, device=cands.masks.device)], batch_size=self.cfg.clip_batch_size
        )
        row = {int(c): r for r, c in enumerate(used)}
        out = FramePriors()
        for level, lm in per_level.items():
            rows = [row[int(c)] for c in lm.candidate_index]
            out.levels[level] = LevelPriors(
                masks=lm.id_map,
                features=feats[rows].reshape(len(rows), feats.shape[1]),
                labels=np.full(len(rows), -1, np.int32),
            )
        return out

    def associate(self, capture: Capture, priors: Sequence[FramePriors], levels: Sequence[str]) -> None:
        order = frame_order(capture.c2w_all(), [f.timestamp for f in capture.frames])
        frames = VideoFrames(lambda pos: self.load_image(capture, order[pos]), len(order), self.sam2_video.image_size)
        for level in levels:
            id_maps = [priors[i].levels[level].masks for i in order]
            labels, stats = associate_masks(
                self.sam2_video,
                frames,
                id_maps,
                iou_thresh=self.cfg.association_iou,
                reseed=self.cfg.reseed,
                max_objects_per_pass=self.cfg.association_max_objects,
                autocast=self.precision,
                frame_names=order,
            )
            for pos, i in enumerate(order):
                priors[i].levels[level].labels[...] = labels[pos]
            self.association_stats[level] = stats

    def text_encoder(self) -> OpenClip:
        return self.clip


def build_real_backend(cfg: Config, device: str) -> RealPriorsBackend:
    """The real backend from the configured checkpoints (raises :class:`MissingCheckpointError`)."""
    p = cfg.priors
    sam = load_sam(p.sam_model_type, p.sam_checkpoint, device)
    sam2_video = load_sam2_video(p.sam2_config, p.sam2_checkpoint, device)
    clip = load_clip(
        p.clip_model,
        p.clip_pretrained,
        p.clip_checkpoint,
        device,
        allow_download=p.allow_download,
        precision=p.precision,
    )
    return RealPriorsBackend(sam, sam2_video, clip, p, device)


def build_random_backend(
    cfg: Config,
    device: str = "cpu",
    *,
    full: bool = False,
    sam_model_type: str | None = None,
    seed: int = 0,
) -> RealPriorsBackend:
    """The real backend code with random weights (tests, benchmarks); never used as a fallback.

    Args:
        cfg: configuration (thresholds etc.; pass ``pred_iou_thresh=0``, ``stability_score_thresh=0``).
        device: torch device.
        full: real architecture sizes (``cfg.priors.sam_model_type``, ``sam2_config``, ``clip_model``)
            instead of the reduced test models.
        sam_model_type: overrides the SAM architecture when ``full``.
        seed: random seed of the weights.
    """
    p = cfg.priors
    if full:
        sam = build_random_sam(sam_model_type or p.sam_model_type, device, seed)
        sam2_video = build_random_sam2_video(p.sam2_config, device, image_size=None, seed=seed)
        clip = load_clip(p.clip_model, "", "", device, precision=p.precision, seed=seed)
    else:
        sam = build_random_sam("reduced", device, seed)
        sam2_video = build_random_sam2_video(device=device, image_size=256, seed=seed)
        clip = load_clip("ViT-S-32", "", "", device, precision=p.precision, seed=seed)
    return RealPriorsBackend(sam, sam2_video, clip, p, device)


__all__ = [
    "SAM_CHECKPOINTS",
    "MissingCheckpointError",
    "Precision",
    "RealPriorsBackend",
    "build_clip_text_encoder",
    "build_random_backend",
    "build_random_sam",
    "build_random_sam2_video",
    "build_real_backend",
    "load_clip",
    "load_sam",
    "load_sam2_video",
]
