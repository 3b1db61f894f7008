"""ROS-free decoding and encoding of ``sensor_msgs/Image`` and ``CompressedImage`` payloads.

The functions take the raw message fields, so the live node (rclpy messages), the bag importer
(``rosbags`` messages) and the replay tool share one implementation. :func:`decode_image` gives
the same array as ``cv_bridge.CvBridge().imgmsg_to_cv2(msg, "passthrough")``: the channels in the
message's own order (``bgr8`` stays BGR), ``[H,W]`` for one channel, ``[H,W,C]`` otherwise,
C-contiguous, native byte order, row padding (``step``) removed.
"""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np

#: encoding -> (numpy dtype, channels). The names are those of sensor_msgs/image_encodings.h.
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "8UC3": (np.dtype(np.uint8), 3),
    "8UC4": (np.dtype(np.uint8), 4),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImageDecodeError(ValueError):
    """An image message cannot be decoded (bad encoding, sizes, data or too large)."""


def _layout(encoding: str) -> tuple[np.dtype, int]:
    try:
        return ENCODINGS[encoding]
    except KeyError:
        raise ImageDecodeError(f"unsupported image encoding {encoding!r} (supported: {', '.join(ENCODINGS)})") from None


def decode_image(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: bytes | bytearray | memoryview | np.ndarray,
    is_bigendian: bool = False,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decode the fields of a ``sensor_msgs/Image``.

    Args:
        encoding: ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8``, ``mono16``, ``16UC1``,
            ``32FC1`` (and the ``8UC1/3/4`` aliases).
        height, width: image size in pixels.
        step: bytes per row, at least ``width * channels * itemsize`` (more = row padding).
        data: the ``height * step`` bytes of the message.
        is_bigendian: byte order of multi-byte pixels.
        max_pixels: refuse images with more pixels than this (``None`` = no limit).

    Returns:
        ``[H,W]`` (one channel) or ``[H,W,C]`` array of the encoding's dtype, native byte order,
        channels in the message's order, exactly what cv_bridge's ``imgmsg_to_cv2`` returns.

    Raises:
        ImageDecodeError: with a message naming the problem.
    """
    dtype, channels = _layout(encoding)
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"empty image ({width}x{height})")
    if max_pixels is not None and height * width > max_pixels:
        raise ImageDecodeError(f"image {width}x{height} has more than max_pixels={max_pixels} pixels")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageDecodeError(f"step {step} is smaller than width*bytes_per_pixel = {row_bytes} ({encoding})")
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    if buf.size != height * step:
        raise ImageDecodeError(f"data has {buf.size} bytes, expected height*step = {height * step}")
    # Drop the row padding first, then reinterpret: the padding need not be a multiple of the
    # pixel size, so a strided view in the pixel dtype is not always possible.
    rows = buf.reshape(height, step)[:, :row_bytes]
    src_dtype = dtype.newbyteorder(">" if is_bigendian else "<")
    arr = np.ascontiguousarray(rows).view(src_dtype)
    if not src_dtype.isnative:
        arr = arr.astype(dtype)  # `dtype` is native: cv_bridge also returns native byte order
    arr = arr.reshape(height, width, channels)
    return arr[..., 0] if channels == 1 else arr


def encode_image(array: np.ndarray, encoding: str) -> tuple[int, int, int, bytes]:
    """Inverse of :func:`decode_image` (little-endian, no padding).

    Args:
        array: ``[H,W]`` or ``[H,W,C]`` matching ``encoding`` (channels in the encoding's order).
        encoding: one of :data:`ENCODINGS`.

    Returns:
        ``(height, width, step, data)`` for a ``sensor_msgs/Image`` with ``is_bigendian = 0``.
    """
    dtype, channels = _layout(encoding)
    arr = np.asarray(array)
    if arr.ndim == 2 and channels == 1:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] != channels:
        raise ImageDecodeError(f"array of shape {arr.shape} does not match encoding {encoding!r}")
    if arr.dtype != dtype:
        raise ImageDecodeError(f"array dtype {arr.dtype} does not match encoding {encoding!r} ({dtype})")
    height, width = arr.shape[:2]
    data = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<")).tobytes()
    return int(height), int(width), int(width * channels * dtype.itemsize), data


def to_rgb(array: np.ndarray, encoding: str) -> np.ndarray:
    """Decoded image (see :func:`decode_image`) -> RGB ``uint8 [H,W,3]``."""
    arr = np.asarray(array)
    # cv2.cvtColor: several times faster than numpy's reversed-stride copies at 720p.
    if encoding in ("rgb8", "8UC3"):
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if encoding == "bgr8":
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    if encoding == "rgba8":
        return cv2.cvtColor(arr, cv2.COLOR_RGBA2RGB)
    if encoding in ("bgra8", "8UC4"):
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
    if encoding in ("mono8", "8UC1"):
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    if encoding in ("mono16", "16UC1"):
        # Full-range 16-bit grey -> 8 bit, the mapping cv_bridge uses for mono16 -> mono8.
        grey = (arr.astype(np.float32) / 257.0).round().astype(np.uint8)
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    raise ImageDecodeError(f"encoding {encoding!r} is not a colour image encoding")


def depth_to_metres(array: np.ndarray, encoding: str) -> np.ndarray:
    """Depth image -> metres ``float32 [H,W]``; 0 marks invalid pixels.

    ``16UC1`` / ``mono16`` are millimetres (REP 118 allows both); ``32FC1`` is metres, where NaN,
    infinities and negative values become 0.
    """
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ImageDecodeError(f"depth must be single-channel, got shape {arr.shape}")
    if encoding in ("16UC1", "mono16"):
        return arr.astype(np.float32) * np.float32(0.001)
    if encoding == "32FC1":
        out = arr.astype(np.float32, copy=True)
        out[~np.isfinite(out) | (out < 0)] = 0.0
        return out
    raise ImageDecodeError(f"encoding {encoding!r} is not a depth encoding (16UC1 mm or 32FC1 m)")


def decode_compressed(format: str, data: bytes | bytearray | memoryview, max_pixels: int | None = None) -> np.ndarray:  # noqa: A002
    """Decode a ``sensor_msgs/CompressedImage`` payload.

    Args:
        format: the message's ``format`` field (``jpeg``, ``png``, ``rgb8; jpeg compressed bgr8``,
            or image_transport's ``16UC1; compressedDepth png`` / ``32FC1; compressedDepth``).
        data: the compressed bytes.
        max_pixels: refuse larger images (checked on the header before decoding, and again after).

    Returns:
        Colour: RGB ``uint8 [H,W,3]`` (note: cv_bridge would give BGR; the capture wants RGB).
        ``compressedDepth``: the raw depth, ``uint16 [H,W]`` (mm) or ``float32 [H,W]`` (m).
    """
    raw = bytes(data)
    if not raw:
        raise ImageDecodeError("compressed image has no data")
    fmt = format.lower()
    if "compresseddepth" in fmt:
        return _decode_compressed_depth(fmt, raw, max_pixels)
    check_header_pixels(raw, max_pixels)
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageDecodeError(f"cannot decode compressed image (format {format!r}, {len(raw)} bytes)")
    _check_pixels(img, max_pixels)
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def header_size(raw: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a compressed image's header (Pillow reads only the header), or
    ``None`` when Pillow does not know the format."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            return int(im.size[0]), int(im.size[1])
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def check_header_pixels(raw: bytes, max_pixels: int | None) -> None:
    """Refuse a compressed image whose header declares more than ``max_pixels`` pixels, before
    any pixel buffer is allocated (a small PNG can declare 8000x8000)."""
    if max_pixels is None:
        return
    size = header_size(raw)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageDecodeError(
            f"image {size[0]}x{size[1]} has more than max_pixels={max_pixels} pixels (from its header)"
        )


def _check_pixels(img: np.ndarray, max_pixels: int | None) -> None:
    if max_pixels is not None and img.shape[0] * img.shape[1] > max_pixels:
        raise ImageDecodeError(f"image {img.shape[1]}x{img.shape[0]} has more than max_pixels={max_pixels} pixels")


def _decode_compressed_depth(fmt: str, raw: bytes, max_pixels: int | None) -> np.ndarray:
    # image_transport's compressedDepth prepends a 12-byte header (int32 format + two float32
    # quantisation parameters) to the PNG; older publishers omit it.
    header = b""
    if not raw.startswith(_PNG_MAGIC):
        header, raw = raw[:12], raw[12:]
    check_header_pixels(raw, max_pixels)
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 2:
        raise ImageDecodeError(f"cannot decode compressedDepth image (format {fmt!r})")
    _check_pixels(img, max_pixels)
    if fmt.startswith("32fc1"):
        if len(header) != 12:
            raise ImageDecodeError("32FC1 compressedDepth without its quantisation header")
        _, quant_a, quant_b = struct.unpack("<iff", header)
        q = img.astype(np.float32)
        with np.errstate(divide="ignore"):
            depth = np.where(q > 0, quant_a / (q - quant_b), 0.0).astype(np.float32)
        depth[~np.isfinite(depth) | (depth < 0)] = 0.0
        return depth
    return img.astype(np.uint16)
