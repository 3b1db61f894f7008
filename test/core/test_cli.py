"""The ccl-lgs command line (runs the real console entry point in a subprocess)."""

from __future__ import annotations

import subprocess
import sys

import yaml


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ccl_lgs_ros", *args], capture_output=True, text=True,
                          check=check, timeout=120)


def test_help_lists_subcommands():
    out = run_cli("--help").stdout
    for cmd in ("info", "import", "synth", "train", "eval", "query", "view", "export", "config"):
        assert cmd in out


def test_config_prints_effective_settings():
    out = run_cli("config", "--preset", "tiny", "--set", "rgb.iterations=7").stdout
    data = yaml.safe_load(out)
    assert data["rgb"]["iterations"] == 7
    assert data["field"]["codebook_size"] == 32


def test_bad_setting_is_a_clear_error():
    proc = run_cli("config", "--set", "rgb.iterations=abc", check=False)
    assert proc.returncode == 2
    assert "rgb.iterations" in proc.stderr and "integer" in proc.stderr


def test_info_on_missing_folder_fails_cleanly(tmp_path):
    proc = run_cli("info", str(tmp_path / "nothing"), "--json", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
