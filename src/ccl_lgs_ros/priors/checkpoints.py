"""Model checkpoints the real priors backend needs: file names, where they are published, and
the one error a missing file raises (:class:`MissingCheckpointError`).

No torch here (sam2 / open_clip are imported only to name the expected file in an error), so the
train checks (:mod:`ccl_lgs_ros.train_checks`) can look at the checkpoints before any stage runs
and with the same messages as the loaders in :mod:`.models`.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config

#: Official SAM checkpoint file per architecture.
SAM_CHECKPOINTS = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}
_SAM_ANY = "sam_vit_h_4b8939.pth (or sam_vit_l / sam_vit_b)"  # priors.sam_model_type=auto
_SAM_SOURCE = (
    "the 'Model Checkpoints' section of Meta's official Segment Anything repository "
    "(facebookresearch/segment-anything on GitHub)"
)
_SAM2_SOURCE = (
    "the 'Download Checkpoints' section of Meta's official SAM 2 repository (facebookresearch/sam2 on "
    "GitHub, script checkpoints/download_ckpts.sh) or its Hugging Face model page (facebook/sam2.1-hiera-*)"
)
_CLIP_SOURCE = (
    "the OpenCLIP pretrained weights published on the Hugging Face hub ({hub}); "
    "or set priors.allow_download=true on a machine with a network connection"
)


class MissingCheckpointError(FileNotFoundError):
    """A model checkpoint named by the configuration is not set or does not exist."""


def _require_checkpoint(path: str, parameter: str, expected: str, source: str) -> Path:
    if path:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        problem = f"{parameter}={path!r} does not exist"
    else:
        problem = f"{parameter} is not set"
    raise MissingCheckpointError(
        f"{problem}. Expected the checkpoint file {expected}; it is published in {source}. "
        f"Download it and pass {parameter}=/path/to/{expected} (config file, --set, or ROS parameter). "
        "The simulator (priors.backend=simulator) is a stand-in for tests and the demo only."
    )


def _sam2_expected_file(config: str) -> str:
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    for cfg_name, ckpt in HF_MODEL_ID_TO_FILENAMES.values():
        if Path(cfg_name).name == Path(config).name:
            return ckpt
    if config in ("auto", ""):
        return "sam2.1_hiera_large.pt (or another SAM 2 / 2.1 size)"
    return "the checkpoint matching " + Path(config).name


def _clip_hub_name(model: str, pretrained: str) -> str:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, pretrained) if pretrained else {}
    hub = (cfg or {}).get("hf_hub", "")
    return f"hf-hub:{hub.rstrip('/')}, file open_clip_pytorch_model.bin" if hub else f"{model} / {pretrained}"


def missing_checkpoints(cfg: Config) -> list[MissingCheckpointError]:
    """What :func:`.models.build_real_backend` would fail on: one :class:`MissingCheckpointError`
    (the loaders' message) per checkpoint that is not set or does not exist. OpenCLIP needs none
    when ``priors.allow_download`` is set (it may then fetch the tagged weights) or when no tag is
    named (random weights, tests)."""
    p = cfg.priors
    wanted = [
        (
            p.sam_checkpoint, "priors.sam_checkpoint", lambda: SAM_CHECKPOINTS.get(p.sam_model_type, _SAM_ANY),
            _SAM_SOURCE,
        ),
        (p.sam2_checkpoint, "priors.sam2_checkpoint", lambda: _sam2_expected_file(p.sam2_config), _SAM2_SOURCE),
    ]
    if (p.clip_checkpoint or not p.allow_download) and (p.clip_checkpoint or p.clip_pretrained):
        wanted.append((
            p.clip_checkpoint,
            "priors.clip_checkpoint",
            lambda: "open_clip_pytorch_model.bin",
            _CLIP_SOURCE.format(hub=_clip_hub_name(p.clip_model, p.clip_pretrained)) if not _exists(p.clip_checkpoint)
            else "",
        ))
    out = []
    for path, parameter, expected, source in wanted:
        if _exists(path):
            continue
        try:
            _require_checkpoint(path, parameter, expected(), source)
        except MissingCheckpointError as exc:
            out.append(exc)
    return out


def _exists(path: str) -> bool:
    return bool(path) and Path(path).expanduser().is_file()
