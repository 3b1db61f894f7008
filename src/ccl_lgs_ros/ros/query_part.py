"""Serving part of the mapping node: the current scene, ``/semantic_query`` and RViz outputs.

The loaded scene is one immutable :class:`~ccl_lgs_ros.scene.LoadedScene` object held in
:attr:`SceneServer.scene`; a new scene is built completely (outside any lock) and then swapped in
with one reference assignment, so a query either sees the old scene or the new one, never a
half-loaded scene. With ``node.query_executor: events`` (the default) ``/semantic_query`` is
served by a small node of its own (``<name>_query``) on rclpy's C++ EventsExecutor in one thread,
one query after another; with ``threads`` (or an rclpy without EventsExecutor) queries run in
their own reentrant callback group, several at once on the node's multi-threaded executor, next to
capture (the engine is thread-safe: immutable index, locked caches).

Under load nothing is dropped silently: the request queue is ``node.query_queue_depth`` deep
(DDS drops requests beyond it unanswered). On the multi-threaded executor, while
``node.max_queries_in_flight`` queries are being worked on a new request is answered at once with
``success: false`` and a "busy" message; the executor has more threads than that bound
(:meth:`SceneServer.executor_threads`), so some thread is always free to take a request and
refuse it.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from ..config import Config
from ..query.text import QueryError, validate_text
from ..scene.load import LoadedScene, load_scene
from . import conversions as conv

#: Hard cap on the query text the service looks at, whatever query.max_query_chars says: a
#: 10,000-character request is refused before any work is done.
HARD_MAX_QUERY_CHARS = 4096

#: Executor threads kept free of queries: they take requests (and refuse them when the node is
#: busy), and run capture, training and the control services.
SPARE_THREADS = 4

#: Start of the message of a request refused because ``node.max_queries_in_flight`` are in flight.
BUSY = "busy"

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


class RequestError(ValueError):
    """A bad query request; the message goes back to the caller."""


def check_request(req: Any, max_chars: int) -> None:
    """Validate the request fields before touching the scene. Raises :class:`RequestError`.

    The query and every negative phrase go through the engine's own text check
    (:func:`ccl_lgs_ros.query.text.validate_text`), so the service and the library accept the same text."""
    limit = min(max_chars, HARD_MAX_QUERY_CHARS)
    try:
        validate_text(req.query, limit)
        if len(req.negatives) > 64:
            raise RequestError(f"{len(req.negatives)} negatives given; at most 64 are accepted")
        for neg in req.negatives:
            validate_text(neg, limit, "negative phrase")
    except QueryError as exc:
        raise RequestError(str(exc)) from None
    for name in ("threshold", "point_spacing"):
        v = float(getattr(req, name))
        if not math.isfinite(v):
            raise RequestError(f"{name} is {v}; give a finite number (0 = the node's default)")
        if v < 0:
            raise RequestError(f"{name} is negative ({v}); give a value >= 0 (0 = the node's default)")
    if req.threshold > 1:
        raise RequestError(f"threshold is {req.threshold}; relevance thresholds lie in [0, 1] (0 = default)")
    if req.clouds not in (conv.CLOUDS_BOTH, conv.CLOUDS_COMBINED, conv.CLOUDS_PER_INSTANCE):
        raise RequestError(f"clouds is {req.clouds}; use 0 (both), 1 (combined cloud only) or 2 (per instance only)")


def events_executor_class() -> Any:
    """rclpy's EventsExecutor (rclpy.experimental, Jazzy's newer releases and later), or None."""
    try:
        from rclpy.experimental import EventsExecutor
    except ImportError:
        return None
    return EventsExecutor


class SceneServer:
    """Holds the served scene and answers queries. Owned by the mapping node."""

    def __init__(self, node: Node, cfg: Config, tf_buffer: Any = None) -> None:
        from ccl_lgs_interfaces.srv import SemanticQuery
        from sensor_msgs.msg import PointCloud2
        from visualization_msgs.msg import MarkerArray

        self.node = node
        self.cfg = cfg
        self.tf_buffer = tf_buffer
        self.scene: LoadedScene | None = None  # swapped atomically
        self._load_lock = threading.Lock()
        self.queries_answered = 0
        self.queries_refused_busy = 0
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self.group = ReentrantCallbackGroup()
        self.scene_pub = node.create_publisher(PointCloud2, "~/scene_cloud", LATCHED)
        self.query_pub = node.create_publisher(PointCloud2, "~/query_cloud", LATCHED)
        self.marker_pub = node.create_publisher(MarkerArray, "~/query_markers", LATCHED)
        # The default service queue keeps the last 10 requests: with more clients calling at once
        # the oldest requests would be dropped unanswered. Keep enough for a burst of clients.
        self.viewer: Any = None  # viewer.server.SceneViewer with viewer.serve
        self._viewer_jobs: Any = None
        if cfg.viewer.serve:
            self._start_viewer()
        # 'events': a node of its own serves the query, on rclpy's C++ events executor in a thread of
        # its own (start_query_thread); 'threads': the mapping node's multi-threaded executor.
        self.query_node: Node | None = None
        self._query_executor: Any = None
        self._query_thread: threading.Thread | None = None
        self._query_stop = threading.Event()
        host = node
        if cfg.node.query_executor == "events" and events_executor_class() is not None:
            name = f"{node.get_name()}_query"
            # A launch file's name remap (`-r __node:=ccl_lgs_mapper`) applies to every node of the
            # process; the query node's own remap comes first, so it keeps a name of its own.
            host = self.query_node = Node(
                name, namespace=node.get_namespace(), start_parameter_services=False,
                cli_args=["--ros-args", "-r", f"__node:={name}"],
            )  # fmt: skip
        self.srv = host.create_service(
            SemanticQuery,
            "/semantic_query",
            self.serve_query,
            callback_group=self.group if host is node else None,
            qos_profile=QoSProfile(depth=cfg.node.query_queue_depth, reliability=ReliabilityPolicy.RELIABLE),
        )

    def start_query_thread(self) -> None:
        """With ``node.query_executor: events``, spin the query node in a thread of its own."""
        cls = events_executor_class()
        if self.query_node is None or cls is None or self._query_thread is not None:
            return
        self._query_executor = cls(context=self.node.context)
        self._query_executor.add_node(self.query_node)

        def spin() -> None:
            while not self._query_stop.is_set():
                try:
                    self._query_executor.spin_once(timeout_sec=0.1)
                except Exception as exc:  # noqa: BLE001 - context shut down under it: stop quietly
                    if not self._query_stop.is_set():
                        self.node.get_logger().error(f"/semantic_query executor stopped: {type(exc).__name__}: {exc}")
                    return

        thread = threading.Thread(target=spin, name="semantic_query", daemon=True)
        thread.start()
        self._query_thread = thread  # only once started: a signal in between leaves nothing to join

    def stop_query_thread(self, timeout: float = 5.0) -> None:
        """Stop taking queries (the one in progress ends first) and destroy the query node."""
        self._query_stop.set()
        thread, self._query_thread = self._query_thread, None
        if thread is not None and thread.ident is not None:
            thread.join(timeout)
        if self._query_executor is not None:
            try:
                self._query_executor.shutdown(timeout_sec=1.0)
            except Exception:  # noqa: BLE001 - already shut down with the context
                pass
            self._query_executor = None
        if self.query_node is not None:
            try:
                self.query_node.destroy_node()
            except Exception:  # noqa: BLE001 - context already gone
                pass
            self.query_node = None

    def executor_threads(self) -> int:
        """Threads the mapping node's executor needs: :data:`SPARE_THREADS`, plus the query bound
        when queries run on it (``node.query_executor: threads``, or no EventsExecutor)."""
        on_node = self.query_node is None
        return (int(self.cfg.node.max_queries_in_flight) if on_node else 0) + SPARE_THREADS

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no query is in flight (node shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._in_flight

    # ------------------------------------------------------------------ browser viewer

    def _start_viewer(self) -> None:
        """``viewer.serve``: the browser viewer in this process (it never stops the node)."""
        from concurrent.futures import ThreadPoolExecutor

        vcfg = self.cfg.viewer
        try:
            from ..viewer.server import SceneViewer

            self.viewer = SceneViewer(host=vcfg.host, port=vcfg.port, max_splats=vcfg.max_splats)
        except Exception as exc:  # noqa: BLE001 - no viser, port refused: serve queries anyway
            self.node.get_logger().error(f"viewer not started: {type(exc).__name__}: {exc}")
            return
        # Scene swaps and answers reach the page from one worker thread, off the service's path.
        self._viewer_jobs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="viewer")
        note = "" if vcfg.host in ("127.0.0.1", "localhost", "::1") else " (not loopback: reachable from the network)"
        self.node.get_logger().info(f"browser viewer at {self.viewer.url}{note}")

    def _to_viewer(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self.viewer is None or self._viewer_jobs is None:
            return

        def job() -> None:
            try:
                fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the page is a view; never fail the node for it
                self.node.get_logger().warning(f"viewer update failed: {type(exc).__name__}: {exc}")

        self._viewer_jobs.submit(job)

    def _show_answer(self, scene: Any, result: Any, negatives: list[str]) -> None:
        # Jobs run in order: a scene swapped in before this answer is already on the page.
        if self.viewer is not None and self.viewer.scene is scene:
            self.viewer.show_result(result, negatives=negatives, source="/semantic_query")

    def stop_viewer(self) -> None:
        if self._viewer_jobs is not None:
            self._viewer_jobs.shutdown(wait=True, cancel_futures=True)
        if self.viewer is not None:
            self.viewer.stop()
            self.viewer = None

    # ------------------------------------------------------------------ scenes

    def load(self, path: str | Path) -> LoadedScene:
        """Load a scene folder completely, then swap it in. Raises SceneError / OSError / ValueError."""
        self.node.get_logger().info(f"loading scene {path} (the current scene is served meanwhile)")
        with self._load_lock:  # two loads at once would only waste memory
            # A scene's text-encoder checkpoint may come only from the scene folder, the allowed
            # roots and the configured checkpoint folders (scene_checks.py).
            ncfg = self.cfg.node
            allowed = [*ncfg.allowed_roots, *ncfg.checkpoint_dirs]
            loaded = load_scene(Path(path), device=self.cfg.device, query_cfg=self.cfg.query, allowed_dirs=allowed)
            self.scene = loaded  # the atomic swap: one reference assignment
        self.publish_scene_cloud()
        if self.viewer is not None:
            self._to_viewer(self.viewer.set_scene, loaded)
        self.node.get_logger().info(f"serving scene {loaded.path} ({loaded.num_gaussians} Gaussians)")
        return loaded

    def publish_scene_cloud(self) -> None:
        scene = self.scene
        if scene is None:
            return
        pts, cols = scene.scene_cloud()
        header = conv.make_header(scene.frame_id, self.node.get_clock().now().to_msg())
        self.scene_pub.publish(conv.arrays_to_cloud(pts, header, colors=cols))

    # ------------------------------------------------------------------ queries

    def _target_transform(self, target: str, scene_frame: str) -> np.ndarray | None:
        """``target_from_scene`` or None (identity). Raises RequestError for unknown frames."""
        target = target.strip().lstrip("/")
        if not target or target == scene_frame.lstrip("/"):
            return None
        if len(target) > 256 or any(c.isspace() for c in target):
            raise RequestError("target_frame is not a valid frame name")
        if self.tf_buffer is None:
            raise RequestError(
                f"unknown target_frame {target!r}: tf2_ros is not available on this node, so only the scene "
                f"frame {scene_frame!r} (or an empty target_frame) can be served"
            )
        try:
            from rclpy.duration import Duration
            from rclpy.time import Time

            tf = self.tf_buffer.lookup_transform(target, scene_frame, Time(), timeout=Duration(seconds=0.2))
            return conv.transform_to_matrix_msg(tf.transform)
        except Exception as exc:  # noqa: BLE001 - tf2 raises several exception types
            raise RequestError(f"unknown target_frame {target!r}: no transform from {scene_frame!r} ({exc})") from None

    def serve_query(self, req: Any, resp: Any) -> Any:
        """The service callback: admission (a "busy" answer beyond the bound), then :meth:`handle_query`."""
        limit = int(self.cfg.node.max_queries_in_flight)
        with self._in_flight_lock:
            busy = self._in_flight >= limit
            if busy:
                self.queries_refused_busy += 1
            else:
                self._in_flight += 1
        if busy:
            resp.success, resp.found, resp.instances = False, False, []
            resp.message = (
                f"{BUSY}: {limit} queries are in flight (node.max_queries_in_flight); "
                "nothing was done for this request, call again"
            )
            return resp
        try:
            return self.handle_query(req, resp)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def handle_query(self, req: Any, resp: Any) -> Any:
        t0 = time.perf_counter()
        resp.success = False
        try:
            self._answer(req, resp)
        except RequestError as exc:
            resp.message = str(exc)
        except ValueError as exc:  # QueryError and other input problems found by the engine
            resp.message = f"invalid query: {exc}"
        except Exception as exc:  # noqa: BLE001 - the service must answer, whatever happened
            self.node.get_logger().error(f"semantic_query failed: {type(exc).__name__}: {exc}")
            resp.message = f"internal error: {type(exc).__name__}: {exc}"
        if not resp.success:
            resp.found = False
            resp.instances = []
        resp.query_time_ms = float((time.perf_counter() - t0) * 1e3)
        self.queries_answered += 1
        return resp

    def _answer(self, req: Any, resp: Any) -> None:
        check_request(req, self.cfg.query.max_query_chars)
        scene = self.scene  # read once: a swap during this query does not affect it
        if scene is None:
            raise RequestError("no scene is loaded yet: train one (~/train action) or load one (~/load_scene)")
        T = self._target_transform(req.target_frame, scene.frame_id)
        frame = req.target_frame.strip().lstrip("/") or scene.frame_id
        # No lock: the engine is thread-safe (immutable unit index, caches with their own locks).
        result = scene.engine.query(
            req.query.strip(),
            negatives=[n for n in req.negatives] or None,
            threshold=float(req.threshold) if req.threshold > 0 else None,
            max_instances=int(req.max_instances),
            point_spacing=float(req.point_spacing) if req.point_spacing > 0 else None,
            include_gaussians=bool(req.include_gaussians),
        )
        header = conv.make_header(frame, self.node.get_clock().now().to_msg())
        gaussians = bool(req.include_gaussians)
        conv.fill_query_response(resp, result, header, T, include_gaussians=gaussians, clouds=req.clouds)
        # RViz shows the combined cloud whichever clouds the caller asked for.
        per_instance_only = req.clouds == conv.CLOUDS_PER_INSTANCE
        self.query_pub.publish(conv.result_to_cloud(result, header, T) if per_instance_only else resp.cloud)
        self.marker_pub.publish(conv.instances_to_markers(resp.instances, header))
        self._to_viewer(self._show_answer, scene, result, list(req.negatives))


__all__ = ["BUSY", "HARD_MAX_QUERY_CHARS", "LATCHED", "RequestError", "SceneServer", "check_request"]
