"""Tile-based front-to-back alpha compositing of 2D Gaussians in plain PyTorch.

Semantics are gsplat's ``rasterize_to_pixels`` (classic mode): pixel centres at ``+0.5``;
``alpha = min(0.999, opacity * exp(-sigma))``; a Gaussian is skipped at a pixel when
``sigma < 0`` or ``alpha < 1/255``; Gaussians are blended in increasing depth and a pixel stops
before the Gaussian that would bring its transmittance to ``<= 1e-4``.

How it stays fast and memory-bounded on a CPU: the image is cut into square tiles, every visible
Gaussian is listed in the tiles its screen-space box touches, and each tile's list is sorted by
depth. Tiles are processed in chunks of similar list length (sorted by length, so padding is
small); within a chunk everything is dense tensor algebra ``[tiles, gaussians, pixels]`` and the
transmittance is an exclusive cumulative sum of ``log(1 - alpha)``. A chunk holds at most
``pair_budget`` (Gaussian, pixel) pairs; when the whole image needs more than
``checkpoint_above`` pairs, chunks are recomputed in the backward pass (activation
checkpointing) so memory does not grow with the number of chunks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .project import ALPHA_THRESHOLD

#: Largest alpha of one Gaussian at one pixel.
MAX_ALPHA = 0.999
#: A pixel stops before the Gaussian that would bring its transmittance to this or below.
MIN_TRANSMITTANCE = 1e-4


def _tile_lists(
    means2d: Tensor,  # [E, 2]
    radii: Tensor,  # [E, 2]
    depths: Tensor,  # [E]
    image_ids: Tensor,  # [E]
    tile_size: int,
    tiles_x: int,
    tiles_y: int,
) -> tuple[Tensor, Tensor]:
    """Intersections ``(entry, tile)`` sorted by tile then depth. Returns ``(entry_ids, tile_ids)``."""
    device = means2d.device
    visible = (radii > 0).any(dim=-1)
    ids = torch.nonzero(visible).squeeze(1)  # [V]
    m, r = means2d[ids].detach(), radii[ids].to(means2d.dtype)
    lo = torch.floor((m - r) / tile_size).long()
    hi = torch.ceil((m + r) / tile_size).long()
    lo[:, 0].clamp_(0, tiles_x)
    hi[:, 0].clamp_(0, tiles_x)
    lo[:, 1].clamp_(0, tiles_y)
    hi[:, 1].clamp_(0, tiles_y)
    span = (hi - lo).clamp(min=0)  # [V, 2]
    count = span[:, 0] * span[:, 1]  # [V]
    entry = torch.repeat_interleave(ids, count)  # [M]
    # Position of each intersection inside its Gaussian's box, unravelled to (tx, ty).
    start = torch.cumsum(count, 0) - count
    local = torch.arange(entry.numel(), device=device) - torch.repeat_interleave(start, count)
    w = torch.repeat_interleave(span[:, 0], count)
    tx = torch.repeat_interleave(lo[:, 0], count) + local % w.clamp(min=1)
    ty = torch.repeat_interleave(lo[:, 1], count) + local // w.clamp(min=1)
    tile = image_ids[entry].long() * (tiles_x * tiles_y) + ty * tiles_x + tx
    # Two stable sorts give (tile, depth) order without building a combined key.
    order = torch.argsort(depths[entry].detach(), stable=True)
    entry, tile = entry[order], tile[order]
    order = torch.argsort(tile, stable=True)
    return entry[order], tile[order]


def _pixel_features(tile_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Monomials ``[u^2, v^2, u v, u, v, 1]`` of the pixel centres in tile-local coordinates. [P, 6]"""
    ar = torch.arange(tile_size, device=device, dtype=dtype) + 0.5
    v, u = torch.meshgrid(ar, ar, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, v * v, u * v, u, v, torch.ones_like(u)], dim=-1)


def _blend_chunk(
    gids: Tensor,  # [T, K] entry ids (padding points at any valid entry)
    pad: Tensor,  # [T, K] bool, True where the slot is real
    origin: Tensor,  # [T, 2] pixel coordinates of each tile's corner
    feats: Tensor,  # [P, 6] pixel monomials (see _pixel_features)
    means2d: Tensor,  # [E, 2]
    conics: Tensor,  # [E, 3]
    opacities: Tensor,  # [E]
    colors: Tensor,  # [E, D]
) -> tuple[Tensor, Tensor]:
    """Blend one chunk of tiles. Returns colours [T, P, D] and alphas [T, P]."""
    mu = means2d[gids] - origin[:, None, :]  # [T, K, 2] tile-local centres
    con = conics[gids]  # [T, K, 3]
    a, b, c = con[..., 0], con[..., 1], con[..., 2]
    mx, my = mu[..., 0], mu[..., 1]
    # log(opacity) - sigma is a quadratic polynomial in the pixel coordinates, so one matmul
    # against the pixel monomials evaluates it for every (Gaussian, pixel) pair. Tile-local
    # coordinates keep the expansion well conditioned in float32. Padding slots get -1e4 (alpha 0).
    log_op = torch.where(pad, torch.log(opacities[gids].clamp(min=1e-12)), torch.full_like(a, -1e4))
    coef = torch.stack(
        [
            -0.5 * a, -0.5 * c, -b, a * mx + b * my, c * my + b * mx,
            log_op - (0.5 * a * mx * mx + 0.5 * c * my * my + b * mx * my),
        ],
        dim=-1,
    )  # fmt: skip  # [T, K, 6]
    alpha = torch.clamp_max(torch.exp(coef @ feats.T), MAX_ALPHA)  # [T, K, P]
    # The conic is positive definite by construction (det > 0 after the low-pass), so gsplat's
    # "sigma < 0" skip never triggers; only the 1/255 threshold remains.
    alpha = torch.where(alpha >= ALPHA_THRESHOLD, alpha, torch.zeros_like(alpha))
    log_keep = torch.log1p(-alpha)
    log_t_after = torch.cumsum(log_keep, dim=1)  # transmittance after each Gaussian (log)
    with torch.no_grad():
        # Transmittance never increases, so "after <= 1e-4" is a suffix: everything from the
        # Gaussian that crosses the cut-off on is dropped (gsplat's exclusive stop).
        live = log_t_after > math.log(MIN_TRANSMITTANCE)
    weights = torch.where(live, alpha * torch.exp(log_t_after - log_keep), torch.zeros_like(alpha))
    out = torch.bmm(weights.transpose(1, 2), colors[gids])  # [T, P, D]
    return out, weights.sum(dim=1)


def composite(
    means2d: Tensor,  # [E, 2]
    conics: Tensor,  # [E, 3]
    opacities: Tensor,  # [E]
    colors: Tensor,  # [E, D]
    depths: Tensor,  # [E]
    radii: Tensor,  # [E, 2]
    image_ids: Tensor,  # [E]
    n_images: int,
    width: int,
    height: int,
    tile_size: int = 8,
    pair_budget: int = 2_000_000,
    checkpoint_above: int = 30_000_000,
) -> tuple[Tensor, Tensor, dict]:
    """Alpha-composite flat 2D Gaussian entries into ``n_images`` images.

    Args:
        means2d: Pixel-space centres. [E, 2]
        conics: Inverse 2D covariances (a, b, c). [E, 3]
        opacities: Activated opacities. [E]
        colors: Features to blend, any number of channels. [E, D]
        depths: Sort keys (camera depth). [E]
        radii: Screen-space half extents; entries with zero radii are skipped. [E, 2]
        image_ids: Image index of each entry. [E]
        n_images: Number of images ``I``.
        width: Image width.
        height: Image height.
        tile_size: Tile edge in pixels.
        pair_budget: Largest number of (Gaussian, pixel) pairs evaluated at once.
        checkpoint_above: Recompute chunks in backward when the total pairs exceed this.

    Returns:
        ``(colors [I, H, W, D], alphas [I, H, W, 1], stats)``; ``stats`` counts intersections.
    """
    device, dtype = means2d.device, means2d.dtype
    D = colors.shape[-1]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = n_images * tiles_x * tiles_y
    P = tile_size * tile_size
    entry, tile = _tile_lists(means2d, radii, depths, image_ids, tile_size, tiles_x, tiles_y)
    counts = torch.bincount(tile, minlength=n_tiles)  # [n_tiles]
    starts = torch.cumsum(counts, 0) - counts

    feats = _pixel_features(tile_size, device, dtype)

    busy = torch.nonzero(counts).squeeze(1)
    busy = busy[torch.argsort(counts[busy], descending=True)]
    counts_l = counts[busy].tolist()
    total_pairs = sum(counts_l) * P
    use_ckpt = torch.is_grad_enabled() and total_pairs > checkpoint_above and means2d.requires_grad

    out_colors = torch.zeros(n_tiles, P, D, device=device, dtype=dtype)
    out_alphas = torch.zeros(n_tiles, P, device=device, dtype=dtype)
    done_tiles, done_c, done_a = [], [], []
    i = 0
    while i < len(counts_l):
        K = counts_l[i]
        # Chunk tiles of similar list length (>= 3/4 of the longest) so padding stays small.
        n = 1
        while i + n < len(counts_l) and counts_l[i + n] * 4 >= K * 3 and (n + 1) * K * P <= pair_budget:
            n += 1
        tiles = busy[i : i + n]
        slot = torch.arange(K, device=device)
        pad = slot[None, :] < counts[tiles][:, None]  # [n, K]
        idx = (starts[tiles][:, None] + slot[None, :]).clamp(max=max(entry.numel() - 1, 0))
        gids = torch.where(pad, entry[idx], entry[idx[:, :1]])  # pad with the tile's first entry
        local = tiles % (tiles_x * tiles_y)
        origin = torch.stack([local % tiles_x, local // tiles_x], dim=-1).to(dtype) * tile_size  # [n, 2]
        args = (gids, pad, origin, feats, means2d, conics, opacities, colors)
        if use_ckpt:
            c, a = checkpoint(_blend_chunk, *args, use_reentrant=False)
        else:
            c, a = _blend_chunk(*args)
        done_tiles.append(tiles)
        done_c.append(c)
        done_a.append(a)
        i += n
    if done_tiles:
        all_tiles = torch.cat(done_tiles)
        out_colors = out_colors.index_put((all_tiles,), torch.cat(done_c))
        out_alphas = out_alphas.index_put((all_tiles,), torch.cat(done_a))

    def untile(x: Tensor) -> Tensor:  # [n_tiles, P, D] -> [I, H, W, D]
        x = x.reshape(n_images, tiles_y, tiles_x, tile_size, tile_size, -1)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(n_images, tiles_y * tile_size, tiles_x * tile_size, -1)
        return x[:, :height, :width]

    stats = {"n_intersections": int(entry.numel()), "n_pairs": int(total_pairs), "checkpointed": bool(use_ckpt)}
    return untile(out_colors), untile(out_alphas[..., None]), stats
