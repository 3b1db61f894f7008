"""Files for a query result: point clouds, a 3DGS ``.ply`` of the selection, a preview PNG.

All writes are atomic (``ccl_lgs_ros.io``). The 3DGS file uses the layout the reference
implementation and common viewers read: ``x y z nx ny nz f_dc_0..2 opacity scale_0..2 rot_0..3``
with opacity as a logit, scales as logarithms and colours as zeroth-order SH coefficients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..geometry import matrix_to_quat_xyzw
from ..io import atomic_write_json
from ..ply import colors_to_u8, write_vertex_ply
from ..ply import write_points_ply as write_ply_points
from ..splat.ply import EXPORT_SH_DEGREE, splat_vertex
from ..splat.project import SH_C0
from ..viz import BoxMarker, TextMarker, render_rviz_like
from .engine import QueryResult
from .index import SemanticIndex


def write_points_ply(path: str | Path, points: np.ndarray, colors: np.ndarray | None = None) -> None:
    """Binary ``.ply`` point cloud: ``points [P, 3]``, optional ``colors [P, 3]`` in 0..1."""
    write_ply_points(path, points, None if colors is None else colors_to_u8(colors))


def write_gaussians_ply(
    path: str | Path,
    means: np.ndarray,  # [M, 3]
    quats: np.ndarray,  # [M, 4] wxyz
    scales: np.ndarray,  # [M, 3] activated
    opacities: np.ndarray,  # [M] activated
    colors: np.ndarray,  # [M, 3] 0..1
) -> None:
    """3DGS ``.ply`` of Gaussians given in activated form: constant colour, written in the degree-3
    layout with zero higher bands (45 ``f_rest_*``), which the original 3DGS loader requires."""
    m = np.asarray(means).reshape(-1, 3).shape[0]
    op = np.clip(np.asarray(opacities, dtype=np.float64).reshape(-1), 1e-6, 1 - 1e-6)
    q = np.asarray(quats, dtype=np.float64).reshape(-1, 4)
    vertex = splat_vertex(
        np.asarray(means, dtype=np.float64).reshape(-1, 3),
        q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12),
        np.log(np.maximum(np.asarray(scales, dtype=np.float64).reshape(-1, 3), 1e-12)),
        np.log(op / (1 - op)),
        (np.asarray(colors, dtype=np.float64).reshape(-1, 3) - 0.5) / SH_C0,
        np.zeros((m, 0, 3)),
        EXPORT_SH_DEGREE,
    )
    write_vertex_ply(path, vertex)


#: Distinct highlight colours of the instances in the preview.
_PALETTE = np.array(
    [[0.95, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.4, 1.0], [1.0, 0.8, 0.1], [0.9, 0.3, 0.9], [0.1, 0.9, 0.9]]
)


def render_selection_png(
    path: str | Path,
    index: SemanticIndex,
    result: QueryResult,
    *,
    width: int = 1200,
    height: int = 800,
    max_background: int = 300_000,
) -> None:
    """Preview of a query result, drawn like RViz (:func:`ccl_lgs_ros.viz.render_rviz_like`):
    the scene's Gaussian centres in their colours, each instance's cloud in its own colour with
    its oriented box and score, the camera focused on the instances (on the scene when nothing
    was found). Matplotlib Agg, no GPU or display needed."""
    rng = np.random.default_rng(0)
    keep = np.flatnonzero(index.opacities >= 0.05)
    if keep.size > max_background:
        keep = np.sort(rng.choice(keep, max_background, replace=False))
    clouds, colors, boxes, texts = [], [], [], []
    for i, inst in enumerate(result.instances):
        col = _PALETTE[i % len(_PALETTE)]
        cloud = inst.points if inst.points.shape[0] else index.means[inst.gaussian_ids]
        clouds.append(cloud)
        colors.append(np.tile(col, (cloud.shape[0], 1)))
        quat = matrix_to_quat_xyzw(inst.box.rotation)
        boxes.append(BoxMarker(inst.box.center, quat, inst.box.extent, (*col, 0.3)))
        top = inst.box.center + [0.0, 0.0, 0.5 * float(inst.box.extent.max()) + 0.03]
        texts.append(TextMarker(top, f"#{i} ({inst.score:.2f})"))
    title = f'"{result.text}": ' + (f"{len(result.instances)} instance(s)" if result.found else "nothing found")
    render_rviz_like(
        path,
        scene_points=index.means[keep],
        scene_colors=index.colors[keep],
        query_points=np.concatenate(clouds) if clouds else None,
        query_colors=np.concatenate(colors) if colors else None,
        boxes=boxes,
        texts=texts,
        fixed_frame=index.frame_id,
        title=f"{title} (best {result.best_score:.2f})",
        width=width,
        height=height,
        query_sphere_m=0.006,
    )


def export_result(out_dir: str | Path, index: SemanticIndex, result: QueryResult, *, png: bool = True) -> dict:
    """Write everything for ``result`` into ``out_dir``; returns ``{"kind": path}``.

    Files: ``result.json``; per instance ``instance_XX_points.ply`` (the sampled cloud, or the
    Gaussian centres when no cloud was requested); ``selection_gaussians.ply`` (3DGS, all
    instances); ``selection.png``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict = {"instances": []}
    for i, inst in enumerate(result.instances):
        path = out / f"instance_{i:02d}_points.ply"
        if inst.points.shape[0]:
            write_points_ply(path, inst.points, inst.point_colors)
        else:
            write_points_ply(path, index.means[inst.gaussian_ids], index.colors[inst.gaussian_ids])
        written["instances"].append(str(path))
    ids = np.concatenate([inst.gaussian_ids for inst in result.instances]) if result.instances else np.zeros(0, int)
    gpath = out / "selection_gaussians.ply"
    write_gaussians_ply(
        gpath, index.means[ids], index.quats[ids], index.scales[ids], index.opacities[ids], index.colors[ids]
    )
    written["gaussians"] = str(gpath)
    if png:
        render_selection_png(out / "selection.png", index, result)
        written["png"] = str(out / "selection.png")
    data = result.to_json()
    data["files"] = written
    atomic_write_json(out / "result.json", data)
    written["json"] = str(out / "result.json")
    return written
