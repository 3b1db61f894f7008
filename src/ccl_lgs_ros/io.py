"""Crash-safe file writes and pickle-free loading.

Every file the project writes goes through :func:`atomic_write_bytes` (or a wrapper): the data
is written to a temporary file in the same folder, flushed and fsynced, then renamed over the
target, and the folder is fsynced. A crash leaves either the old file or the new one, never a
truncated mix.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename + dir fsync)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def atomic_save_npz(path: str | Path, arrays: Mapping[str, np.ndarray], compressed: bool = False) -> None:
    """Save arrays as ``.npz`` atomically. Only plain numeric/string arrays (no objects)."""
    buf = io.BytesIO()
    clean = {}
    for key, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype == object:
            raise TypeError(f"refusing to store object array {key!r} (it would need pickle)")
        clean[key] = arr
    if compressed:
        np.savez_compressed(buf, **clean)  # type: ignore[arg-type]
    else:
        np.savez(buf, **clean)  # type: ignore[arg-type]
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Load an ``.npz`` without ever unpickling (object arrays raise)."""
    with np.load(str(path), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
