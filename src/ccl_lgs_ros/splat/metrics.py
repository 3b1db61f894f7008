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


def _gauss_window(size: int, sigma: float, channels: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] @ g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM (Gaussian 11x11 window, sigma 1.5, the 3DGS loss variant with zero padding).

    Args:
        pred: Images. [B, H, W, C]
        target: Images. [B, H, W, C]
    """
    x = pred.permute(0, 3, 1, 2)
    y = target.permute(0, 3, 1, 2)
    C = x.shape[1]
    w = _gauss_window(window, sigma, C, x.device, x.dtype)
    pad = window // 2

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, w, padding=pad, groups=C)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean()
