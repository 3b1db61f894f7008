"""Crash-safe, incremental writing of a capture folder (live node and importers).

Each :meth:`CaptureWriter.add_frame` writes the frame's files atomically, then replaces
``transforms.json`` atomically, so a killed process loses at most the frame in flight and never
leaves a frame listed whose files are missing (an orphan image without an entry is harmless and
is never overwritten: numbering continues after the highest number found on disk).
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import CaptureConfig
from ..geometry import is_valid_pose
from ..io import atomic_write_bytes
from ..paths import resolve_roots
from .format import TRANSFORMS, Capture, CaptureError, Frame, Intrinsics, write_image, write_uint16_png

log = logging.getLogger(__name__)

_FRAME_RE = re.compile(r"frame_(\d+)\.")


class CaptureWriteError(CaptureError):
    """A frame could not be stored (disk full, unwritable folder, ...). The folder is still
    consistent: ``transforms.json`` lists exactly the frames stored before the failure."""


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "disk full"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "folder not writable"
    return exc.strerror or type(exc).__name__


class CaptureWriter:
    """Appends posed frames to a capture folder, continuing an existing one.

    Args:
        root: the capture folder (created if missing).
        frame_id: the fixed frame of the poses (``ccl_lgs.frame_id``). When continuing a capture
            with another frame id, :class:`CaptureWriteError` is raised (poses would not match).
        cfg: the ``capture`` config section (image format, JPEG quality).

    Raises:
        CaptureWriteError: the folder cannot be created or holds an unreadable capture.
    """

    def __init__(self, root: str | Path, frame_id: str = "map", cfg: CaptureConfig | None = None) -> None:
        self.root = Path(root).expanduser()
        self.cfg = cfg or CaptureConfig()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CaptureWriteError(f"cannot create capture folder {self.root}: {_describe(exc)}") from exc
        if (self.root / TRANSFORMS).is_file():
            self.capture = Capture.load(self.root)
            if self.capture.frame_id != frame_id:
                raise CaptureWriteError(
                    f"{self.root} holds a capture in frame {self.capture.frame_id!r}, not {frame_id!r}"
                )
        else:
            self.capture = Capture(root=self.root, frame_id=frame_id)
        self._next = self._highest_number() + 1

    def _highest_number(self) -> int:
        names = [f.file_path for f in self.capture.frames]
        for sub in ("images", "depth"):
            folder = self.root / sub
            if folder.is_dir():
                names += [p.name for p in folder.iterdir()]
        numbers = [int(m.group(1)) for n in names if (m := _FRAME_RE.search(n))]
        return max(numbers, default=0)

    @property
    def frames(self) -> list[Frame]:
        return self.capture.frames

    def __len__(self) -> int:
        return len(self.capture.frames)

    @staticmethod
    def check_frame(
        rgb: np.ndarray,
        c2w_gl: np.ndarray,
        intrinsics: Intrinsics,
        depth_m: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        max_position: float = float("inf"),
    ) -> None:
        """Raise ``ValueError`` when a frame cannot be stored as given (shapes, pose, a camera
        position coordinate beyond ``max_position`` metres: ``capture.max_position``)."""
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected a uint8 [H,W,3] image, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        if (intrinsics.width, intrinsics.height) != (w, h):
            raise ValueError(f"intrinsics are for {intrinsics.width}x{intrinsics.height}, image is {w}x{h}")
        c2w = np.asarray(c2w_gl, dtype=np.float64)
        if not is_valid_pose(c2w):
            raise ValueError("invalid pose (NaN or non-orthonormal rotation)")
        dist = float(np.abs(c2w[:3, 3]).max())
        if not dist <= max_position:
            raise ValueError(
                f"camera position coordinate {dist:.3g} m is beyond capture.max_position = {max_position:g} m"
            )
        if depth_m is not None and np.asarray(depth_m).shape != (h, w):
            raise ValueError(f"depth shape {np.asarray(depth_m).shape} does not match the image {w}x{h}")
        if mask is not None and np.asarray(mask).shape != (h, w):
            raise ValueError(f"mask shape {np.asarray(mask).shape} does not match the image {w}x{h}")

    def add_frame(
        self,
        rgb: np.ndarray,  # uint8 [H,W,3]
        c2w_gl: np.ndarray,  # [4,4] camera-to-world, OpenGL axes
        intrinsics: Intrinsics,
        depth_m: np.ndarray | None = None,  # float32 [H,W] metres, 0 = invalid
        timestamp: float | None = None,
        *,
        mask: np.ndarray | None = None,  # uint8 [H,W] (255 = foreground)
        extra: dict | None = None,
    ) -> Frame:
        """Store one frame: image (+ depth, mask) first, then ``transforms.json``.

        Raises:
            ValueError: inconsistent input (shapes, invalid pose); nothing is written.
            CaptureWriteError: an I/O failure; files of this frame are removed, the folder is
                left as it was before the call.
        """
        self.check_frame(rgb, c2w_gl, intrinsics, depth_m, mask, max_position=float(self.cfg.max_position))
        rgb = np.asarray(rgb)
        c2w = np.asarray(c2w_gl, dtype=np.float64)
        n = self._next
        suffix = ".jpg" if self.cfg.image_format == "jpg" else ".png"
        frame = Frame(
            file_path=f"images/frame_{n:06d}{suffix}",
            c2w=c2w,
            intrinsics=intrinsics,
            timestamp=None if timestamp is None else float(timestamp),
            extra=dict(extra or {}),
        )
        written: list[Path] = []
        try:
            path = self.root / frame.file_path
            written.append(path)
            write_image(path, rgb, jpeg_quality=self.cfg.jpeg_quality)
            if depth_m is not None:
                frame.depth_file_path = f"depth/frame_{n:06d}.png"
                path = self.root / frame.depth_file_path
                written.append(path)
                write_uint16_png(path, depth_to_units(depth_m, self.capture.depth_unit_scale_factor))
            if mask is not None:
                frame.mask_file_path = f"masks/frame_{n:06d}.png"
                path = self.root / frame.mask_file_path
                written.append(path)
                write_image(path, np.asarray(mask, dtype=np.uint8))
            self.capture.frames.append(frame)
            try:
                self.capture.save()
            except BaseException:
                self.capture.frames.pop()
                raise
        except OSError as exc:
            for p in written:
                try:
                    p.unlink()
                except OSError:
                    pass
            raise CaptureWriteError(f"cannot store frame {n} in {self.root}: {_describe(exc)} ({exc})") from exc
        self._next = n + 1
        return frame

    def thin(self) -> int:
        """Drop every second frame (indices 1, 3, 5, ...), the KeyframeSelector 'thin' policy.

        ``transforms.json`` is replaced first, then the dropped files are deleted, so a crash in
        between only leaves unlisted files. Returns the number of frames kept.
        """
        old = list(self.capture.frames)
        self.capture.frames = old[::2]
        try:
            self.capture.save()
        except OSError as exc:
            self.capture.frames = old
            raise CaptureWriteError(f"cannot thin {self.root}: {_describe(exc)} ({exc})") from exc
        for frame in old[1::2]:
            for rel in (frame.file_path, frame.depth_file_path, frame.mask_file_path):
                if rel:
                    try:
                        (self.root / rel).unlink()
                    except OSError:
                        pass
        return len(self.capture.frames)

    def snapshot(self, dest: str | Path, confine_to: Sequence[str | Path] | None = None) -> Path:
        """Copy the current consistent state to ``dest`` for training, hard-linking files.

        Hard links are safe: a stored file is never modified in place (every write is a new file
        renamed over the old name), so later writes never change the snapshot. Files are
        copied where hard links are impossible (another file system).

        Args:
            dest: the snapshot folder.
            confine_to: when given (the node: ``node.allowed_roots``), refuse the snapshot, before
                any file is read, if a file the capture names resolves outside these folders
                (a symlink, or a ground-truth file name pointing elsewhere).

        Returns:
            ``dest``, holding a capture that :meth:`Capture.load` reads.
        """
        dest = Path(dest).expanduser()
        if dest.resolve() == self.root.resolve():
            raise CaptureWriteError("snapshot destination is the capture folder itself")
        snap = Capture.load(self.root)  # the on-disk state: only frames whose files exist
        if confine_to is not None:
            roots = resolve_roots(confine_to)
            outside = snap.files_outside(roots)
            if outside:
                shown = "; ".join(f"{rel} -> {res}" for rel, res in outside[:3])
                more = f" and {len(outside) - 3} more" if len(outside) > 3 else ""
                raise CaptureWriteError(
                    f"{len(outside)} file(s) of the capture {self.root} resolve outside the allowed roots "
                    f"[{', '.join(str(r) for r in roots)}]: {shown}{more}; nothing was read from them "
                    "(replace the links by the files, or add their folder to node.allowed_roots)"
                )
        try:
            for rel in snap.referenced_files():
                src, dst = self.root / rel, dest / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(src, dst)
            snap.root = dest
            snap.save()
        except OSError as exc:
            raise CaptureWriteError(f"cannot snapshot {self.root} to {dest}: {_describe(exc)} ({exc})") from exc
        return dest


def depth_to_units(depth_m: np.ndarray, unit: float) -> np.ndarray:
    """Metres -> uint16 in ``unit`` metres (0 = invalid; out of range and non-finite -> 0)."""
    d = np.asarray(depth_m, dtype=np.float64) / unit
    d = np.where(np.isfinite(d) & (d > 0) & (d < 65535.5), np.round(d), 0.0)
    return d.astype(np.uint16)


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        if os.path.samefile(src, dst):
            return
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        # Another file system, or links not supported: copy (atomically, like every write).
        atomic_write_bytes(dst, src.read_bytes())


__all__ = ["CaptureWriteError", "CaptureWriter", "depth_to_units"]
