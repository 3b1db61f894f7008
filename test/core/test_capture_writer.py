"""capture/writer.py and capture/session.py: crash-safe incremental writing."""

from __future__ import annotations

import errno
import math
import os

import numpy as np
import pytest

from ccl_lgs_ros.capture import format as fmt
from ccl_lgs_ros.capture.format import TRANSFORMS, Capture, Intrinsics
from ccl_lgs_ros.capture.session import CaptureSession
from ccl_lgs_ros.capture.writer import CaptureWriteError, CaptureWriter, depth_to_units
from ccl_lgs_ros.config import CaptureConfig
from ccl_lgs_ros.geometry import pose_to_matrix

INTR = Intrinsics(fx=40.0, fy=40.0, cx=16.0, cy=12.0, width=32, height=24)


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)


def _pose(x: float, yaw: float = 0.0) -> np.ndarray:
    return pose_to_matrix([x, 0.0, 0.0], [0.0, math.sin(yaw / 2), 0.0, math.cos(yaw / 2)])


def test_add_frames_and_continue(tmp_path):
    w = CaptureWriter(tmp_path, "odom")
    depth = np.full((24, 32), 1.5, np.float32)
    depth[0, 0] = np.nan
    f0 = w.add_frame(_rgb(0), _pose(0), INTR, depth_m=depth, timestamp=5.0)
    w.add_frame(_rgb(1), _pose(1), INTR)
    assert f0.file_path == "images/frame_000001.png" and f0.depth_file_path == "depth/frame_000001.png"
    cap = Capture.load(tmp_path)
    assert len(cap.frames) == 2 and cap.frame_id == "odom"
    np.testing.assert_array_equal(cap.load_image(0), _rgb(0))
    d = cap.load_depth(0)
    assert d[0, 0] == 0.0 and abs(d[5, 5] - 1.5) < 1e-6
    assert cap.frames[0].timestamp == 5.0
    # a restarted writer continues the numbering and the list
    w2 = CaptureWriter(tmp_path, "odom")
    f2 = w2.add_frame(_rgb(2), _pose(2), INTR)
    assert f2.file_path == "images/frame_000003.png"
    assert [f.file_path for f in Capture.load(tmp_path).frames][-1] == f2.file_path
    with pytest.raises(CaptureWriteError, match="frame 'odom'"):
        CaptureWriter(tmp_path, "map")


def test_orphan_image_from_a_crash_is_not_overwritten(tmp_path):
    w = CaptureWriter(tmp_path)
    w.add_frame(_rgb(0), _pose(0), INTR)
    fmt.write_image(tmp_path / "images/frame_000002.png", _rgb(9))  # written, then the process died
    f = CaptureWriter(tmp_path).add_frame(_rgb(1), _pose(1), INTR)
    assert f.file_path == "images/frame_000003.png"
    assert len(Capture.load(tmp_path).frames) == 2


def test_bad_input_writes_nothing(tmp_path):
    w = CaptureWriter(tmp_path)
    bad = _pose(0)
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="invalid pose"):
        w.add_frame(_rgb(0), bad, INTR)
    with pytest.raises(ValueError, match="intrinsics"):
        w.add_frame(_rgb(0), _pose(0), INTR.scaled(16, 12))
    with pytest.raises(ValueError, match="uint8"):
        w.add_frame(_rgb(0).astype(np.float32), _pose(0), INTR)
    with pytest.raises(ValueError, match="depth"):
        w.add_frame(_rgb(0), _pose(0), INTR, depth_m=np.zeros((2, 2)))
    assert not (tmp_path / "images").exists() and not (tmp_path / TRANSFORMS).exists()


def test_disk_full_is_reported_and_folder_stays_consistent(tmp_path, monkeypatch):
    w = CaptureWriter(tmp_path)
    w.add_frame(_rgb(0), _pose(0), INTR)
    before = (tmp_path / TRANSFORMS).read_bytes()
    real = fmt.atomic_write_bytes
    calls = {"n": 0}

    def fill_up(path, data):
        calls["n"] += 1
        if calls["n"] == 2:  # the image is written, then the depth hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(fmt, "atomic_write_bytes", fill_up)
    with pytest.raises(CaptureWriteError, match="disk full"):
        w.add_frame(_rgb(1), _pose(1), INTR, depth_m=np.ones((24, 32), np.float32))
    monkeypatch.undo()
    assert (tmp_path / TRANSFORMS).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["frame_000001.png"]  # cleaned up
    assert len(w) == 1
    w.add_frame(_rgb(2), _pose(2), INTR)  # recovers once space is back
    assert len(Capture.load(tmp_path).frames) == 2


def test_transforms_write_failure_keeps_old_list(tmp_path, monkeypatch):
    w = CaptureWriter(tmp_path)
    w.add_frame(_rgb(0), _pose(0), INTR)

    def no_rename(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(CaptureWriteError, match="not writable"):
        w.add_frame(_rgb(1), _pose(1), INTR)
    monkeypatch.undo()
    assert len(w) == 1 and len(Capture.load(tmp_path).frames) == 1


def test_unwritable_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CaptureWriteError, match="cannot create"):
        CaptureWriter(tmp_path / "file" / "capture")
    w = CaptureWriter(tmp_path / "cap")
    (tmp_path / "cap" / "images").write_text("not a folder")  # images/ cannot be created
    with pytest.raises(CaptureWriteError):
        w.add_frame(_rgb(0), _pose(0), INTR)


def test_snapshot_hard_links_and_is_frozen(tmp_path):
    w = CaptureWriter(tmp_path / "cap")
    for i in range(3):
        w.add_frame(_rgb(i), _pose(i), INTR, depth_m=np.ones((24, 32), np.float32))
    snap = w.snapshot(tmp_path / "snap")
    cap = Capture.load(snap)
    assert len(cap.frames) == 3
    src_img = tmp_path / "cap" / cap.frames[0].file_path
    assert os.path.samefile(src_img, snap / cap.frames[0].file_path)
    w.add_frame(_rgb(3), _pose(3), INTR)
    assert len(Capture.load(snap).frames) == 3  # later frames do not leak into the snapshot
    np.testing.assert_array_equal(Capture.load(snap).load_image(2), _rgb(2))
    with pytest.raises(CaptureWriteError):
        w.snapshot(tmp_path / "cap")


def test_snapshot_confined_to_roots_refuses_links_leading_out(tmp_path):
    root = tmp_path / "allowed"
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    w = CaptureWriter(root / "cap")
    for i in range(2):
        w.add_frame(_rgb(i), _pose(i), INTR)
    # Inside the roots, links between allowed folders are fine.
    assert len(Capture.load(w.snapshot(root / "snap0", confine_to=[root])).frames) == 2
    # An image replaced by a symlink to a file outside the roots: refused before anything is read.
    rel = Capture.load(root / "cap").frames[1].file_path
    secret.write_bytes((root / "cap" / rel).read_bytes())
    (root / "cap" / rel).unlink()
    (root / "cap" / rel).symlink_to(secret)
    with pytest.raises(CaptureWriteError, match=r"1 file\(s\) .* outside the allowed roots.*secret\.png"):
        w.snapshot(root / "snap1", confine_to=[root])
    assert not (root / "snap1").exists()
    cap = Capture.load(root / "cap")
    assert [r for r, _ in cap.files_outside([root.resolve()])] == [rel]
    assert cap.files_outside([tmp_path.resolve()]) == []
    # A ground-truth file named by an absolute path is outside too.
    cap.instances = [{"id": 1, "gt_points": str(secret)}]
    outside = [res for _, res in cap.files_outside([root.resolve()])]
    assert outside == [secret.resolve(), secret.resolve()]
    # Without roots (the command line, a local user) the link is followed as before.
    assert len(Capture.load(w.snapshot(tmp_path / "snap2")).frames) == 2


def test_thin_drops_every_second_frame(tmp_path):
    w = CaptureWriter(tmp_path)
    for i in range(5):
        w.add_frame(_rgb(i), _pose(i), INTR)
    assert w.thin() == 3
    cap = Capture.load(tmp_path)
    assert [f.file_path for f in cap.frames] == [f"images/frame_{i:06d}.png" for i in (1, 3, 5)]
    assert len(list((tmp_path / "images").iterdir())) == 3


def test_depth_to_units():
    d = np.array([[0.0, 0.0014, np.inf, -1.0, 70.0, 1.0]])
    np.testing.assert_array_equal(depth_to_units(d, 0.001), [[0, 1, 0, 0, 0, 1000]])


def test_session_selects_and_writes(tmp_path):
    cfg = CaptureConfig(min_translation=0.5, min_rotation_deg=30.0, blur_rejection=False, max_keyframes=3,
                        full_policy="thin")  # fmt: skip
    s = CaptureSession(tmp_path, "map", cfg)
    results = [s.offer(_rgb(i), _pose(0.3 * i), INTR, timestamp=float(i))[0] is not None for i in range(10)]
    # kept at x = 0, 0.6, 1.2; at 1.8 the cap is hit: thin to (0, 1.2), keep 1.8, threshold -> 1.0 m
    assert results == [True, False, True, False, True, False, True, False, False, False]
    cap = Capture.load(tmp_path)
    assert [f.timestamp for f in cap.frames] == [0.0, 4.0, 6.0]
    assert s.stats.kept == 4 and s.stats.offered == 10
    bad = _pose(9)
    bad[0, 0] = np.nan
    frame, reason = s.offer(_rgb(0), bad, INTR)
    assert frame is None and "invalid pose" in reason
    frame, reason = s.offer(_rgb(0)[:10], _pose(20), INTR)  # wrong size: reported, not raised
    assert frame is None and "invalid frame" in reason
    assert s.selector.count == len(s.writer) == 3
    # a new session on the same folder continues it
    s2 = CaptureSession(tmp_path, "map", cfg)
    assert s2.offer(_rgb(1), _pose(2.45), INTR)[0] is None  # 0.65 m < the doubled 1.0 m threshold
    assert s2.selector.count == 3
    assert s2.offer(_rgb(1), _pose(2.85), INTR)[0] is not None
