"""One rasterizer interface, two backends.

:func:`rasterize` has the signature and meaning of ``gsplat.rasterization`` (the subset this
project uses). ``backend="gsplat"`` calls gsplat's CUDA kernels; ``backend="torch"`` is a pure
PyTorch implementation (:mod:`.project` + :mod:`.composite`) that runs on any device, is
differentiable with autograd, and returns the ``meta`` keys gsplat's ``DefaultStrategy`` reads, so
densification works on a CPU too. ``"auto"`` picks gsplat for CUDA tensors when it is installed.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .composite import composite
from .project import eval_sh, project_gaussians

Backend = Literal["auto", "torch", "gsplat"]
RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


class RenderError(RuntimeError):
    """A backend cannot be used (no CUDA, gsplat missing) or the inputs are malformed."""


def gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend (``"torch"`` or ``"gsplat"``) for ``backend`` on ``device``."""
    device = torch.device(device)
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
    if backend == "gsplat":
        if device.type != "cuda":
            raise RenderError(f"the gsplat backend needs CUDA tensors (got device {device}); use backend='torch'")
        if not gsplat_available():
            raise RenderError("the gsplat backend needs the gsplat package (pip install gsplat)")
        return "gsplat"
    if backend == "torch":
        return "torch"
    raise RenderError(f"unknown backend {backend!r} (expected 'auto', 'torch' or 'gsplat')")


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D] or [N, K, 3] (SH)
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    backend: Backend | str = "auto",
    sh_degree: int | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    render_mode: RenderMode = "RGB",
    backgrounds: Tensor | None = None,  # [C, D]
    packed: bool = False,
    tile_size: int = 8,
    distributed: bool = False,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Rasterize 3D Gaussians into ``C`` images (gsplat's ``rasterization`` semantics).

    Args:
        means: Centres, world frame. [N, 3]
        quats: Rotations (w, x, y, z), need not be normalised. [N, 4]
        scales: Activated scales. [N, 3]
        opacities: Activated opacities in 0..1. [N]
        colors: Features ``[N, D]`` (any D: RGB, semantic channels) or, with ``sh_degree``, SH
            coefficients ``[N, K, 3]`` (the colour is ``max(SH(dir) + 0.5, 0)`` like gsplat).
        viewmats: World-to-camera, OpenCV axes. [C, 4, 4]
        Ks: Pinhole intrinsics for the rendered size. [C, 3, 3]
        width: Image width.
        height: Image height.
        backend: ``"torch"``, ``"gsplat"`` (CUDA) or ``"auto"``.
        sh_degree: SH degree when ``colors`` are SH coefficients, else ``None``.
        near_plane: Near culling depth.
        far_plane: Far culling depth.
        eps2d: Screen-space low-pass added to 2D covariances (px^2).
        render_mode: ``"RGB"`` (features), ``"D"``/``"ED"`` (accumulated / expected depth) or
            ``"RGB+D"``/``"RGB+ED"`` (depth appended as the last channel).
        backgrounds: Background per image, blended with ``1 - alpha``. [C, D]
        packed: Return per-visible-entry meta (``gaussian_ids``, ``camera_ids``, ``means2d [nnz, 2]``)
            instead of ``[C, N, ...]``; saves memory on large scenes.
        tile_size: Tile edge of the torch backend (gsplat uses its own 16).
        distributed: gsplat only (CUDA, inside a torch.distributed group): each rank passes its
            own share of the Gaussians and its own cameras; gsplat exchanges what each camera needs.

    Returns:
        ``(render_colors [C, H, W, D(+1)], render_alphas [C, H, W, 1], meta)``. ``meta`` holds
        ``means2d`` (its ``.grad`` is read by densification; call ``retain_grad`` before backward),
        ``radii``, ``depths``, ``conics``, ``opacities``, ``gaussian_ids``/``camera_ids`` (packed),
        ``width``, ``height``, ``n_cameras``, ``n_batches`` and ``backend``.
    """
    if render_mode not in _MODES:
        raise RenderError(f"render_mode must be one of {_MODES}, got {render_mode!r}")
    N = means.shape[0]
    C = viewmats.shape[0]
    if means.shape != (N, 3) or quats.shape != (N, 4) or scales.shape != (N, 3) or opacities.shape != (N,):
        raise RenderError(
            f"expected means [N,3], quats [N,4], scales [N,3], opacities [N]; got {tuple(means.shape)}, "
            f"{tuple(quats.shape)}, {tuple(scales.shape)}, {tuple(opacities.shape)}"
        )
    if viewmats.shape != (C, 4, 4) or Ks.shape != (C, 3, 3):
        raise RenderError(f"expected viewmats [C,4,4] and Ks [C,3,3]; got {tuple(viewmats.shape)}, {tuple(Ks.shape)}")
    if sh_degree is None and (colors.dim() != 2 or colors.shape[0] != N):
        raise RenderError(f"colors must be [N, D] without sh_degree, got {tuple(colors.shape)}")
    if sh_degree is not None and (colors.dim() != 3 or colors.shape[0] != N or colors.shape[2] != 3):
        raise RenderError(f"SH colors must be [N, K, 3], got {tuple(colors.shape)}")

    which = resolve_backend(backend, means.device)
    if which == "gsplat":
        import gsplat

        out_c, out_a, meta = gsplat.rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree,
            packed=packed, backgrounds=backgrounds, render_mode=render_mode,
            **({"distributed": True} if distributed else {}),
        )  # fmt: skip
        meta["backend"] = "gsplat"
        return out_c, out_a, meta
    if distributed:
        raise ValueError(
            "distributed rasterization (Gaussians partitioned across ranks) is gsplat's CUDA path; the torch "
            "backend renders a full copy of the Gaussians on every rank (distributed.gsplat_distributed=false)"
        )
    return _rasterize_torch(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree=sh_degree,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, render_mode=render_mode,
        backgrounds=backgrounds, packed=packed, tile_size=tile_size,
    )  # fmt: skip


def _rasterize_torch(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None,
    near_plane: float,
    far_plane: float,
    eps2d: float,
    render_mode: str,
    backgrounds: Tensor | None,
    packed: bool,
    tile_size: int,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    N, C = means.shape[0], viewmats.shape[0]
    proj = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
    )  # fmt: skip
    visible = (proj.radii > 0).any(dim=-1)  # [C, N]
    camera_ids: Tensor | None = None
    gaussian_ids: Tensor | None = None
    if packed:
        camera_ids, gaussian_ids = torch.nonzero(visible, as_tuple=True)
        means2d = proj.means2d[camera_ids, gaussian_ids]  # [nnz, 2]
        conics = proj.conics[camera_ids, gaussian_ids]
        depths = proj.depths[camera_ids, gaussian_ids]
        radii = proj.radii[camera_ids, gaussian_ids]
        image_ids = camera_ids
    else:
        means2d, conics, depths, radii = proj.means2d, proj.conics, proj.depths, proj.radii
        image_ids = torch.arange(C, device=means.device).repeat_interleave(N)
    # gsplat's DefaultStrategy reads means2d.grad: it must be the very tensor the compositing uses.
    flat = (lambda x: x) if packed else (lambda x: x.reshape((C * N,) + x.shape[2:]))

    if sh_degree is None:
        feats = colors[gaussian_ids] if packed else colors.expand(C, N, colors.shape[-1])
    else:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
        if packed:
            dirs = means[gaussian_ids] - campos[camera_ids]
            feats = eval_sh(sh_degree, dirs, colors[gaussian_ids])
        else:
            dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
            feats = eval_sh(sh_degree, dirs, colors.expand((C,) + colors.shape))
        feats = torch.clamp_min(feats + 0.5, 0.0)
    bg = backgrounds
    if render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([feats, depths[..., None]], dim=-1)
        if bg is not None:
            bg = torch.cat([bg, torch.zeros_like(bg[:, :1])], dim=-1)
    elif render_mode in ("D", "ED"):
        feats = depths[..., None]
        bg = None if bg is None else torch.zeros_like(bg[:, :1])
    op = opacities[gaussian_ids] if packed else opacities.expand(C, N)

    out_c, out_a, stats = composite(
        flat(means2d), flat(conics), flat(op), flat(feats), flat(depths), flat(radii), image_ids,
        C, width, height, tile_size=tile_size,
    )  # fmt: skip
    if bg is not None:
        out_c = out_c + bg[:, None, None, :] * (1.0 - out_a)
    if render_mode in ("ED", "RGB+ED"):
        out_c = torch.cat([out_c[..., :-1], out_c[..., -1:] / out_a.clamp(min=1e-10)], dim=-1)
    meta: dict[str, Any] = {
        "camera_ids": camera_ids,
        "gaussian_ids": gaussian_ids,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": op,
        "width": width,
        "height": height,
        "n_cameras": C,
        "n_batches": 1,
        "tile_size": tile_size,
        "backend": "torch",
        **stats,
    }
    return out_c, out_a, meta
