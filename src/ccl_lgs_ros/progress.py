"""Progress reporting: a bar for people, JSON lines for the ROS node.

With ``CCL_LGS_PROGRESS=json`` every update is one JSON line on stdout:
``{"progress": 1, "stage": ..., "step": ..., "total": ..., "eta_s": ..., "message": ...}``.
The node's trainer supervisor parses these lines (``parse_progress_line``) into action feedback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from tqdm import tqdm

ENV_VAR = "CCL_LGS_PROGRESS"


def json_mode() -> bool:
    return os.environ.get(ENV_VAR, "").lower() == "json"


def _other_rank() -> bool:
    """Under torchrun only rank 0 reports progress (the others log to their own files)."""
    return os.environ.get("RANK", "0") != "0"


def progress_record(stage: str, step: int, total: int, eta_s: float | None, message: str,
                    metrics: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The one format of a progress line (what :func:`parse_progress_line` reads back)."""
    record: dict[str, Any] = {"progress": 1, "stage": stage, "step": step, "total": total,
                              "eta_s": None if eta_s is None else round(eta_s, 1), "message": message}  # fmt: skip
    if metrics:
        record["metrics"] = {k: (float(v) if isinstance(v, (int, float)) else str(v)) for k, v in metrics.items()}
    return record


def write_progress_line(record: dict[str, Any]) -> None:
    """One JSON progress line on stdout, flushed (only in JSON mode; see :func:`json_mode`)."""
    if json_mode() and not _other_rank():
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


def announce(stage: str, message: str) -> None:
    """A stage boundary: a progress line with no steps (the node shows it as feedback)."""
    write_progress_line(progress_record(stage, 0, 0, None, message))


class Progress:
    """Progress of one stage. Use as a context manager; call :meth:`update`."""

    def __init__(self, stage: str, total: int, *, unit: str = "it", min_interval: float = 0.5,
                 disable: bool = False) -> None:
        self.stage = stage
        self.total = max(int(total), 0)
        self.step = 0
        self._start = time.monotonic()
        self._last_emit = 0.0
        self._min_interval = min_interval
        disable = disable or _other_rank()
        self._json = json_mode() and not _other_rank()
        self._bar = None
        if not self._json and not disable:
            self._bar = tqdm(total=self.total, desc=stage, unit=unit, leave=False,
                             disable=not sys.stderr.isatty() and os.environ.get("CCL_LGS_BAR") != "1")

    def __enter__(self) -> Progress:
        self._emit("start", force=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def eta_s(self) -> float | None:
        if self.step <= 0 or self.total <= 0:
            return None
        elapsed = time.monotonic() - self._start
        return elapsed / self.step * (self.total - self.step)

    def update(self, n: int = 1, message: str = "", **postfix: Any) -> None:
        self.step = min(self.step + n, self.total) if self.total else self.step + n
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
        self._emit(message, postfix=postfix)

    def _emit(self, message: str, force: bool = False, postfix: dict | None = None) -> None:
        if not self._json:
            return
        now = time.monotonic()
        if not force and now - self._last_emit < self._min_interval and self.step < self.total:
            return
        self._last_emit = now
        write_progress_line(progress_record(self.stage, self.step, self.total, self.eta_s, message, postfix))

    def close(self) -> None:
        self._emit("done", force=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def parse_progress_line(line: str) -> dict[str, Any] | None:
    """Parse one line of a trainer's stdout; ``None`` if it is not a progress record."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.get("progress") != 1:
        return None
    return record
