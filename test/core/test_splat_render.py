"""The torch rasterizer against a brute-force per-pixel reference (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from ccl_lgs_ros.splat.project import eval_sh, project_gaussians
from ccl_lgs_ros.splat.render import RenderError, rasterize, resolve_backend


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two threads contend and run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _look_at_viewmat(eye: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """World-to-camera (OpenCV: x right, y down, z forward) looking from eye at target."""
    z = torch.nn.functional.normalize(target - eye, dim=0)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype)
    x = torch.nn.functional.normalize(torch.linalg.cross(z, up), dim=0)
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])  # rows: camera axes in world
    T = torch.eye(4, dtype=eye.dtype)
    T[:3, :3] = R
    T[:3, 3] = -R @ eye
    return T


def _scene(n: int = 25, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 1.2
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.15 + 0.03
    opacities = torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    eyes = [torch.tensor(e, dtype=dtype) for e in ([3.0, 0.3, 0.5], [-0.4, 2.8, 1.0])]
    viewmats = torch.stack([_look_at_viewmat(e, torch.zeros(3, dtype=dtype)) for e in eyes])
    W, H = 23, 17
    K = torch.tensor([[22.0, 0, W / 2 + 0.3], [0, 21.0, H / 2 - 0.2], [0, 0, 1]], dtype=dtype)
    Ks = K.expand(2, 3, 3).clone()
    return means, quats, scales, opacities, colors, viewmats, Ks, W, H


def _brute_force(means2d, conics, opacities, colors, depths, radii, W, H):
    """Every pixel against every visible Gaussian, one Gaussian at a time in depth order."""
    ys, xs = torch.meshgrid(torch.arange(H, dtype=means2d.dtype), torch.arange(W, dtype=means2d.dtype), indexing="ij")
    px, py = xs + 0.5, ys + 0.5
    out = torch.zeros(H, W, colors.shape[-1], dtype=means2d.dtype)
    T = torch.ones(H, W, dtype=means2d.dtype)
    done = torch.zeros(H, W, dtype=torch.bool)
    for i in torch.argsort(depths).tolist():
        if not (radii[i] > 0).any():
            continue
        dx, dy = px - means2d[i, 0], py - means2d[i, 1]
        a, b, c = conics[i]
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp_max(opacities[i] * torch.exp(-sigma), 0.999)
        use = (sigma >= 0) & (alpha >= 1 / 255) & ~done
        next_T = T * (1 - alpha)
        stop = use & (next_T <= 1e-4)
        done = done | stop
        use = use & ~stop
        out = out + torch.where(use[..., None], (alpha * T)[..., None] * colors[i], torch.zeros_like(out))
        T = torch.where(use, next_T, T)
    return out, 1 - T[..., None]


def _reference(means, quats, scales, opacities, colors, viewmats, Ks, W, H):
    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, W, H)
    imgs, alphas = [], []
    for c in range(viewmats.shape[0]):
        o, a = _brute_force(proj.means2d[c], proj.conics[c], opacities, colors, proj.depths[c], proj.radii[c], W, H)
        imgs.append(o)
        alphas.append(a)
    return torch.stack(imgs), torch.stack(alphas)


@pytest.mark.parametrize("tile_size", [4, 8, 16])
def test_torch_backend_matches_brute_force_values(tile_size):
    args = _scene()
    out, alpha, meta = rasterize(*args, backend="torch", tile_size=tile_size)
    ref, ref_alpha = _reference(*args)
    assert out.shape == (2, 17, 23, 3) and alpha.shape == (2, 17, 23, 1)
    assert alpha.max() > 0.5, "scene should cover the image (test is meaningless otherwise)"
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(alpha, ref_alpha, rtol=1e-9, atol=1e-9)
    assert meta["radii"].shape == (2, 25, 2) and meta["means2d"].shape == (2, 25, 2)


def test_torch_backend_matches_brute_force_gradients():
    means, quats, scales, opacities, colors, viewmats, Ks, W, H = _scene(n=12, seed=3)
    params = [p.clone().requires_grad_(True) for p in (means, quats, scales, opacities, colors)]
    weights = torch.rand(2, H, W, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def loss(fn):
        img, alpha = fn(*params)
        return (torch.cat([img, alpha], -1) * weights).sum()

    ours = torch.autograd.grad(loss(lambda *p: rasterize(*p, viewmats, Ks, W, H, backend="torch")[:2]), params)
    ref = torch.autograd.grad(loss(lambda *p: _reference(*p, viewmats, Ks, W, H)), params)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), ours, ref):
        assert b.abs().max() > 0, f"reference gradient of {name} is zero"
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=f"gradient of {name}")


def test_saturated_pixels_use_the_transmittance_cutoff():
    # Many nearly opaque Gaussians on top of each other: pixels stop early, like gsplat.
    n = 12
    means = torch.zeros(n, 3, dtype=torch.float64)
    means[:, 2] = torch.linspace(0.0, 0.5, n, dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).expand(n, 4)
    scales = torch.full((n, 3), 0.4, dtype=torch.float64)
    opacities = torch.full((n,), 0.99, dtype=torch.float64)
    colors = torch.rand(n, 5, dtype=torch.float64)  # 5 channels: D is arbitrary
    viewmats = _look_at_viewmat(
        torch.tensor([0.0, -0.1, 3.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    )
    Ks = torch.tensor([[[15.0, 0, 8], [0, 15.0, 8], [0, 0, 1]]], dtype=torch.float64)
    out, alpha, _ = rasterize(means, quats, scales, opacities, colors, viewmats[None], Ks, 16, 16, backend="torch")
    ref, ref_alpha = _reference(means, quats, scales, opacities, colors, viewmats[None], Ks, 16, 16)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(alpha, ref_alpha)
    assert out.shape[-1] == 5 and alpha.max() > 0.999


def test_packed_render_and_depth_modes_agree_with_unpacked():
    args = _scene(dtype=torch.float32)
    bg = torch.tensor([[0.2, 0.3, 0.4], [1.0, 1.0, 1.0]])
    a, aa, meta_a = rasterize(*args, backend="torch", render_mode="RGB+ED", backgrounds=bg)
    b, ba, meta_b = rasterize(*args, backend="torch", render_mode="RGB+ED", backgrounds=bg, packed=True)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(aa, ba)
    nnz = int((meta_a["radii"] > 0).any(-1).sum())
    assert meta_b["means2d"].shape == (nnz, 2) and meta_b["gaussian_ids"].shape == (nnz,)
    # Expected depth lies within the visible Gaussians' depth range where the pixel is opaque.
    d = a[..., 3][aa[..., 0] > 0.5]
    vis = meta_a["depths"][(meta_a["radii"] > 0).any(-1)]
    assert d.min() >= vis.min() - 1e-4 and d.max() <= vis.max() + 1e-4
    # Background shows through exactly where alpha is zero.
    torch.testing.assert_close(a[1][aa[1, ..., 0] == 0][:, :3], torch.ones_like(a[1][aa[1, ..., 0] == 0][:, :3]))


def test_sh_colors_match_direct_evaluation():
    means, quats, scales, opacities, _, viewmats, Ks, W, H = _scene(dtype=torch.float64)
    sh = torch.randn(means.shape[0], 16, 3, dtype=torch.float64) * 0.3
    out, _, _ = rasterize(means, quats, scales, opacities, sh, viewmats, Ks, W, H, backend="torch", sh_degree=2)
    campos = torch.linalg.inv(viewmats)[:, :3, 3]
    colors = [torch.clamp_min(eval_sh(2, means - campos[c], sh) + 0.5, 0) for c in range(2)]
    for c in range(2):
        ref, _ = _reference(means, quats, scales, opacities, colors[c], viewmats[c : c + 1], Ks[c : c + 1], W, H)
        torch.testing.assert_close(out[c : c + 1], ref)


def test_sh_and_projection_match_gsplat_reference_functions():
    impl = pytest.importorskip("gsplat.cuda._torch_impl")
    means, quats, scales, opacities, _, viewmats, Ks, W, H = _scene(n=40, seed=5, dtype=torch.float64)
    dirs = torch.randn(50, 3, dtype=torch.float64)
    coeffs = torch.randn(50, 16, 3, dtype=torch.float64)
    for degree in range(4):
        torch.testing.assert_close(eval_sh(degree, dirs, coeffs), impl._spherical_harmonics(degree, dirs, coeffs))
    covars, _ = impl._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii, means2d, depths, conics, _ = impl._fully_fused_projection(means, covars, viewmats, Ks, W, H)
    ours = project_gaussians(means, quats, scales, None, viewmats, Ks, W, H)
    vis = (radii > 0).all(-1)
    assert vis.sum() > 10
    torch.testing.assert_close(ours.radii, radii.to(torch.int32))
    torch.testing.assert_close(ours.means2d[vis], means2d[vis])
    torch.testing.assert_close(ours.conics[vis], conics[vis])
    torch.testing.assert_close(ours.depths, depths)


def test_gaussians_behind_the_camera_give_finite_gradients():
    means, quats, scales, opacities, colors, viewmats, Ks, W, H = _scene(dtype=torch.float32)
    means = means.clone()
    means[0] = torch.linalg.inv(viewmats[0])[:3, 3]  # exactly at the first camera centre (z = 0)
    means.requires_grad_(True)
    out, alpha, meta = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, W, H, backend="torch")
    meta["means2d"].retain_grad()
    (out.sum() + alpha.sum()).backward()
    assert torch.isfinite(means.grad).all()
    assert meta["means2d"].grad.shape == (2, 25, 2)
    assert not (meta["radii"][0, 0] > 0).any()


def test_backend_resolution():
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(RenderError, match="CUDA"):
        resolve_backend("gsplat", "cpu")
    with pytest.raises(RenderError):
        rasterize(*_scene()[:5], torch.eye(4)[None].double(), torch.eye(3)[None].double(), 8, 8, render_mode="X")


@pytest.mark.gpu
def test_torch_backend_matches_gsplat_on_cuda():
    pytest.importorskip("gsplat")
    args = [a.float().cuda() if torch.is_tensor(a) else a for a in _scene(n=200, seed=2, dtype=torch.float32)]
    means, quats, scales, opacities, colors, viewmats, Ks, W, H = args
    feats = torch.rand(means.shape[0], 16, device="cuda")  # semantic-width features
    for c in (colors, feats):
        params = [p.clone().requires_grad_(True) for p in (means, quats, scales, opacities, c)]
        outs = {}
        for backend in ("torch", "gsplat"):
            img, alpha, _ = rasterize(*params, viewmats, Ks, W, H, backend=backend, render_mode="RGB+ED")
            grads = torch.autograd.grad((img[..., :-1].sum() + alpha.sum()), params)
            outs[backend] = (img, alpha, grads)
        torch.testing.assert_close(outs["torch"][0], outs["gsplat"][0], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(outs["torch"][1], outs["gsplat"][1], rtol=1e-3, atol=1e-3)
        for a, b in zip(outs["torch"][2], outs["gsplat"][2]):
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)
    assert math.isfinite(float(outs["torch"][0].sum()))


def test_saturated_and_clamped_pixels_match_brute_force_gradients():
    # Nearly opaque Gaussians stacked in depth, the nearest one wide and above the 0.999 alpha
    # clamp around its centre: the analytic backward pass must handle the clamp and the
    # transmittance stop like autograd does.
    n = 10
    g = torch.Generator().manual_seed(7)
    means = torch.zeros(n, 3, dtype=torch.float64)
    means[:, :2] = (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 0.4
    means[:, 2] = torch.linspace(0.0, 0.5, n, dtype=torch.float64)
    means[-1, :2] = torch.tensor([0.02, 0.05], dtype=torch.float64)
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.3 + 0.2
    scales[-1] = torch.tensor([2.0, 1.5, 1.8], dtype=torch.float64)
    opacities = torch.tensor([0.9995, 0.99, 0.9999, 0.6, 0.99, 0.3, 0.9997, 0.95, 0.99, 0.99999], dtype=torch.float64)
    colors = torch.rand(n, 4, generator=g, dtype=torch.float64)
    viewmats = _look_at_viewmat(
        torch.tensor([0.0, -0.1, 3.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    )[None]
    Ks = torch.tensor([[[15.0, 0, 8], [0, 15.0, 8], [0, 0, 1]]], dtype=torch.float64)
    params = [p.clone().requires_grad_(True) for p in (means, quats, scales, opacities, colors)]
    weights = torch.rand(1, 16, 16, 5, dtype=torch.float64, generator=g)

    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, 16, 16)
    assert int(torch.argmax(-proj.depths[0])) == n - 1, "the wide Gaussian must be the nearest"
    ar = torch.arange(16.0, dtype=torch.float64)
    ys, xs = torch.meshgrid(ar, ar, indexing="ij")
    dx, dy = xs + 0.5 - proj.means2d[0, -1, 0], ys + 0.5 - proj.means2d[0, -1, 1]
    a, b, c = proj.conics[0, -1]
    raw_alpha = opacities[-1] * torch.exp(-(0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy))
    assert (raw_alpha > 0.999).any(), "the clamp must be active at some pixel"

    def loss(fn):
        img, alpha = fn(*params)
        return (torch.cat([img, alpha], -1) * weights).sum()

    ours = torch.autograd.grad(loss(lambda *p: rasterize(*p, viewmats, Ks, 16, 16, backend="torch")[:2]), params)
    ref = torch.autograd.grad(loss(lambda *p: _reference(*p, viewmats, Ks, 16, 16)), params)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), ours, ref):
        assert b.abs().max() > 0, f"reference gradient of {name} is zero"
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=f"gradient of {name}")


def test_recomputed_backward_and_tile_culling_are_exact():
    from ccl_lgs_ros.splat.composite import _tile_lists, composite

    # Thin, tilted Gaussians: their screen-space boxes cover many tiles they never reach.
    means, quats, _, opacities, colors, viewmats, Ks, W, H = _scene(n=30, seed=11)
    scales = torch.tensor([0.5, 0.01, 0.01], dtype=torch.float64).expand(30, 3).clone()
    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, W, H)
    flat = [t.reshape((-1,) + t.shape[2:]) for t in (proj.means2d, proj.conics, proj.depths, proj.radii)]
    m2d, con, dep, rad = flat
    op, col = opacities.repeat(2), colors.repeat(2, 1)
    ids = torch.arange(2).repeat_interleave(30)
    boxes, _ = _tile_lists(m2d, rad, dep, ids, 4, 6, 5)
    culled, _ = _tile_lists(m2d, rad, dep, ids, 4, 6, 5, conics=con, opacities=op)
    assert 0 < culled.numel() < boxes.numel(), "culling should drop some box-only intersections"

    leaves = [t.detach().clone().requires_grad_(True) for t in (m2d, con, op, col)]
    weights = torch.rand(2, H, W, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = []
    for checkpoint_above in (10**9, 0):  # saved intermediates, then recomputed in backward
        out, alpha, stats = composite(
            leaves[0], leaves[1], leaves[2], leaves[3], dep, rad, ids, 2, W, H, tile_size=4,
            checkpoint_above=checkpoint_above,
        )  # fmt: skip
        assert stats["checkpointed"] == (checkpoint_above == 0)
        grads = torch.autograd.grad((torch.cat([out, alpha], -1) * weights).sum(), leaves)
        results.append((out, alpha, grads))
    ref, ref_alpha = _reference(means, quats, scales, opacities, colors, viewmats, Ks, W, H)
    torch.testing.assert_close(results[0][0], ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(results[0][1], ref_alpha, rtol=1e-9, atol=1e-9)
    for a, b in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
