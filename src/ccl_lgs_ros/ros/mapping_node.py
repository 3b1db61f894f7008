"""The mapping node: capture -> train (separate process) -> serve ``/semantic_query``.

Parts (one process by default, each in its own module):

- :class:`~.params.ConfigParameters`: every config field as a validated ROS parameter;
- :class:`~.capture_part.CaptureFrontend`: sensor subscriptions -> keyframes on disk;
- :class:`~.query_part.SceneServer`: the served scene, ``/semantic_query``, RViz clouds/markers;
- :class:`~.train_part.TrainAction`: the ``~/train`` action.

Services: ``/semantic_query`` (absolute, remappable), ``~/load_scene``, ``~/set_capture``,
``~/get_status``; topic ``~/status`` (MapperStatus at ``node.publish_rate``). Spun by a
multi-threaded executor; SIGINT/SIGTERM shut it down cleanly, also when a terminal Ctrl-C under
``ros2 launch`` delivers SIGINT twice (a running trainer is stopped; every capture write is
atomic, so the folder is always consistent; exit code 0).

Run: ``ros2 run ccl_lgs mapping_node --ros-args --params-file config/ccl_lgs.yaml`` (or
``python -m ccl_lgs_ros.ros.mapping_node``).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from ..paths import PathRefused, resolve_inside
from .capture_part import CaptureFrontend, ThrottledLog
from .guard import guarded_callback, guarded_service
from .params import ConfigParameters
from .query_part import SceneServer
from .train_part import TrainAction

NODE_NAME = "ccl_lgs_mapper"


class MappingNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        from ccl_lgs_interfaces.msg import MapperStatus
        from ccl_lgs_interfaces.srv import GetStatus, LoadScene, SetCapture

        self.params = ConfigParameters(self, on_change=self._on_param_change)
        self.cfg = self.params.cfg
        ncfg = self.cfg.node
        self.bad = ThrottledLog(self.get_logger())
        self.last_error = ""
        self.capture: CaptureFrontend | None = None
        if not ncfg.serve_only:
            self.capture = CaptureFrontend(self, self.cfg, self.bad)
            try:
                self._check_capture_dir(ncfg.capture_dir)
                self.capture.open(ncfg.capture_dir)
                self.capture.enabled = bool(ncfg.capture_on_start)
            except Exception as exc:  # noqa: BLE001 - CaptureError, CaptureWriteError, PathRefused, OSError ...
                self._error(f"capture disabled: capture folder {ncfg.capture_dir!r} not usable: {exc}")
        tf_buffer = self.capture.tf_buffer if self.capture is not None else _tf_buffer_for(self)
        self.server = SceneServer(self, self.cfg, tf_buffer)
        self.trainer = TrainAction(self, self.cfg, self.capture, self.server)
        control = MutuallyExclusiveCallbackGroup()
        log = self.get_logger
        # Every handler answers whatever happens inside it (guard.py): the node never dies from a request.
        self.create_service(
            LoadScene, "~/load_scene", guarded_service("load_scene", log)(self._on_load_scene), callback_group=control
        )
        self.create_service(
            SetCapture, "~/set_capture", guarded_service("set_capture", log)(self._on_set_capture),
            callback_group=control,
        )
        self.create_service(
            GetStatus, "~/get_status", guarded_service("get_status", log)(self._on_get_status), callback_group=control
        )
        self.status_pub = self.create_publisher(MapperStatus, "~/status", 10)
        self.status_timer = None
        if ncfg.publish_rate > 0:
            # The only periodic work: no busy loop, so an idle node costs (almost) no CPU.
            self.status_timer = self.create_timer(
                1.0 / ncfg.publish_rate, guarded_callback("status", log)(self._publish_status), callback_group=control
            )
        if ncfg.initial_scene:
            try:
                self.server.load(ncfg.initial_scene)  # the operator's own setting: not confined
            except Exception as exc:  # noqa: BLE001 - SceneError, OSError: keep running, report it
                self._error(f"initial scene {ncfg.initial_scene!r} not loaded: {exc}")
        mode = "serve-only" if ncfg.serve_only else f"capturing={self.capture.enabled if self.capture else False}"
        self.get_logger().info(f"{NODE_NAME} ready ({mode}); /semantic_query is up")

    # ------------------------------------------------------------------ helpers

    def _error(self, message: str) -> None:
        self.last_error = message
        self.get_logger().error(message)

    def _check_capture_dir(self, path: str) -> None:
        """The configured capture folder must itself lie inside the allowed roots."""
        resolve_inside(path, self.cfg.node.allowed_roots, what="capture folder")

    def _on_param_change(self, name: str, value: Any) -> None:
        if self.capture is not None:
            self.capture.config_changed(name)

    def status_msg(self) -> Any:
        from ccl_lgs_interfaces.msg import MapperStatus

        msg = MapperStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.cfg.node.fixed_frame
        cap = self.capture
        msg.capturing = bool(cap is not None and cap.enabled and cap.session is not None)
        msg.num_keyframes = cap.num_keyframes if cap is not None else 0
        msg.capture_dir = cap.folder if cap is not None else ""
        msg.training = bool(self.trainer.training)
        msg.training_stage = self.trainer.stage
        msg.training_progress = float(self.trainer.progress)
        scene = self.server.scene
        msg.scene_loaded = scene is not None
        msg.scene_path = str(scene.path) if scene is not None else ""
        msg.scene_gaussians = int(scene.num_gaussians) if scene is not None else 0
        errors = [self.trainer.last_error, cap.last_error if cap is not None else "", self.last_error]
        msg.last_error = next((e for e in errors if e), "")
        return msg

    # ------------------------------------------------------------------ services

    def _publish_status(self) -> None:
        self.status_pub.publish(self.status_msg())

    def _on_get_status(self, req: Any, resp: Any) -> Any:
        resp.status = self.status_msg()
        return resp

    def _on_load_scene(self, req: Any, resp: Any) -> Any:
        resp.success = False
        try:
            path = resolve_inside(req.path, self.cfg.node.allowed_roots, must_exist=True, what="scene folder")
            loaded = self.server.load(path)
        except PathRefused as exc:
            resp.message = f"refused: {exc}"
            return resp
        except Exception as exc:  # noqa: BLE001 - SceneError, OSError, ValueError: report, keep serving
            resp.message = f"scene not loaded (the previous scene is still served): {exc}"
            return resp
        resp.success, resp.num_gaussians = True, int(loaded.num_gaussians)
        resp.message = f"loaded {loaded.path}"
        return resp

    def _on_set_capture(self, req: Any, resp: Any) -> Any:
        resp.success = False
        cap = self.capture
        if cap is None:
            resp.message = "serve-only mode: this node does not capture"
            return resp
        if req.capture_dir:
            resp.num_keyframes = cap.num_keyframes
            folder = resolve_inside(req.capture_dir, self.cfg.node.allowed_roots, what="capture folder")
            cap.open(folder)  # CaptureError / CaptureWriteError: answered by the guard, old folder kept
        if req.enable and cap.session is None:
            resp.message = "no capture folder is open; name one in capture_dir"
            return resp
        cap.enabled = bool(req.enable)
        resp.success, resp.num_keyframes = True, cap.num_keyframes
        resp.message = f"capture {'on' if cap.enabled else 'off'} in {cap.folder}"
        return resp

    def shutdown(self) -> None:
        """Stop the trainer and capture and let queries in flight finish; called once on the way
        out, before the node is destroyed."""
        if self.capture is not None:
            self.capture.enabled = False
        self.trainer.shutdown()
        self.server.stop_query_thread(timeout=5.0)
        self.server.wait_idle(timeout=5.0)
        self.server.stop_viewer()


def _tf_buffer_for(node: Node) -> Any:
    from .capture_part import HAVE_TF2

    if not HAVE_TF2:
        return None
    import tf2_ros

    buf = tf2_ros.Buffer()
    node._tf_listener = tf2_ros.TransformListener(buf, node, spin_thread=True)  # type: ignore[attr-defined]  # kept alive with the node
    return buf


class _ShutdownSignals:
    """SIGINT / SIGTERM handling of the node process (rclpy's own handlers are switched off).

    The first signal asks for shutdown and makes the process ignore every further SIGINT and
    SIGTERM: a terminal Ctrl-C under ``ros2 launch`` reaches the node twice (the process group's
    SIGINT and the one launch forwards, a few ms apart), and a second KeyboardInterrupt in the
    middle of the shutdown sequence is what left tracebacks and a non-zero exit code. Before the
    node is spinning (start-up: an initial scene may take long to load) the first signal also
    abandons the start-up with a KeyboardInterrupt; afterwards it only sets :attr:`stop`, which
    the spin loop checks at least every :data:`SPIN_PERIOD_S`.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.received: str = ""
        self.spinning = False

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # shutting down: later signals change nothing
        first = not self.stop.is_set()
        self.stop.set()
        if first:
            self.received = signal.Signals(signum).name
            if not self.spinning:
                raise KeyboardInterrupt


#: Time a reply sent during shutdown gets on the wire before the node is destroyed.
REPLY_GRACE_S = 0.5

#: Longest time the spin loop waits before it looks at the stop flag (a signal's Python handler
#: runs only when the main thread is back in Python, i.e. when a wait returns).
SPIN_PERIOD_S = 0.1


def _try_shutdown() -> None:
    """``rclpy.try_shutdown()`` (Humble and later); never raises on an already shut-down context."""
    try:
        rclpy.try_shutdown()
    except Exception:  # noqa: BLE001 - e.g. RCLError "rcl_shutdown already called": nothing left to do
        pass


def _wait_for_callbacks(executor: MultiThreadedExecutor, timeout: float) -> None:
    """Wait until the callbacks the executor started (with the replies they send) have ended, so the
    node is not destroyed under them (a ~/load_scene call may take seconds). ``Executor.shutdown``
    promises this wait but skips it in rclpy 7 (it sets its shutdown flag before testing it); its
    work tracker is what it would wait on. Without one (another rclpy), a short grace instead."""
    tracker = getattr(executor, "_work_tracker", None)
    if tracker is not None and callable(getattr(tracker, "wait", None)):
        if tracker.wait(0):
            return  # nothing in progress
        tracker.wait(timeout)
    # A reply just handed to DDS still has to reach its caller before the participant goes away.
    time.sleep(REPLY_GRACE_S)


def main(args: list[str] | None = None) -> int:
    signals = _ShutdownSignals()
    node = None
    executor = None
    code = 0
    try:
        signals.install()  # before rclpy.init, so no signal can fall between the two
        try:
            # rclpy's handlers would shut the context down from the signal and chain to Python's
            # KeyboardInterrupt; the node's own handlers (above) make shutdown one ordered sequence.
            rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
        except Exception as exc:  # noqa: BLE001 - e.g. ROS_SECURITY_ENABLE with no enclave for this node
            print(f"mapping_node: cannot start ROS 2: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        node = MappingNode()
        executor = MultiThreadedExecutor(num_threads=node.server.executor_threads())
        executor.add_node(node)
        node.server.start_query_thread()
        signals.spinning = True
        while not signals.stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - report start-up failures plainly
        print(f"mapping_node: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    finally:
        # Signals are ignored from here on (see _ShutdownSignals), so this runs to its end.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if node is not None:
            node.shutdown()
        if executor is not None:
            _wait_for_callbacks(executor, timeout=30.0)
            executor.shutdown(timeout_sec=10.0)
        if node is not None:
            # The context may already be shut down (signal): no rosout, plain stderr.
            print(
                f"mapping_node: shut down cleanly{f' ({signals.received})' if signals.received else ''} "
                f"({node.capture.num_keyframes if node.capture else 0} keyframes in the capture)",
                file=sys.stderr,
                flush=True,
            )
            try:
                node.destroy_node()
            except Exception as exc:  # noqa: BLE001 - a half-built node (start-up interrupted)
                print(f"mapping_node: destroy_node: {type(exc).__name__}: {exc}", file=sys.stderr)
        elif signals.received:
            print(f"mapping_node: start-up interrupted ({signals.received}); shut down cleanly", file=sys.stderr)
        _try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
