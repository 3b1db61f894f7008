"""Held-out evaluation of an RGB reconstruction: PSNR / SSIM and comparison images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..capture.format import Capture, write_image
from ..config import Config
from ..io import atomic_write_json, read_json
from .data import View, load_view, split_indices
from .gaussians import GaussianModel, load_scene_from_world
from .metrics import psnr, ssim
from .render import rasterize

BACKGROUNDS = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}


def render_view(
    model: GaussianModel,
    view: View,
    backend: str = "auto",
    sh_degree: int | None = None,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> torch.Tensor:
    """Render ``model`` from ``view``'s camera. Returns ``[H, W, 3]`` in 0..1."""
    bg = torch.tensor([background], dtype=torch.float32, device=model.device)
    out, _, _ = rasterize(
        model.means, model.quats, model.scales, model.opacities, model.sh, view.viewmat[None], view.K[None],
        view.width, view.height, backend=backend,
        sh_degree=model.sh_degree if sh_degree is None else sh_degree, backgrounds=bg,
    )  # fmt: skip
    return out[0].clamp(0.0, 1.0)


@torch.no_grad()
def evaluate_views(
    model: GaussianModel,
    views: list[View],
    backend: str = "auto",
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Mean PSNR / SSIM over ``views``; with ``out_dir``, writes ``<frame>.png`` (GT | render)."""
    per = []
    for v in views:
        pred = render_view(model, v, backend, background=background)
        p, s = psnr(pred, v.image), float(ssim(pred[None], v.image[None]))
        per.append({"frame": v.index, "psnr": p, "ssim": s})
        if out_dir is not None:
            side = torch.cat([v.image, pred], dim=1).cpu().numpy()
            write_image(Path(out_dir) / f"frame_{v.index:05d}.png", (side * 255.0 + 0.5).astype(np.uint8))
    if not per:
        return {"n_views": 0, "psnr": None, "ssim": None, "per_view": []}
    return {
        "n_views": len(per),
        "psnr": float(np.mean([r["psnr"] for r in per])),
        "ssim": float(np.mean([r["ssim"] for r in per])),
        "per_view": per,
    }


def evaluate_rgb(
    capture: Capture,
    gaussians_npz_dir: str | Path,
    cfg: Config,
    device: str | torch.device = "cpu",
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """PSNR / SSIM of a trained reconstruction on the capture's held-out frames.

    Args:
        capture: The capture it was trained on.
        gaussians_npz_dir: The stage folder holding ``gaussians.npz`` (and ``rgb.json``), or the
            ``.npz`` itself.
        cfg: Configuration (``rgb.holdout_every``, ``rgb.downscale``, ``rgb.background``,
            ``rgb.backend``); the values recorded in ``rgb.json`` win when present.
        device: Torch device.
        out_dir: When given, comparison PNGs (ground truth | render) and ``eval.json`` go here.

    Returns:
        ``{"n_views", "psnr", "ssim", "per_view", "downscale"}``.
    """
    path = Path(gaussians_npz_dir)
    npz = path / "gaussians.npz" if path.is_dir() else path
    record = read_json(npz.parent / "rgb.json") if (npz.parent / "rgb.json").is_file() else {}
    model = GaussianModel.load(npz, device)
    scene_from_world = load_scene_from_world(npz)
    downscale = int(record.get("downscale", cfg.rgb.downscale))
    background = BACKGROUNDS[record.get("background", cfg.rgb.background)]
    test = record.get("test_indices")
    if test is None:
        _, test = split_indices(len(capture.frames), cfg.rgb.holdout_every)
    views = [load_view(capture, i, scene_from_world, downscale, background, device) for i in test]
    result = evaluate_views(model, views, cfg.rgb.backend, background, Path(out_dir) if out_dir else None)
    result["downscale"] = downscale
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "eval.json", result)
    return result
