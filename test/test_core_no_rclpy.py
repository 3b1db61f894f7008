"""Nothing outside ``ccl_lgs_ros.ros`` may import rclpy (or any ROS Python package).

Each module is imported in a fresh interpreter where ``rclpy`` and the ROS message packages are
made unimportable by a ``sys.meta_path`` blocker that records every attempt; the test fails if a
module needs them (import error) or even tries to import them (guarded optional imports too).
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
BLOCKED = (
    "rclpy",
    "rosidl_runtime_py",
    "ccl_lgs_interfaces",
    "sensor_msgs",
    "geometry_msgs",
    "tf2_ros",
    "cv_bridge",
    "launch",
    "launch_ros",
    "std_msgs",
    "visualization_msgs",
    "nav_msgs",
)

_PROBE = r"""
import importlib, importlib.abc, json, sys
BLOCKED = tuple(json.loads(sys.argv[1]))
attempts = []
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{name} is blocked: ROS must not be imported outside ccl_lgs_ros.ros")
        return None
sys.meta_path.insert(0, Blocker())
for name in BLOCKED:
    sys.modules.pop(name, None)
failed = {}
for mod in json.loads(sys.argv[2]):
    before = len(attempts)
    try:
        importlib.import_module(mod)
    except Exception as exc:
        failed[mod] = f"{type(exc).__name__}: {exc}"
    if len(attempts) > before:
        failed.setdefault(mod, f"tried to import {sorted(set(attempts[before:]))}")
print(json.dumps(failed))
"""


def _core_modules() -> list[str]:
    pkg = SRC / "ccl_lgs_ros"
    names = ["ccl_lgs_ros"]
    for info in pkgutil.walk_packages([str(pkg)], prefix="ccl_lgs_ros."):
        if info.name == "ccl_lgs_ros.ros" or info.name.startswith("ccl_lgs_ros.ros."):
            continue
        if info.name.endswith(".__main__"):  # importing it would run the command line
            continue
        names.append(info.name)
    return names


@pytest.mark.timeout(300)
def test_core_modules_import_without_rclpy():
    modules = _core_modules()
    assert len(modules) > 10, modules
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(BLOCKED), json.dumps(modules)],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    failed = json.loads(out.stdout.strip().splitlines()[-1])
    # Modules failing for a reason unrelated to ROS (e.g. a missing optional ML package) are not
    # this test's business; a blocked ROS import is.
    ros_failures = {m: r for m, r in failed.items() if "blocked" in r or "tried to import" in r}
    assert not ros_failures, f"modules outside ccl_lgs_ros.ros import ROS packages: {ros_failures}"


def test_blocker_catches_a_ros_import(tmp_path):
    """The probe itself works: a module importing rclpy is reported."""
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text("import rclpy\n")
    (pkg / "guarded.py").write_text("try:\n    import rclpy\nexcept ImportError:\n    rclpy = None\n")
    (pkg / "good.py").write_text("import json\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROBE,
            json.dumps(BLOCKED),
            json.dumps(["fakepkg.bad", "fakepkg.guarded", "fakepkg.good"]),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    failed = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(failed) == {"fakepkg.bad", "fakepkg.guarded"}, failed
