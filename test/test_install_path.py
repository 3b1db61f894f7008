"""The README's install path for a system ROS 2 (PEP 668 systems) and scripts/setup.sh agree, and
every README command can be pasted.

No system ROS here: setup.sh's system-ROS branch runs as a dry run (CCL_LGS_SETUP_DRY_RUN=1)
with a stand-in ``rclpy`` on PYTHONPATH and ROS_DISTRO set, and prints the commands it would
run; the README's workspace commands must be the same steps. (The colcon build from a venv's
Python itself: test_colcon_workspace.py.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def _workspace_block() -> str:
    (block,) = [b for b in _bash_blocks() if "python -m colcon build" in b and "~/ws" in b]
    return block


def _setup_dry_run(tmp_path: Path, distro: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROS_", "AMENT_", "COLCON_", "CCL_LGS_"))}
    env.pop("PYTHONPATH", None)
    env.update(CCL_LGS_SETUP_DRY_RUN="1", CCL_LGS_VENV=str(tmp_path / "venv"), PYTHON="python3")
    if distro:
        fake = tmp_path / "opt_ros" / "lib" / "python3" / "site-packages"
        (fake / "rclpy").mkdir(parents=True)
        (fake / "rclpy" / "__init__.py").write_text("")  # what `import rclpy` needs to succeed
        env.update(ROS_DISTRO=distro, PYTHONPATH=str(fake))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    mode = f"system-{distro}" if distro else "wheels"
    assert f"[setup] mode: {mode}" in proc.stderr and "dry run" in proc.stderr
    assert not (tmp_path / "venv").exists()  # a dry run changes nothing
    return [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("distro", ["humble", "jazzy", "kilted"])
def test_setup_with_a_system_ros_takes_the_readme_path(tmp_path, distro):
    cmds = _setup_dry_run(tmp_path, distro)
    venv = str(tmp_path / "venv")
    py = f"{venv}/bin/python"
    assert cmds[0] == f"python3 -m venv --system-site-packages {venv}"
    assert f"touch {venv}/COLCON_IGNORE" in cmds
    sam2 = next(c for c in cmds if c.endswith(" sam2"))
    torch = next(c for c in cmds if " torch torchvision" in c)
    assert "SAM2_BUILD_CUDA=0" in sam2 and "--no-build-isolation" in sam2 and cmds.index(torch) < cmds.index(sam2)
    (colcon,) = [c for c in cmds if " -m colcon " in c]
    assert colcon.startswith(f"{py} -m colcon ")  # colcon from the venv's Python
    assert f"--base-paths {REPO} {REPO}/ccl_lgs_interfaces" in colcon  # both packages, as the README
    assert f"-DPython3_EXECUTABLE={py}" in colcon
    assert not [c for c in cmds if "requirements-ros.txt" in c]  # no ROS wheels over a system ROS
    # nothing goes into the system Python: every pip runs from the venv
    assert all(c.split()[0] == py for c in cmds if " pip " in c and "SAM2" not in c)


def test_setup_without_ros_installs_the_wheels(tmp_path):
    cmds = _setup_dry_run(tmp_path, None)
    venv = str(tmp_path / "venv")
    assert cmds[0] == f"python3 -m venv {venv}"
    assert any("requirements-ros.txt" in c for c in cmds)
    (colcon,) = [c for c in cmds if " -m colcon " in c]
    assert f"--install-base {venv}" in colcon


def test_readme_workspace_commands_are_the_venv_path():
    block = _workspace_block()
    lines = [ln.split("#")[0].strip() for ln in block.splitlines()]
    # the steps, in order
    steps = [
        "source /opt/ros/$ROS_DISTRO/setup.bash",
        "python3 -m venv --system-site-packages venv && touch venv/COLCON_IGNORE",
        "source venv/bin/activate",
        "python -m pip install torch torchvision",
        "python -m pip install -r src/ccl_lgs/scripts/requirements.txt",
        "SAM2_BUILD_CUDA=0 python -m pip install --no-build-isolation sam2",
        "python -m colcon build --base-paths src src/ccl_lgs/ccl_lgs_interfaces",
        "source install/setup.bash",
    ]
    found = [next((i for i, ln in enumerate(lines) if step in ln), -1) for step in steps]
    assert -1 not in found, [s for s, i in zip(steps, found) if i < 0]
    assert found == sorted(found), "the README's install steps are out of order"
    # PEP 668: no pip into the system interpreter, no sudo pip
    assert not re.search(r"python3 -m pip|sudo pip|pip3 install|--break-system-packages", block)
    # the files it names exist in the repository
    for rel in re.findall(r"src/ccl_lgs/(scripts/[\w./-]+)", block):
        assert (REPO / rel).is_file(), rel
    assert "ros2 run ccl_lgs ccl-lgs" in README  # the CLI after sourcing a workspace


def test_readme_commands_can_be_pasted():
    """No placeholders a shell would misread (`<...>` is a redirection, `=...` a literal value),
    and every block parses as bash."""
    for block in _bash_blocks():
        code = "\n".join(ln.split("#")[0] for ln in block.splitlines())
        assert not re.search(r"<[^<>\n]*>", code), code
        assert "=..." not in code and " ... " not in code.replace("...\n", "\n"), code
        proc = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr + block


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt install shellcheck)")
def test_shell_scripts_pass_shellcheck():
    scripts = sorted(str(p) for p in [*REPO.glob("scripts/*.sh"), *REPO.glob("bench/*.sh")])
    proc = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
