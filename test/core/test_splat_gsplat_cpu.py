"""The project's ``backend="gsplat"`` render path on CPU, through gsplat's own PyTorch reference.

``gsplat.rasterization`` (the function :func:`ccl_lgs_ros.splat.render.rasterize` calls for the
gsplat backend, with the project's exact arguments) runs here with the CUDA entry points that
``gsplat.rendering`` imports from ``gsplat.cuda._wrapper`` replaced by their pure-PyTorch twins in
``gsplat.cuda._torch_impl`` (gsplat 1.5.x: ``_fully_fused_projection``, ``_isect_tiles``,
``_isect_offset_encode``, ``_rasterize_to_pixels``, ``_spherical_harmonics``,
``_quat_scale_to_covar_preci``). Two pieces have no twin and are written here from gsplat's CUDA
kernel (``cuda/csrc/RasterizeToIndices3DGS.cu``): ``rasterize_to_indices_in_range`` (which
Gaussians each pixel composites, front to back, skipping ``alpha < 1/255`` and stopping before
transmittance reaches ``1e-4``), and, when nerfacc is not installed, the two nerfacc functions
``_torch_impl.accumulate`` uses (``render_weight_from_alpha``: weight = alpha x exclusive
transmittance along each ray; ``accumulate_along_rays``: sum per ray). The result is compared,
forward and gradients, with the project's torch backend. Skips (with the reason) when a gsplat
upgrade moves those private functions.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from ccl_lgs_ros.splat import render as render_mod
from ccl_lgs_ros.splat.render import rasterize

gsplat = pytest.importorskip("gsplat", reason="gsplat is not installed")

_TWINS = ("_fully_fused_projection", "_isect_tiles", "_isect_offset_encode", "_rasterize_to_pixels",
          "_spherical_harmonics", "_quat_scale_to_covar_preci", "accumulate")  # fmt: skip
_ENTRY_POINTS = ("fully_fused_projection", "isect_tiles", "isect_offset_encode", "rasterize_to_pixels",
                 "spherical_harmonics")  # fmt: skip


def _reference_modules():
    try:
        import gsplat.cuda._torch_impl as impl
        import gsplat.cuda._wrapper as wrapper
        import gsplat.rendering as rendering
    except ImportError as exc:  # pragma: no cover - depends on the installed gsplat
        pytest.skip(f"gsplat's private modules moved ({exc}); the CPU reference path needs gsplat 1.5.x's layout")
    missing = [n for n in _TWINS if not hasattr(impl, n)] + [n for n in _ENTRY_POINTS if not hasattr(rendering, n)]
    if missing or not hasattr(wrapper, "rasterize_to_indices_in_range"):
        pytest.skip(f"gsplat {gsplat.__version__} moved the private functions this test patches: {missing}")
    return impl, wrapper, rendering


def _indices_in_range(range_start, range_end, transmittances, means2d, conics, opacities, image_width,
                      image_height, tile_size, isect_offsets, flatten_ids):  # fmt: skip
    """Which (Gaussian, pixel, image) pairs composite, batches ``[range_start, range_end)`` of each tile."""
    image_dims = means2d.shape[:-2]
    n_img, n = math.prod(image_dims), means2d.shape[-2]
    th, tw = isect_offsets.shape[-2:]
    offsets = isect_offsets.reshape(-1).tolist() + [len(flatten_ids)]
    xy = means2d.reshape(n_img * n, 2)
    con = conics.reshape(n_img * n, 3)
    opa = opacities.reshape(n_img * n)
    trans = transmittances.reshape(n_img, image_height * image_width)
    block = tile_size * tile_size
    gs, px, im = [], [], []
    for t in range(n_img * th * tw):
        img, tile = divmod(t, th * tw)
        ty, tx = divmod(tile, tw)
        start = offsets[t] + range_start * block
        end = min(offsets[t + 1], offsets[t] + range_end * block)
        if start >= end:
            continue
        ids = flatten_ids[start:end].long()
        ys, xs = torch.meshgrid(torch.arange(ty * tile_size, min((ty + 1) * tile_size, image_height)),
                                torch.arange(tx * tile_size, min((tx + 1) * tile_size, image_width)),
                                indexing="ij")  # fmt: skip
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        with torch.no_grad():
            d = torch.stack([xy[ids, 0][None] - (xs[:, None] + 0.5), xy[ids, 1][None] - (ys[:, None] + 0.5)], -1)
            c = con[ids]
            sigma = 0.5 * (c[:, 0] * d[..., 0] ** 2 + c[:, 2] * d[..., 1] ** 2) + c[:, 1] * d[..., 0] * d[..., 1]
            alpha = torch.clamp_max(opa[ids] * torch.exp(-sigma), 0.999)
            valid = (sigma >= 0) & (alpha >= 1.0 / 255.0)
            pix = ys * image_width + xs
            next_t = trans[img, pix][:, None] * torch.cumprod(1.0 - torch.where(valid, alpha, 0.0), dim=1)
            keep = valid & (next_t > 1e-4)  # next_t only falls: everything after the stop is dropped too
        p_i, g_i = torch.nonzero(keep, as_tuple=True)  # pixel-major, front to back within a pixel
        gs.append(ids[g_i] % n)
        px.append(pix[p_i])
        im.append(torch.full_like(p_i, img))
    if not gs:
        e = torch.zeros(0, dtype=torch.int64)
        return e, e, e
    gs_t, px_t, im_t = torch.cat(gs), torch.cat(px), torch.cat(im)
    order = torch.argsort(im_t * image_height * image_width + px_t, stable=True)  # pixel-major over tiles
    return gs_t[order], px_t[order], im_t[order]


def _fake_nerfacc() -> types.ModuleType:
    mod = types.ModuleType("nerfacc")

    def render_weight_from_alpha(alphas, ray_indices, n_rays):  # noqa: ANN001 - nerfacc's signature
        order = torch.argsort(ray_indices, stable=True)  # rays contiguous, front-to-back kept
        a, r = alphas[order], ray_indices[order]
        log_t = torch.log1p(-a)
        incl = torch.cumsum(log_t, 0)
        first = torch.ones_like(r, dtype=torch.bool)
        first[1:] = r[1:] != r[:-1]
        seg_start = torch.cummax(torch.where(first, torch.arange(len(r)), 0), 0).values
        base = (incl - log_t)[seg_start]  # cumulative log-transmittance before each ray's first entry
        trans_sorted = torch.exp(incl - log_t - base)
        trans = torch.empty_like(trans_sorted).scatter(0, order, trans_sorted)
        return alphas * trans, trans

    def accumulate_along_rays(weights, values, ray_indices, n_rays):  # noqa: ANN001
        src = weights[:, None] if values is None else weights[:, None] * values
        return torch.zeros(n_rays, src.shape[1], dtype=src.dtype).index_add(0, ray_indices, src)

    mod.render_weight_from_alpha = render_weight_from_alpha
    mod.accumulate_along_rays = accumulate_along_rays
    return mod


@pytest.fixture
def gsplat_on_cpu(monkeypatch):
    impl, wrapper, rendering = _reference_modules()

    def projection(means, covars, quats, scales, viewmats, Ks, width, height, eps2d=0.3, packed=False,
                   near_plane=0.01, far_plane=1e10, radius_clip=0.0, sparse_grad=False, calc_compensations=False,
                   camera_model="pinhole", opacities=None):  # noqa: ANN001 - gsplat's signature  # fmt: skip
        assert not packed, "the packed projection has no reference twin"
        if covars is None:
            covars, _ = impl._quat_scale_to_covar_preci(quats, scales, True, False, triu=False)
        radii, means2d, depths, conics, comp = impl._fully_fused_projection(
            means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane, calc_compensations, camera_model)
        if radius_clip > 0:
            radii = torch.where((radii.float() <= radius_clip).all(-1, keepdim=True), 0, radii)
        return radii, means2d, depths, conics, comp

    def isect(means2d, radii, depths, tile_size, tile_width, tile_height, sort=True, segmented=False, packed=False,
              n_images=None, image_ids=None, gaussian_ids=None):  # noqa: ANN001  # fmt: skip
        return impl._isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort)

    def raster(means2d, conics, colors, opacities, width, height, tile_size, isect_offsets, flatten_ids,
               backgrounds=None, masks=None, packed=False, absgrad=False):  # noqa: ANN001  # fmt: skip
        return impl._rasterize_to_pixels(means2d, conics, colors, opacities, width, height, tile_size, isect_offsets,
                                         flatten_ids, backgrounds)  # fmt: skip

    def sh(degrees_to_use, dirs, coeffs, masks=None):  # noqa: ANN001
        out = impl._spherical_harmonics(degrees_to_use, dirs, coeffs)
        return out if masks is None else torch.where(masks[..., None], out, 0.0)

    monkeypatch.setattr(rendering, "fully_fused_projection", projection)
    monkeypatch.setattr(rendering, "isect_tiles", isect)
    monkeypatch.setattr(rendering, "isect_offset_encode", impl._isect_offset_encode)
    monkeypatch.setattr(rendering, "rasterize_to_pixels", raster)
    monkeypatch.setattr(rendering, "spherical_harmonics", sh)
    monkeypatch.setattr(wrapper, "rasterize_to_indices_in_range", _indices_in_range)
    try:
        import nerfacc  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "nerfacc", _fake_nerfacc())
    # The project refuses the gsplat backend without CUDA; here its gsplat branch runs on CPU tensors.
    monkeypatch.setattr(render_mod, "resolve_backend", lambda backend, device: backend)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _look_at(eye: torch.Tensor) -> torch.Tensor:
    z = torch.nn.functional.normalize(-eye, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(z, torch.tensor([0.0, 0.0, 1.0])), dim=0)
    y = torch.linalg.cross(z, x)
    T = torch.eye(4)
    T[:3, :3] = torch.stack([x, y, z])
    T[:3, 3] = -T[:3, :3] @ eye
    return T


def _scene(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 1.2
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.12 + 0.04
    opacities = torch.rand(n, generator=g) * 0.85 + 0.1
    sh = torch.randn(n, 4, 3, generator=g) * 0.3  # SH degree 1
    feats = torch.rand(n, 5, generator=g)
    viewmats = torch.stack([_look_at(torch.tensor(e)) for e in ([3.0, 0.4, 0.6], [-0.5, 2.7, 1.1])])
    W, H = 26, 19
    K = torch.tensor([[24.0, 0, W / 2 + 0.3], [0, 23.0, H / 2 - 0.2], [0, 0, 1]])
    return means, quats, scales, opacities, sh, feats, viewmats, K.expand(2, 3, 3).clone(), W, H


@pytest.mark.parametrize("kind", ["sh", "features"])
def test_gsplat_path_matches_the_torch_backend(gsplat_on_cpu, kind: str) -> None:
    means, quats, scales, opacities, sh, feats, viewmats, Ks, W, H = _scene()
    colors, degree = (sh, 1) if kind == "sh" else (feats, None)
    bg = torch.full((2, colors.shape[-1] if kind == "features" else 3), 0.2)
    weights = torch.rand(2, H, W, bg.shape[1] + 2, generator=torch.Generator().manual_seed(1))
    outs, grads = {}, {}
    for backend in ("gsplat", "torch"):
        params = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, colors)]
        img, alpha, meta = rasterize(*params, viewmats, Ks, W, H, backend=backend, sh_degree=degree,
                                     backgrounds=bg, render_mode="RGB+ED")  # fmt: skip
        assert meta["backend"] == backend or backend == "torch"
        out = torch.cat([img, alpha], -1)
        (out * weights).sum().backward()
        outs[backend] = out.detach()
        grads[backend] = [p.grad for p in params]
    assert outs["gsplat"].shape == (2, H, W, bg.shape[1] + 2)
    assert outs["torch"][..., -1].max() > 0.5  # the Gaussians are in view
    torch.testing.assert_close(outs["gsplat"], outs["torch"], atol=1e-4, rtol=1e-4)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), grads["gsplat"], grads["torch"]):
        assert a is not None and b is not None and b.abs().max() > 0, name
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=lambda m, name=name: f"{name}: {m}")
