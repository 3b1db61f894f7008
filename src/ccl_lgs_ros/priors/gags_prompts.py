"""GAGS granularity-aware prompting: SAM prompt density from depth.

A uniform grid gives a far view of an object as many prompts per object pixel-area as a near
view... in image space, i.e. far fewer per object, so the same object is split differently in
different views. GAGS fixes the prompt density per unit of *surface*: every pixel is lifted to 3D
with the frame's depth and reprojected into the other views; the smallest depth at which any
view sees that point, ``d_min``, is the nearest observation. A patch then gets
``base x mean((d_min / d)^2)`` prompts (``<= base``: far views get fewer prompts), and inside the
patch the prompts are spread over sub-patches in proportion to how many pixels are covered
(by valid depth or, with a reconstruction, by Gaussians) rather than uniformly.

Depth comes from the caller: a depth sensor (``Capture.load_depth``) or the depth rendered from
the RGB reconstruction.
"""

from __future__ import annotations

import numpy as np

from ..geometry import GL_FROM_CV


def _nearest_views(c2ws: np.ndarray, index: int, count: int) -> np.ndarray:
    centres = c2ws[:, :3, 3]
    d = np.linalg.norm(centres - centres[index], axis=1)
    d[index] = np.inf
    return np.argsort(d)[: max(0, min(count, len(c2ws) - 1))]


def min_depth_over_views(
    depths: list[np.ndarray] | np.ndarray,  # F x float32 [H, W], metres, 0 = invalid
    Ks: np.ndarray,  # [F, 3, 3]
    c2ws: np.ndarray,  # [F, 4, 4] camera-to-world, OpenGL axes (capture convention)
    index: int,
    *,
    neighbours: int = 16,
    stride: int = 4,
    occlusion_tol: float = 0.05,
) -> np.ndarray:
    """Per-pixel nearest observation depth ``float32 [H, W]`` of frame ``index``.

    Args:
        depths: depth of every frame (the same size as the frame's image and ``Ks``).
        Ks: pinhole intrinsics per frame.
        c2ws: camera-to-world per frame.
        index: the frame whose pixels are reprojected.
        neighbours: only the nearest cameras (by centre distance) are checked (cost bound).
        stride: pixels are reprojected on a ``stride`` grid and the result upsampled.
        occlusion_tol: a view sees the point when its own depth there is at least
            ``(1 - tol) x`` the point's depth in that view (else something is in front).

    Returns:
        ``d_min <= depth`` where the depth is valid, 0 where it is not.
    """
    c2ws = np.asarray(c2ws, dtype=np.float64)
    depth = np.asarray(depths[index], dtype=np.float32)
    h, w = depth.shape
    ys, xs = np.mgrid[0:h:stride, 0:w:stride]
    z = depth[ys, xs].astype(np.float64)
    valid = z > 0
    K = np.asarray(Ks[index], dtype=np.float64)
    cam = np.stack([(xs - K[0, 2]) / K[0, 0] * z, (ys - K[1, 2]) / K[1, 1] * z, z], axis=-1)  # OpenCV axes
    c2w_cv = c2ws[index] @ GL_FROM_CV
    world = cam @ c2w_cv[:3, :3].T + c2w_cv[:3, 3]
    best = np.where(valid, z, 0.0)
    for j in _nearest_views(c2ws, index, neighbours):
        w2c = np.linalg.inv(c2ws[j] @ GL_FROM_CV)
        pj = world @ w2c[:3, :3].T + w2c[:3, 3]
        zj = pj[..., 2]
        Kj = np.asarray(Ks[j], dtype=np.float64)
        dj = np.asarray(depths[j], dtype=np.float32)
        hj, wj = dj.shape
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.round(Kj[0, 0] * pj[..., 0] / zj + Kj[0, 2]).astype(np.int64, copy=False)
            v = np.round(Kj[1, 1] * pj[..., 1] / zj + Kj[1, 2]).astype(np.int64, copy=False)
        inside = valid & (zj > 1e-6) & (u >= 0) & (u < wj) & (v >= 0) & (v < hj)
        seen = np.zeros_like(inside)
        seen[inside] = dj[v[inside], u[inside]] >= (1.0 - occlusion_tol) * zj[inside]
        best = np.where(seen & (zj < best), zj, best)
    # Nearest-neighbour upsampling of the strided result back to full resolution.
    full = np.repeat(np.repeat(best, stride, axis=0), stride, axis=1)[:h, :w]
    return np.where(depth > 0, np.minimum(full, depth), 0.0).astype(np.float32)


def granularity_points(
    depth: np.ndarray,  # float32 [H, W], 0 = invalid
    min_depth: np.ndarray,  # float32 [H, W] from min_depth_over_views
    *,
    points_per_side: int = 32,
    patches_per_side: int = 8,
    subpatches_per_side: int = 4,
    coverage: np.ndarray | None = None,  # bool [H, W]; default: valid depth
    seed: int = 0,
) -> np.ndarray:
    """Prompt positions ``float64 [P, 2]`` (x, y pixels) with GAGS's depth-aware density.

    The base count per patch is chosen so that a view at the nearest observed depth everywhere
    gets as many prompts as the uniform ``points_per_side`` grid.

    Args:
        depth: the frame's depth.
        min_depth: the nearest observation depth per pixel.
        points_per_side: density of the uniform grid the base count is matched to.
        patches_per_side: the image is split into this many patches per side.
        subpatches_per_side: each patch is split again; prompts follow the covered pixel counts.
        coverage: pixels covered by the scene (Gaussians / valid depth).
        seed: random seed of the sample positions inside sub-patches.
    """
    h, w = depth.shape
    covered = (depth > 0) if coverage is None else np.asarray(coverage, dtype=bool)
    base = points_per_side**2 / patches_per_side**2
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(depth > 0, (min_depth / depth) ** 2, 0.0)
    ratio = np.clip(np.nan_to_num(ratio), 0.0, 1.0)
    rng = np.random.default_rng(seed)
    ys = np.linspace(0, h, patches_per_side + 1).astype(int)
    xs = np.linspace(0, w, patches_per_side + 1).astype(int)
    points: list[np.ndarray] = []
    for py in range(patches_per_side):
        for px in range(patches_per_side):
            y0, y1, x0, x1 = ys[py], ys[py + 1], xs[px], xs[px + 1]
            cov = covered[y0:y1, x0:x1]
            if not cov.any():
                continue
            n = int(round(base * float(ratio[y0:y1, x0:x1][cov].mean()) * cov.mean()))
            if n == 0:
                continue
            points.append(_sample_patch(cov, n, subpatches_per_side, rng) + [x0, y0])
    return np.concatenate(points).astype(np.float64) if points else np.zeros((0, 2))


def _sample_patch(cov: np.ndarray, n: int, subs: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` covered pixel centres in one patch, allotted to sub-patches by covered pixel count."""
    h, w = cov.shape
    ys = np.linspace(0, h, subs + 1).astype(int)
    xs = np.linspace(0, w, subs + 1).astype(int)
    cells = [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(subs) for j in range(subs)]
    counts = np.array([cov[a:b, c:d].sum() for a, b, c, d in cells], dtype=np.float64)
    share = n * counts / counts.sum()
    alloc = np.floor(share).astype(int)
    # Largest remainders get the points the floor left over.
    alloc[np.argsort(share - alloc)[::-1][: n - alloc.sum()]] += 1
    out = []
    for (a, b, c, d), k in zip(cells, alloc):
        if k == 0:
            continue
        yy, xx = np.nonzero(cov[a:b, c:d])
        pick = rng.choice(len(yy), size=k, replace=k > len(yy))
        out.append(np.stack([xx[pick] + c + 0.5, yy[pick] + a + 0.5], axis=1))
    return np.concatenate(out)  # [n, 2] x, y within the patch


__all__ = ["granularity_points", "min_depth_over_views"]
