"""Export / import of Gaussians as ``.ply``, in the capture's world frame.

- :func:`export_splat_ply`: the standard 3D Gaussian splatting layout read by common splat
  viewers: ``x y z nx ny nz f_dc_0..2 f_rest_0.. opacity scale_0..2 rot_0..3`` (float32;
  opacity as a logit, scales as logs, rotation w x y z, ``f_rest`` channel-major as in the
  original 3DGS code). Written at SH degree 3 by default whatever the model's degree (zero higher
  bands, the same colours): the original 3DGS loader (``graphdeco-inria/gaussian-splatting``
  ``scene/gaussian_model.py`` ``load_ply``, default ``sh_degree 3``) asserts exactly
  ``3 * ((3 + 1)^2 - 1) = 45`` ``f_rest_*`` properties.
- :func:`export_point_cloud_ply`: Gaussian centres with their base colour (``x y z red green blue``).
- :func:`import_splat_ply`: the inverse of :func:`export_splat_ply`.

Gaussians are trained in the normalised scene frame; ``world_from_scene`` (a similarity) maps them
back: means are transformed, log-scales shifted by ``log(scale)``, rotations pre-multiplied by the
similarity's rotation (identity for this project's centre + scale normalisation). View-dependent
SH coefficients are not rotated, which is exact whenever that rotation is the identity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..geometry import activate_opacities, quat_multiply_wxyz, rotmat_to_quat_wxyz, split_similarity
from ..ply import read_vertex, write_vertex_ply
from .gaussians import GaussianModel, sh0_to_rgb
from .project import sh_degree_from_bases


def world_arrays(model: GaussianModel, world_from_scene: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Raw parameters mapped to the world frame (float32): means, quats, log_scales, opacity_logits, sh0, shN."""
    raw = model.state_arrays()
    means = raw["means"].astype(np.float64)
    quats = raw["quats"].astype(np.float64)
    log_scales = raw["log_scales"].astype(np.float64)
    if world_from_scene is not None:
        scale, R, t = split_similarity(world_from_scene)
        means = scale * means @ R.T + t
        log_scales = log_scales + np.log(scale)
        if not np.allclose(R, np.eye(3)):
            quats = quat_multiply_wxyz(rotmat_to_quat_wxyz(R), quats)
    return {
        "means": means.astype(np.float32),
        "quats": quats.astype(np.float32),
        "log_scales": log_scales.astype(np.float32),
        "opacity_logits": raw["opacity_logits"],
        "sh0": raw["sh0"],
        "shN": raw["shN"],
    }


#: SH degree of the exported layout: the original 3DGS loader's default.
EXPORT_SH_DEGREE = 3


def export_splat_ply(path: str | Path, model: GaussianModel, world_from_scene: np.ndarray | None = None,
                     sh_degree: int | None = EXPORT_SH_DEGREE) -> int:  # fmt: skip
    """Write the standard 3DGS ``.ply`` (world frame). Returns the number of Gaussians written.

    ``sh_degree``: the layout's degree (default 3, what the original 3DGS loader expects); a model
    of lower degree gets zero higher bands, one of higher degree keeps its own. ``None`` writes the
    model's own degree.
    """
    w = world_arrays(model, world_from_scene)
    vertex = splat_vertex(w["means"], w["quats"], w["log_scales"], w["opacity_logits"], w["sh0"][:, 0, :], w["shN"],
                          sh_degree)  # fmt: skip
    write_vertex_ply(path, vertex)
    return len(vertex)


def splat_vertex(
    means: np.ndarray,  # [N, 3]
    quats: np.ndarray,  # [N, 4] wxyz
    log_scales: np.ndarray,  # [N, 3]
    opacity_logits: np.ndarray,  # [N]
    sh0: np.ndarray,  # [N, 3]
    shN: np.ndarray,  # [N, K-1, 3]
    sh_degree: int | None = EXPORT_SH_DEGREE,
) -> np.ndarray:
    """The standard 3DGS vertex layout (float32; ``f_rest_*`` channel-major), the one both the
    scene export and the query selection's export write. ``sh_degree``: see :func:`export_splat_ply`."""
    n = int(np.asarray(means).reshape(-1, 3).shape[0])
    shN = np.asarray(shN)
    if shN.ndim != 3 or shN.shape[0] != n or shN.shape[2] != 3:
        raise ValueError(f"shN must be [N, K-1, 3] with N = {n}, got {shN.shape}")
    if sh_degree is not None:
        bands = (max(int(sh_degree), 0) + 1) ** 2 - 1
        if shN.shape[1] < bands:
            shN = np.concatenate([shN, np.zeros((n, bands - shN.shape[1], 3), shN.dtype)], axis=1)
    f_rest = np.transpose(shN, (0, 2, 1)).reshape(n, 3 * shN.shape[1])  # [N, 3*(K-1)], channel-major
    names = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(f_rest.shape[1])]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    cols = np.concatenate(
        [
            np.asarray(means).reshape(n, 3), np.zeros((n, 3)), np.asarray(sh0).reshape(n, 3), f_rest,
            np.asarray(opacity_logits).reshape(n, 1), np.asarray(log_scales).reshape(n, 3),
            np.asarray(quats).reshape(n, 4),
        ],
        axis=1,
    ).astype(np.float32)  # fmt: skip
    vertex = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = cols[:, i]
    return vertex


def import_splat_ply(path: str | Path, device: str | torch.device = "cpu") -> GaussianModel:
    """Read a 3DGS ``.ply`` (this project's or another trainer's) into a :class:`GaussianModel`."""
    v = read_vertex(path)
    names = v.dtype.names or ()
    n_rest = len([k for k in names if k.startswith("f_rest_")])
    if n_rest % 3:
        raise ValueError(f"{path}: {n_rest} f_rest properties is not a multiple of 3")
    degree = sh_degree_from_bases(n_rest // 3 + 1)

    def get(*keys: str) -> np.ndarray:
        missing = [k for k in keys if k not in names]
        if missing:
            raise ValueError(f"{path}: missing 3DGS properties {missing}")
        return np.stack([np.asarray(v[k], dtype=np.float32) for k in keys], axis=1)

    n = len(v)
    rest = get(*[f"f_rest_{i}" for i in range(n_rest)]) if n_rest else np.zeros((n, 0), np.float32)
    params = {
        "means": get("x", "y", "z"),
        "quats": get("rot_0", "rot_1", "rot_2", "rot_3"),
        "scales": get("scale_0", "scale_1", "scale_2"),
        "opacities": get("opacity")[:, 0],
        "sh0": get("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
        "shN": np.transpose(rest.reshape(n, 3, n_rest // 3), (0, 2, 1)),
    }
    return GaussianModel({k: torch.as_tensor(np.ascontiguousarray(a)).to(device) for k, a in params.items()}, degree)


def export_point_cloud_ply(
    path: str | Path, model: GaussianModel, world_from_scene: np.ndarray | None = None, min_opacity: float = 0.0
) -> int:
    """Write Gaussian centres as a coloured point cloud (world frame). Returns the point count."""
    w = world_arrays(model, world_from_scene)
    keep = activate_opacities(w["opacity_logits"].astype(np.float64)) >= min_opacity
    pts = w["means"][keep]
    rgb = (np.clip(sh0_to_rgb(w["sh0"][keep, 0, :]), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    vertex = np.empty(len(pts), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"),
                                       ("blue", "u1")])  # fmt: skip
    for i, k in enumerate("xyz"):
        vertex[k] = pts[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        vertex[k] = rgb[:, i]
    write_vertex_ply(path, vertex)
    return len(pts)
