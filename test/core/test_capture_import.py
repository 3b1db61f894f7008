"""capture/importers on small synthetic sources: nerfstudio, Blender, COLMAP; camera models."""

from __future__ import annotations

import json
import logging
import math

import cv2
import numpy as np
import pytest

from ccl_lgs_ros.capture.camera_model import (
    Distortion,
    Undistorter,
    _polynomial_maps,
    colmap_camera,
    intrinsics_from_camera_info,
)
from ccl_lgs_ros.capture.format import Capture, Intrinsics
from ccl_lgs_ros.capture.importers import CaptureImportError, capture_info, detect_format, import_capture
from ccl_lgs_ros.geometry import GL_FROM_CV, rotation_angle

W, H = 32, 24


def _random_pose(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = q, rng.normal(size=3) * 2
    return T


def _write_bgr(path, seed: int, channels: int = 3) -> np.ndarray:
    img = np.random.default_rng(seed).integers(0, 255, (H, W, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return img


# --------------------------------------------------------------------------- nerfstudio
def _nerfstudio_source(root, rng) -> dict:
    frames = []
    for i in range(4):
        _write_bgr(root / "imgs" / f"f{i}.png", i)
        M = _random_pose(rng)
        M[:3, :3] *= 0.25  # a scaled rotation block, like the fakeplant dataset
        frames.append({"file_path": f"imgs/f{i}.png", "transform_matrix": M.tolist(), "sharpness": i,
                       "hyperspectral_file_path": f"hs/{i}.pt"})  # fmt: skip
    frames[1].update({"fl_x": 60.0, "fl_y": 61.0})  # per-frame intrinsics win
    frames.append({"file_path": "imgs/missing.png", "transform_matrix": np.eye(4).tolist()})
    depth = np.full((H, W), 1234, np.uint16)
    cv2.imwrite(str(root / "depth0.png"), depth)
    frames[0]["depth_file_path"] = "depth0.png"
    data = {"camera_model": "OPENCV", "fl_x": 30.0, "fl_y": 31.0, "cx": 16.0, "cy": 12.0, "w": W, "h": H,
            "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "aabb_scale": 4, "frames": frames}  # fmt: skip
    (root / "transforms.json").write_text(json.dumps(data))
    return data


def test_nerfstudio_import(tmp_path, caplog):
    src = tmp_path / "src"
    data = _nerfstudio_source(src, np.random.default_rng(0))
    assert detect_format(src) == "nerfstudio"
    with caplog.at_level(logging.WARNING):
        cap = import_capture(src, tmp_path / "out")
    assert "missing.png" in caplog.text
    back = Capture.load(tmp_path / "out")
    assert len(back.frames) == 4 and len(cap.frames) == 4
    for f, fd in zip(back.frames, data["frames"]):
        M = np.asarray(fd["transform_matrix"])
        np.testing.assert_allclose(f.c2w[:3, 3], M[:3, 3], atol=1e-12)  # centres kept as given
        R = f.c2w[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(R * 0.25, M[:3, :3], atol=1e-12)  # same directions
    assert back.frames[1].intrinsics.fx == 60.0 and back.frames[0].intrinsics.fx == 30.0
    assert back.frames[0].extra["sharpness"] == 0 and "hyperspectral_file_path" not in back.frames[0].extra
    notes = back.ccl_extra["import"]
    assert abs(notes["rotation_scale"]["mean"] - 0.25) < 1e-12
    assert notes["dropped_keys"] == ["hyperspectral_file_path"] and len(notes["skipped"]) == 1
    assert back.extra["aabb_scale"] == 4
    np.testing.assert_array_equal(cv2.imread(str(back.image_path(2))), cv2.imread(str(src / "imgs/f2.png")))
    np.testing.assert_allclose(back.load_depth(0), 1.234, rtol=1e-6)
    info = capture_info(tmp_path / "out")
    assert info["num_frames"] == 4 and info["has_depth"] and info["format"] == "capture"
    with pytest.raises(CaptureImportError, match="refusing to overwrite"):
        import_capture(src, tmp_path / "out")
    with pytest.raises(CaptureImportError, match="source folder"):
        import_capture(src, src)


def test_nerfstudio_distortion_undistorted_and_downscale(tmp_path):
    src = tmp_path / "src"
    _write_bgr(src / "a.png", 0)
    data = {"camera_model": "OPENCV", "fl_x": 30.0, "fl_y": 30.0, "cx": 16.0, "cy": 12.0, "w": W, "h": H,
            "k1": -0.3, "k2": 0.05, "p1": 0.001, "p2": 0.0,
            "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}  # fmt: skip
    (src / "transforms.json").write_text(json.dumps(data))
    assert capture_info(src)["distorted"]
    cap = import_capture(src, tmp_path / "out")
    f = cap.frames[0]
    assert not f.intrinsics.distorted and cap.ccl_extra["import"]["undistorted"]
    src_img = cv2.imread(str(src / "a.png"))
    expected = cv2.undistort(src_img, f.intrinsics.K(), np.array([-0.3, 0.05, 0.001, 0.0]))
    diff = np.abs(cv2.imread(str(cap.image_path(0))).astype(int) - expected.astype(int))
    assert np.mean(diff) < 2.0  # cv2.undistort vs our remap: same model, bilinear both
    small = import_capture(src, tmp_path / "small", downscale=2)
    assert small.frames[0].intrinsics.width == W // 2 and small.frames[0].intrinsics.fx == 15.0
    assert small.load_image(0).shape == (H // 2, W // 2, 3)


def test_instant_ngp_camera_angle(tmp_path):
    src = tmp_path / "src"
    _write_bgr(src / "a.jpg", 0)
    data = {"camera_angle_x": 1.0, "frames": [{"file_path": "a.jpg", "transform_matrix": np.eye(4).tolist()}]}
    (src / "transforms.json").write_text(json.dumps(data))
    cap = import_capture(src, tmp_path / "out")
    assert abs(cap.frames[0].intrinsics.fx - 0.5 * W / math.tan(0.5)) < 1e-9
    assert cap.frames[0].file_path.endswith(".jpg")


# --------------------------------------------------------------------------- Blender
def test_blender_composite_and_mask(tmp_path):
    src = tmp_path / "lego"
    bgra = _write_bgr(src / "train" / "r_0.png", 3, channels=4)
    bgra[0, 0, 3], bgra[0, 1, 3] = 0, 255
    cv2.imwrite(str(src / "train" / "r_0.png"), bgra)
    pose = _random_pose(np.random.default_rng(1))
    data = {"camera_angle_x": 0.69, "frames": [{"file_path": "./train/r_0", "rotation": 0.1,
                                                "transform_matrix": pose.tolist()}]}  # fmt: skip
    (src / "transforms_train.json").write_text(json.dumps(data))
    assert detect_format(src) == "blender"
    for bg, value in (("white", 255), ("black", 0)):
        cap = import_capture(src, tmp_path / bg, background=bg)
        rgb = cap.load_image(0)
        assert (rgb[0, 0] == value).all()  # fully transparent pixel = background
        np.testing.assert_array_equal(rgb[0, 1], bgra[0, 1, 2::-1])  # opaque pixel unchanged
        a = bgra[5, 5, 3] / 255.0
        np.testing.assert_allclose(rgb[5, 5], np.round(bgra[5, 5, 2::-1] * a + value * (1 - a)), atol=1)
        mask = cv2.imread(str(cap.root / cap.frames[0].mask_file_path), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask, bgra[..., 3])
        assert cap.ccl_extra["background"] == bg
        assert Capture.load(cap.root).frames[0].mask_file_path == cap.frames[0].mask_file_path
    f = cap.frames[0]
    assert abs(f.intrinsics.fx - 0.5 * W / math.tan(0.5 * 0.69)) < 1e-9 and f.intrinsics.cx == W / 2
    np.testing.assert_allclose(f.c2w, pose, atol=1e-12)
    assert f.extra["rotation"] == 0.1
    with pytest.raises(CaptureImportError, match="background"):
        import_capture(src, tmp_path / "x", background="green")


# --------------------------------------------------------------------------- COLMAP
def _colmap_model(root, rng):
    pycolmap = pytest.importorskip("pycolmap")
    rec = pycolmap.Reconstruction()
    cams = [
        ("PINHOLE", [30.0, 31.0, 16.0, 12.0]),
        ("SIMPLE_PINHOLE", [29.0, 15.5, 12.5]),
        ("SIMPLE_RADIAL", [30.0, 16.0, 12.0, -0.05]),
        ("RADIAL", [30.0, 16.0, 12.0, -0.05, 0.01]),
        ("OPENCV", [30.0, 31.0, 16.0, 12.0, -0.1, 0.01, 0.001, -0.001]),
    ]
    for cid, (model, params) in enumerate(cams, start=1):
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model=model, width=W, height=H, params=params, camera_id=cid))
    w2cs = {}
    for iid in range(1, 8):
        w2c = np.linalg.inv(_random_pose(rng))
        name = f"img_{iid:02d}.png"
        _write_bgr(root / "images" / name, iid)
        cid = (iid - 1) % len(cams) + 1
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:3, :3]), w2c[:3, 3])
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=cid, image_id=iid), pose)
        w2cs[name] = (w2c, cid)
    xyz = rng.normal(size=(20, 3))
    for p in xyz:
        rec.add_point3D(p, pycolmap.Track(), np.array([10, 20, 30], np.uint8))
    return rec, cams, w2cs, xyz


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_colmap_round_trip(tmp_path, kind):
    rng = np.random.default_rng(7)
    root = tmp_path / "proj"
    rec, cams, w2cs, xyz = _colmap_model(root, rng)
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    (rec.write_text if kind == "text" else rec.write_binary)(str(model))
    assert detect_format(root) == "colmap"
    cap = import_capture(root, tmp_path / "out")
    assert len(cap.frames) == 7
    for f in cap.frames:
        name = f.file_path.split("/")[-1]
        w2c, cid = w2cs[name]
        c2w_gl = np.linalg.inv(w2c) @ GL_FROM_CV
        assert rotation_angle(f.c2w[:3, :3].T @ c2w_gl[:3, :3]) < 1e-6
        np.testing.assert_allclose(f.c2w[:3, 3], -w2c[:3, :3].T @ w2c[:3, 3], atol=1e-9)
        model_name, params = cams[cid - 1]
        fx = params[0]
        fy = params[1] if model_name in ("PINHOLE", "OPENCV") else params[0]
        assert (f.intrinsics.fx, f.intrinsics.fy) == (fx, fy) and not f.intrinsics.distorted
    # the OPENCV / radial images were undistorted, the pinhole ones copied unchanged
    by_cam = {w2cs[f.file_path.split("/")[-1]][1]: f for f in cap.frames}
    src_img = cv2.imread(str(root / "images" / by_cam[1].file_path.split("/")[-1]))
    np.testing.assert_array_equal(cv2.imread(str(cap.root / by_cam[1].file_path)), src_img)
    src5 = cv2.imread(str(root / "images" / by_cam[5].file_path.split("/")[-1]))
    assert not np.array_equal(cv2.imread(str(cap.root / by_cam[5].file_path)), src5)
    from plyfile import PlyData

    v = PlyData.read(str(cap.root / cap.points_file))["vertex"].data
    got = np.stack([v["x"], v["y"], v["z"]], 1)
    assert len(got) == 20
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(xyz, axis=0), atol=1e-5)
    assert (v["red"] == 10).all()
    info = capture_info(root)
    assert info["has_points"] and info["num_frames"] == 7 and info["distorted"]


def test_colmap_missing_images_and_unknown_model(tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    rng = np.random.default_rng(3)
    root = tmp_path / "proj"
    rec, *_ = _colmap_model(root, rng)
    (root / "images" / "img_01.png").unlink()
    rec.write_text(str(root))
    cap = import_capture(root, tmp_path / "out")
    assert len(cap.frames) == 6 and any("img_01" in s for s in cap.ccl_extra["import"]["skipped"])
    with pytest.raises(ValueError, match="unsupported"):
        colmap_camera("THIN_PRISM_FISHEYE", [1] * 16, W, H)
    assert pycolmap is not None


# --------------------------------------------------------------------------- camera models
def test_polynomial_map_matches_opencv_without_k4():
    intr = Intrinsics(fx=30.0, fy=31.0, cx=16.0, cy=12.0, width=W, height=H)
    k1, k2, k3, p1, p2 = -0.2, 0.05, 0.01, 0.001, -0.002
    mine = _polynomial_maps(intr.K(), (k1, k2, k3, 0.0, p1, p2), W, H)
    ref = cv2.initUndistortRectifyMap(intr.K(), np.array([k1, k2, p1, p2, k3]), None, intr.K(), (W, H), cv2.CV_32FC1)
    np.testing.assert_allclose(mine[0], ref[0], atol=1e-3)
    np.testing.assert_allclose(mine[1], ref[1], atol=1e-3)


def test_undistorter_identity_and_camera_info():
    img = np.arange(H * W, dtype=np.uint16).reshape(H, W)
    intr = Intrinsics(fx=30.0, fy=30.0, cx=16.0, cy=12.0, width=W, height=H)
    und = Undistorter()
    assert und(img, intr, Distortion()) is img
    out = und(img, intr, Distortion("opencv", (0.0, 0.0, 0.0, 0.0, 0.0)))
    assert out is img  # all-zero coefficients: nothing to do
    nearest = und(img, intr, Distortion("fisheye", (0.05, 0.0, 0.0, 0.0)), nearest=True)
    assert nearest.dtype == np.uint16 and set(np.unique(nearest)) <= set(np.unique(img)) | {0}
    K = [30.0, 0, 16.0, 0, 31.0, 12.0, 0, 0, 1]
    intr2, dist = intrinsics_from_camera_info(W, H, K, [0.1, 0.0, 0.0, 0.0, 0.0], "plumb_bob")
    assert (intr2.fx, intr2.fy, intr2.cx, intr2.cy) == (30.0, 31.0, 16.0, 12.0) and dist.model == "opencv"
    assert intrinsics_from_camera_info(W, H, K, [], "")[1].is_identity
    with pytest.raises(ValueError, match="not calibrated"):
        intrinsics_from_camera_info(W, H, [0.0] * 9, [], "plumb_bob")
    with pytest.raises(ValueError, match="unsupported"):
        intrinsics_from_camera_info(W, H, K, [0.1], "weird_model")


def test_detect_format_errors(tmp_path):
    with pytest.raises(CaptureImportError, match="does not exist"):
        detect_format(tmp_path / "nope")
    with pytest.raises(CaptureImportError, match="not a recognised source"):
        detect_format(tmp_path)
