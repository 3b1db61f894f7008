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

from collections.abc import Iterator
from pathlib import Path

import pytest
from _rosutil import ROS_SKIP_REASON, RosProcesses, domain_id_for, ros_env


def pytest_collection_modifyitems(config, items):  # noqa: ANN001 - pytest hook signature
    """Every test under test/ros is a ROS test; skip them all when ROS is not importable."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            # Modules with ROS_REQUIRED = False (static checks) run without ROS as well.
            if not getattr(item.module, "ROS_REQUIRED", True):
                continue
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
