"""supervisor.py: trainer process with progress lines, crash, cancel, argument list."""

from __future__ import annotations

import json
import sys
import time

import pytest

from ccl_lgs_ros.config import ConfigError
from ccl_lgs_ros.supervisor import TrainerProcess, overall_fraction, train_command, validate_overrides

pytestmark = pytest.mark.timeout(60)


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", body]


FAKE_TRAINER = """
import json, os, sys, time
assert os.environ["CCL_LGS_PROGRESS"] == "json"
print("some log line", flush=True)
for stage, total in (("rgb", 4), ("priors", 2), ("field", 3)):
    for step in range(total + 1):
        print(json.dumps({"progress": 1, "stage": stage, "step": step, "total": total, "eta_s": 1.0,
                          "message": f"{stage} {step}"}), flush=True)
print("not json {", flush=True)
"""


def test_progress_lines_become_events():
    events = []
    proc = TrainerProcess(_script(FAKE_TRAINER), on_progress=events.append)
    proc.start()
    out = proc.wait(timeout=30)
    assert out is not None and out.success and out.returncode == 0, proc.output_tail()
    assert [e.stage for e in events][:5] == ["rgb"] * 5
    assert len(events) == 5 + 3 + 4
    fr = [e.fraction for e in events]
    assert fr == sorted(fr) and fr[0] == 0.0 and 0.5 < fr[-1] < 1.0
    assert events[-1].message == "field 3" and events[-1].eta_s == 1.0
    assert "some log line" in proc.output_tail()


def test_crash_reports_the_reason():
    proc = TrainerProcess(_script("import sys; print('x', file=sys.stderr); raise SystemExit('CUDA out of memory')"))
    proc.start()
    out = proc.wait(timeout=30)
    assert not out.success and out.returncode == 1 and "CUDA out of memory" in out.message
    assert not out.cancelled


def test_cancel_kills_even_a_trainer_ignoring_sigterm():
    body = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    proc = TrainerProcess(_script(body))
    proc.start()
    time.sleep(0.5)
    assert proc.running
    t0 = time.monotonic()
    proc.cancel(grace=1.0)
    out = proc.wait(timeout=10)
    assert out.cancelled and not out.success and time.monotonic() - t0 < 8
    assert not proc.running


def test_cancel_stops_grandchildren(tmp_path):
    pidfile = tmp_path / "child.pid"
    body = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    proc = TrainerProcess(_script(body))
    proc.start()
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pidfile.read_text())
    proc.cancel(grace=2.0)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    import os

    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # a killed child may linger as a zombie of its dead parent until reaped by init
        with open(f"/proc/{child}/stat") as fh:
            if fh.read().split()[2] == "Z":
                break
        time.sleep(0.05)
    else:
        pytest.fail("grandchild survived the cancel")


def test_train_command_is_an_argument_list(tmp_path):
    argv = train_command(
        tmp_path / "cap",
        tmp_path / "scene",
        preset="tiny",
        device="cpu",
        method="gags",
        overrides=["priors.backend=simulator", "rgb.iterations=10"],
    )
    assert argv[1:4] == ["-m", "ccl_lgs_ros", "train"]
    assert argv[4] == str((tmp_path / "cap").absolute())
    assert "--preset=tiny" in argv and "--device=cpu" in argv
    assert "--set=priors.backend=simulator" in argv and "--set=field.method=gags" in argv
    assert all(isinstance(a, str) for a in argv)
    # relative paths become absolute: a path named "--fresh" cannot become an option
    assert train_command("--fresh", "s")[4].startswith("/")


@pytest.mark.parametrize(
    "overrides,why",
    [
        (["rgb.iterations=abc"], "integer"),
        (["nope.x=1"], "unknown"),
        (["rgb.iterations"], "section.field=value"),
        (["priors.backend=evil"], "not one of"),
    ],
)
def test_bad_overrides_are_refused(overrides, why):
    with pytest.raises(ConfigError, match=why):
        validate_overrides(overrides)
    with pytest.raises(ConfigError):
        train_command("c", "s", overrides=overrides)


def test_bad_preset_device_method():
    with pytest.raises(ConfigError, match="preset"):
        train_command("c", "s", preset="huge")
    with pytest.raises(ConfigError):
        train_command("c", "s", method="magic")
    with pytest.raises(ConfigError):
        train_command("c", "s", device="-rf")


def test_shell_strings_are_refused():
    with pytest.raises(TypeError):
        TrainerProcess("ccl-lgs train a b")


def test_overall_fraction():
    assert overall_fraction("rgb", 0, 10) == 0.0
    assert overall_fraction("index", 1, 1) == pytest.approx(1.0)
    assert overall_fraction("unknown", 1, 2) == 0.0
    assert overall_fraction("priors", 5, 10) > overall_fraction("rgb", 10, 10)


def test_real_cli_progress_format_parses():
    """The line format of progress.Progress is what the supervisor parses."""
    body = (
        "import os; os.environ['CCL_LGS_PROGRESS']='json'\n"
        "from ccl_lgs_ros.progress import Progress\n"
        "with Progress('rgb', 3, min_interval=0) as p:\n    [p.update(1) for _ in range(3)]\n"
    )
    events = []
    proc = TrainerProcess(_script(body), on_progress=events.append)
    proc.start()
    assert proc.wait(timeout=30).success, proc.output_tail()
    assert events and events[-1].stage == "rgb" and events[-1].step == 3
    json.dumps([e.__dict__ for e in events])
