"""Launch file, params file and RViz config: static checks that run without ROS.

The launch file needs ``launch`` / ``launch_ros`` to import, which the package index does not
ship, so it is parsed with ``ast``: it must declare the documented arguments (each with a
description), start an executable that setup.py installs, and default to a params file that
exists and holds every parameter with its default (generated: scripts/gen_params.py).
Where ``launch_ros`` is importable the launch description is also built and run briefly.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROS_REQUIRED = False  # see conftest.py: these checks run everywhere

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch" / "mapping.launch.py"
PARAMS = REPO / "config" / "ccl_lgs.yaml"
RVIZ = REPO / "config" / "ccl_lgs.rviz"
DOCUMENTED = {
    "params_file",
    "image_topic",
    "camera_info_topic",
    "depth_topic",
    "pose_source",
    "fixed_frame",
    "device",
    "capture_dir",
    "scene_dir",
    "serve_only",
    "use_sim_time",
    "fastdds_profile",
    "rviz",
    "viewer",
}


def _launch_arguments() -> dict[str, str]:
    """Declared argument name -> description (from DeclareLaunchArgument calls and OVERRIDES)."""
    tree = ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))
    out: dict[str, str] = {}
    overrides = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "OVERRIDES" for t in node.targets):
            overrides = ast.literal_eval(node.value)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            desc = next((kw.value for kw in node.keywords if kw.arg == "description"), None)
            assert desc is not None, f"DeclareLaunchArgument at line {node.lineno} has no description"
            if isinstance(node.args[0], ast.Constant):
                assert isinstance(desc, ast.Constant) and desc.value.strip(), f"line {node.lineno}: empty description"
                out[node.args[0].value] = desc.value
    assert overrides, "OVERRIDES table not found"
    for name, (_param, desc) in overrides.items():
        assert desc.strip(), name
        out[name] = desc
    return out, overrides


def test_launch_declares_the_documented_arguments():
    args, overrides = _launch_arguments()
    missing = DOCUMENTED - set(args)
    assert not missing, f"launch file does not declare {sorted(missing)}"
    # Every override names a real parameter that the params file sets.
    params = yaml.safe_load(PARAMS.read_text())["/**"]["ros__parameters"]
    for arg, (param, _) in overrides.items():
        section, leaf = param.split(".")
        assert leaf in params[section], f"launch argument {arg} overrides unknown parameter {param}"


def test_launch_points_at_installed_executable_and_files():
    src = LAUNCH.read_text()
    setup = (REPO / "setup.py").read_text()
    tree = ast.parse(src)
    executables = {
        kw.value.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        for kw in n.keywords
        if kw.arg == "executable" and isinstance(kw.value, ast.Constant)
    }
    assert "mapping_node" in executables
    assert "mapping_node = ccl_lgs_ros.ros.mapping_node:main" in setup
    assert "replay = ccl_lgs_ros.ros.replay_node:main" in setup
    assert '"config", "ccl_lgs.yaml"' in src and PARAMS.is_file()
    assert '"config", "ccl_lgs.rviz"' in src and RVIZ.is_file()
    # setup.py installs launch/ and config/ into the package share folder
    assert 'glob("launch/*.py")' in setup and 'glob("config/*.yaml")' in setup and 'glob("config/*.rviz")' in setup
    assert 'glob("config/*.xml")' in setup and '"config", "fastdds_large_data.xml"' in src
    assert (REPO / "config" / "fastdds_large_data.xml").is_file()
    import importlib.util

    spec = importlib.util.find_spec("ccl_lgs_ros.ros.mapping_node")
    assert spec is not None


def test_params_file_is_in_sync_with_the_config_tree():
    rc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_params.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert rc.returncode == 0, rc.stderr + "\n(run: python scripts/gen_params.py)"


def test_params_file_has_every_parameter_with_its_default():
    sys.path.insert(0, str(REPO / "src"))
    from ccl_lgs_ros.config import Config, iter_fields, load_config, to_dict

    params = yaml.safe_load(PARAMS.read_text())["/**"]["ros__parameters"]
    for name, _f, value, _t in iter_fields():
        section, _, leaf = name.rpartition(".")
        got = params[section][leaf] if section else params[leaf]
        assert got == value and type(got) is type(value), f"{name}: {got!r} != default {value!r}"
    assert to_dict(load_config(PARAMS)) == to_dict(Config())


def test_gen_params_detects_drift(tmp_path):
    stale = tmp_path / "p.yaml"
    stale.write_text(PARAMS.read_text().replace("min_translation: 0.05", "min_translation: 0.5"))
    rc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_params.py"), "--check", "--out", str(stale)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rc.returncode == 1 and "out of date" in rc.stderr


def test_rviz_config_shows_the_node_outputs():
    cfg = yaml.safe_load(RVIZ.read_text())
    displays = cfg["Visualization Manager"]["Displays"]
    topics = {d.get("Topic", {}).get("Value"): d for d in displays if isinstance(d.get("Topic"), dict)}
    for topic in ("/ccl_lgs_mapper/scene_cloud", "/ccl_lgs_mapper/query_cloud", "/ccl_lgs_mapper/query_markers"):
        assert topic in topics, topic
        # latched publishers: RViz must subscribe transient-local to get them late
        assert topics[topic]["Topic"]["Durability Policy"] == "Transient Local"
    assert cfg["Visualization Manager"]["Global Options"]["Fixed Frame"] == "map"


def test_launch_runs_where_launch_ros_is_importable(tmp_path):
    pytest.importorskip("launch_ros", reason="launch_ros is not importable (no system ROS 2; not on the index)")
    pytest.importorskip("launch")
    import importlib.util

    from launch import LaunchService

    spec = importlib.util.spec_from_file_location("mapping_launch", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    env = dict(os.environ, HOME=str(tmp_path))
    os.environ.update({k: env[k] for k in ("HOME",)})
    ls = LaunchService(argv=["device:=cpu", "pose_source:=topic"])
    ls.include_launch_description(mod.generate_launch_description())
    import threading

    timer = threading.Timer(10.0, ls.shutdown)
    timer.start()
    assert ls.run() == 0


# ------------------------------------------------------------------------------ rviz:=true without rviz2
#
# `launch` / `launch_ros` are not installable here, so the launch file runs against minimal
# stand-ins of the few classes it uses (recording what it builds); the package lookups go through
# the real ament_index_python against a prefix made for the test.


class _Recorded:
    def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003 - records any call
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration:
    def __init__(self, name: str) -> None:
        self.name = name

    def perform(self, context: dict) -> str:
        return context[self.name]


class _Logger:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)


def _load_launch_with_stand_ins(monkeypatch: pytest.MonkeyPatch, logger: _Logger):  # noqa: ANN202
    import importlib.util
    import types

    mods = {
        "launch": types.ModuleType("launch"),
        "launch.actions": types.ModuleType("launch.actions"),
        "launch.logging": types.ModuleType("launch.logging"),
        "launch.substitutions": types.ModuleType("launch.substitutions"),
        "launch_ros": types.ModuleType("launch_ros"),
        "launch_ros.actions": types.ModuleType("launch_ros.actions"),
    }
    mods["launch"].LaunchDescription = _Recorded
    mods["launch.actions"].DeclareLaunchArgument = _Recorded
    mods["launch.actions"].OpaqueFunction = _Recorded
    mods["launch.logging"].get_logger = lambda name: logger
    mods["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration
    mods["launch_ros.actions"].Node = _Recorded
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("mapping_launch_stand_in", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _prefix(tmp_path: Path, packages: list[str]) -> str:
    """An ament prefix that registers ``packages`` (resource index marker + share folder)."""
    prefix = tmp_path / "prefix"
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True, exist_ok=True)
    for pkg in packages:
        (index / pkg).write_text("")
        (prefix / "share" / pkg).mkdir(parents=True, exist_ok=True)
    return str(prefix)


def _context(rviz: str) -> dict[str, str]:
    ctx = {name: "" for name in ("params_file", "fastdds_profile", "rviz_config")}
    ctx.update({name: "" for name in _launch_arguments()[1]})
    ctx.update(params_file="/p.yaml", use_sim_time="false", rviz=rviz, rviz_config="/c.rviz")
    return ctx


@pytest.mark.parametrize("installed", [False, True])
def test_rviz_true_without_rviz2_warns_and_keeps_the_node(monkeypatch, tmp_path, installed):
    logger = _Logger()
    monkeypatch.setenv("AMENT_PREFIX_PATH", _prefix(tmp_path, ["ccl_lgs", *(["rviz2"] if installed else [])]))
    mod = _load_launch_with_stand_ins(monkeypatch, logger)
    (entities,) = mod.generate_launch_description().args
    functions = [e.kwargs["function"] for e in entities if "function" in e.kwargs]
    assert len(functions) == 2, "expected one OpaqueFunction for the node and one for RViz"
    # No action in the description looks rviz2 up at launch time (that failed the whole launch).
    assert not [e for e in entities if e.kwargs.get("package") == "rviz2"]

    def started(rviz: str) -> list[_Recorded]:
        return [n for fn in functions for n in fn(_context(rviz))]

    nodes = started("true")
    packages = [n.kwargs["package"] for n in nodes]
    if installed:
        assert packages == ["ccl_lgs", "rviz2"] and not logger.warnings
        assert nodes[1].kwargs["arguments"] == ["-d", "/c.rviz"]
    else:
        assert packages == ["ccl_lgs"], packages  # the mapping node alone, as a normal launch child
        (warning,) = logger.warnings
        assert "rviz2 package is not installed" in warning and "without RViz" in warning
    logger.warnings.clear()
    assert [n.kwargs["package"] for n in started("false")] == ["ccl_lgs"] and not logger.warnings
