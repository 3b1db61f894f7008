"""Synthetic scenes: determinism, world frame, and ground-truth consistency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData
from scipy.spatial import cKDTree

from ccl_lgs_ros.capture.format import Capture
from ccl_lgs_ros.geometry import GL_FROM_CV, is_valid_pose
from ccl_lgs_ros.testing.synth import generate_scene

SMALL = {"width": 80, "height": 60, "num_frames": 8, "num_objects": 5}


def _gt_points(capture: Capture, inst: dict) -> np.ndarray:
    v = PlyData.read(str(capture.root / inst["gt_points"]))["vertex"]
    return np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float64)


def _backproject(capture: Capture, i: int) -> tuple[np.ndarray, np.ndarray]:
    """World points ``[H*W,3]`` of frame ``i``'s depth and the instance id of each."""
    f = capture.frames[i]
    K = f.intrinsics
    depth = capture.load_depth(i)
    v, u = np.mgrid[0 : depth.shape[0], 0 : depth.shape[1]]
    x = (u + 0.5 - K.cx) / K.fx * depth
    y = (v + 0.5 - K.cy) / K.fy * depth
    pts_cv = np.stack([x, y, depth], axis=-1).reshape(-1, 3)
    c2w_cv = f.c2w @ GL_FROM_CV
    return pts_cv @ c2w_cv[:3, :3].T + c2w_cv[:3, 3], capture.load_instances(i).reshape(-1)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    return generate_scene(tmp_path_factory.mktemp("synth") / "scene", seed=3, **SMALL)


def test_deterministic_per_seed(tmp_path: Path, scene: Capture) -> None:
    again = generate_scene(tmp_path / "again", seed=3, **SMALL)
    other = generate_scene(tmp_path / "other", seed=4, **SMALL)
    assert again.to_json() == scene.to_json()
    for rel in ("images/frame_000003.png", "depth/frame_000003.png", "instances/frame_000003.png", "gt/obj_0002.ply"):
        assert (again.root / rel).read_bytes() == (scene.root / rel).read_bytes(), rel
    assert not np.allclose(other.c2w_all(), scene.c2w_all())


def test_capture_contents(scene: Capture) -> None:
    assert len(scene.frames) == SMALL["num_frames"]
    labels = [inst["label"] for inst in scene.instances if not inst.get("background")]
    assert len(labels) == SMALL["num_objects"]
    assert len(set(labels)) == len(labels) - 1  # shared_label: exactly one label used twice
    assert all(is_valid_pose(T) for T in scene.c2w_all())
    img = scene.load_image(0)
    assert img.shape == (60, 80, 3) and img.std() > 10  # shaded, textured, not flat
    depth = scene.load_depth(0)
    assert (depth > 0).all()  # the room is closed: every pixel has a depth
    ids = {inst["id"] for inst in scene.instances}
    seen = set()
    for i in range(len(scene.frames)):
        seen |= set(np.unique(scene.load_instances(i)).tolist())
    assert ids <= seen and seen <= ids | {0}


def test_instances_depth_and_gt_points_agree(scene: Capture) -> None:
    trees = {inst["id"]: cKDTree(_gt_points(scene, inst)) for inst in scene.instances}
    for i in range(0, len(scene.frames), 3):
        pts, inst = _backproject(scene, i)
        for k, tree in trees.items():
            sel = inst == k
            if sel.sum() < 5:
                continue
            dist, _ = tree.query(pts[sel])
            # Depth is stored in mm and the GT is sampled at ~5 mm spacing.
            assert np.median(dist) < 0.006, (i, k, np.median(dist))
            assert np.quantile(dist, 0.95) < 0.015, (i, k)
        # Background pixels are not on any object.
        bg = pts[inst == 0]
        obj_ids = [j["id"] for j in scene.instances if not j.get("background")]
        for k in obj_ids:
            dist, _ = trees[k].query(bg)
            assert np.quantile(dist, 0.01) > 0.002


def test_occlusions_happen(scene: Capture) -> None:
    """Some object is hidden behind another object in some view (GT points projected)."""
    occluded = 0
    objects = [j for j in scene.instances if not j.get("background")]
    for i, f in enumerate(scene.frames):
        depth, ids = scene.load_depth(i), scene.load_instances(i)
        w2c = np.linalg.inv(f.c2w @ GL_FROM_CV)
        K = f.intrinsics
        for inst in objects:
            p = _gt_points(scene, inst) @ w2c[:3, :3].T + w2c[:3, 3]
            p = p[p[:, 2] > 0.05]
            u = (K.fx * p[:, 0] / p[:, 2] + K.cx).astype(int)
            v = (K.fy * p[:, 1] / p[:, 2] + K.cy).astype(int)
            ok = (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
            u, v, z = u[ok], v[ok], p[ok, 2]
            other = ids[v, u]
            hidden = (z > depth[v, u] + 0.03) & (other != inst["id"]) & (other != 0)
            occluded += int(hidden.sum())
    assert occluded > 0


def test_world_offset_moves_everything_but_the_images(tmp_path: Path) -> None:
    kw = {"width": 48, "height": 36, "num_frames": 2, "num_objects": 3, "seed": 1}
    local = generate_scene(tmp_path / "local", world_offset=None, **kw)
    moved = generate_scene(tmp_path / "moved", world_offset=(1.5, -2.0, 0.3, 45.0), **kw)
    T = np.array(moved.ccl_extra["synth"]["world_from_local"])
    assert not np.allclose(T, np.eye(4))
    np.testing.assert_allclose(moved.c2w_all(), T @ local.c2w_all(), atol=1e-9)
    a, b = _gt_points(local, local.instances[0]), _gt_points(moved, moved.instances[0])
    np.testing.assert_allclose(b, a @ T[:3, :3].T + T[:3, 3], atol=1e-4)
    assert (moved.root / "images/frame_000002.png").read_bytes() == (
        local.root / "images/frame_000002.png"
    ).read_bytes()
