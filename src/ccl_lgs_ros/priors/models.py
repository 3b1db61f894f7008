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

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch

from .association import AssociationStats, VideoFrames, associate_masks, frame_order
from .checkpoints import (
    _CLIP_SOURCE,
    _SAM2_SOURCE,
    _SAM_ANY,
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

_LOG = logging.getLogger(__name__)
_DEFAULT_SAM2_CONFIG = "configs/sam2.1/sam2.1_hiera_l.yaml"

# The checkpoint requirements (file names, where they are published, the error) live in
# .checkpoints, which imports no torch: the train checks run them before any stage starts.


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the architecture its setting names (detected before loading)."""


def read_state_dict(path: Path, parameter: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (plain state dict, ``{"model": ...}`` or ``{"state_dict": ...}``).

    Read with ``weights_only=True`` (nothing is unpickled beyond tensors) and memory-mapped where
    the file allows it, so looking at shapes does not cost the file's size in memory.
    """
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise CheckpointMismatchError(
            f"{parameter}={str(path)!r} is not a readable PyTorch checkpoint ({exc})"
        ) from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"{parameter}={str(path)!r} holds no state dict of tensors")
    return obj


def _count_blocks(sd: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix) :].split(".", 1)[0] for k in sd if k.startswith(prefix)})


def _shape_mismatch(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> str:
    """First difference between a state dict and a model's parameters ('' when they fit)."""
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    if missing:
        return f"{len(missing)} tensors missing (e.g. {missing[0]})"
    unexpected = [k for k in sd if k not in want]
    if unexpected:
        return f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})"
    for k, v in want.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            return f"{k} is {tuple(sd[k].shape)} in the file, {tuple(v.shape)} in the model"
    return ""


def detect_sam_model_type(sd: dict[str, torch.Tensor]) -> str | None:
    """SAM architecture of a state dict from its shapes: vit_b / vit_l / vit_h / reduced, None if unknown."""
    w = sd.get("image_encoder.patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        return None
    known = {(768, 12): "vit_b", (1024, 24): "vit_l", (1280, 32): "vit_h", (192, 4): "reduced"}
    return known.get((int(w.shape[0]), _count_blocks(sd, "image_encoder.blocks.")))


#: Hiera trunk (embedding width, blocks) -> SAM 2 config size suffix.
_HIERA_SIZES = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}


def detect_sam2_config(sd: dict[str, torch.Tensor]) -> tuple[str, list[str]] | None:
    """SAM 2 config of a state dict from its shapes, plus hydra overrides for reduced variants.

    Returns ``(config name, overrides)`` (e.g. ``("configs/sam2.1/sam2.1_hiera_t.yaml", [])``) or
    None when the tensors are not a SAM 2 model's. SAM 2.1 is told from SAM 2 by its
    ``no_obj_embed_spatial`` tensor; a memory attention with fewer layers than the official 4 (the
    project's reduced test models) is rebuilt with that many.
    """
    w = sd.get("image_encoder.trunk.patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        return None
    size = _HIERA_SIZES.get((int(w.shape[0]), _count_blocks(sd, "image_encoder.trunk.blocks.")))
    if size is None:
        return None
    version = "sam2.1" if "no_obj_embed_spatial" in sd else "sam2"
    overrides = []
    layers = _count_blocks(sd, "memory_attention.layers.")
    if layers and layers != 4:
        overrides.append(f"++model.memory_attention.num_layers={layers}")
    return f"configs/{version}/{version}_hiera_{size}.yaml", overrides


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
    """SAM from a checkpoint (``priors.sam_checkpoint``): ``vit_h`` / ``vit_l`` / ``vit_b`` / ``reduced``.

    ``model_type="auto"`` takes the architecture from the file's tensor shapes; a named type that
    does not fit the file raises :class:`CheckpointMismatchError` naming the right value, before
    anything is loaded into a model.
    """
    from segment_anything import sam_model_registry

    types = [*SAM_CHECKPOINTS, "reduced"]
    if model_type not in types and model_type != "auto":
        raise ValueError(f"priors.sam_model_type must be 'auto' or one of {types}, got {model_type!r}")
    expected = SAM_CHECKPOINTS.get(model_type, _SAM_ANY)
    path = _require_checkpoint(checkpoint, "priors.sam_checkpoint", expected, _SAM_SOURCE)
    # Read here (weights only) rather than by segment_anything, so the file is never unpickled.
    sd = read_state_dict(path, "priors.sam_checkpoint")
    detected = detect_sam_model_type(sd)
    if detected is None:
        hint = " (it looks like a SAM 2 checkpoint: that is priors.sam2_checkpoint)" if detect_sam2_config(sd) else ""
        raise CheckpointMismatchError(
            f"priors.sam_checkpoint={str(path)!r} is not a Segment Anything checkpoint of a known size "
            f"(vit_b / vit_l / vit_h){hint}"
        )
    if model_type not in ("auto", detected):
        raise CheckpointMismatchError(
            f"priors.sam_checkpoint={str(path)!r} is a SAM {detected} checkpoint but "
            f"priors.sam_model_type={model_type}: set priors.sam_model_type={detected} (or auto)"
        )
    model = build_random_sam("reduced", "cpu", None) if detected == "reduced" else sam_model_registry[detected](None)
    problem = _shape_mismatch(sd, model)
    if problem:
        raise CheckpointMismatchError(f"priors.sam_checkpoint={str(path)!r} does not fit SAM {detected}: {problem}")
    model.load_state_dict(sd)
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


def resolve_sam2_config(config: str, path: Path) -> tuple[str, list[str]]:
    """The SAM 2 config (and hydra overrides) for checkpoint ``path``; checks a named config fits.

    Raises:
        CheckpointMismatchError: the file is not a SAM 2 model of a known size, or ``config`` names
            another size / version than the file holds (the message names the right value).
    """
    sd = read_state_dict(path, "priors.sam2_checkpoint")
    detected = detect_sam2_config(sd)
    del sd
    if detected is None:
        raise CheckpointMismatchError(
            f"priors.sam2_checkpoint={str(path)!r} is not a SAM 2 checkpoint of a known size (hiera t / s / b+ / l)"
        )
    if config not in ("auto", "") and Path(config).name != Path(detected[0]).name:
        raise CheckpointMismatchError(
            f"priors.sam2_checkpoint={str(path)!r} holds a {Path(detected[0]).stem} model but "
            f"priors.sam2_config={config}: set priors.sam2_config={detected[0]} (or auto)"
        )
    return detected


def load_sam2_video(config: str, checkpoint: str, device: str, image_size: int = 0) -> Any:
    """SAM 2 video predictor from ``priors.sam2_checkpoint`` and ``priors.sam2_config`` (``auto``: from the file).

    ``image_size`` (``priors.sam2_image_size``, 0 = the config's 1024) resizes the tracker's input:
    smaller is faster and coarser; the weights are the same.
    """
    from sam2.build_sam import build_sam2_video_predictor

    path = _require_checkpoint(checkpoint, "priors.sam2_checkpoint", _sam2_expected_file(config), _SAM2_SOURCE)
    name, overrides = resolve_sam2_config(config, path)
    return build_sam2_video_predictor(
        name, str(path), device=str(device), hydra_overrides_extra=_sam2_video_overrides(image_size or None, overrides)
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
def _clip_shape_key(width: int, layers: int, patch: int, embed: int) -> tuple[int, int, int, int]:
    return width, layers, patch, embed


def detect_clip_models(sd: dict[str, torch.Tensor]) -> list[str]:
    """OpenCLIP architectures whose vision tower fits a state dict's shapes (ViT models only)."""
    import open_clip

    conv = sd.get("visual.conv1.weight")
    proj = sd.get("visual.proj")
    if conv is None or proj is None or conv.ndim != 4:
        return []
    have = _clip_shape_key(
        int(conv.shape[0]), _count_blocks(sd, "visual.transformer.resblocks."), int(conv.shape[-1]), int(proj.shape[1])
    )
    found = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        vision = cfg.get("vision_cfg", {})
        if not isinstance(vision.get("layers"), int) or "timm_model_name" in vision:
            continue
        key = _clip_shape_key(
            vision.get("width", 768), vision["layers"], vision.get("patch_size", 16), cfg.get("embed_dim", 0)
        )
        if key == have:
            found.append(name)
    return found


def _clip_signature(sd: dict[str, Any]) -> dict[str, Any]:
    """The architecture-defining shapes of an OpenCLIP ViT state dict (those present)."""
    sig: dict[str, Any] = {}
    for key in ("visual.conv1.weight", "visual.proj", "text_projection", "token_embedding.weight"):
        if key in sd:
            sig[key] = tuple(sd[key].shape)
    for prefix in ("visual.transformer.resblocks.", "transformer.resblocks."):
        blocks = _count_blocks(sd, prefix)
        if blocks:
            sig[prefix + "*"] = blocks
    return sig


def _check_clip_checkpoint(model: str, path: Path) -> None:
    """Raise :class:`CheckpointMismatchError` (naming ``priors.clip_model``) if ``path`` is another architecture.

    Only the vision / text towers' defining shapes are compared (open_clip converts other
    layouts itself); files without them are left to open_clip.
    """
    import open_clip

    sd = read_state_dict(path, "priors.clip_checkpoint")
    if any(k.startswith("module.") for k in sd):  # saved from DDP: open_clip strips the prefix
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        want = _clip_signature(open_clip.create_model(model, pretrained=None, device="meta").state_dict())
    have = _clip_signature(sd)
    diff = [k for k in have if k in want and have[k] != want[k]]
    if diff:
        fits = detect_clip_models(sd)
        advice = f"set priors.clip_model={fits[0]}" + (f" (or one of {fits[1:6]})" if len(fits) > 1 else "")
        if not fits:
            advice = "set priors.clip_model to the architecture the file was trained with"
        raise CheckpointMismatchError(
            f"priors.clip_checkpoint={str(path)!r} does not fit priors.clip_model={model} "
            f"({diff[0]} is {have[diff[0]]} in the file, {want[diff[0]]} in {model}): {advice}"
        )


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
    if checkpoint:
        _check_clip_checkpoint(model, Path(str(weights)))
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
                window=self.cfg.association_window,
                overlap=self.cfg.association_overlap,
                patience=self.cfg.association_patience,
                budget=self.cfg.association_budget,
                autocast=self.precision,
                frame_names=order,
                log=partial(_log_level, level),
            )
            for pos, i in enumerate(order):
                priors[i].levels[level].labels[...] = labels[pos]
            self.association_stats[level] = stats

    def text_encoder(self) -> OpenClip:
        return self.clip


def _log_level(level: str, line: str) -> None:
    _LOG.warning("level %s: %s", level, line)


def build_real_backend(cfg: Config, device: str) -> RealPriorsBackend:
    """The real backend from the configured checkpoints (raises :class:`MissingCheckpointError`)."""
    p = cfg.priors
    sam = load_sam(p.sam_model_type, p.sam_checkpoint, device)
    sam2_video = load_sam2_video(p.sam2_config, p.sam2_checkpoint, device, p.sam2_image_size)
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
        sam_type = sam_model_type or p.sam_model_type
        sam = build_random_sam("vit_h" if sam_type == "auto" else sam_type, device, seed)
        sam2_cfg = _DEFAULT_SAM2_CONFIG if p.sam2_config == "auto" else p.sam2_config
        sam2_video = build_random_sam2_video(sam2_cfg, device, image_size=None, seed=seed)
        clip = load_clip(p.clip_model, "", "", device, precision=p.precision, seed=seed)
    else:
        sam = build_random_sam("reduced", device, seed)
        sam2_video = build_random_sam2_video(device=device, image_size=256, seed=seed)
        clip = load_clip("ViT-S-32", "", "", device, precision=p.precision, seed=seed)
    return RealPriorsBackend(sam, sam2_video, clip, p, device)


#: Settings of the reduced random-weight checkpoints (tests, the CPU benchmark, trying the real path).
REDUCED_SETTINGS = {
    "priors.clip_model": "ViT-S-32",
    "priors.sam2_image_size": 128,
    "priors.pred_iou_thresh": 0.0,  # random weights: SAM's quality scores mean nothing
    "priors.stability_score_thresh": 0.0,
}


def write_random_checkpoints(folder: str | Path, seed: int = 0) -> dict[str, str]:
    """Write reduced random-weight checkpoints in the official file layouts; returns ``{setting: path}``.

    SAM (reduced, 256 px, plain state dict), SAM 2.1 hiera-t with a one-layer memory attention
    (``{"model": state dict}`` as Meta's files) and OpenCLIP ViT-S-32 (plain state dict). They load
    through :func:`build_real_backend` with the settings of :data:`REDUCED_SETTINGS`. For tests and
    benchmarks of the real code path only: the weights are random.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "priors.sam_checkpoint": folder / "sam_reduced.pth",
        "priors.sam2_checkpoint": folder / "sam2.1_hiera_t_reduced.pt",
        "priors.clip_checkpoint": folder / "open_clip_pytorch_model.bin",
    }
    torch.save(build_random_sam("reduced", "cpu", seed).state_dict(), paths["priors.sam_checkpoint"])
    sam2 = build_random_sam2_video(
        device="cpu", image_size=128, seed=seed, hydra_overrides=["++model.memory_attention.num_layers=1"]
    )
    torch.save({"model": sam2.state_dict()}, paths["priors.sam2_checkpoint"])
    torch.save(load_clip("ViT-S-32", "", "", "cpu", seed=seed).model.state_dict(), paths["priors.clip_checkpoint"])
    return {k: str(v) for k, v in paths.items()}


__all__ = [
    "REDUCED_SETTINGS",
    "SAM_CHECKPOINTS",
    "CheckpointMismatchError",
    "detect_clip_models",
    "detect_sam2_config",
    "detect_sam_model_type",
    "read_state_dict",
    "resolve_sam2_config",
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
    "write_random_checkpoints",
]
