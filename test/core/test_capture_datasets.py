"""Import of the real shared datasets (skipped with a reason when absent).

Writing all 100 lego frames re-encodes 100 800x800 PNGs (~10-20 s on 2 cores), so the quick
tests parse every frame (poses, intrinsics, count) and write a few; the full import is ``slow``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ccl_lgs_ros.capture.format import Capture
from ccl_lgs_ros.capture.importers import capture_info, import_capture
from ccl_lgs_ros.capture.importers.nerfstudio import read_blender, read_nerfstudio
from conftest import dataset_path

pytestmark = pytest.mark.datasets


def _source_frames(path):
    return json.loads(path.read_text())["frames"]


def _check_lego(frames, src_frames, angle):
    fx = 0.5 * 800 / math.tan(0.5 * angle)
    for f, sf in zip(frames, src_frames):
        assert (f.intrinsics.width, f.intrinsics.height) == (800, 800)
        assert abs(f.intrinsics.fx - fx) < 1e-9 and abs(f.intrinsics.fy - fx) < 1e-9
        M = np.asarray(sf["transform_matrix"])
        np.testing.assert_allclose(f.c2w[:3, 3], M[:3, 3], atol=1e-6)


def test_lego_parses_100_frames_and_imports():
    src = dataset_path("nerf_synthetic_lego")
    meta = json.loads((src / "transforms_train.json").read_text())
    scene = read_blender(src)
    assert len(scene.frames) == 100 and not scene.skipped
    _check_lego(scene.frames, meta["frames"], meta["camera_angle_x"])
    info = capture_info(src)
    assert info["num_frames"] == 100 and info["image_sizes"] == [[800, 800]] and info["has_masks"]


def test_lego_import_writes_composited_frames(tmp_path):
    src = dataset_path("nerf_synthetic_lego")
    meta = json.loads((src / "transforms_train.json").read_text())
    import_capture(src, tmp_path / "lego", max_frames=4, background="white")
    cap = Capture.load(tmp_path / "lego")
    assert len(cap.frames) == 4
    _check_lego(cap.frames, meta["frames"], meta["camera_angle_x"])
    rgb = cap.load_image(0)
    assert rgb.shape == (800, 800, 3) and (rgb[0, 0] == 255).all()  # the corner is background
    assert cap.frames[0].mask_file_path and cap.ccl_extra["background"] == "white"


@pytest.mark.slow
def test_lego_full_import(tmp_path):
    src = dataset_path("nerf_synthetic_lego")
    meta = json.loads((src / "transforms_train.json").read_text())
    import_capture(src, tmp_path / "lego")
    cap = Capture.load(tmp_path / "lego")
    assert len(cap.frames) == 100
    _check_lego(cap.frames, meta["frames"], meta["camera_angle_x"])


def test_fakeplant_imports_360_orthonormal_frames(tmp_path):
    src = dataset_path("nerfstudio_fakeplant")
    src_frames = _source_frames(src / "transforms.json")
    assert len(read_nerfstudio(src).frames) == 360
    # hard links (or byte copies) of the JPEGs: no re-encoding, so the whole set is quick
    import_capture(src, tmp_path / "plant", link_images=True)
    cap = Capture.load(tmp_path / "plant")
    assert len(cap.frames) == 360
    for f, sf in zip(cap.frames, src_frames):
        assert (f.intrinsics.width, f.intrinsics.height) == (640, 512)
        R = f.c2w[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
        assert abs(np.linalg.det(R) - 1.0) < 1e-9
        M = np.asarray(sf["transform_matrix"])
        np.testing.assert_allclose(f.c2w[:3, 3], M[:3, 3], atol=1e-6)
        # same viewing direction as the source's scaled rotation block
        np.testing.assert_allclose(R[:, 2], M[:3, 2] / np.linalg.norm(M[:3, 2]), atol=1e-9)
    scale = cap.ccl_extra["import"]["rotation_scale"]
    assert 0.20 < scale["mean"] < 0.22
    assert cap.load_image(0).shape == (512, 640, 3)
    info = capture_info(tmp_path / "plant")
    assert info["num_frames"] == 360 and info["image_sizes"] == [[640, 512]]
