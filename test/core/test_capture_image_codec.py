"""capture/image_codec.py against hand-built sensor_msgs/Image byte buffers."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from ccl_lgs_ros.capture.image_codec import (
    ImageDecodeError,
    decode_compressed,
    decode_image,
    depth_to_metres,
    encode_image,
    to_rgb,
)

H, W = 3, 5


def _padded(rows: list[bytes], step: int) -> bytes:
    """Rows of pixel bytes, each padded with 0xEE up to ``step`` (padding must be ignored)."""
    return b"".join(r + b"\xee" * (step - len(r)) for r in rows)


def _expected(encoding: str) -> np.ndarray:
    rng = np.random.default_rng(len(encoding))
    if encoding == "16UC1":
        return rng.integers(0, 65535, (H, W), dtype=np.uint16)
    if encoding == "32FC1":
        return rng.uniform(0.1, 9.0, (H, W)).astype(np.float32)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}[encoding]
    shape = (H, W) if channels == 1 else (H, W, channels)
    return rng.integers(0, 255, shape, dtype=np.uint8)


def _row_bytes(arr: np.ndarray, r: int, big: bool) -> bytes:
    # Hand-serialise one row pixel by pixel with struct (independent of numpy's view tricks).
    fmt = {np.dtype(np.uint8): "B", np.dtype(np.uint16): "H", np.dtype(np.float32): "f"}[arr.dtype]
    values = arr[r].reshape(-1).tolist()
    return struct.pack(("!" if big else "<") + fmt * len(values), *values)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1", "32FC1"])
@pytest.mark.parametrize("pad", [0, 3, 8])
@pytest.mark.parametrize("big", [False, True])
def test_decode_matches_expected(encoding, pad, big):
    arr = _expected(encoding)
    row = len(_row_bytes(arr, 0, big))
    step = row + pad
    data = _padded([_row_bytes(arr, r, big) for r in range(H)], step)
    out = decode_image(encoding, H, W, step, data, is_bigendian=big)
    assert out.dtype == arr.dtype and out.dtype.isnative
    assert out.shape == arr.shape
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)


def test_bgr_stays_bgr_and_to_rgb():
    bgr = _expected("bgr8")
    h, w, step, data = encode_image(bgr, "bgr8")
    out = decode_image("bgr8", h, w, step, data)
    np.testing.assert_array_equal(out, bgr)  # passthrough, like cv_bridge
    np.testing.assert_array_equal(to_rgb(out, "bgr8"), bgr[..., ::-1])
    bgra = _expected("bgra8")
    np.testing.assert_array_equal(to_rgb(bgra, "bgra8"), bgra[..., [2, 1, 0]])
    rgba = _expected("rgba8")
    np.testing.assert_array_equal(to_rgb(rgba, "rgba8"), rgba[..., :3])
    mono = _expected("mono8")
    assert to_rgb(mono, "mono8").shape == (H, W, 3)
    np.testing.assert_array_equal(to_rgb(mono, "mono8")[..., 1], mono)


@pytest.mark.parametrize("encoding", ["rgb8", "mono8", "16UC1", "32FC1", "bgra8"])
def test_encode_decode_round_trip(encoding):
    arr = _expected(encoding)
    h, w, step, data = encode_image(arr, encoding)
    assert (h, w) == (H, W) and len(data) == h * step
    np.testing.assert_array_equal(decode_image(encoding, h, w, step, data), arr)


def test_memoryview_and_ndarray_data():
    arr = _expected("rgb8")
    h, w, step, data = encode_image(arr, "rgb8")
    np.testing.assert_array_equal(decode_image("rgb8", h, w, step, memoryview(data)), arr)
    np.testing.assert_array_equal(decode_image("rgb8", h, w, step, np.frombuffer(data, np.uint8)), arr)


def test_errors():
    arr = _expected("rgb8")
    h, w, step, data = encode_image(arr, "rgb8")
    with pytest.raises(ImageDecodeError, match="unsupported image encoding"):
        decode_image("yuv422", h, w, step, data)
    with pytest.raises(ImageDecodeError, match="step"):
        decode_image("rgb8", h, w, step - 1, data[: h * (step - 1)])
    with pytest.raises(ImageDecodeError, match="expected height\\*step"):
        decode_image("rgb8", h, w, step, data[:-1])
    with pytest.raises(ImageDecodeError, match="expected height\\*step"):
        decode_image("rgb8", h, w, step, data + b"\0")
    with pytest.raises(ImageDecodeError, match="max_pixels"):
        decode_image("rgb8", h, w, step, data, max_pixels=h * w - 1)
    assert decode_image("rgb8", h, w, step, data, max_pixels=h * w).shape == (H, W, 3)
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image("rgb8", 0, w, step, b"")
    with pytest.raises(ImageDecodeError, match="does not match"):
        encode_image(arr, "mono8")
    with pytest.raises(ImageDecodeError, match="not a colour"):
        to_rgb(_expected("32FC1"), "32FC1")


def test_depth_to_metres():
    mm = np.array([[0, 1000, 65535]], np.uint16)
    np.testing.assert_allclose(depth_to_metres(mm, "16UC1"), [[0.0, 1.0, 65.535]], rtol=1e-6)
    m = np.array([[np.nan, -1.0, np.inf, 2.5]], np.float32)
    out = depth_to_metres(m, "32FC1")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.0, 0.0, 0.0, 2.5]])
    with pytest.raises(ImageDecodeError):
        depth_to_metres(_expected("rgb8"), "rgb8")


def test_decode_compressed():
    rgb = _expected("rgb8")
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(decode_compressed("png", png.tobytes()), rgb)
    ok, jpg = cv2.imencode(".jpg", np.full((16, 16, 3), (10, 20, 200), np.uint8))  # BGR: red-ish
    out = decode_compressed("rgb8; jpeg compressed bgr8", jpg.tobytes())
    assert out.shape == (16, 16, 3) and out[8, 8, 0] > 150 and out[8, 8, 2] < 40
    with pytest.raises(ImageDecodeError, match="max_pixels"):
        decode_compressed("png", png.tobytes(), max_pixels=4)
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        decode_compressed("jpeg", b"not an image")
    with pytest.raises(ImageDecodeError, match="no data"):
        decode_compressed("jpeg", b"")


def test_decode_compressed_depth():
    depth = np.array([[0, 500], [1500, 65535]], np.uint16)
    ok, png = cv2.imencode(".png", depth)
    header = struct.pack("<iff", 0, 0.0, 0.0)
    for payload in (header + png.tobytes(), png.tobytes()):
        out = decode_compressed("16UC1; compressedDepth png", payload)
        assert out.dtype == np.uint16
        np.testing.assert_array_equal(out, depth)
    # 32FC1: quantised inverse depth q = a / d + b (image_transport's encoding)
    a, b = 1000.0, -10.0
    d = np.array([[1.0, 2.0], [4.0, 0.0]], np.float32)
    q = np.where(d > 0, a / np.where(d > 0, d, 1) + b, 0).astype(np.uint16)
    ok, png = cv2.imencode(".png", q)
    out = decode_compressed("32FC1; compressedDepth", struct.pack("<iff", 0, a, b) + png.tobytes())
    np.testing.assert_allclose(out, d, rtol=1e-6)
