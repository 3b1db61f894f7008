"""capture/format.py: round trip, unknown keys, per-frame intrinsics, atomic save."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ccl_lgs_ros.capture.format import (
    TRANSFORMS,
    Capture,
    CaptureError,
    Frame,
    Intrinsics,
    write_image,
    write_uint16_png,
)


def _intr(fx: float = 500.0) -> Intrinsics:
    return Intrinsics(fx=fx, fy=fx + 1, cx=32.0, cy=24.0, width=64, height=48)


def _pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = q, rng.normal(size=3)
    return T


def _capture(root, n: int = 3) -> Capture:
    rng = np.random.default_rng(0)
    cap = Capture(root=root, frame_id="odom")
    for i in range(n):
        rel = f"images/frame_{i:06d}.png"
        write_image(root / rel, rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        depth_rel = f"depth/frame_{i:06d}.png"
        write_uint16_png(root / depth_rel, np.full((48, 64), 1000 + i, np.uint16))
        cap.frames.append(Frame(rel, _pose(i), _intr(), depth_file_path=depth_rel, timestamp=10.0 + i))
    return cap


def test_round_trip(tmp_path):
    cap = _capture(tmp_path)
    cap.instances = [{"id": 1, "label": "red mug"}]
    cap.save()
    back = Capture.load(tmp_path)
    assert back.frame_id == "odom"
    assert len(back.frames) == 3
    assert back.instances == [{"id": 1, "label": "red mug"}]
    for a, b in zip(cap.frames, back.frames):
        np.testing.assert_array_equal(a.c2w, b.c2w)
        assert a.intrinsics == b.intrinsics
        assert b.timestamp == a.timestamp and b.depth_file_path == a.depth_file_path
    # shared intrinsics go to the top level only
    data = json.loads((tmp_path / TRANSFORMS).read_text())
    assert data["fl_x"] == 500.0 and "fl_x" not in data["frames"][0]
    np.testing.assert_allclose(back.load_depth(1), 1.001, rtol=1e-6)
    assert back.load_image(0).shape == (48, 64, 3)


def test_image_pixels_round_trip(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    write_image(tmp_path / "images/a.png", rgb)
    cap = Capture(root=tmp_path, frames=[Frame("images/a.png", np.eye(4), _intr())])
    np.testing.assert_array_equal(cap.load_image(0), rgb)  # RGB order survives (no BGR swap)


def test_unknown_keys_preserved(tmp_path):
    cap = _capture(tmp_path, 1)
    cap.save()
    data = json.loads((tmp_path / TRANSFORMS).read_text())
    data["aabb_scale"] = 16
    data["frames"][0]["sharpness"] = 42.5
    data["ccl_lgs"]["note"] = "kept"
    (tmp_path / TRANSFORMS).write_text(json.dumps(data))
    back = Capture.load(tmp_path)
    back.save()
    again = json.loads((tmp_path / TRANSFORMS).read_text())
    assert again["aabb_scale"] == 16
    assert again["frames"][0]["sharpness"] == 42.5
    assert again["ccl_lgs"]["note"] == "kept"


def test_per_frame_intrinsics_win(tmp_path):
    data = {
        "fl_x": 100.0, "fl_y": 100.0, "cx": 32.0, "cy": 24.0, "w": 64, "h": 48,
        "frames": [
            {"file_path": "a.png", "transform_matrix": np.eye(4).tolist()},
            {"file_path": "b.png", "transform_matrix": np.eye(4).tolist(), "fl_x": 200.0, "cx": 30.0},
        ],
    }  # fmt: skip
    (tmp_path / TRANSFORMS).write_text(json.dumps(data))
    cap = Capture.load(tmp_path)
    assert cap.frames[0].intrinsics.fx == 100.0
    assert cap.frames[1].intrinsics.fx == 200.0 and cap.frames[1].intrinsics.cx == 30.0
    assert cap.frames[1].intrinsics.cy == 24.0  # the rest falls back to the shared values
    assert cap.shared_intrinsics() is None
    cap.save()  # differing intrinsics are written per frame and read back the same
    back = Capture.load(tmp_path)
    assert [f.intrinsics for f in back.frames] == [f.intrinsics for f in cap.frames]


def test_3x4_matrix_and_errors(tmp_path):
    data = {"fl_x": 1.0, "cx": 1.0, "cy": 1.0, "w": 2, "h": 2,
            "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4)[:3].tolist()}]}  # fmt: skip
    (tmp_path / TRANSFORMS).write_text(json.dumps(data))
    np.testing.assert_array_equal(Capture.load(tmp_path).frames[0].c2w, np.eye(4))
    (tmp_path / TRANSFORMS).write_text("{not json")
    with pytest.raises(CaptureError, match="invalid JSON"):
        Capture.load(tmp_path)
    with pytest.raises(CaptureError, match="not a capture folder"):
        Capture.load(tmp_path / "nowhere")


def test_failed_save_leaves_old_file(tmp_path, monkeypatch):
    cap = _capture(tmp_path, 2)
    cap.save()
    before = (tmp_path / TRANSFORMS).read_bytes()
    cap.frames.append(Frame("images/x.png", _pose(9), _intr()))

    def broken_replace(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        cap.save()
    monkeypatch.undo()
    assert (tmp_path / TRANSFORMS).read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # temp file cleaned up
    assert len(Capture.load(tmp_path).frames) == 2


def test_save_refuses_non_finite_pose(tmp_path):
    cap = _capture(tmp_path, 1)
    cap.save()
    before = (tmp_path / TRANSFORMS).read_bytes()
    bad = _pose(3)
    bad[0, 3] = np.nan
    cap.frames.append(Frame("images/x.png", bad, _intr()))
    with pytest.raises(CaptureError, match="not finite"):
        cap.save()
    assert (tmp_path / TRANSFORMS).read_bytes() == before


def test_intrinsics_scaled_and_distortion():
    intr = Intrinsics(fx=100, fy=110, cx=50, cy=40, width=100, height=80, distortion=(0.1, 0.0, 0.0, 0.0))
    half = intr.scaled(50, 40)
    assert (half.fx, half.fy, half.cx, half.cy, half.width, half.height) == (50, 55, 25, 20, 50, 40)
    assert intr.distorted and not _intr().distorted
    d = intr.to_json()
    assert Intrinsics.from_json(d) == intr
