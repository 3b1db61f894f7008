"""EWA projection of 3D Gaussians and spherical-harmonics colour, in plain PyTorch.

The conventions follow gsplat 1.5 (``fully_fused_projection`` with ``opacities`` given,
``spherical_harmonics``) so that the ``torch`` and ``gsplat`` backends render the same image:

- covariance ``R S S^T R^T`` from a (w, x, y, z) quaternion (normalised here) and scales;
- the perspective Jacobian is evaluated with the camera-space point clamped to 1.3x the field of
  view, so Gaussians far outside the image do not blow up;
- a 0.3 px^2 low-pass (``eps2d``) is added to every 2D covariance;
- the screen-space extent is ``min(3.33, sqrt(2 ln(255 opacity)))`` standard deviations per axis
  (the opacity-aware bound: beyond it alpha < 1/255 and the pixel would be skipped anyway), so
  culling by it is exact, not an approximation.

Everything is differentiable with autograd and works on any device and floating dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: Alpha below which a Gaussian is skipped at a pixel (gsplat's ALPHA_THRESHOLD).
ALPHA_THRESHOLD = 1.0 / 255.0
#: Largest screen-space extent in standard deviations.
MAX_EXTENT = 3.33


@dataclass
class Projection:
    """Per-camera 2D Gaussians. Entries with ``radii == 0`` are not visible."""

    radii: Tensor  # [C, N, 2] int32, pixels (x, y)
    means2d: Tensor  # [C, N, 2] pixels
    depths: Tensor  # [C, N] camera z
    conics: Tensor  # [C, N, 3] inverse 2D covariance (a, b, c): [[a, b], [b, c]]


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(w, x, y, z) quaternions (any norm) -> rotation matrices. [..., 4] -> [..., 3, 3]."""
    w, x, y, z = torch.unbind(torch.nn.functional.normalize(quats, dim=-1), dim=-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """3D covariances ``R S S^T R^T``. [N, 4], [N, 3] -> [N, 3, 3]."""
    M = quat_to_rotmat(quats) * scales[..., None, :]  # [N, 3, 3] = R @ diag(s)
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor | None,  # [N]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Projection:
    """Project 3D Gaussians into ``C`` pinhole cameras (EWA splatting).

    Args:
        means: Gaussian centres in the world frame. [N, 3]
        quats: Rotations (w, x, y, z), need not be normalised. [N, 4]
        scales: Activated standard deviations along the local axes. [N, 3]
        opacities: Activated opacities, for the opacity-aware extent (``None``: 3.33 sigma). [N]
        viewmats: World-to-camera transforms, OpenCV axes. [C, 4, 4]
        Ks: Pinhole intrinsics in pixels. [C, 3, 3]
        width: Image width in pixels.
        height: Image height in pixels.
        eps2d: Low-pass filter added to the 2D covariance (px^2).
        near_plane: Gaussians with camera depth <= this are culled.
        far_plane: Gaussians with camera depth >= this are culled.

    Returns:
        The :class:`Projection`; invisible entries have zero radii.
    """
    R = viewmats[:, :3, :3]  # [C, 3, 3]
    t = viewmats[:, :3, 3]  # [C, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    covars_c = torch.einsum("cij,njk,clk->cnil", R, covariances(quats, scales), R)  # [C, N, 3, 3]

    tx, ty, tz = torch.unbind(means_c, dim=-1)  # [C, N]
    in_depth = (tz > near_plane) & (tz < far_plane)
    # Culled entries still flow through autograd (with zero upstream gradient); a safe depth keeps
    # their 1/z terms finite so 0 * inf never turns a gradient into NaN.
    tz = torch.where(in_depth, tz, torch.ones_like(tz))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    jx = tz * torch.clamp(tx / tz, min=-lim_x_neg, max=lim_x_pos)
    jy = tz * torch.clamp(ty / tz, min=-lim_y_neg, max=lim_y_pos)
    zero = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zero, -fx * jx / tz**2, zero, fy / tz, -fy * jy / tz**2], dim=-1)
    J = J.reshape(tz.shape + (2, 3))  # [C, N, 2, 3]
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)  # [C, N, 2]

    a = cov2d[..., 0, 0] + eps2d
    c = cov2d[..., 1, 1] + eps2d
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det = det.clamp(min=1e-10)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)  # [C, N, 3]

    with torch.no_grad():
        extent = torch.full_like(a, MAX_EXTENT)
        if opacities is not None:
            op = opacities.detach().expand_as(a)
            valid = valid & (op >= ALPHA_THRESHOLD)
            extent = torch.minimum(extent, torch.sqrt(2.0 * torch.log(op.clamp(min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD)))
        radius = torch.stack(
            [torch.ceil(extent * torch.sqrt(a.clamp(min=0))), torch.ceil(extent * torch.sqrt(c.clamp(min=0)))], dim=-1
        )
        m = means2d.detach()
        inside = (
            (m[..., 0] + radius[..., 0] > 0)
            & (m[..., 0] - radius[..., 0] < width)
            & (m[..., 1] + radius[..., 1] > 0)
            & (m[..., 1] - radius[..., 1] < height)
        )
        keep = valid & inside & (radius > 0).any(dim=-1)
        radii = torch.where(keep[..., None], radius, torch.zeros_like(radius)).to(torch.int32)
    return Projection(radii=radii, means2d=means2d, depths=means_c[..., 2], conics=conics)


# Real spherical-harmonics constants (degree 0..3), the ones 3DGS and gsplat use. SH_C0 is the
# project's one copy of the degree-0 constant: rgb = 0.5 + SH_C0 * f_dc.
SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_SH_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)  # fmt: skip


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """SH basis values at unit directions. [..., 3] -> [..., (degree + 1)^2]."""
    if not 0 <= degree <= 3:
        raise ValueError(f"sh_degree must be in 0..3, got {degree}")
    x, y, z = torch.unbind(dirs, dim=-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            _SH_C2[0] * x * y, _SH_C2[1] * y * z, _SH_C2[2] * (2 * zz - xx - yy),
            _SH_C2[3] * x * z, _SH_C2[4] * (xx - yy),
        ]  # fmt: skip
    if degree >= 3:
        out += [
            _SH_C3[0] * y * (3 * xx - yy), _SH_C3[1] * x * y * z, _SH_C3[2] * y * (4 * zz - xx - yy),
            _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _SH_C3[4] * x * (4 * zz - xx - yy),
            _SH_C3[5] * z * (xx - yy), _SH_C3[6] * x * (xx - 3 * yy),
        ]  # fmt: skip
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colour from SH coefficients, before the +0.5 offset gsplat's rasterizer adds.

    Args:
        degree: Degree used (only the first ``(degree + 1)^2`` coefficients count).
        dirs: View directions (any norm; camera -> Gaussian). [..., 3]
        coeffs: SH coefficients. [..., K, 3] with K >= (degree + 1)^2

    Returns:
        Colours. [..., 3]
    """
    n = (degree + 1) ** 2
    if coeffs.shape[-2] < n:
        raise ValueError(f"sh_degree {degree} needs {n} coefficients, got {coeffs.shape[-2]}")
    bases = sh_bases(degree, torch.nn.functional.normalize(dirs, dim=-1))  # [..., n]
    return (bases[..., None] * coeffs[..., :n, :]).sum(dim=-2)


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_degree_from_bases(k: int) -> int:
    d = int(round(math.sqrt(k))) - 1
    if (d + 1) ** 2 != k:
        raise ValueError(f"{k} is not a square number of SH coefficients")
    return d
