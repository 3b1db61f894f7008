"""The capture folder (``../shared/docs/DATASET_FORMAT.md`` / ``docs/DATASET_FORMAT.md``).

A capture is a folder with ``transforms.json`` (nerfstudio keys plus a ``ccl_lgs`` block) and
``images/``, optionally ``depth/``, ``instances/`` and ``gt/``. Poses are camera-to-world in the
OpenGL convention, in the robot's fixed frame, in metres.

Writes are crash-safe: image files are written first (atomically), then ``transforms.json`` is
replaced atomically, so a crash never leaves a frame listed whose image is missing.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from ..io import atomic_write_bytes, atomic_write_json, read_json

FORMAT_VERSION = 1
#: Default for :attr:`Capture.max_image_pixels` (8192 x 8192); the pipeline sets it from
#: ``capture.max_image_pixels`` when that is larger.
MAX_FILE_IMAGE_PIXELS = 8192 * 8192
TRANSFORMS = "transforms.json"
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2", "camera_model")


class CaptureError(ValueError):
    """A capture folder is missing, malformed or inconsistent."""


def _relative_inside(rel: str, key: str) -> str:
    """A file path from ``transforms.json``: relative, inside the capture folder (no ``..``, not
    absolute), so capture metadata can never make a reader open a file elsewhere."""
    p = PurePosixPath(rel.replace("\\", "/"))
    if not rel.strip() or p.is_absolute() or ".." in p.parts or "\x00" in rel:
        raise CaptureError(f"{key} {rel[:200]!r} must be a relative path inside the capture folder (no '..')")
    return rel


def _optional_relative(rel: Any, key: str) -> str | None:
    return None if rel is None or rel == "" else _relative_inside(str(rel), key)


@dataclass
class Intrinsics:
    """Pinhole intrinsics (pixels) plus OpenCV distortion (k1 k2 p1 p2 k3 k4)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    model: str = "OPENCV"

    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, width: int, height: int) -> Intrinsics:
        """Intrinsics of the same camera at another resolution."""
        sx, sy = width / self.width, height / self.height
        return dataclasses.replace(
            self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
            width=int(width), height=int(height),
        )

    def to_json(self) -> dict[str, Any]:
        k = list(self.distortion) + [0.0] * (6 - len(self.distortion))
        return {
            "camera_model": self.model, "fl_x": self.fx, "fl_y": self.fy, "cx": self.cx, "cy": self.cy,
            "w": int(self.width), "h": int(self.height),
            "k1": k[0], "k2": k[1], "p1": k[2], "p2": k[3], "k3": k[4], "k4": k[5],
        }

    @staticmethod
    def from_json(d: dict[str, Any], fallback: Intrinsics | None = None) -> Intrinsics:
        def get(key: str, default: Any = None) -> Any:
            if key in d:
                return d[key]
            if fallback is not None:
                return default
            raise CaptureError(f"intrinsics key {key!r} missing")

        fb = fallback
        fx = float(get("fl_x", fb.fx if fb else None))
        fy = float(d.get("fl_y", fb.fy if fb and "fl_x" not in d else fx))
        k = [float(d.get(n, 0.0)) for n in ("k1", "k2", "p1", "p2", "k3", "k4")]
        if fb is not None and not any(n in d for n in ("k1", "k2", "p1", "p2", "k3", "k4")):
            k = list(fb.distortion) + [0.0] * (6 - len(fb.distortion))
        while len(k) > 4 and k[-1] == 0.0:
            k.pop()
        return Intrinsics(
            fx=fx, fy=fy,
            cx=float(get("cx", fb.cx if fb else None)), cy=float(get("cy", fb.cy if fb else None)),
            width=int(get("w", fb.width if fb else None)), height=int(get("h", fb.height if fb else None)),
            distortion=tuple(k), model=str(d.get("camera_model", fb.model if fb else "OPENCV")),
        )

    @property
    def distorted(self) -> bool:
        return any(abs(v) > 0 for v in self.distortion)


@dataclass
class Frame:
    """One posed frame. Paths are relative to the capture folder."""

    file_path: str
    c2w: np.ndarray  # [4, 4] camera-to-world, OpenGL axes, world = fixed frame
    intrinsics: Intrinsics
    depth_file_path: str | None = None
    instance_file_path: str | None = None
    mask_file_path: str | None = None
    timestamp: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, preserved

    def to_json(self, shared: Intrinsics | None) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.extra)
        d["file_path"] = self.file_path
        d["transform_matrix"] = np.asarray(self.c2w, dtype=np.float64).tolist()
        if self.depth_file_path:
            d["depth_file_path"] = self.depth_file_path
        if self.instance_file_path:
            d["instance_file_path"] = self.instance_file_path
        if self.mask_file_path:
            d["mask_path"] = self.mask_file_path
        if self.timestamp is not None:
            d["timestamp"] = float(self.timestamp)
        if shared is None or self.intrinsics != shared:
            d.update(self.intrinsics.to_json())
        return d


@dataclass
class Capture:
    """A capture folder in memory: frames, shared intrinsics, metadata."""

    root: Path
    frames: list[Frame] = field(default_factory=list)
    frame_id: str = "map"
    depth_unit_scale_factor: float = 0.001
    instances: list[dict[str, Any]] = field(default_factory=list)  # ground truth (optional)
    points_file: str | None = None  # optional initial point cloud (.ply), relative path
    extra: dict[str, Any] = field(default_factory=dict)  # unknown top-level keys, preserved
    ccl_extra: dict[str, Any] = field(default_factory=dict)
    #: Image files declaring more pixels than this (in their header) are refused before decoding.
    max_image_pixels: int = MAX_FILE_IMAGE_PIXELS

    # ---------------------------------------------------------------- reading
    @staticmethod
    def load(root: str | Path) -> Capture:
        root = Path(root).expanduser()
        path = root / TRANSFORMS
        if not path.is_file():
            raise CaptureError(f"{root}: no {TRANSFORMS} (not a capture folder)")
        try:
            data = read_json(path)
        except ValueError as exc:
            raise CaptureError(f"{path}: invalid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
            raise CaptureError(f"{path}: expected an object with a 'frames' list")
        block = data.get("ccl_lgs") or {}
        if not isinstance(block, dict):
            raise CaptureError(f"{path}: 'ccl_lgs' must be an object, not {type(block).__name__}")
        version = block.get("format_version", FORMAT_VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            raise CaptureError(f"{path}: format_version must be an integer, not {version!r}"[:300])
        if version > FORMAT_VERSION or version < 1:
            raise CaptureError(
                f"{path}: format_version {version} is not supported (this build reads 1..{FORMAT_VERSION})"
            )
        if not isinstance(block.get("instances", []), list) or not isinstance(block.get("frame_id", "map"), str):
            raise CaptureError(f"{path}: 'ccl_lgs.instances' must be a list and 'ccl_lgs.frame_id' text")
        try:
            depth_scale = float(data.get("depth_unit_scale_factor", 0.001))
        except (TypeError, ValueError):
            raise CaptureError(f"{path}: depth_unit_scale_factor must be a number") from None
        points_file = data.get("ply_file_path")
        if points_file is not None:
            points_file = _relative_inside(str(points_file), "ply_file_path")
        try:
            shared = Intrinsics.from_json(data) if "fl_x" in data else None
        except (KeyError, TypeError, ValueError) as exc:
            raise CaptureError(f"{path}: shared intrinsics: {exc}") from None
        frames = []
        for i, fd in enumerate(data["frames"]):
            try:
                intr = Intrinsics.from_json(fd, shared) if shared else Intrinsics.from_json(fd)
                c2w = np.asarray(fd["transform_matrix"], dtype=np.float64)
                if c2w.shape == (3, 4):
                    c2w = np.vstack([c2w, [0, 0, 0, 1]])
                if c2w.shape != (4, 4):
                    raise CaptureError("transform_matrix must be 4x4")
                known = {"file_path", "transform_matrix", "depth_file_path", "instance_file_path",
                         "mask_path", "timestamp", *_INTRINSIC_KEYS}
                frames.append(Frame(
                    file_path=_relative_inside(str(fd["file_path"]), "file_path"), c2w=c2w, intrinsics=intr,
                    depth_file_path=_optional_relative(fd.get("depth_file_path"), "depth_file_path"),
                    instance_file_path=_optional_relative(fd.get("instance_file_path"), "instance_file_path"),
                    mask_file_path=_optional_relative(fd.get("mask_path"), "mask_path"),
                    timestamp=fd.get("timestamp"),
                    extra={k: v for k, v in fd.items() if k not in known},
                ))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise CaptureError(f"{path}: frame {i}: {exc}") from None
        top_known = {"frames", "ccl_lgs", "depth_unit_scale_factor", "ply_file_path", *_INTRINSIC_KEYS}
        return Capture(
            root=root, frames=frames, frame_id=str(block.get("frame_id", "map")),
            depth_unit_scale_factor=depth_scale,
            instances=list(block.get("instances", [])), points_file=points_file,
            extra={k: v for k, v in data.items() if k not in top_known},
            ccl_extra={k: v for k, v in block.items() if k not in ("format_version", "frame_id", "instances")},
        )

    def shared_intrinsics(self) -> Intrinsics | None:
        """The intrinsics all frames share, or ``None`` when they differ."""
        if not self.frames:
            return None
        first = self.frames[0].intrinsics
        return first if all(f.intrinsics == first for f in self.frames) else None

    def referenced_files(self) -> list[str]:
        """Every file this capture names, relative to its folder: images, depth, masks,
        instance maps, the point file and ground-truth point files."""
        rels: list[str] = []
        for f in self.frames:
            rels += [r for r in (f.file_path, f.depth_file_path, f.mask_file_path, f.instance_file_path) if r]
        if self.points_file:
            rels.append(self.points_file)
        rels += [inst["gt_points"] for inst in self.instances if isinstance(inst.get("gt_points"), str)]
        return rels

    def files_outside(self, roots: Sequence[Path]) -> list[tuple[str, Path]]:
        """The referenced files that, with every symlink resolved, lie outside all of ``roots``
        (already resolved folders), as ``(name in the capture, resolved path)``. A capture
        inside an allowed root can still point elsewhere through a symlink (``images ->
        /elsewhere``) or a ground-truth file name; a reader confined to roots checks this."""
        out = []
        for rel in self.referenced_files():
            resolved = (self.root / rel).resolve()
            if not any(resolved == r or r in resolved.parents for r in roots):
                out.append((rel, resolved))
        return out

    def image_path(self, i: int) -> Path:
        return self.root / self.frames[i].file_path

    def load_image(self, i: int) -> np.ndarray:
        """RGB ``uint8 [H,W,3]`` of frame ``i`` (alpha dropped; see :meth:`load_rgba`)."""
        return self.load_rgba(i)[..., :3]

    def _check_pixels(self, path: Path) -> None:
        """Refuse an image file whose header declares more than :attr:`max_image_pixels` pixels,
        before OpenCV allocates it (Pillow reads the header only)."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                w, h = im.size
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return  # unreadable here: OpenCV reports it
        if int(w) * int(h) > self.max_image_pixels:
            raise CaptureError(f"{path}: {w}x{h} image has more than {self.max_image_pixels} pixels; refused")

    def load_rgba(self, i: int) -> np.ndarray:
        """RGB or RGBA ``uint8 [H,W,3|4]``."""
        path = self.image_path(i)
        self._check_pixels(path)
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise CaptureError(f"cannot read image {path}")
        if img.dtype == np.uint16:
            img = (img / 257.0).round().astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.shape[2] == 4:
            return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def load_depth(self, i: int) -> np.ndarray | None:
        """Depth in metres ``float32 [H,W]`` (0 = invalid) or ``None``."""
        rel = self.frames[i].depth_file_path
        if not rel:
            return None
        self._check_pixels(self.root / rel)
        raw = cv2.imread(str(self.root / rel), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise CaptureError(f"cannot read depth {self.root / rel}")
        return raw.astype(np.float32) * np.float32(self.depth_unit_scale_factor)

    def load_instances(self, i: int) -> np.ndarray | None:
        """Ground-truth instance ids ``int32 [H,W]`` (0 = none) or ``None``."""
        rel = self.frames[i].instance_file_path
        if not rel:
            return None
        self._check_pixels(self.root / rel)
        raw = cv2.imread(str(self.root / rel), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise CaptureError(f"cannot read instance map {self.root / rel}")
        return raw.astype(np.int32)

    def c2w_all(self) -> np.ndarray:
        return np.stack([f.c2w for f in self.frames]) if self.frames else np.zeros((0, 4, 4))

    # ---------------------------------------------------------------- writing
    def to_json(self) -> dict[str, Any]:
        shared = self.shared_intrinsics()
        data: dict[str, Any] = copy.deepcopy(self.extra)
        if shared is not None:
            data.update(shared.to_json())
        data["depth_unit_scale_factor"] = self.depth_unit_scale_factor
        if self.points_file:
            data["ply_file_path"] = self.points_file
        data["frames"] = [f.to_json(shared) for f in self.frames]
        block = dict(self.ccl_extra)
        block.update({"format_version": FORMAT_VERSION, "frame_id": self.frame_id, "instances": self.instances})
        data["ccl_lgs"] = block
        return data

    def save(self) -> None:
        """Replace ``transforms.json`` atomically (write images before calling this).

        Raises:
            CaptureError: a pose is not finite (JSON would hold ``NaN``, which other readers
                reject); the file on disk is left untouched.
        """
        for i, f in enumerate(self.frames):
            if not np.isfinite(np.asarray(f.c2w, dtype=np.float64)).all():
                raise CaptureError(f"frame {i} ({f.file_path}): pose is not finite; not saving")
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.root / TRANSFORMS, self.to_json())


def encode_image(suffix: str, rgb: np.ndarray, jpeg_quality: int = 95) -> bytes:
    """Encode an RGB(A) or grey uint8 image to the file format named by ``suffix``."""
    img = np.asarray(rgb)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if suffix.lower() in (".jpg", ".jpeg") else []
    try:
        ok, buf = cv2.imencode(suffix, img, params)
    except cv2.error as exc:
        raise CaptureError(f"cannot encode a {img.dtype} {img.shape} image as {suffix}: {exc}") from None
    if not ok:
        raise CaptureError(f"cannot encode image as {suffix}")
    return buf.tobytes()


def write_image(path: str | Path, rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an RGB(A) uint8 image atomically; the format follows the suffix."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(path.suffix, rgb, jpeg_quality))


def write_uint16_png(path: str | Path, data: np.ndarray) -> None:
    """Write a single-channel uint16 PNG (depth, instance ids) atomically."""
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise CaptureError(f"expected a 2D array for {path}, got shape {arr.shape}")
    ok, buf = cv2.imencode(".png", arr.astype(np.uint16))
    if not ok:
        raise CaptureError(f"cannot encode {path}")
    atomic_write_bytes(path, buf.tobytes())
