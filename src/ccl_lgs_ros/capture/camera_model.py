"""Camera models of the sources (nerfstudio, COLMAP, CameraInfo) and undistortion.

Every importer and the live capture **undistort on ingest**: images are remapped to the pinhole
camera with the *same* ``K`` (no crop, no new optimal matrix), so a capture folder always holds
pinhole images with zero distortion and training never needs a distortion model. Pixels that
map outside the source image become black (barrel-distorted borders); nothing is cropped, so
image sizes and principal points are those of the source.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .format import Intrinsics


@dataclass(frozen=True)
class Distortion:
    """A lens distortion in one of four parameterisations.

    ``model``:
        ``"none"``;
        ``"opencv"``: OpenCV's vector ``k1 k2 p1 p2 [k3 [k4 k5 k6]]`` (plumb_bob, rational);
        ``"fisheye"``: OpenCV fisheye ``k1 k2 k3 k4`` (equidistant, nerfstudio OPENCV_FISHEYE);
        ``"polynomial"``: nerfstudio's ``k1 k2 k3 k4 p1 p2``, radial ``1 + k1 r^2 + ... + k4 r^8``.
    """

    model: str = "none"
    coeffs: tuple[float, ...] = ()

    @property
    def is_identity(self) -> bool:
        return self.model == "none" or not any(abs(c) > 0 for c in self.coeffs)


def pinhole(intr: Intrinsics) -> Intrinsics:
    """The same camera without distortion (what an undistorted image has)."""
    return dataclasses.replace(intr, distortion=(0.0, 0.0, 0.0, 0.0), model="OPENCV")


def distortion_of(intr: Intrinsics) -> Distortion:
    """The distortion carried by capture-format intrinsics (``k1 k2 p1 p2 k3 k4`` order)."""
    k = list(intr.distortion) + [0.0] * (6 - len(intr.distortion))
    k1, k2, p1, p2, k3, k4 = (float(v) for v in k[:6])
    if intr.model.upper() == "OPENCV_FISHEYE":
        return Distortion("fisheye", (k1, k2, k3, k4))
    if k4 != 0.0:
        return Distortion("polynomial", (k1, k2, k3, k4, p1, p2))
    return Distortion("opencv", (k1, k2, p1, p2, k3))


#: A focal length above this many times the image's larger side is refused (a 0.6 degree view).
MAX_FOCAL_FACTOR = 100.0
#: Share of the undistorted image whose pixels must come from inside the source image.
MIN_DISTORTION_COVERAGE = 0.5


def check_camera(intr: Intrinsics, distortion: Distortion | None = None) -> None:
    """Refuse an implausible camera with the reason (``ValueError``).

    Bounds (documented in README's security section): finite ``fx, fy`` in
    ``(0, MAX_FOCAL_FACTOR * max(w, h)]``; the principal point inside the image
    (``0 <= cx <= w``, ``0 <= cy <= h``); finite distortion coefficients whose undistortion maps
    the image into itself: at least ``MIN_DISTORTION_COVERAGE`` of the undistorted image samples
    the source image (a distortion such as ``D = 1e30`` maps everything outside, i.e. a black
    frame). Checked on a 64-pixel-wide copy of the camera (distortion works in normalised
    coordinates, so the share does not depend on the resolution).
    """
    w, h = int(intr.width), int(intr.height)
    if w <= 0 or h <= 0:
        raise ValueError(f"invalid image size {w}x{h}")
    vals = (intr.fx, intr.fy, intr.cx, intr.cy)
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"intrinsics are not finite: fx={intr.fx} fy={intr.fy} cx={intr.cx} cy={intr.cy}")
    limit = MAX_FOCAL_FACTOR * max(w, h)
    if not (0 < intr.fx <= limit and 0 < intr.fy <= limit):
        raise ValueError(f"focal lengths fx={intr.fx:g}, fy={intr.fy:g} outside (0, {limit:g}] px for a {w}x{h} image")
    if not (0.0 <= intr.cx <= w and 0.0 <= intr.cy <= h):
        raise ValueError(f"principal point ({intr.cx:g}, {intr.cy:g}) lies outside the {w}x{h} image")
    if distortion is None:
        return
    if not all(math.isfinite(c) for c in distortion.coeffs):
        raise ValueError(f"distortion coefficients are not finite: {distortion.coeffs}")
    if distortion.is_identity:
        return
    small_w = min(w, 64)
    small = intr.scaled(small_w, max(int(round(h * small_w / w)), 2))
    try:
        with np.errstate(all="ignore"):
            map_x, map_y = Undistorter().maps(small, distortion)
    except cv2.error as exc:
        raise ValueError(f"distortion {distortion.coeffs} cannot be undistorted: {exc}") from None
    inside = np.isfinite(map_x) & np.isfinite(map_y)
    inside &= (map_x >= 0) & (map_x <= small.width - 1) & (map_y >= 0) & (map_y <= small.height - 1)
    share = float(inside.mean())
    if share < MIN_DISTORTION_COVERAGE:
        raise ValueError(
            f"distortion {tuple(float(f'{c:.4g}') for c in distortion.coeffs)} maps {100 * (1 - share):.0f} % of the "
            f"undistorted image outside the source image (at most {100 * (1 - MIN_DISTORTION_COVERAGE):.0f} % "
            "allowed): not a usable calibration"
        )


def intrinsics_from_camera_info(
    width: int, height: int, k: Sequence[float], d: Sequence[float], distortion_model: str
) -> tuple[Intrinsics, Distortion]:
    """``sensor_msgs/CameraInfo`` fields -> (pinhole intrinsics, distortion).

    Raises:
        ValueError: uncalibrated camera (zero focal length), bad sizes or an unknown model.
    """
    K = np.asarray(k, dtype=np.float64).reshape(-1)
    if K.size != 9 or not np.isfinite(K).all() or K[0] <= 0 or K[4] <= 0:
        raise ValueError(f"CameraInfo has no valid K (got {K.tolist()}): camera not calibrated?")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"CameraInfo has an invalid size {width}x{height}")
    intr = Intrinsics(
        fx=float(K[0]), fy=float(K[4]), cx=float(K[2]), cy=float(K[5]), width=int(width), height=int(height)
    )
    coeffs = tuple(float(v) for v in d)
    model = distortion_model.strip().lower()
    if not coeffs or not any(coeffs):
        dist = Distortion()
    elif model in ("plumb_bob", "rational_polynomial", ""):
        dist = Distortion("opencv", coeffs)
    elif model in ("equidistant", "fisheye"):
        dist = Distortion("fisheye", (coeffs + (0.0,) * 4)[:4])
    else:
        raise ValueError(f"unsupported CameraInfo distortion_model {distortion_model!r}")
    check_camera(intr, dist)
    return intr, dist


def colmap_camera(model: str, params: Sequence[float], width: int, height: int) -> tuple[Intrinsics, Distortion]:
    """A COLMAP camera -> (pinhole intrinsics, distortion).

    Supports SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, OPENCV_FISHEYE and
    FULL_OPENCV; raises ``ValueError`` for others.
    """
    p = [float(v) for v in params]
    w, h = int(width), int(height)
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        intr = Intrinsics(fx=p[0], fy=p[0], cx=p[1], cy=p[2], width=w, height=h)
        k1 = p[3] if model != "SIMPLE_PINHOLE" else 0.0
        k2 = p[4] if model == "RADIAL" else 0.0
        return intr, Distortion("opencv", (k1, k2, 0.0, 0.0, 0.0))
    if model in ("PINHOLE", "OPENCV", "OPENCV_FISHEYE", "FULL_OPENCV"):
        intr = Intrinsics(fx=p[0], fy=p[1], cx=p[2], cy=p[3], width=w, height=h)
        if model == "PINHOLE":
            return intr, Distortion()
        if model == "OPENCV_FISHEYE":
            return intr, Distortion("fisheye", tuple(p[4:8]))
        return intr, Distortion("opencv", tuple(p[4:]))  # OPENCV: k1 k2 p1 p2; FULL_OPENCV: +k3..k6
    raise ValueError(f"unsupported COLMAP camera model {model!r}")


def _polynomial_maps(
    K: np.ndarray, coeffs: tuple[float, ...], width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    # OpenCV has no r^8 radial term, so nerfstudio's k4 needs our own forward map: for every
    # undistorted output pixel, where it lies in the distorted source image.
    k1, k2, k3, k4, p1, p2 = coeffs
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return (xd * K[0, 0] + K[0, 2]).astype(np.float32), (yd * K[1, 1] + K[1, 2]).astype(np.float32)


class Undistorter:
    """Remaps images to the pinhole camera with the same ``K``; the maps are cached per camera."""

    def __init__(self) -> None:
        self._maps: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def maps(self, intr: Intrinsics, distortion: Distortion) -> tuple[np.ndarray, np.ndarray]:
        key = (intr.fx, intr.fy, intr.cx, intr.cy, intr.width, intr.height, distortion)
        if key not in self._maps:
            K = intr.K()
            size = (intr.width, intr.height)
            if distortion.model == "fisheye":
                D = np.asarray((distortion.coeffs + (0.0,) * 4)[:4], dtype=np.float64)
                m = cv2.fisheye.initUndistortRectifyMap(K, D, np.eye(3), K, size, cv2.CV_32FC1)
            elif distortion.model == "polynomial":
                m = _polynomial_maps(K, distortion.coeffs, intr.width, intr.height)
            elif distortion.model == "opencv":
                m = cv2.initUndistortRectifyMap(
                    K, np.asarray(distortion.coeffs, np.float64), None, K, size, cv2.CV_32FC1
                )
            else:
                raise ValueError(f"unknown distortion model {distortion.model!r}")
            self._maps[key] = (m[0], m[1])
        return self._maps[key]

    def __call__(
        self, image: np.ndarray, intr: Intrinsics, distortion: Distortion, *, nearest: bool = False
    ) -> np.ndarray:
        """Undistort ``image`` (``[H,W]`` or ``[H,W,C]``, any dtype OpenCV remaps).

        Args:
            nearest: nearest-neighbour sampling (depth, masks, instance ids); else bilinear.
        """
        if distortion.is_identity:
            return image
        if image.shape[:2] != (intr.height, intr.width):
            raise ValueError(
                f"image {image.shape[1]}x{image.shape[0]} does not match the camera {intr.width}x{intr.height}"
            )
        map_x, map_y = self.maps(intr, distortion)
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        return cv2.remap(image, map_x, map_y, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def focal_from_fov(fov_rad: float, size_px: int) -> float:
    """Focal length (px) of a pinhole camera with field of view ``fov_rad`` across ``size_px``."""
    return 0.5 * float(size_px) / math.tan(0.5 * float(fov_rad))
