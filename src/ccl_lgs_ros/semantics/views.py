"""What the semantic field trains and renders against: frozen Gaussians and supervised views.

The RGB Gaussians are frozen (geometry and opacity come from the RGB stage); only per-Gaussian
feature channels are learned, rendered with :func:`ccl_lgs_ros.splat.render.rasterize` like
colours. Views are expressed in the normalised scene frame the Gaussians live in, at the
resolution of the priors' mask maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..capture.format import Capture
from ..geometry import activate_opacities, activate_scales, opengl_c2w_to_viewmat, transform_points
from ..io import load_npz
from ..priors.types import FramePriors
from ..splat.render import rasterize
from .model import SemanticField


@dataclass
class FrozenGaussians:
    """Activated Gaussian parameters, no gradients (scene frame)."""

    means: torch.Tensor  # [N, 3]
    quats: torch.Tensor  # [N, 4]
    scales: torch.Tensor  # [N, 3]
    opacities: torch.Tensor  # [N]

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray], device: str | torch.device = "cpu") -> FrozenGaussians:
        """From activated arrays (``means, quats, scales, opacities``) or a ``gaussians.npz``
        of :class:`ccl_lgs_ros.splat.gaussians.GaussianModel` (raw ``log_scales`` etc.)."""

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)

        if "log_scales" in arrays:
            scales = activate_scales(t(arrays["log_scales"]))
            opac = activate_opacities(t(arrays["opacity_logits"]))
        else:
            scales, opac = t(arrays["scales"]), t(arrays["opacities"])
        return FrozenGaussians(t(arrays["means"]), t(arrays["quats"]), scales, opac.reshape(-1))

    @staticmethod
    def load(path: str | Path, device: str | torch.device = "cpu") -> FrozenGaussians:
        return FrozenGaussians.from_arrays(load_npz(path), device)


@dataclass
class FieldView:
    """One supervised (or rendered) camera. Masks and features come from the frame's priors."""

    index: int  # frame index in the capture
    viewmat: torch.Tensor  # [4, 4] scene-to-camera, OpenCV axes
    K: torch.Tensor  # [3, 3] at (height, width)
    height: int
    width: int
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # level -> int64 [H, W], -1 = none
    targets: dict[str, torch.Tensor] = field(default_factory=dict)  # level -> int64 [H, W] code, -1 = none
    mask_features: dict[str, torch.Tensor] = field(default_factory=dict)  # level -> float32 [K, D]


def scene_viewmat(c2w_gl: np.ndarray, scene_from_world: np.ndarray) -> np.ndarray:
    """gsplat viewmat (scene-to-camera, OpenCV) of a capture pose (world, OpenGL).

    ``scene_from_world`` is a similarity: the camera keeps its orientation and its centre moves.
    """
    c2w = np.array(c2w_gl, dtype=np.float64)
    c2w[:3, 3] = transform_points(np.asarray(scene_from_world, dtype=np.float64), c2w[:3, 3][None])[0]
    return opengl_c2w_to_viewmat(c2w)


def camera_view(
    capture: Capture,
    index: int,
    scene_from_world: np.ndarray,
    width: int | None = None,
    height: int | None = None,
    device: str | torch.device = "cpu",
) -> FieldView:
    """An unsupervised view of frame ``index`` (default: capture resolution)."""
    intr = capture.frames[index].intrinsics
    w, h = int(width or intr.width), int(height or intr.height)
    K = intr.scaled(w, h).K()
    return FieldView(
        index=index,
        viewmat=torch.as_tensor(scene_viewmat(capture.frames[index].c2w, scene_from_world), dtype=torch.float32,
                                device=device),
        K=torch.as_tensor(K, dtype=torch.float32, device=device),
        height=h,
        width=w,
    )  # fmt: skip


def supervised_views(
    capture: Capture,
    priors: Sequence[FramePriors],
    frame_indices: Sequence[int],
    scene_from_world: np.ndarray,
    levels: Sequence[str],
    codes: dict[str, list[np.ndarray]] | None = None,
    device: str | torch.device = "cpu",
) -> list[FieldView]:
    """Views of ``frame_indices`` at the priors' resolution, with masks (+ code targets).

    Args:
        capture: the capture (poses, intrinsics).
        priors: per-frame priors (all frames of the capture).
        frame_indices: frames to use (the training split).
        scene_from_world: similarity of the Gaussians' frame.
        levels: levels to attach.
        codes: optional ``level -> per-frame int [K]`` codebook index of each mask; gives
            ``targets`` (the index maps of CCL-LGS).
        device: torch device.
    """
    views = []
    for i in frame_indices:
        fp = priors[i]
        present = [lv for lv in levels if lv in fp.levels]
        if not present:
            continue
        h, w = fp.levels[present[0]].masks.shape
        view = camera_view(capture, i, scene_from_world, w, h, device)
        for lv in present:
            lp = fp.levels[lv]
            masks = np.asarray(lp.masks, dtype=np.int64)
            view.masks[lv] = torch.as_tensor(masks, device=device)
            view.mask_features[lv] = torch.as_tensor(np.asarray(lp.features, dtype=np.float32), device=device)
            if codes is not None:
                lut = np.concatenate([np.asarray(codes[lv][i], dtype=np.int64), [-1]])
                view.targets[lv] = torch.as_tensor(lut[masks], device=device)
        views.append(view)
    return views


def render_features(
    gaussians: FrozenGaussians,
    colors: torch.Tensor,  # [N, C]
    views: Sequence[FieldView],
    backend: str = "auto",
) -> torch.Tensor:
    """Render feature channels for views of one size: ``[B, H, W, C]`` (black background)."""
    h, w = views[0].height, views[0].width
    if any(v.height != h or v.width != w for v in views):
        raise ValueError("render_features renders views of one size at a time")
    viewmats = torch.stack([v.viewmat for v in views])
    Ks = torch.stack([v.K for v in views])
    out, _, _ = rasterize(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, colors, viewmats, Ks, w, h,
        backend=backend,  # type: ignore[arg-type]
    )  # fmt: skip
    return out


def group_by_size(views: Sequence[FieldView]) -> list[list[FieldView]]:
    """Views grouped by image size (a batch renders one size)."""
    groups: dict[tuple[int, int], list[FieldView]] = {}
    for v in views:
        groups.setdefault((v.height, v.width), []).append(v)
    return list(groups.values())


@torch.no_grad()
def render_field(
    field: SemanticField, gaussians: FrozenGaussians, views: Sequence[FieldView], backend: str = "auto"
) -> dict[str, torch.Tensor]:
    """Rendered features per level ``[B, H, W, d_f]`` (all levels in one rasterization)."""
    feats = [torch.as_tensor(field.features[lv], dtype=torch.float32, device=gaussians.means.device)
             for lv in field.levels]  # fmt: skip
    out = render_features(gaussians, torch.cat(feats, dim=1), views, backend)
    maps, start = {}, 0
    for lv, f in zip(field.levels, feats):
        maps[lv] = out[..., start : start + f.shape[1]]
        start += f.shape[1]
    return maps
