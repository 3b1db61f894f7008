"""Utilities of the ROS tests (imported by conftest.py and test modules as ``_rosutil``)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

HELPERS = Path(__file__).resolve().parent / "helpers"
REPO = Path(__file__).resolve().parents[2]


def _ros_importable() -> str | None:
    """``None`` when rclpy and the interfaces import; else the reason they do not."""
    try:
        import rclpy  # noqa: F401
        from ccl_lgs_interfaces.srv import SemanticQuery  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
        return f"ROS 2 Python (rclpy + ccl_lgs_interfaces) not importable: {exc} (run scripts/setup.sh)"
    return None


ROS_SKIP_REASON = _ros_importable()


def domain_id_for(key: str, pid: int | None = None) -> int:
    """A ROS domain id in 1..100 for ``key`` (a test node id) and a process id."""
    pid = os.getpid() if pid is None else pid
    digest = hashlib.sha256(f"{key}:{pid}".encode()).digest()
    return 1 + int.from_bytes(digest[:4], "little") % 100


def ros_env(log_dir: Path, domain_id: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a ROS 2 process confined to loopback and its own domain."""
    env = dict(os.environ if base is None else base)
    env.pop("ROS_LOCALHOST_ONLY", None)  # removed in Kilted, and did not keep traffic local
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_LOG_DIR"] = str(log_dir)
    env["PYTHONUNBUFFERED"] = "1"
    # Children must import the repository's code even without the editable install.
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log_dir.mkdir(parents=True, exist_ok=True)
    return env


class RosProcesses:
    """Starts Python child processes in the isolated environment; stops them all at teardown."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(
        self, args: Sequence[str], *, name: str = "proc", extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """``python args...`` with stdout+stderr to ``workdir/name.log`` (read with :meth:`log`)."""
        env = dict(self.env)
        env.update(extra_env or {})
        log = self.workdir / f"{name}.{len(self.procs)}.log"
        fh = open(log, "wb")  # noqa: SIM115 - closed by the child's exit / teardown
        proc = subprocess.Popen(
            [sys.executable, *map(str, args)],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=str(self.workdir),
            start_new_session=True,  # its own process group: grandchildren are stopped with it
        )
        fh.close()
        proc.log_path = log  # type: ignore[attr-defined]
        self.procs.append((proc, log))
        return proc

    @staticmethod
    def log(proc: subprocess.Popen) -> str:
        return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    def wait_for_line(self, proc: subprocess.Popen, text: str, timeout: float) -> str:
        """Wait until ``text`` appears in the process log; fail with the log on timeout/exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.log(proc)
            if text in out:
                return out
            if proc.poll() is not None:
                pytest.fail(f"process exited ({proc.returncode}) before printing {text!r}:\n{out[-4000:]}")
            time.sleep(0.1)
        pytest.fail(f"timed out after {timeout} s waiting for {text!r}:\n{self.log(proc)[-4000:]}")

    @staticmethod
    def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> int:
        """Signal, wait ``grace`` seconds, then SIGKILL (its process group). Returns the exit code."""
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        # Grandchildren (e.g. a trainer started by the node) share the group we created.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return proc.returncode

    def stop_all(self) -> None:
        for proc, _ in reversed(self.procs):
            self.stop(proc, grace=5.0)


class RosClient:
    """An in-process rclpy node (own context) that calls services and actions of other processes."""

    def __init__(self, domain_id: int, name: str = "test_client") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._clients: dict[tuple, object] = {}

    def client(self, srv_type: type, name: str, timeout: float = 30.0):  # noqa: ANN201
        key = (srv_type, name)
        if key not in self._clients:
            cli = self.node.create_client(srv_type, name)
            if not cli.wait_for_service(timeout_sec=timeout):
                pytest.fail(f"service {name} not available after {timeout} s")
            self._clients[key] = cli
        return self._clients[key]

    def call(self, srv_type: type, name: str, request: object, timeout: float = 30.0):  # noqa: ANN201
        fut = self.client(srv_type, name).call_async(request)
        self.executor.spin_until_future_complete(fut, timeout_sec=timeout)
        if not fut.done():
            pytest.fail(f"{name}: no answer within {timeout} s")
        return fut.result()

    def spin_until(self, predicate, timeout: float) -> bool:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return bool(predicate())

    def close(self) -> None:
        try:
            self.executor.shutdown(timeout_sec=5)
            self.node.destroy_node()
        finally:
            if self.context.ok():
                self.rclpy.shutdown(context=self.context)


def module_ros_env(tmp: Path, key: str) -> dict[str, str]:
    """Isolated environment for module-scoped fixtures (one node shared by a module's tests)."""
    return ros_env(tmp / "ros_log", domain_id_for(key))


def write_blob_scene(
    dest: Path,
    labels: Sequence[str] = ("red mug", "blue bowl", "green apple"),
    centers: Sequence[Sequence[float]] = ((2.0, 0.0, 0.8), (2.5, 0.6, 0.8), (1.6, -0.7, 0.8)),
    frame_id: str = "map",
    num_gaussians: int = 6000,
) -> dict:
    """A loadable scene folder without training: synthetic Gaussian spheres whose codes are their
    labels' simulator text embeddings (plus a 'floor' code). Returns the ground truth:
    ``{label: [centre, ...]}`` and the per-Gaussian object ids."""
    import numpy as np

    from ccl_lgs_ros.config import Config, to_dict
    from ccl_lgs_ros.io import atomic_write_json
    from ccl_lgs_ros.priors.simulator import SimulatedTextEncoder
    from ccl_lgs_ros.scene.layout import SCENE_FORMAT_VERSION, SceneDir
    from ccl_lgs_ros.testing.blobs import blob_scene

    enc = SimulatedTextEncoder(dim=64, seed=0)
    names = list(dict.fromkeys([*labels, "floor"]))
    codebook = enc.encode_text(names)
    codes = np.array([names.index(lbl) for lbl in labels])
    scene = blob_scene(num_gaussians, np.asarray(centers, float), codes, names.index("floor"), radius=0.1, seed=1)
    dest.mkdir(parents=True, exist_ok=True)
    scene.index(codebook, level="wp", frame_id=frame_id).save(SceneDir(dest).query_index)
    atomic_write_json(
        dest / "scene.json",
        {
            "format_version": SCENE_FORMAT_VERSION,
            "frame_id": frame_id,
            "world_from_scene": np.eye(4).tolist(),
            "config": to_dict(Config()),
            "text_encoder": enc.spec(),
        },
    )
    gt: dict[str, list] = {}
    for lbl, c in zip(labels, centers):
        gt.setdefault(lbl, []).append(list(c))
    return {"centers": gt, "object_id": scene.object_id, "means": scene.means}


def write_params(path: Path, params: dict) -> Path:
    """A ROS 2 params file (``/**: ros__parameters: ...``), nested by section."""
    nested: dict = {}
    for key, value in params.items():
        section, _, name = key.rpartition(".")
        (nested.setdefault(section, {}) if section else nested)[name] = value
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": nested}}))
    return path


def start_mapper(procs: RosProcesses, tmp: Path, root: Path, extra: dict | None = None, name: str = "mapper",
                 ros_args: tuple[str, ...] = ()):
    params = {
        "device": "cpu",
        "node.pose_source": "topic",
        "node.sensor_qos": "reliable",
        "node.capture_dir": str(root / "cap"),
        "node.scene_dir": str(root / "scenes"),
        "node.allowed_roots": [str(root)],
        "node.publish_rate": 2.0,
        "node.device": "cpu",
        "query.threshold": 0.8,
        "capture.blur_rejection": False,
        **(extra or {}),
    }
    pfile = write_params(tmp / f"{name}_params.yaml", params)
    proc = procs.start(["-m", "ccl_lgs_ros.ros.mapping_node", "--ros-args", "--params-file", pfile, *ros_args],
                       name=name)
    procs.wait_for_line(proc, "/semantic_query is up", timeout=60)
    return proc
