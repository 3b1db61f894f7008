"""The common middle of every file importer: a parsed source scene, then writing it out.

A reader (nerfstudio, Blender, COLMAP) parses its source into a :class:`SourceScene` without
touching pixels; :func:`materialise` writes the capture folder (images first, then
``transforms.json``), and :func:`scene_info` summarises a scene for ``ccl-lgs info``.
"""

from __future__ import annotations

import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ... import ply as plyio
from ...io import atomic_write_bytes
from ..camera_model import Distortion, Undistorter
from ..format import TRANSFORMS, Capture, CaptureError, Frame, Intrinsics, encode_image

log = logging.getLogger(__name__)

BACKGROUNDS = {"white": 255, "black": 0}


class CaptureImportError(CaptureError):
    """A source cannot be imported (unknown format, no usable frames, unsafe destination)."""


@dataclass
class SourceFrame:
    """One frame of a source, before any pixel is read. Paths are absolute source paths."""

    image: Path
    c2w: np.ndarray  # [4,4] camera-to-world, OpenGL axes, orthonormal rotation
    intrinsics: Intrinsics  # pinhole part (distortion carried separately)
    name: str  # output file stem, unique within the scene
    distortion: Distortion = field(default_factory=Distortion)
    alpha_is_mask: bool = False  # RGBA source: composite on the background, keep alpha as a mask
    depth: Path | None = None  # uint16 PNG in the scene's depth unit
    mask: Path | None = None
    timestamp: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceScene:
    """A parsed source: frames plus scene-level data."""

    format: str
    source: Path
    frames: list[SourceFrame] = field(default_factory=list)
    frame_id: str = "map"
    depth_unit_scale_factor: float = 0.001
    points_xyz: np.ndarray | None = None  # float [N,3] world frame
    points_rgb: np.ndarray | None = None  # uint8 [N,3]
    extra: dict[str, Any] = field(default_factory=dict)  # unknown top-level keys, preserved
    import_notes: dict[str, Any] = field(default_factory=dict)  # recorded in ccl_lgs.import
    skipped: list[str] = field(default_factory=list)  # human-readable reasons


def check_destination(src: Path, out: Path) -> None:
    """Refuse to write into the source or over an existing capture."""
    src_dir = (src if src.is_dir() else src.parent).resolve()
    out_r = out.resolve()
    if out_r == src_dir:
        raise CaptureImportError(f"output {out} is the source folder; choose another folder")
    if (out / TRANSFORMS).exists():
        raise CaptureImportError(f"{out} already holds a {TRANSFORMS}; refusing to overwrite it")


def read_rgba(path: Path) -> np.ndarray:
    """RGB or RGBA ``uint8 [H,W,3|4]`` (16-bit sources scaled to 8 bit)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CaptureImportError(f"cannot read image {path}")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file (decodes it; used once per scene)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CaptureImportError(f"cannot read image {path}")
    return int(img.shape[1]), int(img.shape[0])


def composite(rgba: np.ndarray, background: str) -> tuple[np.ndarray, np.ndarray]:
    """RGBA -> (RGB composited on ``background``, alpha ``uint8 [H,W]``)."""
    if background not in BACKGROUNDS:
        raise CaptureImportError(f"unknown background {background!r}; choose one of {sorted(BACKGROUNDS)}")
    if rgba.shape[2] == 3:
        return rgba, np.full(rgba.shape[:2], 255, np.uint8)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + float(BACKGROUNDS[background]) * (1.0 - alpha)
    return np.clip(rgb.round(), 0, 255).astype(np.uint8), np.ascontiguousarray(rgba[..., 3])


def _copy_file(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                dst.unlink()
            os.link(src, dst)
            return
        except OSError:
            pass  # other file system / read-only source: copy instead
    _put(dst, src.read_bytes())


def ply_bytes(xyz: np.ndarray, rgb: np.ndarray | None) -> bytes:
    """A binary PLY of points (float32 x y z, uint8 red green blue; grey without colours)."""
    cols = np.full((len(np.asarray(xyz).reshape(-1, 3)), 3), 128, np.uint8) if rgb is None else rgb
    return plyio.vertex_ply_bytes(plyio.points_vertex(xyz, cols))


def materialise(
    scene: SourceScene,
    out: Path,
    *,
    background: str = "white",
    max_frames: int | None = None,
    downscale: int = 1,
    link_images: bool = False,
) -> Capture:
    """Write ``scene`` as a capture folder at ``out`` (images first, ``transforms.json`` last).

    Images that need no change (no alpha, no distortion, no downscale) are copied byte for byte
    (or hard-linked with ``link_images``; safe because nothing in a capture is modified in place);
    the others are decoded, composited / undistorted / resized and re-encoded in the source's
    file type. The source is only read.
    """
    if downscale < 1:
        raise CaptureImportError(f"downscale must be >= 1, got {downscale}")
    if background not in BACKGROUNDS:
        raise CaptureImportError(f"unknown background {background!r}; choose one of {sorted(BACKGROUNDS)}")
    check_destination(scene.source, out)
    frames_in = scene.frames[:max_frames] if max_frames is not None else scene.frames
    if not frames_in:
        raise CaptureImportError(f"{scene.source}: no usable frames ({len(scene.skipped)} skipped)")
    out.mkdir(parents=True, exist_ok=True)
    undistort = Undistorter()

    def one(sf: SourceFrame) -> Frame:
        return _materialise_frame(sf, out, undistort, background, downscale, link_images)

    # OpenCV releases the GIL while decoding / encoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        frames = list(pool.map(one, frames_in))
    # Files were renamed into place without a per-file fsync (10 ms each here); one sync makes
    # them all durable before transforms.json names them.
    os.sync()
    capture = Capture(
        root=out,
        frames=frames,
        frame_id=scene.frame_id,
        depth_unit_scale_factor=scene.depth_unit_scale_factor,
        extra=dict(scene.extra),
    )
    if scene.points_xyz is not None and len(scene.points_xyz):
        atomic_write_bytes(out / "points3D.ply", ply_bytes(scene.points_xyz, scene.points_rgb))
        capture.points_file = "points3D.ply"
    notes = dict(scene.import_notes)
    notes.update(
        {
            "source": str(scene.source),
            "format": scene.format,
            "undistorted": any(not f.distortion.is_identity for f in frames_in),
            "downscale": int(downscale),
            "skipped": list(scene.skipped),
        }
    )
    if any(f.alpha_is_mask for f in frames_in):
        notes["background"] = background
        capture.ccl_extra["background"] = background
    capture.ccl_extra["import"] = notes
    capture.save()
    return capture


def _put(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename (atomic; durability comes from the caller's sync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _materialise_frame(
    sf: SourceFrame, out: Path, undistort: Undistorter, background: str, downscale: int, link_images: bool
) -> Frame:
    intr = sf.intrinsics
    size = (intr.width // downscale, intr.height // downscale)
    out_intr = intr.scaled(*size) if downscale > 1 else intr
    suffix = sf.image.suffix.lower() or ".png"
    rel = f"images/{sf.name}{suffix}"
    frame = Frame(file_path=rel, c2w=sf.c2w, intrinsics=out_intr, timestamp=sf.timestamp, extra=dict(sf.extra))
    unchanged = sf.distortion.is_identity and downscale == 1
    if unchanged and not sf.alpha_is_mask:
        _copy_file(sf.image, out / rel, link_images)
    else:
        rgba = read_rgba(sf.image)
        if rgba.shape[:2] != (intr.height, intr.width):
            raise CaptureImportError(
                f"{sf.image}: image is {rgba.shape[1]}x{rgba.shape[0]}, intrinsics say {intr.width}x{intr.height}"
            )
        rgb, alpha = composite(rgba, background) if sf.alpha_is_mask else (rgba[..., :3], None)
        rgb = _resize(undistort(rgb, intr, sf.distortion), size, nearest=False)
        _put(out / rel, encode_image(suffix, rgb))
        if alpha is not None:
            frame.mask_file_path = f"masks/{sf.name}.png"
            alpha = _resize(undistort(alpha, intr, sf.distortion, nearest=True), size, nearest=True)
            _put(out / frame.mask_file_path, encode_image(".png", alpha))
    for src_path, attr, folder in ((sf.depth, "depth_file_path", "depth"), (sf.mask, "mask_file_path", "masks")):
        if src_path is None:
            continue
        dst_rel = f"{folder}/{sf.name}{src_path.suffix.lower() or '.png'}"
        if unchanged:
            _copy_file(src_path, out / dst_rel, link_images)
        else:
            raw = cv2.imread(str(src_path), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise CaptureImportError(f"cannot read {src_path}")
            raw = _resize(undistort(raw, intr, sf.distortion, nearest=True), size, nearest=True)
            dst_rel = f"{folder}/{sf.name}.png"
            ok, buf = cv2.imencode(".png", raw)  # keeps uint16 depth / uint8 masks as they are
            if not ok:
                raise CaptureImportError(f"cannot encode {dst_rel}")
            _put(out / dst_rel, buf.tobytes())
        setattr(frame, attr, dst_rel)
    return frame


def _resize(img: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if (img.shape[1], img.shape[0]) == size:
        return img
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def scene_info(scene: SourceScene) -> dict[str, Any]:
    """The ``ccl-lgs info`` summary of a parsed source."""
    frames = scene.frames
    centres = np.array([f.c2w[:3, 3] for f in frames]) if frames else np.zeros((0, 3))
    intrs: list[dict[str, Any]] = []
    for f in frames:
        d = f.intrinsics.to_json()
        if d not in intrs:
            intrs.append(d)
    sizes = sorted({(f.intrinsics.width, f.intrinsics.height) for f in frames})
    return {
        "format": scene.format,
        "path": str(scene.source),
        "num_frames": len(frames),
        "num_skipped": len(scene.skipped),
        "image_sizes": [list(s) for s in sizes],
        "intrinsics": intrs,
        "distorted": any(not f.distortion.is_identity for f in frames),
        "camera_center_bbox": _bbox(centres),
        "frame_id": scene.frame_id,
        "has_depth": any(f.depth is not None for f in frames),
        "has_masks": any(f.mask is not None or f.alpha_is_mask for f in frames),
        "has_instances": False,
        "has_points": scene.points_xyz is not None and len(scene.points_xyz) > 0,
    }


def _bbox(points: np.ndarray) -> dict[str, list[float]] | None:
    if len(points) == 0:
        return None
    return {"min": points.min(axis=0).tolist(), "max": points.max(axis=0).tolist()}
