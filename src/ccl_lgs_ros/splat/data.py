"""Training views and initial points of the RGB reconstruction, from a capture folder.

Everything the trainer sees lives in the normalised *scene* frame ``x_scene = s (x_world - c)``
(:func:`scene_normalization`), so learning rates and densification thresholds do not depend on
the units or extent of the robot's map.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from ..capture.format import Capture, CaptureError
from ..geometry import opengl_c2w_to_viewmat, similarity, transform_points
from ..ply import read_ply_points


@dataclass
class View:
    """One frame ready to render against: image, camera, optional depth (scene units)."""

    index: int  # frame index in the capture
    image: Tensor  # [H, W, 3] float 0..1, composited on the background when the file had alpha
    viewmat: Tensor  # [4, 4] scene-to-camera, OpenCV axes
    K: Tensor  # [3, 3] for this (downscaled) size
    depth: Tensor | None  # [H, W] scene units, 0 = invalid

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def split_indices(n_frames: int, holdout_every: int) -> tuple[list[int], list[int]]:
    """``(train, test)``: every ``holdout_every``-th frame (0, n, 2n, ...) is held out; 0 = none.

    When holding out would leave fewer than two training frames, nothing is held out.
    """
    idx = list(range(n_frames))
    if holdout_every <= 0:
        return idx, []
    test = [i for i in idx if i % holdout_every == 0]
    train = [i for i in idx if i % holdout_every != 0]
    if len(train) < 2:
        return idx, []
    return train, test


def camera_centers(capture: Capture) -> np.ndarray:
    return capture.c2w_all()[:, :3, 3]


def scene_normalization(centers: np.ndarray, points: np.ndarray | None = None) -> np.ndarray:
    """``scene_from_world``: centre on the cameras, scale their farthest one to distance 1.

    Falls back to the points (or the unit scale) when the cameras barely move (a robot turning
    on the spot would otherwise get an enormous scale).
    """
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    center = centers.mean(axis=0)
    radius = float(np.linalg.norm(centers - center, axis=1).max()) if len(centers) else 0.0
    if radius < 1e-3 and points is not None and len(points):
        pts = np.asarray(points, dtype=np.float64)
        radius = float(np.percentile(np.linalg.norm(pts - center, axis=1), 95))
    if not np.isfinite(radius) or radius < 1e-6:
        radius = 1.0
    return similarity(1.0 / radius, center)


def _scene_c2w(c2w_gl: np.ndarray, scene_from_world: np.ndarray) -> np.ndarray:
    """A camera pose expressed in the scene frame (rotation unchanged, centre mapped)."""
    out = np.array(c2w_gl, dtype=np.float64)
    out[:3, 3] = transform_points(scene_from_world, c2w_gl[:3, 3][None])[0]
    return out


def _resized_intrinsics(capture: Capture, i: int, downscale: int):
    intr = capture.frames[i].intrinsics
    w, h = max(1, round(intr.width / downscale)), max(1, round(intr.height / downscale))
    return intr.scaled(w, h)


def load_view(
    capture: Capture,
    i: int,
    scene_from_world: np.ndarray,
    downscale: int = 1,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    device: str | torch.device = "cpu",
) -> View:
    """Read frame ``i``: resize, undistort (OpenCV k1 k2 p1 p2 k3), composite alpha, move to scene frame."""
    intr = _resized_intrinsics(capture, i, downscale)
    rgba = capture.load_rgba(i)
    if rgba.shape[1] != intr.width or rgba.shape[0] != intr.height:
        rgba = cv2.resize(rgba, (intr.width, intr.height), interpolation=cv2.INTER_AREA)
    img = rgba.astype(np.float32) / 255.0
    if img.shape[2] == 4:
        a = img[..., 3:4]
        img = img[..., :3] * a + np.asarray(background, dtype=np.float32) * (1.0 - a)
    K = intr.K()
    if intr.distorted:
        img = np.asarray(cv2.undistort(img, K, np.asarray(intr.distortion[:5], dtype=np.float64)), dtype=np.float32)
    depth = capture.load_depth(i)
    depth_t = None
    if depth is not None:
        if depth.shape != (intr.height, intr.width):
            depth = cv2.resize(depth, (intr.width, intr.height), interpolation=cv2.INTER_NEAREST)
        scale = float(scene_from_world[0, 0])
        depth_t = torch.as_tensor(depth * scale, dtype=torch.float32, device=device)
    viewmat = opengl_c2w_to_viewmat(_scene_c2w(capture.frames[i].c2w, scene_from_world))
    return View(
        index=i,
        image=torch.as_tensor(np.ascontiguousarray(img), dtype=torch.float32, device=device),
        viewmat=torch.as_tensor(viewmat, dtype=torch.float32, device=device),
        K=torch.as_tensor(K, dtype=torch.float32, device=device),
        depth=depth_t,
    )


def backproject_depth(view: View, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` random valid depth pixels of ``view`` as scene points ``[M,3]`` and colours ``[M,3]``."""
    if view.depth is None:
        return np.zeros((0, 3)), np.zeros((0, 3))
    depth = view.depth.cpu().numpy()
    vs, us = np.nonzero(depth > 0)
    if len(us) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    pick = rng.choice(len(us), size=min(n, len(us)), replace=False)
    us, vs = us[pick], vs[pick]
    z = depth[vs, us].astype(np.float64)
    K = view.K.cpu().numpy().astype(np.float64)
    # Pixel centres at +0.5, the renderer's convention.
    x = (us + 0.5 - K[0, 2]) / K[0, 0] * z
    y = (vs + 0.5 - K[1, 2]) / K[1, 1] * z
    cam = np.stack([x, y, z], axis=1)
    c2w = np.linalg.inv(view.viewmat.cpu().numpy().astype(np.float64))
    pts = cam @ c2w[:3, :3].T + c2w[:3, 3]
    return pts, view.image.cpu().numpy()[vs, us].astype(np.float64)


def random_frustum_points(
    views: list[View], n: int, rng: np.random.Generator, depth_range: tuple[float, float] = (0.1, 2.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Random points inside the training frusta (scene units), coloured by the pixel they project to."""
    pts, cols = [], []
    per = max(1, -(-n // max(len(views), 1)))  # ceil: at least n points in total
    for v in views:
        us = rng.uniform(0, v.width, per)
        vs = rng.uniform(0, v.height, per)
        z = rng.uniform(*depth_range, per)
        K = v.K.cpu().numpy().astype(np.float64)
        cam = np.stack([(us - K[0, 2]) / K[0, 0] * z, (vs - K[1, 2]) / K[1, 1] * z, z], axis=1)
        c2w = np.linalg.inv(v.viewmat.cpu().numpy().astype(np.float64))
        pts.append(cam @ c2w[:3, :3].T + c2w[:3, 3])
        cols.append(v.image.cpu().numpy()[vs.astype(int), us.astype(int)])
    return np.concatenate(pts)[:n], np.concatenate(cols)[:n].astype(np.float64)


def initial_points(
    capture: Capture,
    views: list[View],
    scene_from_world: np.ndarray,
    max_points: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Initial Gaussian centres (scene frame) and colours, and which source they came from.

    Order of preference: the capture's point cloud (SfM / lidar), depth back-projection, random
    points in the camera frusta.
    """
    rng = np.random.default_rng(seed)
    if capture.points_file:
        path = capture.root / capture.points_file
        if not path.is_file():
            raise CaptureError(f"{capture.root}: points file {capture.points_file} is missing")
        pts, cols = read_ply_points(path)
        if len(pts):
            if len(pts) > max_points:
                keep = rng.choice(len(pts), size=max_points, replace=False)
                pts, cols = pts[keep], None if cols is None else cols[keep]
            cols = np.full_like(pts, 0.5) if cols is None else cols
            return transform_points(scene_from_world, pts), cols, "points_file"
    with_depth = [v for v in views if v.depth is not None]
    if with_depth:
        per = max(1, max_points // len(with_depth))
        got = [backproject_depth(v, per, rng) for v in with_depth]
        pts = np.concatenate([g[0] for g in got])
        if len(pts):
            return pts, np.concatenate([g[1] for g in got]), "depth"
    pts, cols = random_frustum_points(views, max_points, rng)
    return pts, cols, "random"
