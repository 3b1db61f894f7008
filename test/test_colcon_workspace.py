"""`colcon build` of the repository as a workspace source folder builds both packages.

colcon stops crawling at the first folder it identifies as a package, so with `ccl_lgs` at the
repository root `ccl_lgs_interfaces` (inside it) must be named as a base path too; README and
scripts/setup.sh use exactly this command, run with the (virtual environment's) Python as
`python -m colcon build`, so the installed executables start that Python (PEP 668 systems: the
dependencies live in a venv that sees the system ROS).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
HAVE_COLCON = importlib.util.find_spec("colcon") is not None


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not HAVE_COLCON, reason="colcon is not importable (run scripts/setup.sh)")
def test_colcon_builds_both_packages(tmp_path):
    ws = tmp_path / "ws"
    pkg = ws / "src" / "ccl_lgs"
    files = subprocess.run(["git", "ls-files", "package.xml", "setup.py", "setup.cfg", "resource", "src",
                            "launch", "config", "ccl_lgs_interfaces"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    assert "ccl_lgs_interfaces/package.xml" in files
    for rel in files:
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, pkg / rel)
    env = dict(os.environ)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    if not os.environ.get("ROS_DISTRO"):
        env["AMENT_PREFIX_PATH"] = str(VENV)
        env["CMAKE_PREFIX_PATH"] = str(VENV)
    proc = subprocess.run(
        [sys.executable, "-m", "colcon", "build", "--base-paths", "src", "src/ccl_lgs/ccl_lgs_interfaces",
         "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
        cwd=ws, env=env, capture_output=True, text=True, timeout=880,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    install = ws / "install"
    assert (install / "ccl_lgs_interfaces" / "share" / "ccl_lgs_interfaces" / "srv" / "SemanticQuery.srv").is_file()
    assert list((install / "ccl_lgs_interfaces").rglob("ccl_lgs_interfaces/srv/_semantic_query.py"))
    for exe in ("ccl-lgs", "mapping_node", "replay"):
        assert (install / "ccl_lgs" / "lib" / "ccl_lgs" / exe).is_file(), exe
        # the executables run the Python colcon ran with (the venv's), which has torch & co.
        first = (install / "ccl_lgs" / "lib" / "ccl_lgs" / exe).read_text().splitlines()[0]
        assert first == f"#!{sys.executable}", (exe, first)
    share = install / "ccl_lgs" / "share" / "ccl_lgs"
    assert (share / "package.xml").is_file()
    assert (install / "ccl_lgs" / "share" / "ament_index" / "resource_index" / "packages" / "ccl_lgs").is_file()
