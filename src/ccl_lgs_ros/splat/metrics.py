"""Image metrics (PSNR, SSIM) in PyTorch; SSIM is differentiable and doubles as the D-SSIM loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(pred: Tensor, target: Tensor) -> float:
    """PSNR in dB of images in 0..1 (any shape)."""
    mse = float(F.mse_loss(pred.float().clamp(0, 1), target.float()))
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def _gauss_1d(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM (Gaussian 11x11 window, sigma 1.5, the 3DGS loss variant with zero padding).

    The Gaussian window is separable: the five local moments are filtered together, one
    vertical and one horizontal 1D pass (the same values as the 2D window up to rounding).

    Args:
        pred: Images. [B, H, W, C]
        target: Images. [B, H, W, C]
    """
    x = pred.permute(0, 3, 1, 2)
    y = target.permute(0, 3, 1, 2)
    C = x.shape[1]
    g = _gauss_1d(window, sigma, x.device, x.dtype)
    pad = window // 2
    k = 5 * C
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B, 5C, H, W]
    f = F.conv2d(moments, g.view(1, 1, window, 1).expand(k, 1, window, 1), padding=(pad, 0), groups=k)
    f = F.conv2d(f, g.view(1, 1, 1, window).expand(k, 1, 1, window), padding=(0, pad), groups=k)
    mu_x, mu_y, exx, eyy, exy = f.split(C, dim=1)
    sxx = exx - mu_x**2
    syy = eyy - mu_y**2
    sxy = exy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean()
