"""A tiny capture rendered from known Gaussians: for tests, benchmarks and smoke runs.

Not a substitute for the synthetic scene generator (``synth/``): no semantics, no meshes, just
coloured blobs seen from a ring of cameras, rendered with this package's own rasterizer, so the
RGB stage can be checked end to end (does training recover what was rendered?).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..capture.format import Capture, Frame, Intrinsics, write_image, write_uint16_png
from ..geometry import optical_to_opengl_c2w
from ..splat.render import rasterize


def look_at_viewmat(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """World-to-camera (OpenCV axes) of a camera at ``eye`` looking at ``target``."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z])
    T[:3, 3] = -T[:3, :3] @ eye
    return T


def toy_gaussians(n: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    """Random opaque coloured blobs in a 1 m cube around the origin (activated values)."""
    rng = np.random.default_rng(seed)
    return {
        "means": rng.uniform(-0.5, 0.5, (n, 3)),
        "quats": rng.normal(size=(n, 4)),
        "scales": rng.uniform(0.04, 0.14, (n, 3)),
        "opacities": rng.uniform(0.7, 0.95, n),
        "colors": rng.uniform(0.05, 0.95, (n, 3)),
    }


def make_toy_capture(
    root: str | Path,
    n_views: int = 12,
    size: int = 32,
    with_depth: bool = True,
    seed: int = 0,
    n_gaussians: int = 60,
    radius: float = 2.5,
) -> tuple[Capture, dict[str, np.ndarray]]:
    """Write a capture of ``n_views`` renders (``size`` px square) on a ring around the blobs.

    Depth (when asked) is the expected depth where the render is mostly opaque, in millimetres.
    Returns the saved capture and the ground-truth Gaussians.
    """
    root = Path(root)
    gt = toy_gaussians(n_gaussians, seed)
    t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in gt.items()}
    f = 0.9 * size
    intr = Intrinsics(fx=f, fy=f, cx=size / 2, cy=size / 2, width=size, height=size)
    K = torch.as_tensor(intr.K(), dtype=torch.float32)[None]
    frames = []
    for i in range(n_views):
        ang = 2 * np.pi * i / n_views
        eye = np.array([radius * np.cos(ang), radius * np.sin(ang), 0.6 + 0.4 * np.sin(3 * ang)])
        viewmat = look_at_viewmat(eye, np.zeros(3))
        vm = torch.as_tensor(viewmat, dtype=torch.float32)[None]
        with torch.no_grad():
            out, alpha, _ = rasterize(
                t["means"], t["quats"], t["scales"], t["opacities"], t["colors"], vm, K, size, size,
                backend="torch", render_mode="RGB+ED",
            )  # fmt: skip
        img = (out[0, ..., :3].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
        name = f"frame_{i:05d}.png"
        write_image(root / "images" / name, img)
        depth_rel = None
        if with_depth:
            depth = np.where(alpha[0, ..., 0].numpy() > 0.5, out[0, ..., 3].numpy(), 0.0)
            write_uint16_png(root / "depth" / name, np.round(depth * 1000.0))
            depth_rel = f"depth/{name}"
        c2w = optical_to_opengl_c2w(np.linalg.inv(viewmat))
        frames.append(Frame(file_path=f"images/{name}", c2w=c2w, intrinsics=intr, depth_file_path=depth_rel))
    capture = Capture(root=root, frames=frames, frame_id="map")
    capture.save()
    return Capture.load(root), gt
