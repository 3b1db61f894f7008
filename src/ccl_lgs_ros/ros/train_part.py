"""The ``~/train`` action of the mapping node (``ccl_lgs_interfaces/action/TrainScene``).

On a goal: the capture is snapshotted (hard links, :meth:`CaptureWriter.snapshot`), then
``ccl-lgs train SNAPSHOT SCENE`` runs as a separate process through
:class:`~ccl_lgs_ros.supervisor.TrainerProcess` (argument list, ``CCL_LGS_PROGRESS=json``) while
the node keeps capturing and answering queries. Its progress lines become feedback; a cancel
request stops it (SIGTERM, then SIGKILL); a crash aborts the goal with the reason; success loads
the new scene and swaps it in atomically (:class:`~.query_part.SceneServer`).
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node

from ..config import Config, ConfigError
from ..distributed import config_overrides
from ..paths import PathRefused, resolve_inside
from ..supervisor import TrainerProcess, TrainProgress, train_command
from ..train_checks import check_train_settings, config_of_train_argv
from .capture_part import CaptureFrontend
from .guard import reason_of
from .query_part import SceneServer

#: Config keys whose value is a file or folder the trainer reads (confined to node.allowed_roots
#: when a goal sets them; the operator's own params file is not restricted).
PATH_KEYS = {"priors.sam_checkpoint", "priors.sam2_checkpoint", "priors.clip_checkpoint", "priors.sim_ground_truth"}


class TrainAction:
    """Action server and the state the status message reports."""

    def __init__(self, node: Node, cfg: Config, capture: CaptureFrontend | None, server: SceneServer) -> None:
        from ccl_lgs_interfaces.action import TrainScene

        self.node = node
        self.cfg = cfg
        self.capture = capture
        self.server = server
        self.TrainScene = TrainScene
        self.training = False
        self.stage = ""
        self.progress = 0.0
        self.last_error = ""
        self.trainer: TrainerProcess | None = None
        self._busy = threading.Lock()
        self._stopping = threading.Event()
        self.action = ActionServer(
            node,
            TrainScene,
            "~/train",
            execute_callback=self._execute,
            goal_callback=self._on_goal,
            cancel_callback=lambda _goal: CancelResponse.ACCEPT,
            callback_group=ReentrantCallbackGroup(),
        )

    def _on_goal(self, goal: Any) -> GoalResponse:
        # Goals are accepted and refused at the start of execute, before any snapshot or trainer,
        # with the reason in the result (a rejection carries none).
        return GoalResponse.ACCEPT

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop a running trainer (node shutdown) and wait until the goal's callback has ended, so
        the node is not destroyed under it."""
        self._stopping.set()
        trainer = self.trainer
        if trainer is not None and trainer.running:
            trainer.cancel(grace=3.0)
        if self._busy.acquire(timeout=timeout):
            self._busy.release()

    def _result(self, success: bool, message: str, scene_path: str = "", t0: float | None = None) -> Any:
        res = self.TrainScene.Result()
        res.success, res.message, res.scene_path = success, message, scene_path
        res.duration_s = float(time.monotonic() - t0) if t0 is not None else 0.0
        if not success:
            self.last_error = message
            if not self._stopping.is_set():
                self.node.get_logger().error(f"train: {message}")
        return res

    def _execute(self, goal_handle: Any) -> Any:
        if not self._busy.acquire(blocking=False):
            self._finish(goal_handle, "abort")
            return self._result(False, "a training run is already in progress; cancel it or wait")
        try:
            return self._run(goal_handle)
        except Exception as exc:  # noqa: BLE001 - a goal must end with a reason, never kill the node
            self.stage = "failed"
            try:
                self._finish(goal_handle, "abort")
            except Exception:  # noqa: BLE001 - shutting down: the goal is gone anyway
                pass
            return self._result(False, f"internal error: {type(exc).__name__}: {reason_of(exc)}")
        finally:
            self.training = False
            self.trainer = None
            self._busy.release()

    def _run(self, goal_handle: Any) -> Any:
        t0 = time.monotonic()
        goal = goal_handle.request
        ncfg = self.cfg.node
        if self.capture is None or self.capture.session is None:
            self._finish(goal_handle, "abort")
            return self._result(False, "no capture to train on (serve-only mode or no capture folder open)")
        n = self.capture.num_keyframes
        if n < ncfg.min_train_keyframes:
            self._finish(goal_handle, "abort")
            return self._result(False, f"the capture has {n} keyframes; at least {ncfg.min_train_keyframes} are needed")
        run = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
        scene_root = Path(ncfg.scene_dir).expanduser()
        snapshot_dir = scene_root / ".captures" / run
        scene_dir = scene_root / run
        try:
            # Paths in overrides are resolved inside the allowed roots and passed on absolute,
            # so the trainer opens exactly the file that was checked (never one relative to its
            # working directory).
            overrides = self._confine_override_paths(goal.overrides)
            argv = train_command(
                snapshot_dir,
                scene_dir,
                preset=goal.preset or ncfg.train_preset,
                device=goal.device or ncfg.device,
                method=goal.method or None,
                # the node's distributed.* settings (process count, rendezvous), then the goal's own
                overrides=[*config_overrides(self.cfg.distributed), *overrides],
            )
        except (ConfigError, PathRefused) as exc:
            self._finish(goal_handle, "abort")
            return self._result(False, f"invalid goal: {exc}")
        reason = self._check_settings(argv)
        if reason:
            self._finish(goal_handle, "abort")
            return self._result(False, f"invalid goal: {reason}")
        try:
            self.capture.snapshot(snapshot_dir)
        except Exception as exc:  # noqa: BLE001 - CaptureWriteError, OSError
            self._finish(goal_handle, "abort")
            return self._result(False, f"cannot snapshot the capture: {exc}")
        feedback: queue.Queue[TrainProgress] = queue.Queue()
        trainer = TrainerProcess(argv, on_progress=feedback.put)
        self.training, self.stage, self.progress, self.last_error = True, "starting", 0.0, ""
        self.node.get_logger().info(f"train: {n} keyframes -> {scene_dir} ({' '.join(argv[3:])})")
        try:
            trainer.start()
        except OSError as exc:
            self._finish(goal_handle, "abort")
            return self._result(False, f"cannot start the trainer: {exc}", t0=t0)
        self.trainer = trainer
        outcome = None
        while outcome is None:
            outcome = trainer.wait(timeout=0.2)
            self._publish_feedback(goal_handle, feedback)
            if outcome is None and (goal_handle.is_cancel_requested or self._stopping.is_set()):
                trainer.cancel(grace=5.0)
        self._publish_feedback(goal_handle, feedback)
        if outcome.cancelled:
            if goal_handle.is_cancel_requested:
                self._finish(goal_handle, "canceled")
            else:
                self._finish(goal_handle, "abort")
            self.stage = "cancelled"
            return self._result(False, "training cancelled; the capture continues", str(scene_dir), t0)
        if not outcome.success:
            self._finish(goal_handle, "abort")
            self.stage = "failed"
            return self._result(False, f"{outcome.message}; the capture continues", str(scene_dir), t0)
        self.stage = "loading"
        try:
            self.server.load(scene_dir)
        except Exception as exc:  # noqa: BLE001 - SceneError, OSError, ValueError
            self._finish(goal_handle, "abort")
            self.stage = "failed"
            return self._result(False, f"training finished but the scene does not load: {exc}", str(scene_dir), t0)
        self.stage, self.progress = "done", 1.0
        self._finish(goal_handle, "succeed")
        return self._result(True, f"scene trained from {n} keyframes and loaded", str(scene_dir), t0)

    def _finish(self, goal_handle: Any, how: str) -> None:
        """``abort`` / ``canceled`` / ``succeed`` the goal; a node shutting down may already have
        invalidated the action server, which must not turn a clean exit into a traceback."""
        try:
            getattr(goal_handle, how)()
        except Exception as exc:  # noqa: BLE001 - RCLError from an invalid context
            if not self._stopping.is_set():
                raise
            self.node.get_logger().debug(f"goal not updated during shutdown: {exc}")

    def _check_settings(self, argv: list[str]) -> str:
        """Settings the trainer could not work with (device, backends, checkpoints, simulator
        ground truth; :mod:`ccl_lgs_ros.train_checks`), found before a snapshot or trainer."""
        assert self.capture is not None
        try:
            check_train_settings(config_of_train_argv(argv), self.capture.folder)
        except (ValueError, OSError) as exc:  # TrainSettingsError, ConfigError, CaptureError
            return str(exc)
        return ""

    def _confine_override_paths(self, overrides: Any) -> list[str]:
        """Overrides that make the trainer read a file must name one inside the allowed roots;
        returns the overrides with those paths replaced by their resolved absolute form (a
        relative path is relative to the first allowed root, as :func:`resolve_inside` checks it).
        Raises :class:`PathRefused`."""
        out = []
        for item in overrides:
            key, sep, value = str(item).partition("=")
            key = key.strip()
            if sep and value.strip() and (key in PATH_KEYS or key.endswith(("_checkpoint", "_dir", "_path", "_file"))):
                resolved = resolve_inside(value.strip(), self.cfg.node.allowed_roots, must_exist=True, what=key)
                item = f"{key}={resolved}"
            out.append(str(item))
        return out

    def _publish_feedback(self, goal_handle: Any, items: queue.Queue) -> None:
        last = None
        while True:
            try:
                last = items.get_nowait()
            except queue.Empty:
                break
        if last is None:
            return
        self.stage, self.progress = last.stage, last.fraction
        fb = self.TrainScene.Feedback()
        fb.stage, fb.progress, fb.eta_s = last.stage, float(last.fraction), float(last.eta_s)
        fb.message = last.message or f"{last.stage} {last.step}/{last.total}"
        try:
            goal_handle.publish_feedback(fb)
        except Exception as exc:  # noqa: BLE001 - a goal handle gone stale must not stop training
            self.node.get_logger().debug(f"feedback not published: {exc}")


__all__ = ["TrainAction"]
