"""One capture in progress: keyframe selection + crash-safe writing.

The live node and the rosbag importer both feed decoded, posed frames into
:meth:`CaptureSession.offer`, so a bag imports exactly as the robot would have captured it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import CaptureConfig
from .format import Frame, Intrinsics
from .keyframes import KeyframeSelector
from .writer import CaptureWriteError, CaptureWriter

log = logging.getLogger(__name__)

#: ``ccl_lgs`` key recording how much the motion thresholds grew through 'thin' (see keyframes).
THRESHOLD_SCALE_KEY = "keyframe_threshold_scale"


@dataclass
class SessionStats:
    """Counters for status messages and the benchmark."""

    offered: int = 0
    kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # kind of reason -> count
    write_errors: int = 0
    last_reason: str = ""

    def reject(self, reason: str) -> None:
        key = reason.split(":")[0].split(" (")[0]  # the kind of reason, without its numbers
        self.rejected[key] = self.rejected.get(key, 0) + 1
        self.last_reason = reason


class CaptureSession:
    """Selects keyframes and stores them in ``root`` (continuing an existing capture).

    Args:
        root: capture folder.
        frame_id: fixed frame of the poses.
        cfg: the ``capture`` config section.
    """

    def __init__(self, root: str | Path, frame_id: str = "map", cfg: CaptureConfig | None = None) -> None:
        self.cfg = cfg or CaptureConfig()
        self.writer = CaptureWriter(root, frame_id, self.cfg)
        self.selector = KeyframeSelector(self.cfg, existing=[f.c2w for f in self.writer.frames])
        # A capture thinned before a restart keeps its coarser thresholds.
        scale = self.writer.capture.ccl_extra.get(THRESHOLD_SCALE_KEY, 1.0)
        if isinstance(scale, (int, float)) and scale > 1.0:
            self.selector.set_threshold_scale(float(scale))
        self.stats = SessionStats()

    @property
    def root(self) -> Path:
        return self.writer.root

    def offer(
        self,
        rgb: np.ndarray,  # uint8 [H,W,3]
        c2w_gl: np.ndarray,  # [4,4]
        intrinsics: Intrinsics,
        depth_m: np.ndarray | None = None,  # float32 [H,W]
        timestamp: float | None = None,
    ) -> tuple[Frame | None, str]:
        """Offer a posed frame. Returns ``(stored frame or None, reason)``; never raises for
        bad input or I/O errors (they come back as the reason and are logged), so a live
        callback cannot be brought down by one frame."""
        self.stats.offered += 1
        try:
            # Validate before the selector: a frame that cannot be stored must not count (nor thin).
            self.writer.check_frame(rgb, c2w_gl, intrinsics, depth_m, max_position=float(self.writer.cfg.max_position))
            keep, reason = self.selector.consider(c2w_gl, rgb)
        except (ValueError, TypeError) as exc:
            keep, reason = False, f"invalid frame: {exc}"
        if not keep:
            self.stats.reject(reason)
            return None, reason
        try:
            if self.selector.thin_pending:
                self.writer.capture.ccl_extra[THRESHOLD_SCALE_KEY] = self.selector.threshold_scale
                self.writer.thin()
                self.selector.thin_pending = False
            frame = self.writer.add_frame(rgb, c2w_gl, intrinsics, depth_m, timestamp)
        except CaptureWriteError as exc:
            # The selector already counted the frame; undo that so the next good frame is kept.
            self.selector.count = len(self.writer)
            self.selector.last_c2w = self.writer.frames[-1].c2w if len(self.writer) else None
            self.stats.write_errors += 1
            self.stats.reject(f"write-error {exc}")
            log.error("%s", exc)
            return None, str(exc)
        except ValueError as exc:
            self.selector.count = len(self.writer)
            self.selector.last_c2w = self.writer.frames[-1].c2w if len(self.writer) else None
            self.stats.reject(f"invalid frame: {exc}")
            return None, f"invalid frame: {exc}"
        self.stats.kept += 1
        return frame, reason
