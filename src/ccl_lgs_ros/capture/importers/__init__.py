"""Import posed frames from datasets and bags into the capture format (``ccl-lgs import``).

Supported sources, detected automatically (:func:`detect_format`):

- ``capture`` / ``nerfstudio``: a ``transforms.json`` (nerfstudio or instant-ngp; a capture
  folder is the same format with a ``ccl_lgs`` block);
- ``blender``: NeRF-synthetic ``transforms_train.json`` with ``camera_angle_x``;
- ``colmap``: a COLMAP sparse model, binary or text (``cameras``, ``images``, ``points3D``);
- ``rosbag2``: a rosbag2 folder (sqlite3 or mcap), topics from the ``node`` config section.

Distortion: images are **undistorted on import** (same ``K``, see :mod:`..camera_model`); every
capture holds pinhole images. The source is never modified; images are written to ``OUT/images``
(copied byte for byte when unchanged), ``transforms.json`` last.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...config import Config
from ...io import read_json
from ..format import TRANSFORMS, Capture
from ._scene import CaptureImportError, SourceFrame, SourceScene, materialise, scene_info
from .colmap import find_model_dir, read_colmap
from .nerfstudio import blender_files, read_blender, read_nerfstudio
from .rosbag import import_rosbag, is_rosbag, rosbag_info

FORMATS = ("auto", "capture", "nerfstudio", "blender", "colmap", "rosbag2")


def detect_format(src: str | Path) -> str:
    """Which importer reads ``src``: one of :data:`FORMATS` except ``auto``.

    Raises:
        CaptureImportError: nothing recognisable at ``src``.
    """
    src = Path(src).expanduser()
    if not src.exists():
        raise CaptureImportError(f"{src} does not exist")
    if is_rosbag(src):
        return "rosbag2"
    if src.is_file() and src.suffix == ".json":
        data = read_json(src)
        if isinstance(data, dict) and "camera_angle_x" in data and "fl_x" not in data and src.name != TRANSFORMS:
            return "blender"
        return "capture" if isinstance(data, dict) and "ccl_lgs" in data else "nerfstudio"
    if src.is_dir():
        if (src / TRANSFORMS).is_file():
            data = read_json(src / TRANSFORMS)
            return "capture" if isinstance(data, dict) and "ccl_lgs" in data else "nerfstudio"
        if blender_files(src, ("train", "val", "test")):
            return "blender"
        if find_model_dir(src) is not None:
            return "colmap"
    raise CaptureImportError(
        f"{src}: not a recognised source (transforms.json, transforms_train.json, COLMAP sparse model, "
        "or rosbag2 folder)"
    )


def _parse(src: Path, fmt: str, splits: Sequence[str] | None, images_dir: Path | None) -> SourceScene:
    if fmt in ("capture", "nerfstudio"):
        scene = read_nerfstudio(src)
        scene.format = fmt
        return scene
    if fmt == "blender":
        return read_blender(src, tuple(splits or ("train",)))
    if fmt == "colmap":
        return read_colmap(src, images_dir)
    raise CaptureImportError(f"unknown format {fmt!r}; choose one of {FORMATS}")


def import_capture(
    src: str | Path,
    out: str | Path,
    *,
    fmt: str = "auto",
    background: str = "white",
    max_frames: int | None = None,
    downscale: int = 1,
    cfg: Config | None = None,
    splits: Sequence[str] | None = None,
    images_dir: str | Path | None = None,
    link_images: bool = False,
) -> Capture:
    """Convert a dataset or bag at ``src`` into a capture folder at ``out``.

    Args:
        src: source folder or file (see the module docstring).
        out: new capture folder (must not already hold a ``transforms.json``).
        fmt: ``"auto"`` or one of :data:`FORMATS`.
        background: ``"white"`` or ``"black"``: what RGBA (Blender) images are composited on;
            recorded in ``ccl_lgs.background``; alpha is kept as a mask (``mask_path``).
        max_frames: import at most this many frames (the first ones; keyframes for bags).
        downscale: integer image downscale factor (intrinsics scaled to match).
        cfg: config (the ``node`` section names bag topics and pose source, ``capture`` the
            keyframe selection of bags); defaults when ``None``.
        splits: Blender splits to import (default ``("train",)``).
        images_dir: COLMAP images folder when not next to the model.
        link_images: hard-link unchanged images instead of copying them (falls back to a copy).

    Returns:
        The written :class:`Capture`.

    Raises:
        CaptureImportError: unknown format, no usable frame, or an unsafe destination.
    """
    src, out = Path(src).expanduser(), Path(out).expanduser()
    fmt = detect_format(src) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise CaptureImportError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    if max_frames is not None and max_frames < 1:
        raise CaptureImportError(f"max_frames must be >= 1, got {max_frames}")
    if fmt == "rosbag2":
        return import_rosbag(src, out, cfg=cfg, max_frames=max_frames, downscale=downscale)
    scene = _parse(src, fmt, splits, Path(images_dir) if images_dir else None)
    return materialise(
        scene, out, background=background, max_frames=max_frames, downscale=downscale, link_images=link_images
    )


def capture_info(path: str | Path, cfg: Config | None = None) -> dict[str, Any]:
    """Summary of any supported source or capture folder (``ccl-lgs info PATH --json``).

    Keys: ``format``, ``path``, ``num_frames``, ``image_sizes`` (``[[w, h], ...]``),
    ``intrinsics`` (distinct nerfstudio intrinsics dicts), ``distorted``,
    ``camera_center_bbox`` (``{"min": [x,y,z], "max": [x,y,z]}`` or ``None``), ``frame_id``,
    ``has_depth``, ``has_masks``, ``has_instances``, ``has_points`` (plus format extras).
    """
    path = Path(path).expanduser()
    fmt = detect_format(path)
    if fmt == "rosbag2":
        return rosbag_info(path, cfg)
    if fmt == "capture":
        return _capture_folder_info(Capture.load(path if path.is_dir() else path.parent))
    return scene_info(_parse(path, fmt, None, None))


def _capture_folder_info(cap: Capture) -> dict[str, Any]:
    centres = cap.c2w_all()[:, :3, 3]
    intrs: list[dict[str, Any]] = []
    for f in cap.frames:
        d = f.intrinsics.to_json()
        if d not in intrs:
            intrs.append(d)
    missing = sum(not (cap.root / f.file_path).is_file() for f in cap.frames)
    return {
        "format": "capture",
        "path": str(cap.root),
        "num_frames": len(cap.frames),
        "num_missing_images": missing,
        "image_sizes": [list(s) for s in sorted({(f.intrinsics.width, f.intrinsics.height) for f in cap.frames})],
        "intrinsics": intrs,
        "distorted": any(f.intrinsics.distorted for f in cap.frames),
        "camera_center_bbox": {"min": centres.min(0).tolist(), "max": centres.max(0).tolist()}
        if len(centres)
        else None,
        "frame_id": cap.frame_id,
        "has_depth": any(f.depth_file_path for f in cap.frames),
        "has_masks": any(f.mask_file_path for f in cap.frames),
        "has_instances": bool(cap.instances) or any(f.instance_file_path for f in cap.frames),
        "has_points": bool(cap.points_file) and (cap.root / str(cap.points_file)).is_file(),
        "background": cap.ccl_extra.get("background"),
    }


__all__ = [
    "FORMATS",
    "CaptureImportError",
    "SourceFrame",
    "SourceScene",
    "capture_info",
    "detect_format",
    "import_capture",
]
