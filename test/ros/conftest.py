"""DDS isolation and process helpers shared by every ROS 2 test.

Every test that creates a ROS 2 participant (in this process or in a child process) must get its
environment from :func:`ros_env` / the ``ros_env`` fixture:

- ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``: discovery never leaves the machine;
- a ``ROS_DOMAIN_ID`` of its own (1..100), derived from the test's node id and the pytest
  process id, so concurrent test runs (and tests of one run) do not see each other's nodes;
- ``ROS_LOG_DIR`` in the test's temporary folder (rclpy writes log files at init).

All of it is set before ``rclpy.init``. Child processes are started with :class:`RosProcesses`
(the ``ros_procs`` fixture) and stopped at teardown: SIGTERM, then SIGKILL after a grace period,
so no test leaves a participant behind. The tests are marked ``ros`` and skip (with the reason)
where rclpy or the interfaces package cannot be imported.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

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


def pytest_collection_modifyitems(config, items):  # noqa: ANN001 - pytest hook signature
    """Every test under test/ros is a ROS test; skip them all when ROS is not importable."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.ros)
            if ROS_SKIP_REASON is not None:
                item.add_marker(pytest.mark.skip(reason=ROS_SKIP_REASON))


@pytest.fixture
def ros_domain(request: pytest.FixtureRequest) -> int:
    return domain_id_for(request.node.nodeid)


@pytest.fixture
def ros_env_vars(tmp_path: Path, ros_domain: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The isolated environment, also applied to this process (for in-process rclpy)."""
    env = ros_env(tmp_path / "ros_log", ros_domain)
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_LOG_DIR"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("ROS_LOCALHOST_ONLY", raising=False)
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


@pytest.fixture
def ros_procs(ros_env_vars: dict[str, str], tmp_path: Path) -> Iterator[RosProcesses]:
    procs = RosProcesses(ros_env_vars, tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def rclpy_context(ros_env_vars: dict[str, str]) -> Iterator[object]:
    """An initialised rclpy context in this process (isolated), shut down at teardown."""
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(ros_env_vars["ROS_DOMAIN_ID"]))
    try:
        yield ctx
    finally:
        try:
            rclpy.shutdown(context=ctx)
        except Exception:  # noqa: BLE001 - already shut down
            pass
