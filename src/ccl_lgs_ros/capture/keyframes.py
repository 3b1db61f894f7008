"""Keyframe selection: enough motion, not blurry, and a cap on the number kept.

Used by the live node and the rosbag importer through :class:`~.session.CaptureSession`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import cv2
import numpy as np

from ..config import CaptureConfig
from ..geometry import is_valid_pose, rotation_angle

#: Blur is measured on a grey image of about this width: the Laplacian variance is a relative
#: measure here (compared with recent frames), and full-resolution 720p costs ~10x more.
_BLUR_WIDTH = 320
#: The blur test starts once this many frames have been seen (a median of one frame is noise).
_BLUR_MIN_HISTORY = 3


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the (downsampled) grey image; higher = sharper."""
    img = np.asarray(rgb)
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    if grey.shape[1] > _BLUR_WIDTH:
        h = max(1, round(grey.shape[0] * _BLUR_WIDTH / grey.shape[1]))
        grey = cv2.resize(grey, (_BLUR_WIDTH, h), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


class KeyframeSelector:
    """Decides which frames become keyframes.

    A frame is kept when its pose is valid, it is not much blurrier than recent frames
    (``blur_ratio`` x median sharpness of the last ``blur_window`` frames), and the camera moved
    more than ``min_translation`` or turned more than ``min_rotation_deg`` since the last
    keyframe. The first frame is always kept. At ``max_keyframes`` the ``'stop'`` policy refuses
    further frames; ``'thin'`` keeps the frame but sets :attr:`thin_pending`: the owner must then
    drop every second existing keyframe (indices 1, 3, 5, ...; :meth:`.writer.CaptureWriter.thin`)
    and the motion thresholds double so the capture keeps covering the scene evenly.

    Args:
        cfg: the ``capture`` config section.
        existing: poses of keyframes already in the capture (a resumed capture continues).
    """

    def __init__(self, cfg: CaptureConfig, existing: Sequence[np.ndarray] = ()) -> None:
        self.cfg = cfg
        self.threshold_scale = 1.0  # doubles at every 'thin'; persisted by CaptureSession
        self.min_translation = float(cfg.min_translation)
        self.min_rotation = math.radians(cfg.min_rotation_deg)
        self.count = len(existing)
        self.last_c2w: np.ndarray | None = np.asarray(existing[-1], dtype=np.float64) if len(existing) else None
        self._sharpness: deque[float] = deque(maxlen=int(cfg.blur_window))
        self.thin_pending = False

    def set_threshold_scale(self, scale: float) -> None:
        """Multiply the configured motion thresholds by ``scale`` (restores a thinned capture)."""
        self.threshold_scale = float(scale)
        self.min_translation = float(self.cfg.min_translation) * self.threshold_scale
        self.min_rotation = math.radians(self.cfg.min_rotation_deg) * self.threshold_scale

    def consider(self, c2w: np.ndarray, rgb: np.ndarray) -> tuple[bool, str]:
        """Should this frame become a keyframe? Returns ``(keep, reason)``; a kept frame is
        counted as a keyframe immediately (call only once per frame).

        Args:
            c2w: ``[4,4]`` camera-to-world pose (any consistent convention).
            rgb: ``uint8 [H,W,3]`` image.
        """
        c2w = np.asarray(c2w, dtype=np.float64)
        if not is_valid_pose(c2w):
            return False, "invalid pose (NaN or non-orthonormal rotation)"
        if self.cfg.blur_rejection:
            score = sharpness(rgb)
            history = list(self._sharpness)
            self._sharpness.append(score)
            if len(history) >= _BLUR_MIN_HISTORY:
                ref = float(np.median(history))
                if score < self.cfg.blur_ratio * ref:
                    return False, f"blurry (sharpness {score:.1f} < {self.cfg.blur_ratio:g} x median {ref:.1f})"
        if self.last_c2w is not None:
            moved = float(np.linalg.norm(c2w[:3, 3] - self.last_c2w[:3, 3]))
            turned = rotation_angle(self.last_c2w[:3, :3].T @ c2w[:3, :3])
            if moved < self.min_translation and turned < self.min_rotation:
                return False, f"too little motion ({moved:.3f} m, {math.degrees(turned):.1f} deg)"
            reason = f"moved {moved:.3f} m, turned {math.degrees(turned):.1f} deg"
        else:
            reason = "first keyframe"
        if self.count >= self.cfg.max_keyframes:
            if self.cfg.full_policy == "stop":
                return False, f"keyframe limit {self.cfg.max_keyframes} reached (policy 'stop')"
            # 'thin': keep indices 0, 2, 4, ... then add this frame.
            self.count = (self.count + 1) // 2
            self.set_threshold_scale(self.threshold_scale * 2.0)
            self.thin_pending = True
            reason += f"; limit reached, thinned to {self.count} and doubled the thresholds"
        self.count += 1
        self.last_c2w = c2w
        return True, reason
