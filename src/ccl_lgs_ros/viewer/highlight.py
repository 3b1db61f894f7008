"""Photoreal highlight images of a query answer, seen from a capture camera.

For one camera of the capture the scene was trained on (chosen, or the training camera that
sees the answer best) at the capture's resolution:

- ``highlight.png``: the scene's Gaussians rendered in their colours (the project's renderer,
  :func:`ccl_lgs_ros.splat.render.rasterize`, world frame), the answer's instances tinted one
  colour each and outlined where their rendered coverage ends, the rest slightly dimmed;
- ``relevance_overlay.png``: the 2D relevance of the query (the semantic field's relevance map,
  :class:`ccl_lgs_ros.semantics.relevance.RelevanceRenderer`, at the level the answer used) laid
  over the plain rendered image, transparent up to 0.5 and more opaque the higher it is;
- ``relevance_heatmap.png``: that relevance alone (turbo colour map), as before;
- ``render.png``: the plain rendered image.

Everything runs on the CPU (pure-PyTorch renderer) without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: One colour per instance (the viewer, these images and the RViz-like preview's order).
PALETTE = np.array(
    [[0.95, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.4, 1.0], [1.0, 0.8, 0.1], [0.9, 0.3, 0.9], [0.1, 0.9, 0.9]]
)
#: Share of the instance colour in a tinted pixel, and how much of its colour the rest keeps.
TINT, DIM_REST = 0.55, 0.6
#: Outline width in pixels at 480 rows (scaled with the image height).
OUTLINE_PX = 2


def _render(index: Any, c2w: np.ndarray, K: np.ndarray, width: int, height: int, colors: np.ndarray,
            backend: str = "torch") -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Render ``colors [N, D]`` of the index's world-frame Gaussians from an OpenGL ``c2w``:
    ``(image float32 [H, W, D], alpha float32 [H, W])`` on a black background."""
    import torch

    from ..geometry import opengl_c2w_to_viewmat
    from ..splat.render import rasterize

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)

    img, alpha, _ = rasterize(
        t(index.means), t(index.quats), t(index.scales), t(np.asarray(index.opacities).reshape(-1)), t(colors),
        t(opengl_c2w_to_viewmat(c2w)[None]), t(np.asarray(K)[None]), int(width), int(height), backend=backend,
    )  # fmt: skip
    return img[0].numpy(), alpha[0, ..., 0].numpy()


def pick_camera(capture: Any, centroids: np.ndarray) -> int:
    """The capture frame that sees the given world points best: most of them in front of the
    camera and inside the image, then the smallest mean distance to the image centre."""
    if not len(capture.frames):
        raise ValueError("the capture has no frames")
    pts = np.asarray(centroids, dtype=np.float64).reshape(-1, 3)
    if not len(pts):
        return 0
    from ..geometry import opengl_c2w_to_viewmat

    best, best_key = 0, (-1, 0.0)
    for i, frame in enumerate(capture.frames):
        intr = frame.intrinsics
        cam = (opengl_c2w_to_viewmat(frame.c2w) @ np.c_[pts, np.ones(len(pts))].T).T[:, :3]
        z = cam[:, 2]
        uv = (intr.K() @ cam.T).T
        uv = uv[:, :2] / np.maximum(z[:, None], 1e-9)
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < intr.width) & (uv[:, 1] >= 0) & (uv[:, 1] < intr.height)
        off = np.hypot(uv[:, 0] / intr.width - 0.5, uv[:, 1] / intr.height - 0.5)
        key = (int(inside.sum()), -float(off[inside].mean()) if inside.any() else -9.0)
        if key > best_key:
            best, best_key = i, key
    return best


def highlight_images(index: Any, result: Any, c2w: np.ndarray, K: np.ndarray, width: int, height: int,
                     backend: str = "torch") -> dict[str, np.ndarray]:  # fmt: skip
    """``render`` (plain RGB), ``highlight`` (instances tinted + outlined, rest dimmed) and
    ``masks`` (``bool [I, H, W]``: each instance's rendered coverage > 0.5) for one camera.
    Images are ``uint8 [H, W, 3]``."""
    import cv2

    colors = np.clip(np.asarray(index.colors, dtype=np.float32)[:, :3], 0, 1)
    n_inst = len(result.instances)
    indicator = np.zeros((colors.shape[0], max(n_inst, 1)), np.float32)
    for i, inst in enumerate(result.instances):
        indicator[inst.gaussian_ids, i] = 1.0
    img, _ = _render(index, c2w, K, width, height, np.concatenate([colors, indicator], axis=1), backend)
    rgb = np.clip(img[..., :3], 0, 1)
    cover = img[..., 3 : 3 + n_inst]
    masks = np.moveaxis(cover > 0.5, -1, 0) if n_inst else np.zeros((0, height, width), bool)
    out = rgb * (DIM_REST if n_inst else 1.0)
    width_px = max(1, int(round(OUTLINE_PX * height / 480)))
    kernel = np.ones((2 * width_px + 1, 2 * width_px + 1), np.uint8)
    for i in range(n_inst):
        col = PALETTE[i % len(PALETTE)]
        w = np.clip(cover[..., i], 0, 1)[..., None]  # the instance's rendered coverage
        out = out * (1 - w) + ((1 - TINT) * rgb + TINT * col) * w
    for i in range(n_inst):
        m = masks[i].astype(np.uint8)
        edge = cv2.dilate(m, kernel) > cv2.erode(m, kernel)
        out[edge] = PALETTE[i % len(PALETTE)]
    to_u8 = lambda a: np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)  # noqa: E731
    return {"render": to_u8(rgb), "highlight": to_u8(out), "masks": masks}


def relevance_overlay(rgb: np.ndarray, relevance: np.ndarray, max_alpha: float = 0.8) -> np.ndarray:
    """The turbo heatmap of ``relevance [H, W]`` (0..1) over ``rgb uint8 [H, W, 3]``. LERF
    relevance 0.5 means "no closer to the query than to the negatives", so the heatmap is
    transparent up to 0.5 and grows opaque to ``max_alpha`` at 1: the photo shows where nothing
    is relevant (the heatmap alone, ``relevance_heatmap.png``, shows every value)."""
    from ..semantics.relevance import heatmap_image

    rel = np.clip(np.asarray(relevance, dtype=np.float32), 0, 1)
    heat = heatmap_image(rel).astype(np.float32)
    a = (max_alpha * np.clip(2.0 * rel - 1.0, 0, 1))[..., None]
    return np.clip(np.rint(rgb.astype(np.float32) * (1 - a) + heat * a), 0, 255).astype(np.uint8)


def write_highlights(out_dir: str | Path, scene: Any, result: Any, camera: int | None = None,
                     capture: Any = None, negatives: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the highlight images of ``result`` (an answer of ``scene.engine``) into ``out_dir``.

    Args:
        scene: a :class:`~ccl_lgs_ros.scene.LoadedScene`.
        camera: capture frame index (default: :func:`pick_camera` on the instances' centroids).
        capture: the capture (default: the one recorded in ``scene.json``).
    Returns:
        ``{"camera": i, "width", "height", "level", <kind>: path}``; ``{"skipped": reason}`` when
        the capture the scene was trained on is not available.
    """
    from ..capture.format import Capture, write_image
    from ..config import from_dict
    from ..semantics.relevance import RelevanceRenderer, heatmap_image, pick_level

    if capture is None:
        path = scene.record.get("capture")
        if not path or not (Path(path) / "transforms.json").is_file():
            return {"skipped": f"the capture the scene was trained on ({path}) is not available"}
        capture = Capture.load(path)
    if camera is None:
        camera = pick_camera(capture, np.array([inst.centroid for inst in result.instances]).reshape(-1, 3))
    if not 0 <= int(camera) < len(capture.frames):
        raise ValueError(f"camera {camera} is not a frame of the capture (0..{len(capture.frames) - 1})")
    frame = capture.frames[int(camera)]
    intr = frame.intrinsics
    w, h = int(intr.width), int(intr.height)
    cfg = from_dict(scene.record["config"])
    backend = "torch" if cfg.rgb.backend == "auto" and cfg.device == "cpu" else cfg.rgb.backend
    imgs = highlight_images(scene.index, result, frame.c2w, intr.K(), w, h, backend=backend)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"camera": int(camera), "width": w, "height": h}
    for kind in ("render", "highlight"):
        write_image(out / f"{kind}.png", imgs[kind])
        files[kind] = str(out / f"{kind}.png")
    negs = [*cfg.query.negatives, *(negatives or [])]
    renderer = RelevanceRenderer(scene.path, list(dict.fromkeys(negs)), device="cpu", backend=backend,
                                 temperature=cfg.query.temperature)
    maps = {lv: m[0] for lv, m in renderer.maps(capture, int(camera), [result.text], w, h).items()}
    level = result.level if result.level in maps else pick_level(maps)
    files["level"] = level
    write_image(out / "relevance_overlay.png", relevance_overlay(imgs["render"], maps[level]))
    write_image(out / "relevance_heatmap.png", heatmap_image(maps[level]))
    files["relevance_overlay"] = str(out / "relevance_overlay.png")
    files["relevance_heatmap"] = str(out / "relevance_heatmap.png")
    return files


__all__ = ["PALETTE", "highlight_images", "pick_camera", "relevance_overlay", "write_highlights"]
