"""Runs ``ccl-lgs train`` as a separate process and turns its progress lines into events (ROS-free).

The node's ``~/train`` action uses this: the trainer is started with an argument list (never a
shell string), with ``CCL_LGS_PROGRESS=json`` so every progress update is one JSON line on its
stdout (:mod:`ccl_lgs_ros.progress`). A reader thread parses those lines into
:class:`TrainProgress` callbacks; stderr is kept (last lines) for the failure reason. Cancel
sends SIGTERM to the trainer's own process group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import Config, ConfigError, parse_assignments, set_value
from .progress import ENV_VAR, parse_progress_line

#: Share of the whole run each stage takes (for one 0..1 progress value); unknown stages get 0.
STAGE_WEIGHTS: dict[str, float] = {"rgb": 0.45, "priors": 0.2, "codebook": 0.1, "field": 0.2, "index": 0.05}
#: Lines of trainer output kept for error messages.
TAIL_LINES = 40


@dataclass
class TrainProgress:
    """One parsed progress update."""

    stage: str
    step: int
    total: int
    fraction: float  # 0..1 over the whole run
    eta_s: float  # seconds left in the stage, -1 = unknown
    message: str


@dataclass
class TrainOutcome:
    """How a trainer run ended."""

    success: bool
    returncode: int | None
    message: str
    duration_s: float
    cancelled: bool = False


def overall_fraction(stage: str, step: int, total: int, weights: dict[str, float] | None = None) -> float:
    """Progress 0..1 over the whole run from a stage's step/total (stages in ``weights`` order)."""
    weights = weights or STAGE_WEIGHTS
    names = list(weights)
    if stage not in weights:
        return 0.0
    done = sum(weights[n] for n in names[: names.index(stage)])
    within = min(max(step / total, 0.0), 1.0) if total > 0 else 0.0
    return min(max((done + weights[stage] * within) / sum(weights.values()), 0.0), 1.0)


def validate_overrides(overrides: Sequence[str]) -> list[str]:
    """Check ``section.field=value`` items against the config tree; raise ``ConfigError`` with
    the reason on the first bad one. Returns them normalised (``key=value``, stripped key)."""
    items = [str(o) for o in overrides]
    parsed = parse_assignments(items)
    scratch = Config()
    for key, value in parsed.items():
        set_value(scratch, key, value)
    return [f"{k}={v}" for k, v in parsed.items()]


def train_command(
    capture: str | Path,
    scene: str | Path,
    *,
    preset: str | None = None,
    device: str | None = None,
    method: str | None = None,
    overrides: Sequence[str] = (),
    python: str | None = None,
) -> list[str]:
    """The trainer's argument list: ``python -m ccl_lgs_ros train CAPTURE SCENE ...``.

    Paths are made absolute (so none can be read as an option) and every override goes as one
    ``--set=key=value`` argument (a value starting with ``-`` cannot become an option).

    Raises:
        ConfigError: an override, preset or method is not valid.
    """
    from .config import PRESETS

    argv = [
        python or sys.executable,
        "-m",
        "ccl_lgs_ros",
        "train",
        str(Path(capture).absolute()),
        str(Path(scene).absolute()),
    ]
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        argv.append(f"--preset={preset}")
    if device:
        set_value(Config(), "device", device)
        if device.startswith("-") or any(c.isspace() for c in device):
            raise ConfigError(f"invalid device {device!r}")
        argv.append(f"--device={device}")
    items = validate_overrides(overrides)
    if method:
        set_value(Config(), "field.method", method)
        items.append(f"field.method={method}")
    argv += [f"--set={item}" for item in items]
    return argv


_EXCEPTION_LINE = re.compile(
    r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Refused|Warning)|MemoryError|KeyboardInterrupt)(:\s|$)"
)
_LOG_ERROR = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b")
_ARGPARSE_ERROR = re.compile(r"^[\w. -]{1,60}: (\w+ )?error: ")


def error_line(lines: Sequence[str]) -> str | None:
    """The last line of ``lines`` that states an error (see :meth:`TrainerProcess.failure_reason`),
    or ``None``. Progress JSON, INFO / WARNING / DEBUG records and blank lines are never chosen."""
    for raw in reversed(list(lines)):
        line = raw.strip()
        if not line or line.startswith("{"):
            continue
        if _EXCEPTION_LINE.match(line) and not line.split(":", 1)[0].endswith("Warning"):
            return line
        if _ARGPARSE_ERROR.match(line) or _LOG_ERROR.search(line.split(":", 1)[0] if ":" in line else line):
            return line
    return None


_LOG_RECORD = re.compile(r"^(DEBUG|INFO|WARNING|WARN)\b")


def plain_stderr_line(lines: Sequence[str]) -> str | None:
    """The last stderr line that is not a log record below ERROR, progress output or part of a
    traceback's stack (what ``SystemExit("reason")`` or a plain ``print(..., file=sys.stderr)``
    before exiting leaves), or ``None``."""
    for raw in reversed(list(lines)):
        line = raw.strip()
        if not line or line.startswith(("{", "File ", "Traceback", "^", "~")) or _LOG_RECORD.match(line):
            continue
        if "%|" in line or "it/s]" in line or raw.startswith("    "):  # tqdm bars, traceback source lines
            continue
        return line
    return None


class TrainerProcess:
    """One trainer run. ``start()`` it, then ``wait()`` / ``cancel()``; thread-safe.

    Args:
        argv: argument list (see :func:`train_command`); never a shell string.
        on_progress: called from the reader thread for every progress line.
        env: extra environment (``CCL_LGS_PROGRESS=json`` is always set).
        cwd: working directory of the trainer.
    """

    def __init__(
        self,
        argv: Sequence[str],
        on_progress: Callable[[TrainProgress], None] | None = None,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a list of arguments, not a shell string")
        self.argv = [str(a) for a in argv]
        self.on_progress = on_progress
        self.env = {**os.environ, **(env or {}), ENV_VAR: "json", "PYTHONUNBUFFERED": "1"}
        self.cwd = str(cwd) if cwd is not None else None
        self.proc: subprocess.Popen | None = None
        self.last_progress: TrainProgress | None = None
        self._stdout_tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._threads: list[threading.Thread] = []
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,  # its own process group: cancel stops its workers too
        )
        for stream, handler in ((self.proc.stdout, self._on_stdout), (self.proc.stderr, self._stderr_tail.append)):
            t = threading.Thread(target=self._pump, args=(stream, handler), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _pump(stream, handler: Callable[[str], None]) -> None:  # noqa: ANN001 - a text stream
        for line in iter(stream.readline, ""):
            handler(line.rstrip("\n"))
        stream.close()

    def _on_stdout(self, line: str) -> None:
        record = parse_progress_line(line)
        if record is None:
            if line.strip():
                self._stdout_tail.append(line)
            return
        try:
            stage = str(record.get("stage", ""))
            step, total = int(record.get("step") or 0), int(record.get("total") or 0)
            eta = record.get("eta_s")
            prog = TrainProgress(
                stage=stage,
                step=step,
                total=total,
                fraction=overall_fraction(stage, step, total),
                eta_s=float(eta) if isinstance(eta, (int, float)) else -1.0,
                message=str(record.get("message", "")),
            )
        except (TypeError, ValueError):
            return
        with self._lock:
            # Progress never goes backwards across stages (a stage may restart its bar).
            if self.last_progress is not None and prog.fraction < self.last_progress.fraction:
                prog.fraction = self.last_progress.fraction
            self.last_progress = prog
        if self.on_progress is not None:
            try:
                self.on_progress(prog)
            except Exception:  # noqa: BLE001 - a callback error must not kill the reader
                pass

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cancel(self, grace: float = 5.0) -> None:
        """SIGTERM to the trainer's process group; SIGKILL after ``grace`` seconds."""
        self._cancelled.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            proc.wait(timeout=10)

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)  # the group we created at start (pgid == pid)
        except (ProcessLookupError, PermissionError):
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> TrainOutcome | None:
        """The outcome once the process has exited (``None`` if still running after ``timeout``)."""
        if self.proc is None:
            raise RuntimeError("trainer not started")
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for t in self._threads:
            t.join(timeout=5)
        duration = time.monotonic() - self._t0
        if self._cancelled.is_set():
            return TrainOutcome(False, rc, "training cancelled", duration, cancelled=True)
        if rc == 0:
            return TrainOutcome(True, rc, "training finished", duration)
        return TrainOutcome(False, rc, self.failure_reason(rc), duration)

    def failure_reason(self, rc: int | None) -> str:
        """Why the trainer failed: how it ended plus its error, never a stray log line.

        The error is the last line of the output that reads as one (:func:`error_line`): a
        traceback's final ``SomeError: ...`` line, an argparse ``error:`` line or a log record at
        ERROR / CRITICAL level; failing that, the last plain stderr line that is no log record
        below ERROR (:func:`plain_stderr_line`). Without either, the reason names how it ended
        only (a signal, an exit code)."""
        if rc is not None and rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            how = f"killed by signal {-rc} ({name})"
        else:
            how = f"exited with code {rc}"
        detail = error_line([*self._stdout_tail, *self._stderr_tail]) or plain_stderr_line(self._stderr_tail)
        if detail is None:
            return f"trainer {how}" + ("" if rc is not None and rc < 0 else " without an error message")
        return f"trainer {how}: {detail[:500]}"

    def output_tail(self) -> str:
        return "\n".join([*self._stdout_tail, *self._stderr_tail])


__all__ = [
    "STAGE_WEIGHTS",
    "TrainOutcome",
    "TrainProgress",
    "TrainerProcess",
    "overall_fraction",
    "error_line",
    "train_command",
    "validate_overrides",
]
