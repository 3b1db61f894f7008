"""COLMAP sparse models (binary or text) through pycolmap.

COLMAP stores world-to-camera poses in OpenCV camera axes; they become OpenGL camera-to-world
(``geometry.optical_to_opengl_c2w``). The world frame and its scale are COLMAP's own (not metres
unless the model was geo-registered). The SfM points are kept as ``points3D.ply`` (world frame,
``ply_file_path``) to initialise the Gaussians. Distorted camera models are undistorted on import
(see :mod:`..camera_model`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...geometry import optical_to_opengl_c2w
from ..camera_model import colmap_camera
from ._scene import CaptureImportError, SourceFrame, SourceScene

log = logging.getLogger(__name__)

_MODEL_FILES = ("cameras.bin", "cameras.txt")


def find_model_dir(src: Path) -> Path | None:
    """The folder holding ``cameras.{bin,txt}``: ``src`` itself, ``src/sparse/0``, ``src/sparse``,
    ``src/colmap/sparse/0`` or ``src/distorted/sparse/0``."""
    for cand in (
        src,
        src / "sparse" / "0",
        src / "sparse",
        src / "colmap" / "sparse" / "0",
        src / "distorted" / "sparse" / "0",
    ):
        if any((cand / f).is_file() for f in _MODEL_FILES):
            return cand
    return None


def find_images_dir(src: Path, model_dir: Path) -> Path | None:
    for cand in (
        src / "images",
        model_dir / "images",
        model_dir.parent / "images",
        model_dir.parent.parent / "images",
        model_dir.parent.parent.parent / "images",
    ):
        if cand.is_dir():
            return cand
    return None


def read_colmap(src: Path, images_dir: Path | None = None) -> SourceScene:
    """Parse a COLMAP sparse model.

    Args:
        src: the model folder or a project folder containing ``sparse/0``.
        images_dir: where the images named in the model are (default: ``images/`` next to the
            project / model folder).
    """
    import pycolmap

    model_dir = find_model_dir(src)
    if model_dir is None:
        raise CaptureImportError(f"{src}: no COLMAP model (cameras.bin / cameras.txt)")
    images_dir = images_dir or find_images_dir(src, model_dir)
    if images_dir is None:
        raise CaptureImportError(f"{src}: no images/ folder found for the COLMAP model; pass images_dir")
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:  # pycolmap raises its own types for corrupt models
        raise CaptureImportError(f"{model_dir}: cannot read the COLMAP model ({exc})") from None
    scene = SourceScene(format="colmap", source=src)
    cams = {}
    for cam_id, cam in rec.cameras.items():
        try:
            cams[cam_id] = colmap_camera(cam.model.name, list(cam.params), cam.width, cam.height)
        except ValueError as exc:
            raise CaptureImportError(f"{model_dir}: camera {cam_id}: {exc}") from None
    used: set[str] = set()
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        if not image.has_pose:
            scene.skipped.append(f"{image.name}: not registered")
            continue
        path = images_dir / image.name
        if not path.is_file():
            scene.skipped.append(f"{image.name}: image file not found")
            log.warning("%s: image %s not found, skipped", model_dir, path)
            continue
        w2c = np.eye(4)
        cam_from_world = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
        w2c[:3, :] = cam_from_world.matrix()
        intr, dist = cams[image.camera_id]
        stem = Path(image.name).with_suffix("").as_posix().replace("/", "_")
        name = stem
        k = 1
        while name in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        scene.frames.append(
            SourceFrame(
                image=path,
                c2w=optical_to_opengl_c2w(np.linalg.inv(w2c)),
                intrinsics=intr,
                distortion=dist,
                name=name,
                extra={"colmap_image_id": int(image.image_id), "colmap_camera_id": int(image.camera_id)},
            )
        )
    if rec.num_points3D():
        pts = list(rec.points3D.values())
        scene.points_xyz = np.array([p.xyz for p in pts], dtype=np.float64)
        scene.points_rgb = np.array([p.color for p in pts], dtype=np.uint8)
    scene.import_notes["model_dir"] = str(model_dir)
    scene.import_notes["num_cameras"] = len(cams)
    return scene
