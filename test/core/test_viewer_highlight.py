"""Photoreal highlight images (``ccl-lgs query ... --out``), on a scene trained for real.

The tinted pixels are checked against where the instance's Gaussians project through the
capture camera, computed here from the pinhole formula (not with the project's renderer)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _project(points, c2w_gl, K):
    """World points -> pixels of an OpenGL camera-to-world pose (x right, y up, looking along -z)."""
    R, t = c2w_gl[:3, :3], c2w_gl[:3, 3]
    cam = (points - t) @ R  # camera coordinates, OpenGL axes
    x, y, z = cam[:, 0], -cam[:, 1], -cam[:, 2]  # to OpenCV axes
    assert (z > 0).all()
    return np.stack([K[0, 0] * x / z + K[0, 2], K[1, 1] * y / z + K[1, 2]], axis=1)


def test_query_out_writes_tinted_outlined_render_and_relevance_overlay(trained_scene, tmp_path):
    import cv2

    from ccl_lgs_ros.capture.format import Capture
    from ccl_lgs_ros.scene import load_scene
    from ccl_lgs_ros.viewer.highlight import PALETTE

    scene_dir, cap_dir = trained_scene
    out = tmp_path / "q"
    proc = subprocess.run([sys.executable, "-m", "ccl_lgs_ros", "query", str(scene_dir), "black can", "--json",
                           "--out", str(out), "--camera", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    hl = data["files"]["highlight"]
    assert hl["camera"] == 2 and (hl["width"], hl["height"]) == (64, 48)  # the capture's resolution
    imgs = {k: cv2.cvtColor(cv2.imread(hl[k]), cv2.COLOR_BGR2RGB)
            for k in ("render", "highlight", "relevance_overlay", "relevance_heatmap")}
    for img in imgs.values():
        assert img.shape == (48, 64, 3)
    # The plain render looks like the captured photo (a trained scene, not noise).
    cap = Capture.load(cap_dir)
    photo = cap.load_image(2)[..., :3].astype(np.float32)
    assert np.abs(imgs["render"].astype(np.float32) - photo).mean() < 25

    scene = load_scene(scene_dir)
    inst = scene.engine.query("black can").instances[0]
    uv = _project(scene.index.means[inst.gaussian_ids], cap.frames[2].c2w, cap.frames[2].intrinsics.K())
    footprint = np.zeros((48, 64), np.uint8)
    cv2.fillConvexPoly(footprint, cv2.convexHull(np.rint(uv).astype(np.int32)), 1)
    region = cv2.dilate(footprint, np.ones((7, 7), np.uint8)).astype(bool)
    # Pixels whose colour moved towards the first instance's colour: inside the object's projection.
    diff = imgs["highlight"].astype(np.float32) - imgs["render"].astype(np.float32)
    red = PALETTE[0] / np.linalg.norm(PALETTE[0])
    toward = (diff @ red) > 40
    assert toward.sum() >= 5
    assert (toward & region).sum() / toward.sum() >= 0.9
    # The outline is drawn in the instance colour around its coverage.
    outline = np.all(np.abs(imgs["highlight"].astype(int) - np.rint(255 * PALETTE[0])) <= 1, axis=-1)
    assert outline.sum() >= 5 and (outline & region).sum() / outline.sum() >= 0.9
    # The relevance overlay keeps the photo where the relevance is at most 0.5 (transparent there).
    same = np.all(imgs["relevance_overlay"] == imgs["render"], axis=-1)
    assert same.mean() > 0.3 and (~same).sum() > 0


def test_query_out_without_the_capture_skips_highlights_with_the_reason(trained_scene, tmp_path):
    import shutil

    scene_dir, _ = trained_scene
    moved = tmp_path / "scene"
    shutil.copytree(scene_dir, moved)
    record = json.loads((moved / "scene.json").read_text())
    record["capture"] = str(tmp_path / "gone")
    (moved / "scene.json").write_text(json.dumps(record))
    proc = subprocess.run([sys.executable, "-m", "ccl_lgs_ros", "query", str(moved), "black can", "--json",
                           "--out", str(tmp_path / "q")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "not available" in json.loads(proc.stdout)["files"]["highlight"]["skipped"]
