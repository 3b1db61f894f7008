"""An RViz-like offscreen picture of what the node publishes for visualisation.

RViz needs a display and a system ROS 2; a robot's computer or this project's CI often has
neither. :func:`render_rviz_like` draws the same things ``config/ccl_lgs.rviz`` shows — the
grid, the fixed frame's axes, the scene cloud (RGB), the last query's cloud (coloured by its
``relevance`` channel with RViz's rainbow), and the instance markers (translucent oriented boxes,
text labels, centroid spheres) — through an RViz *orbit* camera (focal point, distance, yaw,
pitch, as in the ``Views`` section of the .rviz file), with matplotlib's Agg backend. It is a
picture of the same data, not a screenshot of RViz.

Plain numpy in, PNG out (written atomically); the ROS side (subscribing to the latched topics)
is :mod:`ccl_lgs_ros.ros.rviz_preview`.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .geometry import box_corners, quat_xyzw_to_matrix
from .io import atomic_write_bytes

#: RViz's default background (``Global Options / Background Color: 48; 48; 48``).
BACKGROUND = (48 / 255, 48 / 255, 48 / 255)


@dataclasses.dataclass
class OrbitView:
    """RViz's orbit view controller: the camera sits ``distance`` from ``focal`` at ``yaw``
    (about the frame's z axis, from +x) and ``pitch`` (up from the xy plane), looking at it."""

    focal: tuple[float, float, float] = (0.0, 0.0, 0.0)
    distance: float = 4.0
    yaw: float = 3.6
    pitch: float = 0.6
    fov_y: float = 0.785398  # rad, RViz's default vertical field of view

    def eye(self) -> np.ndarray:
        cp = np.cos(self.pitch)
        offset = np.array([np.cos(self.yaw) * cp, np.sin(self.yaw) * cp, np.sin(self.pitch)])
        return np.asarray(self.focal, dtype=np.float64) + self.distance * offset


@dataclasses.dataclass
class BoxMarker:
    center: np.ndarray  # [3]
    quat_xyzw: np.ndarray  # [4]
    size: np.ndarray  # [3] full side lengths
    color: tuple[float, float, float, float]  # rgba, 0..1

    def corners(self) -> np.ndarray:
        """``[8, 3]``, ordered like :meth:`ccl_lgs_ros.query.shapes.Box.corners` (:func:`~.geometry.box_corners`)."""
        return box_corners(self.center, quat_xyzw_to_matrix(np.asarray(self.quat_xyzw, dtype=np.float64)), self.size)


@dataclasses.dataclass
class TextMarker:
    position: np.ndarray  # [3]
    text: str
    color: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)


@dataclasses.dataclass
class SphereMarker:
    position: np.ndarray  # [3]
    diameter: float
    color: tuple[float, float, float, float]


#: Faces of a box as corner indices (corner ``i`` has signs ``(i>>2, i>>1, i) & 1``).
_FACES = ((0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5))
_EDGES = tuple((a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1)


def rainbow(values: np.ndarray) -> np.ndarray:
    """RViz's "Use rainbow" intensity colours: 0 -> magenta/blue ... 1 -> red; ``[N] -> [N, 3]``."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    h = v * 5.0 + 1.0
    i = np.floor(h).astype(int)
    f = h - i
    f = np.where(i % 2 == 0, 1.0 - f, f)
    n = 1.0 - f
    out = np.zeros((v.size, 3))
    table = {
        1: (n, 0 * n, 1 + 0 * n),
        2: (0 * n, n, 1 + 0 * n),
        3: (0 * n, 1 + 0 * n, n),
        4: (n, 1 + 0 * n, 0 * n),
        5: (1 + 0 * n, n, 0 * n),
    }
    for k, (r, g, b) in table.items():
        sel = (i == k) | ((k == 1) & (i < 1)) | ((k == 5) & (i > 5))
        out[sel] = np.stack([r, g, b], axis=1)[sel]
    return out


class _Camera:
    """Pinhole camera of an orbit view; world z is up."""

    def __init__(self, view: OrbitView, width: int, height: int) -> None:
        self.eye = view.eye()
        fwd = np.asarray(view.focal, dtype=np.float64) - self.eye
        fwd /= max(np.linalg.norm(fwd), 1e-12)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        if np.linalg.norm(right) < 1e-9:  # looking straight down or up
            right = np.array([0.0, -1.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        self.R = np.stack([right, up, fwd])  # world -> camera (x right, y up, z forward)
        self.f = 0.5 * height / np.tan(0.5 * view.fov_y)
        self.cx, self.cy = 0.5 * width, 0.5 * height
        self.near = 0.05

    def to_cam(self, pts: np.ndarray) -> np.ndarray:
        return (np.asarray(pts, dtype=np.float64).reshape(-1, 3) - self.eye) @ self.R.T

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[N, 3]`` world points -> (``[N, 2]`` pixels, ``[N]`` depth); depth <= near is behind."""
        c = self.to_cam(pts)
        z = c[:, 2]
        zs = np.where(z > self.near, z, np.inf)
        uv = np.stack([self.cx + self.f * c[:, 0] / zs, self.cy - self.f * c[:, 1] / zs], axis=1)
        return uv, z


def auto_view(
    points: np.ndarray,
    *,
    yaw: float = 3.6,
    pitch: float = 0.6,
    margin: float = 3.0,
    centres: np.ndarray | None = None,
) -> OrbitView:
    """An orbit view focused on ``points`` (RViz's *Focus Camera* on a selection): the focal
    point is their centre, the distance such that ``margin`` times their extent fills the view.

    With two or more instance ``centres``, the yaw (of the two that look across the line
    joining the two farthest apart, the one nearer ``yaw``) shows them side by side."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if pts.shape[0] == 0:
        return OrbitView(yaw=yaw, pitch=pitch)
    if centres is not None and len(centres) >= 2:
        c = np.asarray(centres, dtype=np.float64).reshape(-1, 3)[:, :2]
        d2 = ((c[:, None] - c[None]) ** 2).sum(-1)
        i, j = np.unravel_index(np.argmax(d2), d2.shape)
        if d2[i, j] > 1e-8:
            across = np.arctan2(c[j, 1] - c[i, 1], c[j, 0] - c[i, 0]) + np.pi / 2
            yaw = min((across, across + np.pi), key=lambda a: abs(np.angle(np.exp(1j * (a - yaw)))))
    # Robust bounds: a few stray points (floaters, far walls) must not zoom the view out.
    lo, hi = (pts.min(axis=0), pts.max(axis=0)) if pts.shape[0] < 50 else np.percentile(pts, [2, 98], axis=0)
    radius = max(0.5 * float(np.linalg.norm(hi - lo)) * margin, 0.3)
    view = OrbitView(focal=tuple(0.5 * (lo + hi)), yaw=yaw, pitch=pitch)
    view.distance = radius / np.tan(0.5 * view.fov_y)
    return view


def render_rviz_like(
    path: str | Path | None,
    *,
    scene_points: np.ndarray | None = None,
    scene_colors: np.ndarray | None = None,
    query_points: np.ndarray | None = None,
    query_relevance: np.ndarray | None = None,
    query_colors: np.ndarray | None = None,
    boxes: Sequence[BoxMarker] = (),
    texts: Sequence[TextMarker] = (),
    spheres: Sequence[SphereMarker] = (),
    view: OrbitView | None = None,
    fixed_frame: str = "map",
    title: str = "",
    width: int = 1400,
    height: int = 900,
    grid_cell: float = 0.5,
    grid_cells: int = 20,
    scene_point_px: float = 2.0,
    scene_alpha: float = 0.6,
    query_sphere_m: float = 0.01,
    max_scene_points: int = 400_000,
) -> bytes:
    """Draw the visualisation topics like ``config/ccl_lgs.rviz``; returns the PNG bytes and
    writes them to ``path`` (atomically) unless it is None.

    Colours are 0..1 floats; the query cloud is coloured by ``query_relevance`` (RViz's
    rainbow) unless ``query_colors`` are given. Without a ``view``, the camera focuses on the query (boxes and
    query points), or on the scene cloud when there is no query.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection, PolyCollection

    def arr(a: np.ndarray | None, cols: int) -> np.ndarray:
        return np.zeros((0, cols)) if a is None else np.asarray(a, dtype=np.float64).reshape(-1, cols)

    sp, sc = arr(scene_points, 3), arr(scene_colors, 3)
    if sc.shape[0] != sp.shape[0]:
        sc = np.full((sp.shape[0], 3), 0.8)
    qp = arr(query_points, 3)
    qc = None if query_colors is None else np.clip(arr(query_colors, 3), 0, 1)
    if qc is not None and qc.shape[0] != qp.shape[0]:
        raise ValueError(f"{qc.shape[0]} query colours for {qp.shape[0]} query points")
    qr = np.zeros(qp.shape[0]) if query_relevance is None else np.asarray(query_relevance, dtype=np.float64).ravel()
    if sp.shape[0] > max_scene_points:
        keep = np.sort(np.random.default_rng(0).choice(sp.shape[0], max_scene_points, replace=False))
        sp, sc = sp[keep], sc[keep]
    if view is None:
        focus = [qp] + [b.corners() for b in boxes]
        if sum(f.shape[0] for f in focus):
            view = auto_view(np.concatenate(focus), centres=np.array([b.center for b in boxes]) if boxes else None)
        else:  # no query: the whole scene
            view = auto_view(sp, margin=1.2)
    cam = _Camera(view, width, height)

    dpi = 100
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    fig.patch.set_facecolor(BACKGROUND)
    ax.set_facecolor(BACKGROUND)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    px_to_pt2 = (72.0 / dpi) ** 2  # scatter sizes are in points^2

    # Grid on the fixed frame's xy plane (RViz: Cell Size, Plane Cell Count), as short pieces so
    # that the parts behind the camera can be dropped.
    half = grid_cells * grid_cell / 2.0
    ticks = np.linspace(-half, half, grid_cells + 1)
    steps = np.linspace(-half, half, 8 * grid_cells + 1)
    segs = []
    for t in ticks:
        for line in (
            np.stack([np.full_like(steps, t), steps, 0 * steps], 1),
            np.stack([steps, np.full_like(steps, t), 0 * steps], 1),
        ):
            uv, z = cam.project(line)
            ok = (z[:-1] > cam.near) & (z[1:] > cam.near)
            segs += [np.stack([uv[i], uv[i + 1]]) for i in np.flatnonzero(ok)]
    if segs:
        ax.add_collection(
            LineCollection(segs, colors=[(160 / 255, 160 / 255, 164 / 255, 0.5)], linewidths=0.8, zorder=1)
        )

    # The fixed frame's axes (RViz's TF display, marker scale 0.3).
    origin_uv, oz = cam.project(np.zeros((1, 3)))
    if oz[0] > cam.near:
        for axis, col in zip(np.eye(3) * 0.3, ("red", "lime", "blue"), strict=True):
            tip_uv, tz = cam.project(axis[None])
            if tz[0] > cam.near:
                ax.plot(
                    [origin_uv[0, 0], tip_uv[0, 0]], [origin_uv[0, 1], tip_uv[0, 1]], color=col, linewidth=2, zorder=2
                )
        ax.text(origin_uv[0, 0] + 4, origin_uv[0, 1] - 4, fixed_frame, color="white", fontsize=9, zorder=2)

    # Points, far first (painter's algorithm); the query cloud drawn as 1 cm spheres.
    pts = [sp, qp]
    cols = [
        np.concatenate([np.clip(sc, 0, 1), np.full((sp.shape[0], 1), scene_alpha)], axis=1),
        np.concatenate([qc if qc is not None else rainbow(qr), np.ones((qp.shape[0], 1))], axis=1),
    ]
    allp = np.concatenate(pts)
    uv, z = cam.project(allp)
    px = np.concatenate(
        [np.full(sp.shape[0], scene_point_px), cam.f * query_sphere_m / np.maximum(z[sp.shape[0] :], cam.near)]
    )
    px = np.maximum(px, 1.0)
    allc = np.concatenate(cols)
    vis = np.flatnonzero(
        (z > cam.near) & (uv[:, 0] > -50) & (uv[:, 0] < width + 50) & (uv[:, 1] > -50) & (uv[:, 1] < height + 50)
    )
    order = vis[np.argsort(-z[vis])]
    if order.size:
        ax.scatter(
            uv[order, 0],
            uv[order, 1],
            s=(px[order] ** 2) * px_to_pt2,
            c=allc[order],
            marker="o",
            linewidths=0,
            zorder=3,
        )

    # Boxes: translucent faces far first, then their edges.
    polys, pcols = [], []
    for b in boxes:
        c = b.corners()
        cuv, cz = cam.project(c)
        if (cz <= cam.near).any():
            continue
        for face in _FACES:
            polys.append((float(cz[list(face)].mean()), cuv[list(face)], b.color))
        ax.add_collection(
            LineCollection([cuv[[a, e]] for a, e in _EDGES], colors=[b.color[:3]], linewidths=1.2, zorder=5)
        )
    polys.sort(key=lambda p: -p[0])
    if polys:
        pcols = [p[2] for p in polys]
        ax.add_collection(PolyCollection([p[1] for p in polys], facecolors=pcols, edgecolors="none", zorder=4))
    for s in spheres:
        suv, sz = cam.project(np.asarray(s.position)[None])
        if sz[0] > cam.near:
            r = max(cam.f * 0.5 * s.diameter / sz[0], 2.0)
            ax.scatter([suv[0, 0]], [suv[0, 1]], s=[(2 * r) ** 2 * px_to_pt2], c=[s.color], linewidths=0, zorder=6)
    for t in texts:
        tuv, tz = cam.project(np.asarray(t.position)[None])
        if tz[0] > cam.near:
            ax.text(
                tuv[0, 0],
                tuv[0, 1],
                t.text,
                color=t.color[:3],
                fontsize=10,
                ha="center",
                va="bottom",
                bbox={"facecolor": (0, 0, 0, 0.45), "edgecolor": "none", "pad": 1.5},
                zorder=7,
            )
    if title:
        ax.text(0.01, 0.985, title, transform=ax.transAxes, color="white", va="top", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor())
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data


__all__ = ["BoxMarker", "OrbitView", "SphereMarker", "TextMarker", "auto_view", "rainbow", "render_rviz_like"]
