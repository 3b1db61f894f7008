"""nerfstudio / instant-ngp ``transforms.json`` and Blender / NeRF-synthetic readers.

Rotation blocks that carry a scale (e.g. the fakeplant dataset, ~0.2103) are orthonormalised
with :func:`geometry.orthonormalize_rotation`; the camera centres (translation column) are kept
exactly as given, and the removed scale is recorded in ``ccl_lgs.import.rotation_scale``
(min / mean / max over frames). Rationale: a uniform scale on the rotation block does not
change where a camera is nor where it looks, only the (meaningless) length of its axes, so the
capture keeps the source's world frame and units.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ... import ply as plyio
from ...geometry import orthonormalize_rotation
from ...io import read_json
from ..camera_model import distortion_of, focal_from_fov, pinhole
from ..format import _INTRINSIC_KEYS, Intrinsics
from ._scene import CaptureImportError, SourceFrame, SourceScene, image_size

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = ("", ".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
_FRAME_KNOWN = {"file_path", "transform_matrix", "depth_file_path", "mask_path", "timestamp", *_INTRINSIC_KEYS}
_TOP_KNOWN = {
    "frames",
    "ccl_lgs",
    "ply_file_path",
    "camera_angle_x",
    "camera_angle_y",
    "fl_x",
    "fl_y",
    *_INTRINSIC_KEYS,
}


def resolve_image(base: Path, rel: str) -> Path | None:
    """Source image path; NeRF-synthetic ``file_path`` values omit the extension."""
    for suffix in _IMAGE_SUFFIXES:
        p = base / (rel + suffix)
        if p.is_file():
            return p
    return None


def _pose(raw: Any) -> tuple[np.ndarray, float]:
    """Source matrix -> (OpenGL c2w with orthonormal rotation, scale removed)."""
    M = np.asarray(raw, dtype=np.float64)
    if M.shape == (3, 4):
        M = np.vstack([M, [0.0, 0.0, 0.0, 1.0]])
    if M.shape != (4, 4) or not np.isfinite(M).all():
        raise ValueError("transform_matrix is not a finite 4x4 (or 3x4) matrix")
    if np.linalg.det(M[:3, :3]) <= 0:
        raise ValueError("rotation block is singular or a reflection")
    R, scale = orthonormalize_rotation(M[:3, :3])
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = R, M[:3, 3]
    return c2w, scale


def _shared_intrinsics(data: dict[str, Any], first_image: Path | None) -> dict[str, Any] | None:
    """Top-level intrinsics as a nerfstudio dict, filling instant-ngp's ``camera_angle_x``."""
    if "fl_x" not in data and "camera_angle_x" not in data:
        return None
    d = {k: data[k] for k in _INTRINSIC_KEYS if k in data}
    if "w" not in d or "h" not in d:
        if first_image is None:
            raise CaptureImportError("image size unknown: no 'w'/'h' and no readable image")
        d["w"], d["h"] = image_size(first_image)
    if "fl_x" not in d:
        d["fl_x"] = focal_from_fov(data["camera_angle_x"], d["w"])
        d["fl_y"] = focal_from_fov(data["camera_angle_y"], d["h"]) if "camera_angle_y" in data else d["fl_x"]
    d.setdefault("cx", d["w"] / 2.0)
    d.setdefault("cy", d["h"] / 2.0)
    if data.get("is_fisheye"):
        d["camera_model"] = "OPENCV_FISHEYE"
    return d


def _unique_name(stem: str, used: set[str]) -> str:
    name, i = stem, 1
    while name in used:
        i += 1
        name = f"{stem}_{i}"
    used.add(name)
    return name


def read_nerfstudio(src: Path) -> SourceScene:
    """Parse a nerfstudio / instant-ngp ``transforms.json`` (``src`` = the file or its folder).

    Per-frame intrinsics win over shared ones. Frames whose image is missing or whose matrix is
    invalid are skipped with a warning. Unknown keys are preserved, except per-frame keys naming
    files (``*_path``) that are not imported: they would dangle in the new folder (their names
    are recorded in ``ccl_lgs.import.dropped_keys``).
    """
    path = src / "transforms.json" if src.is_dir() else src
    base = path.parent
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise CaptureImportError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise CaptureImportError(f"{path}: expected an object with a 'frames' list")
    scene = SourceScene(format="nerfstudio", source=path)
    first = next(
        (
            p
            for fd in data["frames"]
            if isinstance(fd, dict) and (p := resolve_image(base, str(fd.get("file_path", "")))) is not None
        ),
        None,
    )
    shared_d = _shared_intrinsics(data, first)
    shared = Intrinsics.from_json(shared_d) if shared_d else None
    block = data.get("ccl_lgs") or {}
    scene.frame_id = str(block.get("frame_id", "map"))
    scene.depth_unit_scale_factor = float(data.get("depth_unit_scale_factor", 0.001))
    scene.extra = {k: v for k, v in data.items() if k not in _TOP_KNOWN}
    scales: list[float] = []
    dropped: set[str] = set()
    used: set[str] = set()
    for i, fd in enumerate(data["frames"]):
        rel = str(fd.get("file_path", "")) if isinstance(fd, dict) else ""
        image = resolve_image(base, rel) if rel else None
        if image is None:
            scene.skipped.append(f"frame {i}: image {rel!r} not found")
            log.warning("%s: frame %d: image %r not found, skipped", path, i, rel)
            continue
        try:
            c2w, scale = _pose(fd["transform_matrix"])
            has_own = any(k in fd for k in ("fl_x", "fl_y", "cx", "cy", "w", "h"))
            if shared is None or has_own:
                own = dict(shared_d or {})
                own.update({k: fd[k] for k in _INTRINSIC_KEYS if k in fd})
                intr = Intrinsics.from_json(own)
            else:
                intr = Intrinsics.from_json(fd, shared)
        except (KeyError, TypeError, ValueError) as exc:
            scene.skipped.append(f"frame {i}: {exc}")
            log.warning("%s: frame %d: %s, skipped", path, i, exc)
            continue
        scales.append(scale)
        extra = {}
        for k, v in fd.items():
            if k in _FRAME_KNOWN:
                continue
            if k.endswith("_path"):
                dropped.add(k)
                continue
            extra[k] = v
        depth = _optional_file(base, fd.get("depth_file_path"), scene, i, "depth")
        mask = _optional_file(base, fd.get("mask_path"), scene, i, "mask")
        ts = fd.get("timestamp")
        scene.frames.append(
            SourceFrame(
                image=image,
                c2w=c2w,
                intrinsics=pinhole(intr),
                distortion=distortion_of(intr),
                name=_unique_name(image.stem, used),
                depth=depth,
                mask=mask,
                timestamp=float(ts) if isinstance(ts, (int, float)) else None,
                extra=extra,
            )
        )
    if scales:
        scene.import_notes["rotation_scale"] = {"min": min(scales), "mean": float(np.mean(scales)), "max": max(scales)}
        if max(abs(s - 1.0) for s in scales) > 1e-6:
            scene.import_notes["rotation_scale_note"] = (
                "rotation blocks were orthonormalised; camera centres kept as given"
            )
    if dropped:
        scene.import_notes["dropped_keys"] = sorted(dropped)
    ply = data.get("ply_file_path")
    if isinstance(ply, str) and (base / ply).is_file():
        scene.points_xyz, scene.points_rgb = read_ply_points(base / ply)
    return scene


def _optional_file(base: Path, rel: Any, scene: SourceScene, i: int, what: str) -> Path | None:
    if not rel:
        return None
    p = base / str(rel)
    if p.is_file():
        return p
    scene.skipped.append(f"frame {i}: {what} {rel!r} not found (frame kept without it)")
    log.warning("frame %d: %s %r not found, frame kept without it", i, what, rel)
    return None


def read_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(xyz float [N,3], rgb uint8 [N,3] or None)`` of a PLY's vertices (:mod:`ccl_lgs_ros.ply`)."""
    xyz, rgb = plyio.read_ply_points(path)
    return xyz, None if rgb is None else plyio.colors_to_u8(rgb)


def blender_files(src: Path, splits: Sequence[str]) -> list[tuple[str, Path]]:
    """The ``transforms_<split>.json`` files of a NeRF-synthetic scene, in ``splits`` order."""
    if src.is_file():
        split = src.stem.split("transforms_", 1)[-1] if src.stem.startswith("transforms_") else src.stem
        return [(split, src)]
    return [(s, src / f"transforms_{s}.json") for s in splits if (src / f"transforms_{s}.json").is_file()]


def read_blender(src: Path, splits: Sequence[str] = ("train",)) -> SourceScene:
    """Parse a Blender / NeRF-synthetic scene.

    ``fx = fy = 0.5 * W / tan(0.5 * camera_angle_x)``, principal point at the image centre.
    Images are RGBA: :func:`materialise` composites them on the chosen background (recorded in
    ``ccl_lgs.background``) and keeps alpha as a mask (``masks/``, ``mask_path``). Only the
    ``splits`` named are imported (default: train; hold out frames for evaluation from it).
    """
    files = blender_files(src, splits)
    if not files:
        raise CaptureImportError(f"{src}: no transforms_{{{','.join(splits)}}}.json")
    scene = SourceScene(format="blender", source=src)
    used: set[str] = set()
    for split, path in files:
        data = read_json(path)
        if "camera_angle_x" not in data or not isinstance(data.get("frames"), list):
            raise CaptureImportError(f"{path}: not a NeRF-synthetic file (needs camera_angle_x and frames)")
        base = path.parent
        intr: Intrinsics | None = None
        for i, fd in enumerate(data["frames"]):
            rel = str(fd.get("file_path", ""))
            image = resolve_image(base, rel) if rel else None
            if image is None:
                scene.skipped.append(f"{split} frame {i}: image {rel!r} not found")
                log.warning("%s: frame %d: image %r not found, skipped", path, i, rel)
                continue
            if intr is None:
                w, h = image_size(image)
                f = focal_from_fov(data["camera_angle_x"], w)
                intr = Intrinsics(fx=f, fy=f, cx=w / 2.0, cy=h / 2.0, width=w, height=h)
            try:
                c2w, _ = _pose(fd["transform_matrix"])
            except (KeyError, ValueError) as exc:
                scene.skipped.append(f"{split} frame {i}: {exc}")
                log.warning("%s: frame %d: %s, skipped", path, i, exc)
                continue
            extra = {k: v for k, v in fd.items() if k not in _FRAME_KNOWN}
            extra["split"] = split
            scene.frames.append(
                SourceFrame(
                    image=image,
                    c2w=c2w,
                    intrinsics=intr,
                    name=_unique_name(f"{split}_{image.stem}", used),
                    alpha_is_mask=True,
                    extra=extra,
                )
            )
    scene.import_notes["camera_angle_x"] = float(read_json(files[0][1])["camera_angle_x"])
    scene.import_notes["splits"] = [s for s, _ in files]
    return scene
