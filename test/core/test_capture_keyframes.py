"""capture/keyframes.py: motion thresholds, blur rejection, keyframe cap policies."""

from __future__ import annotations

import math

import cv2
import numpy as np

from ccl_lgs_ros.capture.keyframes import KeyframeSelector, sharpness
from ccl_lgs_ros.config import CaptureConfig
from ccl_lgs_ros.geometry import pose_to_matrix


def _sharp(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a checkerboard plus noise: lots of high frequencies
    board = (np.indices((120, 160)).sum(0) // 8 % 2 * 200).astype(np.uint8)
    img = np.clip(board[..., None] + rng.integers(0, 40, (120, 160, 3)), 0, 255).astype(np.uint8)
    return img


def _blurred(seed: int = 0) -> np.ndarray:
    return cv2.GaussianBlur(_sharp(seed), (0, 0), 4.0)


def _at(x: float, yaw_deg: float = 0.0) -> np.ndarray:
    a = math.radians(yaw_deg)
    return pose_to_matrix([x, 0, 0], [0, 0, math.sin(a / 2), math.cos(a / 2)])


def test_motion_thresholds():
    sel = KeyframeSelector(CaptureConfig(min_translation=0.1, min_rotation_deg=10.0, blur_rejection=False))
    assert sel.consider(_at(0.0), _sharp()) == (True, "first keyframe")
    keep, reason = sel.consider(_at(0.05), _sharp())
    assert not keep and "too little motion" in reason
    assert sel.consider(_at(0.12), _sharp())[0]  # moved 0.12 m from the last keyframe
    assert not sel.consider(_at(0.12, 9.0), _sharp())[0]
    assert sel.consider(_at(0.12, 11.0), _sharp())[0]  # turned 11 deg
    assert sel.count == 3


def test_blur_rejection_relative_to_recent_frames():
    cfg = CaptureConfig(min_translation=0.0, min_rotation_deg=0.0, blur_ratio=0.4, blur_window=5)
    sel = KeyframeSelector(cfg)
    assert sharpness(_blurred()) < 0.4 * sharpness(_sharp())
    for i in range(4):
        assert sel.consider(_at(i), _sharp(i))[0]
    keep, reason = sel.consider(_at(10), _blurred(7))
    assert not keep and reason.startswith("blurry")
    assert sel.consider(_at(11), _sharp(8))[0]
    # everything equally blurry (e.g. a low-texture scene) is not rejected: the test is relative
    soft = KeyframeSelector(cfg)
    assert all(soft.consider(_at(i), _blurred(i))[0] for i in range(6))
    # blur rejection off
    off = KeyframeSelector(CaptureConfig(min_translation=0.0, min_rotation_deg=0.0, blur_rejection=False))
    for i in range(4):
        off.consider(_at(i), _sharp(i))
    assert off.consider(_at(10), _blurred())[0]


def test_invalid_pose_rejected():
    sel = KeyframeSelector(CaptureConfig(blur_rejection=False))
    bad = _at(0.0)
    bad[0, 0] = np.nan
    keep, reason = sel.consider(bad, _sharp())
    assert not keep and "invalid pose" in reason
    scaled = _at(0.0)
    scaled[:3, :3] *= 2.0
    assert not sel.consider(scaled, _sharp())[0]
    assert sel.count == 0


def test_stop_policy():
    sel = KeyframeSelector(CaptureConfig(min_translation=0.1, blur_rejection=False, max_keyframes=3))
    kept = [sel.consider(_at(i), _sharp())[0] for i in range(5)]
    assert kept == [True, True, True, False, False]
    assert "limit" in sel.consider(_at(9), _sharp())[1]


def test_thin_policy():
    cfg = CaptureConfig(min_translation=0.1, min_rotation_deg=90.0, blur_rejection=False, max_keyframes=4,
                        full_policy="thin")  # fmt: skip
    sel = KeyframeSelector(cfg)
    for i in range(4):
        assert sel.consider(_at(0.2 * i), _sharp())[0]
    assert not sel.thin_pending
    keep, reason = sel.consider(_at(0.8), _sharp())
    assert keep and "thinned" in reason and sel.thin_pending
    assert sel.count == 3  # 4 thinned to 2, plus this one
    assert sel.min_translation == 0.2
    assert not sel.consider(_at(0.95), _sharp())[0]  # 0.15 m is no longer enough


def test_resume_from_existing():
    sel = KeyframeSelector(CaptureConfig(min_translation=0.1, blur_rejection=False), existing=[_at(0), _at(1)])
    assert sel.count == 2
    assert not sel.consider(_at(1.05), _sharp())[0]  # continues from the last stored keyframe
    assert sel.consider(_at(1.2), _sharp())[0]
