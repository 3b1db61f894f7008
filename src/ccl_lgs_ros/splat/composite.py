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
checkpointing) so memory does not grow with the number of chunks. The blending step has an
analytic backward pass (:class:`_Blend`): autograd would save and revisit a dozen
``[tiles, gaussians, pixels]`` intermediates per chunk, this keeps two (alpha and the weights).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .project import ALPHA_THRESHOLD

#: Largest alpha of one Gaussian at one pixel.
MAX_ALPHA = 0.999
#: A pixel stops before the Gaussian that would bring its transmittance to this or below.
MIN_TRANSMITTANCE = 1e-4


def _min_sigma_over_boxes(conics: Tensor, x0: Tensor, x1: Tensor, y0: Tensor, y1: Tensor) -> Tensor:
    """Smallest ``0.5 (a dx^2 + c dy^2) + b dx dy`` over boxes ``dx in [x0, x1], dy in [y0, y1]``.

    The quadratic is convex with its minimum 0 at the origin; when the origin lies outside the box
    the minimum is on one of its four edges, where it is a 1D quadratic with a closed-form minimiser.
    """
    a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]

    def along_x(dy: Tensor) -> Tensor:  # edge dy = const, dx free in [x0, x1]
        dx = torch.clamp(-b * dy / a, min=x0, max=x1)
        return 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy

    def along_y(dx: Tensor) -> Tensor:  # edge dx = const, dy free in [y0, y1]
        dy = torch.clamp(-b * dx / c, min=y0, max=y1)
        return 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy

    edges = torch.minimum(torch.minimum(along_x(y0), along_x(y1)), torch.minimum(along_y(x0), along_y(x1)))
    inside = (x0 <= 0) & (x1 >= 0) & (y0 <= 0) & (y1 >= 0)
    return torch.where(inside, torch.zeros_like(edges), edges)


#: Culling margin in log-alpha: a (Gaussian, tile) pair is dropped only when its largest alpha in
#: the tile is below the 1/255 threshold by more than this, so rounding never drops a live pair.
_CULL_MARGIN = 1e-3


def _tile_lists(
    means2d: Tensor,  # [E, 2]
    radii: Tensor,  # [E, 2]
    depths: Tensor,  # [E]
    image_ids: Tensor,  # [E]
    tile_size: int,
    tiles_x: int,
    tiles_y: int,
    conics: Tensor | None = None,  # [E, 3]
    opacities: Tensor | None = None,  # [E]
) -> tuple[Tensor, Tensor]:
    """Intersections ``(entry, tile)`` sorted by tile then depth. Returns ``(entry_ids, tile_ids)``.

    Every tile in a Gaussian's screen-space box is a candidate; with ``conics`` and ``opacities``
    a candidate is kept only when the Gaussian's alpha can reach the 1/255 threshold somewhere in
    the tile (exact: the dropped pairs would have alpha 0 at every pixel of the tile).
    """
    device = means2d.device
    visible = (radii > 0).any(dim=-1)
    ids = torch.nonzero(visible).squeeze(1)  # [V]
    # Depth order first (stable: ties keep the entry order), so the intersections come out in
    # depth order and one stable sort by tile gives (tile, depth) order.
    ids = ids[torch.argsort(depths.detach()[ids], stable=True)]
    m, r = means2d[ids].detach(), radii[ids].to(means2d.dtype)
    lo = torch.floor((m - r) / tile_size).long()
    hi = torch.ceil((m + r) / tile_size).long()
    lo[:, 0].clamp_(0, tiles_x)
    hi[:, 0].clamp_(0, tiles_x)
    lo[:, 1].clamp_(0, tiles_y)
    hi[:, 1].clamp_(0, tiles_y)
    span = (hi - lo).clamp(min=0)  # [V, 2]
    count = span[:, 0] * span[:, 1]  # [V]
    slot = torch.repeat_interleave(torch.arange(ids.numel(), device=device), count)  # [M] index into ids
    # Position of each intersection inside its Gaussian's box, unravelled to (tx, ty).
    start = torch.cumsum(count, 0) - count
    local = torch.arange(slot.numel(), device=device) - start[slot]
    w = span[slot, 0].clamp(min=1)
    tx = lo[slot, 0] + local % w
    ty = lo[slot, 1] + local // w
    if conics is not None and opacities is not None and slot.numel():
        # Pixel centres of the tile relative to the Gaussian's centre.
        ms = m[slot]
        x0 = tx.to(m.dtype) * tile_size + 0.5 - ms[:, 0]
        y0 = ty.to(m.dtype) * tile_size + 0.5 - ms[:, 1]
        sig = _min_sigma_over_boxes(conics.detach()[ids][slot], x0, x0 + (tile_size - 1), y0, y0 + (tile_size - 1))
        log_op = torch.log(opacities.detach()[ids].clamp(min=1e-30))[slot]
        keep = log_op - sig >= math.log(ALPHA_THRESHOLD) - _CULL_MARGIN
        slot, tx, ty = slot[keep], tx[keep], ty[keep]
    entry = ids[slot]
    tile = image_ids[entry].long() * (tiles_x * tiles_y) + ty * tiles_x + tx
    order = torch.argsort(tile, stable=True)
    return entry[order], tile[order]


def _pixel_features(tile_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Monomials ``[u^2, v^2, u v, u, v, 1]`` of the pixel centres in tile-local coordinates. [P, 6]"""
    ar = torch.arange(tile_size, device=device, dtype=dtype) + 0.5
    v, u = torch.meshgrid(ar, ar, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, v * v, u * v, u, v, torch.ones_like(u)], dim=-1)


def _blend_forward(coef: Tensor, cols: Tensor, feats: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Alphas and blending weights of one chunk. Returns ``(out [T,P,D], alpha_sum [T,P], alpha, w)``."""
    # log(opacity) - sigma is a quadratic polynomial in the pixel coordinates, so one matmul
    # against the pixel monomials evaluates it for every (Gaussian, pixel) pair.
    alpha = torch.matmul(coef, feats.T).exp_().clamp_max_(MAX_ALPHA)  # [T, K, P]
    # The conic is positive definite by construction (det > 0 after the low-pass), so gsplat's
    # "sigma < 0" skip never triggers; only the 1/255 threshold remains.
    alpha.masked_fill_(alpha < ALPHA_THRESHOLD, 0.0)
    log_keep = torch.log1p(-alpha)
    log_t_after = torch.cumsum(log_keep, dim=1)  # transmittance after each Gaussian (log)
    # Transmittance never increases, so "after <= 1e-4" is a suffix: everything from the
    # Gaussian that crosses the cut-off on is dropped (gsplat's exclusive stop).
    dead = log_t_after <= math.log(MIN_TRANSMITTANCE)
    w = log_t_after.sub_(log_keep).exp_().mul_(alpha)  # alpha * transmittance before it
    w.masked_fill_(dead, 0.0)
    out = torch.bmm(w.transpose(1, 2), cols)  # [T, P, D]
    return out, w.sum(dim=1), alpha, w


class _Blend(torch.autograd.Function):
    """Front-to-back blending of one chunk with an analytic backward pass.

    With ``w_k = alpha_k prod_{j<k} (1 - alpha_j)`` (zero once the pixel has stopped) and
    ``s_k = c_k . dL/dout + dL/dalpha_sum``, the loss gradient of ``alpha_k`` times ``alpha_k``
    (the gradient of the exponent, ``alpha = exp(q)``) is
    ``w_k s_k - alpha_k / (1 - alpha_k) * sum_{j>k} w_j s_j``; it vanishes by itself for skipped
    Gaussians (``alpha = 0``) and after the stop (``w = 0`` from there on), and is cut where the
    0.999 clamp is active. This is what autograd computes through :func:`_blend_forward`, in a
    handful of dense passes instead of a long chain of saved intermediates.
    """

    @staticmethod
    def forward(ctx, coef: Tensor, cols: Tensor, feats: Tensor, keep: bool) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        out, alpha_sum, alpha, w = _blend_forward(coef, cols, feats)
        ctx.keep = keep
        if keep:
            ctx.save_for_backward(coef, cols, feats, alpha, w)
        else:  # recomputed in backward: memory does not grow with the number of chunks
            ctx.save_for_backward(coef, cols, feats)
        return out, alpha_sum

    @staticmethod
    def backward(ctx, g_out: Tensor, g_alpha: Tensor):  # type: ignore[override]
        if ctx.keep:
            coef, cols, feats, alpha, w = ctx.saved_tensors
        else:
            coef, cols, feats = ctx.saved_tensors
            _, _, alpha, w = _blend_forward(coef, cols, feats)
        g_cols = torch.bmm(w, g_out)  # [T, K, D]
        s = torch.bmm(cols, g_out.transpose(1, 2)).add_(g_alpha[:, None, :])  # [T, K, P]
        ws = s.mul_(w)
        # sum over the later Gaussians j > k (exact suffix sums: a reversed cumulative sum)
        later = ws.flip(1).cumsum(1).flip(1).sub_(ws)
        ratio = alpha / (1.0 - alpha)
        ratio.masked_fill_(alpha >= MAX_ALPHA, 0.0)
        g_q = ws.masked_fill_(alpha >= MAX_ALPHA, 0.0).sub_(later.mul_(ratio))
        g_coef = torch.matmul(g_q, feats)  # [T, K, 6]
        return g_coef, g_cols, None, None


def _intersection_coefs(
    entry: Tensor, tile: Tensor, packed: Tensor, tiles_x: int, tiles_y: int, tile_size: int
) -> Tensor:
    """``log(opacity) - sigma`` of every intersection as coefficients of the pixel monomials. [M, 6]

    ``sigma`` is a quadratic polynomial in the pixel coordinates, so one matmul against the
    pixel monomials (:func:`_pixel_features`) evaluates it for every (Gaussian, pixel) pair of a
    tile. Tile-local coordinates keep the expansion well conditioned in float32.
    """
    g = packed[entry]  # [M, 6]: means2d (2), conic (3), log opacity (1)
    local = tile % (tiles_x * tiles_y)
    mx = g[:, 0] - (local % tiles_x).to(g.dtype) * tile_size  # tile-local centres
    my = g[:, 1] - (local // tiles_x).to(g.dtype) * tile_size
    a, b, c = g[:, 2], g[:, 3], g[:, 4]
    return torch.stack(
        [
            -0.5 * a, -0.5 * c, -b, a * mx + b * my, c * my + b * mx,
            g[:, 5] - (0.5 * a * mx * mx + 0.5 * c * my * my + b * mx * my),
        ],
        dim=-1,
    )  # fmt: skip


def _blend_chunk(coef: Tensor, cols: Tensor, feats: Tensor, keep: bool) -> tuple[Tensor, Tensor]:
    """Blend one chunk of tiles: coefficients [T, K, 6] and colours [T, K, D] in depth order.

    Returns colours [T, P, D] and alphas [T, P].
    """
    if torch.is_grad_enabled() and (coef.requires_grad or cols.requires_grad):
        out, alpha_sum = _Blend.apply(coef, cols, feats, keep)
        return out, alpha_sum
    out, alpha_sum, _, _ = _blend_forward(coef, cols, feats)
    return out, alpha_sum


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
    entry, tile = _tile_lists(
        means2d, radii, depths, image_ids, tile_size, tiles_x, tiles_y, conics=conics, opacities=opacities
    )
    counts = torch.bincount(tile, minlength=n_tiles)  # [n_tiles]
    starts = torch.cumsum(counts, 0) - counts

    feats = _pixel_features(tile_size, device, dtype)

    busy = torch.nonzero(counts).squeeze(1)
    busy = busy[torch.argsort(counts[busy], descending=True)]
    counts_l = counts[busy].tolist()
    total_pairs = sum(counts_l) * P
    recompute = torch.is_grad_enabled() and total_pairs > checkpoint_above
    # The per-intersection work (gathers, the polynomial coefficients) is done once for the whole
    # image, not per chunk; a sentinel row (alpha 0, colour 0) fills the padding slots.
    log_op = torch.log(opacities.clamp(min=1e-12))
    geom = torch.cat([means2d, conics, log_op[:, None]], dim=-1)  # [E, 6]
    coef_all = _intersection_coefs(entry, tile, geom, tiles_x, tiles_y, tile_size)  # [M, 6]
    sentinel = torch.zeros(1, 6, device=device, dtype=dtype)
    sentinel[0, 5] = -1e4
    coef_all = torch.cat([coef_all, sentinel])
    cols_all = torch.cat([colors[entry], torch.zeros(1, D, device=device, dtype=dtype)])  # [M + 1, D]
    M = entry.numel()

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
        idx = torch.where(pad, starts[tiles][:, None] + slot[None, :], M)  # padding -> sentinel
        c, a = _blend_chunk(coef_all[idx], cols_all[idx], feats, keep=not recompute)
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

    stats = {"n_intersections": int(entry.numel()), "n_pairs": int(total_pairs), "checkpointed": bool(recompute)}
    return untile(out_colors), untile(out_alphas[..., None]), stats
