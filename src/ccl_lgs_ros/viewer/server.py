"""The browser viewer: the trained Gaussians as splats, live text queries, the answers in 3D.

``ccl-lgs view SCENE`` (and the mapping node with ``viewer.serve: true``) start a
:class:`SceneViewer`: a `viser <https://viser.studio>`_ web server whose page (the client ships
inside viser's wheel: nothing is fetched from the network) draws

- the scene's Gaussians as splats in the world frame (viser's Gaussian splat renderer, each
  Gaussian's world-frame covariance ``R diag(s^2) R^T``), the fixed frame's axes and the capture's
  camera path (frustums along the trajectory) when the capture folder is still there;
- a text box for queries with optional negatives and an own threshold; each answer comes from
  the scene's own :class:`~ccl_lgs_ros.query.engine.QueryEngine` (``scene.engine.query``, the
  code ``/semantic_query`` runs), and lights up the instances found: their splats tinted in one
  colour per instance, everything else dimmed, their oriented boxes, labels with scores and
  centroids;
- the recent queries (pick one to ask it again) and a per-level choice: the splats coloured by
  one level's relevance (``engine.relevance``) instead of by instance.

Level of detail: the page draws at most ``max_splats`` Gaussians (``viewer.max_splats``,
``--max-splats``; 0 = all), the most visible ones by :func:`select_splats` (opacity x largest
cross-section), each enlarged to cover for the left-out Gaussians of its grid cell
(:func:`coverage_scales`), and says "showing N of M". Every splat is a quad the browser
rasterises each frame, and without a GPU (software WebGL) the frame time grows with their
number: the default was picked by ``bench/bench_viewer.py`` on a 2-core CPU with SwiftShader.
While an answer is shown the page still draws ``max_splats``: up to half of them the answer's
own Gaussians (again the most visible), so the found object is drawn densely and the frame time,
which is what a query waits for in a software-rendered page, stays the same.

The server binds loopback (127.0.0.1) unless told otherwise: another interface is an explicit
choice (``--host`` / ``viewer.host``) and exposes the page without authentication.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ViewerConfig
from ..geometry import matrix_to_quat_xyzw, opengl_to_optical_c2w
from .highlight import PALETTE

log = logging.getLogger(__name__)

#: How much of its own colour a splat outside every instance keeps while an answer is shown.
DIM = 0.25
#: Share of the instance colour in a selected splat's tint.
TINT = 0.7
#: Recent queries kept in the list.
RECENT = 12
#: Camera frustums drawn along the capture's path at most.
MAX_FRUSTUMS = 40
#: Splats the page draws at most by default (0 = all): ``viewer.max_splats``; see :func:`select_splats`.
MAX_SPLATS: int = ViewerConfig.max_splats
#: Grid cells along the scene's longest side for the level of detail's size compensation.
LOD_CELLS = 64
#: A drawn splat is enlarged at most this much (in size) to cover for the Gaussians left out.
LOD_MAX_SCALE = 3.0
INSTANCES = "instances"


def _wxyz(R: np.ndarray) -> np.ndarray:
    x, y, z, w = matrix_to_quat_xyzw(np.asarray(R, dtype=np.float64))
    return np.array([w, x, y, z])


def splat_covariances(quats: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """World-frame covariances ``R diag(s^2) R^T`` ``float32 [N, 3, 3]`` of (w, x, y, z) quaternions
    (any norm) and activated scales."""
    from ..geometry import quats_to_rotmats

    R = quats_to_rotmats(quats).astype(np.float32)
    s2 = np.square(np.asarray(scales, dtype=np.float32))
    return np.einsum("nij,nj,nkj->nik", R, s2, R, optimize=True)


def splat_significance(opacities: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """How much of the picture a Gaussian makes, view-independently: its opacity times its largest
    cross-section ``s_a * s_b`` (the two largest activated scales; the ellipse it projects to when
    seen face-on has area ``pi s_a s_b``). ``float64 [N]``."""
    s = np.sort(np.abs(np.asarray(scales, dtype=np.float64)).reshape(-1, 3), axis=1)
    return np.asarray(opacities, dtype=np.float64).reshape(-1) * s[:, 2] * s[:, 1]


def rank_splats(opacities: np.ndarray, scales: np.ndarray, seed: int = 0) -> np.ndarray:
    """Every Gaussian's index, the most significant by :func:`splat_significance` first. Equal
    significance is broken by a fixed random order, so a budget over many alike Gaussians keeps an
    even sample of the scene instead of its first objects. ``int64 [N]``."""
    n = int(np.asarray(opacities).reshape(-1).shape[0])
    score = splat_significance(opacities, scales)
    tie = np.random.default_rng(seed).random(n)
    return np.lexsort((tie, -score)).astype(np.int64)  # last key first: score descending, then the tie


def select_splats(opacities: np.ndarray, scales: np.ndarray, budget: int, seed: int = 0) -> np.ndarray:
    """Indices (ascending) of the ``budget`` most significant Gaussians (:func:`rank_splats`); all
    of them when ``budget`` is 0 or not smaller than their number."""
    n = int(np.asarray(opacities).reshape(-1).shape[0])
    if budget < 0:
        raise ValueError(f"max_splats must be >= 0 (0 = all), got {budget}")
    if budget == 0 or budget >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rank_splats(opacities, scales, seed)[:budget])


def select_with_answer(rank: np.ndarray, answer: np.ndarray, budget: int) -> np.ndarray:
    """The drawn set while an answer is shown, still ``budget`` splats (ascending indices): up to
    half of the budget goes to the answer's own Gaussians ``answer`` (bool ``[N]``), its most
    significant first by ``rank`` (:func:`rank_splats`), the rest to the most significant of the
    other Gaussians. All of them when ``budget`` is 0 or not smaller than their number."""
    n = len(rank)
    if budget == 0 or budget >= n:
        return np.arange(n, dtype=np.int64)
    in_answer = answer[rank]
    own = rank[in_answer][: budget // 2]
    rest = rank[~in_answer][: budget - len(own)]
    return np.sort(np.concatenate([own, rest]))


def grid_cells(means: np.ndarray, cells_per_axis: int = LOD_CELLS) -> np.ndarray:
    """The cell of a regular grid (``cells_per_axis`` cells along the scene's longest side) each
    Gaussian's centre falls in, numbered ``0..C-1`` over the occupied cells. ``int64 [N]``."""
    m = np.asarray(means, dtype=np.float64).reshape(-1, 3)
    if not len(m):
        return np.zeros(0, np.int64)
    lo, hi = m.min(axis=0), m.max(axis=0)
    size = max(float(np.max(hi - lo)), 1e-9) / cells_per_axis
    ijk = np.minimum(((m - lo) / size).astype(np.int64), cells_per_axis)  # 0..cells_per_axis
    n = cells_per_axis + 1
    return np.unique(ijk[:, 0] + n * (ijk[:, 1] + n * ijk[:, 2]), return_inverse=True)[1].reshape(-1).astype(np.int64)


def coverage_scales(cells: np.ndarray, drawn: np.ndarray, max_scale: float = LOD_MAX_SCALE) -> np.ndarray:
    """Size factor of each drawn Gaussian so that fewer splats cover what all of them covered: in
    a grid cell with ``n`` Gaussians of which ``k`` are drawn, each drawn one is enlarged by
    ``sqrt(n / k)`` (its area by ``n / k``), at most ``max_scale``. 1 where all are drawn.
    ``float32 [len(drawn)]``."""
    cells = np.asarray(cells, dtype=np.int64)
    drawn = np.asarray(drawn, dtype=np.int64)
    total = np.bincount(cells)
    kept = np.bincount(cells[drawn], minlength=len(total))
    c = cells[drawn]
    return np.minimum(np.sqrt(total[c] / kept[c]), max_scale).astype(np.float32)


def pack_splats(centers: np.ndarray, covariances: np.ndarray, rgb_u8: np.ndarray, opacities: np.ndarray) -> np.ndarray:
    """Gaussians in viser's splat buffer layout (``GaussianSplatHandle``: per Gaussian 8 uint32:
    centre as 3 float32, one reserved word, the covariance's upper triangle as 6 float16, RGBA
    as 4 uint8), what ``add_gaussian_splats`` sends. ``uint32 [N, 8]``."""
    n = len(centers)
    buf = np.zeros((n, 8), np.uint32)
    buf[:, 0:3] = np.ascontiguousarray(centers, dtype=np.float32).view(np.uint32)
    triu = np.asarray(covariances, dtype=np.float32).reshape(n, 9)[:, [0, 1, 2, 4, 5, 8]]
    buf[:, 4:7] = np.ascontiguousarray(triu, dtype=np.float16).view(np.uint32)
    rgba = np.empty((n, 4), np.uint8)
    rgba[:, :3] = rgb_u8
    rgba[:, 3] = np.clip(np.asarray(opacities, dtype=np.float32).reshape(n) * 255.0, 0, 255).astype(np.uint8)
    buf[:, 7] = rgba.view(np.uint32).reshape(n)
    return buf


def highlight_colors(base: np.ndarray, instance_ids: Sequence[np.ndarray], dim: float = DIM,
                     tint: float = TINT) -> np.ndarray:  # fmt: skip
    """Splat colours for an answer: every splat dimmed to ``dim`` of its colour, the splats of
    instance ``i`` mixed ``tint`` with ``PALETTE[i]`` instead. ``base`` is ``float [N, 3]`` in 0..1."""
    base = np.asarray(base, dtype=np.float32)
    out = base * np.float32(dim)
    for i, ids in enumerate(instance_ids):
        col = np.asarray(PALETTE[i % len(PALETTE)], dtype=np.float32)
        out[ids] = (1.0 - tint) * base[ids] + tint * col
    return out


def relevance_colors(relevance: np.ndarray) -> np.ndarray:
    """Per-Gaussian relevance in 0..1 -> turbo colours ``float32 [N, 3]``."""
    from ..semantics.relevance import heatmap_image

    return heatmap_image(np.asarray(relevance, dtype=np.float32).reshape(-1, 1))[:, 0].astype(np.float32) / 255.0


def capture_poses(scene: Any) -> np.ndarray | None:
    """Camera-to-world poses (OpenGL axes) ``[F, 4, 4]`` of the capture the scene was trained on,
    with the first frame's intrinsics as ``(fov_y, aspect)``; None when the capture is gone."""
    path = scene.record.get("capture") if isinstance(scene.record, dict) else None
    if not path or not (Path(path) / "transforms.json").is_file():
        return None
    try:
        from ..capture.format import Capture

        cap = Capture.load(path)
    except Exception as exc:  # noqa: BLE001 - the path is a hint; the viewer works without it
        log.info("capture %s not readable (%s): no camera path", path, exc)
        return None
    if not cap.frames:
        return None
    return np.stack([np.asarray(f.c2w, dtype=np.float64) for f in cap.frames])


class SceneViewer:
    """A viser server showing one scene at a time; thread-safe (the node calls it from ROS threads).

    Args:
        host: interface to bind (loopback by default).
        port: TCP port (viser takes the next free one when it is in use; see :attr:`port`).
        max_splats: draw at most this many Gaussians, the most significant (0 = all); an answer's
            own Gaussians are always drawn.
        verbose: let viser print its banner and connection log.

    The scene's engine is thread-safe: the page's queries and the node's ``/semantic_query`` may
    run at once; the viewer's own lock only orders what it sends to the page.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, max_splats: int = MAX_SPLATS,
                 verbose: bool = False) -> None:  # fmt: skip
        import viser

        if max_splats < 0:
            raise ValueError(f"max_splats must be >= 0 (0 = all), got {max_splats}")
        self.max_splats = int(max_splats)

        self.server = viser.ViserServer(host=host, port=port, verbose=verbose)
        self.server.scene.set_up_direction("+z")
        # Splats are unlit: no image-based lighting (viser's default environment map is prefiltered
        # in the page at load) and no shadow-map passes per frame; the boxes and centroids keep the
        # plain default lights. Without a GPU each of these costs the page seconds.
        self.server.scene.configure_environment_map(hdri=None)
        self.server.scene.configure_default_lights(enabled=True, cast_shadow=False)
        self._lock = threading.RLock()
        self.scene: Any = None  # scene.LoadedScene
        self.last_result: Any = None  # query.engine.QueryResult
        self.last_negatives: list[str] = []
        self.recent: list[str] = []
        self.answers_shown = 0
        self.timings_ms: dict[str, float] = {}
        self._splats: Any = None
        self._base_rgb: np.ndarray | None = None
        self._base_u8 = np.zeros((0, 3), np.uint8)
        self._dim_u8 = np.zeros((0, 3), np.uint8)
        # Every Gaussian's splat attributes; the page gets the rows of ``shown`` (the level of detail).
        self._centers = np.zeros((0, 3), np.float32)
        self._covs = np.zeros((0, 3, 3), np.float32)
        self._opac = np.zeros((0, 1), np.float32)
        self._lod = np.zeros(0, np.int64)  # the budget's selection of the current scene
        self._rank = np.zeros(0, np.int64)  # rank_splats of the current scene
        self._cells = np.zeros(0, np.int64)  # grid_cells of every Gaussian
        self._buf = np.zeros((0, 8), np.uint32)  # what the page has, in viser's splat buffer layout
        self.shown = np.zeros(0, np.int64)  # the Gaussians in the page's splat buffer, in its order
        self._answer_nodes: list[Any] = []
        self._scene_nodes: list[Any] = []
        self._build_gui()

    # ------------------------------------------------------------------ properties

    @property
    def host(self) -> str:
        return str(self.server.get_host())

    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def url(self) -> str:
        host = self.host
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}/"

    def stop(self) -> None:
        self.server.stop()

    # ------------------------------------------------------------------ GUI

    def _build_gui(self) -> None:
        gui = self.server.gui
        gui.configure_theme(control_width="medium", show_logo=False, show_share_button=False)
        gui.main_panel.dock_right()  # beside the 3D view, not over it
        self.gui_status = gui.add_markdown("No scene loaded yet.")
        with gui.add_folder("Query"):
            self.gui_text = gui.add_text("Query", initial_value="", hint="e.g. red mug")
            self.gui_negatives = gui.add_text("Negatives", initial_value="", hint="comma-separated, optional")
            self.gui_own_threshold = gui.add_checkbox("Own threshold", initial_value=False,
                                                      hint="off: the scene's query.threshold")
            self.gui_threshold = gui.add_slider("Threshold", min=0.0, max=1.0, step=0.01, initial_value=0.5)
            self.gui_find = gui.add_button("Find", hint="ask the scene's query engine")
            self.gui_clear = gui.add_button("Clear", hint="show the scene without an answer")
        self.gui_color_by = gui.add_dropdown("Colour splats by", (INSTANCES,), initial_value=INSTANCES,
                                             hint="instances of the answer, or one level's relevance")
        self.gui_recent = gui.add_dropdown("Recent queries", ("",), initial_value="")
        self.gui_answer = gui.add_markdown("")
        self.gui_budget = gui.add_number(
            "Splats drawn", initial_value=self.max_splats, min=0, step=1000,
            hint="at most this many, the most visible (0 = all); raise it with a GPU-rendered browser",
        )  # fmt: skip

        @self.gui_find.on_click
        def _(_: Any) -> None:
            self._on_find()

        @self.gui_clear.on_click
        def _(_: Any) -> None:
            self.clear_answer()

        @self.gui_color_by.on_update
        def _(_: Any) -> None:
            with self._lock:
                if self.last_result is not None:
                    self._color_splats(self.last_result)

        @self.gui_budget.on_update
        def _(_: Any) -> None:
            try:
                self.set_max_splats(int(self.gui_budget.value))
            except Exception as exc:  # noqa: BLE001 - shown on the page, never raised into viser
                self.gui_answer.content = f"**Error:** {exc}"

        @self.gui_recent.on_update
        def _(_: Any) -> None:
            text = self.gui_recent.value
            if text and text != self.gui_text.value:
                self.gui_text.value = text  # type: ignore[misc]  # viser: assignable at run time
                self._on_find()

    def set_max_splats(self, budget: int) -> None:
        """Change the splat budget (0 = all) and re-send the scene with it; the answer shown, if
        any, is shown again within the new budget."""
        if budget < 0:
            raise ValueError(f"max_splats must be >= 0 (0 = all), got {budget}")
        with self._lock:
            if budget == self.max_splats:
                return
            self.max_splats = int(budget)
            if int(self.gui_budget.value) != self.max_splats:
                self.gui_budget.value = self.max_splats  # type: ignore[misc]  # viser: assignable at run time
            scene, result, negatives = self.scene, self.last_result, list(self.last_negatives)
            if scene is None:
                return
            self.set_scene(scene)
            if result is not None:
                self.show_result(result, negatives=negatives)

    def _on_find(self) -> None:
        text = self.gui_text.value.strip()
        negatives = [n.strip() for n in self.gui_negatives.value.split(",") if n.strip()]
        threshold = float(self.gui_threshold.value) if self.gui_own_threshold.value else None
        try:
            self.ask(text, negatives=negatives or None, threshold=threshold)
        except Exception as exc:  # noqa: BLE001 - a bad query is shown on the page, never raised into viser
            self.gui_answer.content = f"**Error:** {exc}"

    # ------------------------------------------------------------------ scene

    def set_scene(self, scene: Any) -> None:
        """Show ``scene`` (a :class:`~ccl_lgs_ros.scene.LoadedScene`), replacing the previous one."""
        t0 = time.perf_counter()
        index = scene.index
        centers = np.asarray(index.means, dtype=np.float32)
        covs = splat_covariances(index.quats, index.scales)
        rgb = np.clip(np.asarray(index.colors, dtype=np.float32)[:, :3], 0.0, 1.0)
        opac = np.asarray(index.opacities, dtype=np.float32).reshape(-1, 1)
        t_prep = time.perf_counter()
        poses = capture_poses(scene)
        with self._lock, self.server.atomic():
            for node in self._answer_nodes + self._scene_nodes:
                node.remove()
            self._answer_nodes, self._scene_nodes = [], []
            if self._splats is not None:
                self._splats.remove()
            self.scene, self.last_result = scene, None
            self._base_rgb = rgb
            # uint8 once per scene: an answer then only rewrites its own Gaussians' colours.
            self._base_u8 = np.rint(rgb * 255).astype(np.uint8)
            self._dim_u8 = np.rint(rgb * (255 * DIM)).astype(np.uint8)
            self._centers, self._covs, self._opac = centers, covs, opac
            n = len(centers)
            lod = 0 < self.max_splats < n
            self._rank = rank_splats(opac, index.scales) if lod else np.arange(n, dtype=np.int64)
            self._lod = np.sort(self._rank[: self.max_splats]) if lod else self._rank
            self._cells = grid_cells(centers) if lod else np.zeros(n, np.int64)
            self.shown = ids = self._lod
            lod_covs = self._splat_covs(ids)
            self._splats = self.server.scene.add_gaussian_splats(
                "/scene/splats", centers=centers[ids], covariances=lod_covs, rgbs=self._base_u8[ids],
                opacities=opac[ids],
            )  # fmt: skip
            self._buf = np.asarray(self._splats.buffer)  # viser's own packing of what it sends
            lo, hi = np.percentile(centers, 2, axis=0), np.percentile(centers, 98, axis=0)
            size = float(np.max(hi - lo)) if centers.size else 1.0
            self._scene_nodes.append(self.server.scene.add_frame(
                f"/{index.frame_id or 'world'}", axes_length=0.1 * size, axes_radius=0.003 * size,
            ))  # fmt: skip
            self._scene_nodes.append(self.server.scene.add_label(
                "/frame_name", index.frame_id or "world", position=(0.0, 0.0, 0.03 * size)
            ))  # fmt: skip
            self._scene_nodes += self._camera_path(poses, size)
            self._set_initial_camera(centers, poses, size)
            levels = list(index.levels)
            self.gui_color_by.options = (INSTANCES, *[f"relevance: {lv}" for lv in levels])
            self.gui_color_by.value = INSTANCES  # type: ignore[misc]
            n, k = index.num_gaussians, len(self._lod)
            detail = "" if k == n else f" (showing {k:,} of them, the most visible, enlarged: viewer.max_splats)"
            self.gui_status.content = (
                f"**{Path(scene.path).name}**: {n:,} Gaussians{detail}, frame `{index.frame_id}`, "
                f"levels {', '.join(levels)}"
            )
            self.gui_answer.content = ""
        self.timings_ms = {"prepare": (t_prep - t0) * 1e3, "total": (time.perf_counter() - t0) * 1e3,
                           "splats_sent": float(len(self.shown))}

    def _camera_path(self, poses: np.ndarray | None, size: float) -> list[Any]:
        if poses is None or not len(poses):
            return []
        nodes: list[Any] = []
        centres = poses[:, :3, 3]
        if len(centres) > 1:
            seg = np.stack([centres[:-1], centres[1:]], axis=1).astype(np.float32)
            nodes.append(self.server.scene.add_line_segments(
                "/capture/path", seg, colors=(40, 40, 40), thickness=2.0, thickness_units="screen"
            ))  # fmt: skip
        step = max(1, int(np.ceil(len(poses) / MAX_FRUSTUMS)))
        for k in range(0, len(poses), step):
            c2w = opengl_to_optical_c2w(poses[k])  # viser frustums look along +z, y down (OpenCV)
            nodes.append(self.server.scene.add_camera_frustum(
                f"/capture/frame_{k:05d}", fov=1.0, aspect=4 / 3, scale=0.02 * size, thickness=1.0,
                thickness_units="screen", color=(60, 60, 60), wxyz=_wxyz(c2w[:3, :3]), position=c2w[:3, 3],
            ))  # fmt: skip
        return nodes

    def _set_initial_camera(self, centers: np.ndarray, poses: np.ndarray | None, size: float) -> None:
        look = np.median(centers, axis=0) if centers.size else np.zeros(3)
        if poses is not None and len(poses):
            pos = poses[0, :3, 3]
        else:
            pos = look + np.array([1.0, -1.0, 0.8]) * size
        cam = self.server.initial_camera
        cam.position = np.asarray(pos, dtype=np.float64)
        cam.look_at = np.asarray(look, dtype=np.float64)
        cam.up = np.array([0.0, 0.0, 1.0])

    # ------------------------------------------------------------------ answers

    def ask(self, text: str, negatives: list[str] | None = None, threshold: float | None = None) -> Any:
        """Run ``text`` through the scene's query engine and show the answer. Returns the
        :class:`~ccl_lgs_ros.query.engine.QueryResult`; raises ``QueryError`` for a bad query and
        ``RuntimeError`` without a scene."""
        with self._lock:
            scene = self.scene
            if scene is None:
                raise RuntimeError("no scene is loaded yet")
            t0 = time.perf_counter()
            result = scene.engine.query(text, negatives=negatives, threshold=threshold)
            t_query = time.perf_counter()
            self.show_result(result, negatives=negatives)
            self.timings_ms = {"query": (t_query - t0) * 1e3, "show": (time.perf_counter() - t_query) * 1e3}
        return result

    def show_result(self, result: Any, negatives: list[str] | None = None, source: str = "") -> None:
        """Show an answer of the current scene's engine (the viewer's own, or the node's
        ``/semantic_query``): tint its instances, dim the rest, draw boxes, labels, centroids."""
        with self._lock, self.server.atomic():
            if self.scene is None:
                return
            self.last_result, self.last_negatives = result, list(negatives or [])
            for node in self._answer_nodes:
                node.remove()
            self._answer_nodes = []
            self._color_splats(result)
            scene = self.server.scene
            for i, inst in enumerate(result.instances):
                col = np.rint(255 * PALETTE[i % len(PALETTE)]).astype(np.uint8)
                box = inst.box
                self._answer_nodes.append(scene.add_box(
                    f"/answer/instance_{i}/box", color=col, dimensions=np.asarray(box.extent, dtype=np.float64),
                    wireframe=True, wxyz=_wxyz(box.rotation), position=np.asarray(box.center, dtype=np.float64),
                ))  # fmt: skip
                top = np.asarray(box.center, dtype=np.float64) + [0.0, 0.0, 0.5 * float(np.max(box.extent)) + 0.02]
                self._answer_nodes.append(scene.add_label(
                    f"/answer/instance_{i}/label", f"#{i} {result.text} ({inst.score:.2f})", position=top,
                ))  # fmt: skip
                self._answer_nodes.append(scene.add_icosphere(
                    f"/answer/instance_{i}/centroid", radius=0.01 + 0.03 * float(np.min(box.extent)), color=col,
                    position=np.asarray(inst.centroid, dtype=np.float64),
                ))  # fmt: skip
            self._remember(result.text)
            self.gui_answer.content = self._answer_markdown(result, source)
            self.answers_shown += 1

    def _show_splats(self, ids: np.ndarray, rgb_u8: np.ndarray) -> None:
        """Put the Gaussians ``ids`` with colours ``rgb_u8`` (one row per id) into the page in one
        buffer update: the colours only when the drawn set is unchanged, else the set repacked."""
        if self._splats is None:
            return
        if len(ids) == len(self.shown) and np.array_equal(ids, self.shown):
            buf = self._buf.copy()
            buf.view(np.uint8).reshape(-1, 32)[:, 28:31] = rgb_u8  # word 7 is R, G, B, A (little-endian)
        else:
            buf = pack_splats(self._centers[ids], self._splat_covs(ids), rgb_u8, self._opac[ids])
        self._splats.buffer = buf
        self._buf, self.shown = buf, ids

    def _splat_covs(self, ids: np.ndarray) -> np.ndarray:
        """Covariances of the drawn Gaussians ``ids``, enlarged by :func:`coverage_scales` when
        some are left out."""
        if len(ids) == len(self._covs):
            return self._covs[ids]
        f = coverage_scales(self._cells, ids)
        return self._covs[ids] * np.square(f)[:, None, None]

    def _answer_ids(self, result: Any) -> np.ndarray:
        """The drawn set while ``result`` is shown (:func:`select_with_answer`)."""
        n = len(self._base_u8)
        if len(self._lod) == n or not result.instances:
            return self._lod
        answer = np.zeros(n, bool)
        for inst in result.instances:
            answer[np.asarray(inst.gaussian_ids, dtype=np.int64).reshape(-1)] = True
        return select_with_answer(self._rank, answer, self.max_splats)

    def _color_splats(self, result: Any) -> None:
        if self._splats is None or self._base_rgb is None:
            return
        ids = self._answer_ids(result)
        mode = self.gui_color_by.value
        if mode.startswith("relevance: ") and self.scene is not None:
            level = mode.split(": ", 1)[1]
            rel = self.scene.engine.relevance(result.text, self.last_negatives or None)
            if level in rel:
                rgb = np.rint(255 * relevance_colors(np.asarray(rel[level])[ids])).astype(np.uint8)
            else:
                rgb = self._base_u8[ids]
        else:  # highlight_colors(), in uint8 and touching only the answer's Gaussians
            full = self._dim_u8.copy()
            for i, inst in enumerate(result.instances):
                sel = inst.gaussian_ids
                col = np.asarray(PALETTE[i % len(PALETTE)], dtype=np.float32)
                full[sel] = np.rint(255 * ((1.0 - TINT) * self._base_rgb[sel] + TINT * col)).astype(np.uint8)
            rgb = full[ids]
        self._show_splats(ids, rgb)

    def clear_answer(self) -> None:
        with self._lock, self.server.atomic():
            for node in self._answer_nodes:
                node.remove()
            self._answer_nodes = []
            self.last_result = None
            self._show_splats(self._lod, self._base_u8[self._lod])
            self.gui_answer.content = ""

    def _remember(self, text: str) -> None:
        self.recent = [text, *[t for t in self.recent if t != text]][:RECENT]
        self.gui_recent.options = ("", *self.recent)

    @staticmethod
    def _answer_markdown(result: Any, source: str) -> str:
        origin = f" ({source})" if source else ""
        head = f'**"{result.text}"**{origin}: '
        if not result.found:
            return head + f"nothing found (best score {result.best_score:.2f}). {result.message}"
        n = len(result.instances)
        lines = [head + f"{n} instance(s), level `{result.level}`, threshold {result.threshold:.2f}", "",
                 "| # | score | Gaussians | centroid (m) |", "|---|---|---|---|"]
        for i, inst in enumerate(result.instances):
            c = ", ".join(f"{v:.2f}" for v in inst.centroid)
            lines.append(f"| {i} | {inst.score:.2f} | {inst.num_gaussians} | {c} |")
        return "\n".join(lines)


def serve(scene_path: str | Path, host: str = "127.0.0.1", port: int = 8080, device: str = "cpu",
          stop: threading.Event | None = None, max_splats: int = MAX_SPLATS) -> int:  # fmt: skip
    """``ccl-lgs view``: load the scene, serve it until interrupted (or ``stop`` is set)."""
    from ..scene.load import load_scene

    scene = load_scene(scene_path, device=device)
    viewer = SceneViewer(host=host, port=port, max_splats=max_splats)
    viewer.set_scene(scene)
    print(f"viewer of {scene.path} ({scene.num_gaussians} Gaussians) at {viewer.url}  (Ctrl-C stops it)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"WARNING: bound to {host}: every machine that reaches it sees the page (no authentication)",
              flush=True)
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # Own handlers: a process started in the background by a shell inherits SIGINT ignored
        # (no KeyboardInterrupt then), and SIGTERM (systemd, kill) should stop it cleanly too.
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


__all__ = [
    "MAX_SPLATS", "SceneViewer", "capture_poses", "coverage_scales", "grid_cells", "highlight_colors", "pack_splats",
    "rank_splats", "relevance_colors", "select_splats", "select_with_answer", "serve", "splat_covariances",
    "splat_significance",
]
