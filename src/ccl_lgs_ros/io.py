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


def _strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (recursively, numpy scalars and
    arrays included): JSON has no NaN or Infinity, and strict parsers (``jq``, browsers, most
    languages' libraries) refuse Python's ``NaN`` tokens."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _strict(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return _strict(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def json_text(data: Any, indent: int | None = 2) -> str:
    """Standard JSON for ``data``: undefined values (NaN, +-inf, e.g. a mean over no classes) are
    written as ``null``; numpy values and paths as plain JSON. The one JSON writer of the project."""
    return json.dumps(_strict(data), indent=indent, sort_keys=False, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json_text(data, indent=indent))


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


class FileTooLarge(ValueError):
    """A file declares more data than the configured maximum; nothing was inflated."""


def npz_declared_bytes(path: str | Path) -> int:
    """Bytes the arrays of an ``.npz`` would take once loaded, from the headers alone.

    Every zip member's ``.npy`` header (shape and dtype) is read, nothing more, so a small file
    that inflates to gigabytes (a zip bomb, or a header declaring a huge shape) is measured
    without allocating it. A member whose header declares more bytes than the zip entry's
    declared uncompressed size is inconsistent and raises ``ValueError``.
    """
    import zipfile

    total = 0
    try:
        with zipfile.ZipFile(str(path)) as zf:
            for info in zf.infolist():
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=10000)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=10000)
                nbytes = int(np.prod(shape, dtype=object)) * int(dtype.itemsize)
                if nbytes > info.file_size:
                    raise ValueError(
                        f"{path}: member {info.filename!r} declares {nbytes} bytes of array data but its zip entry "
                        f"holds {info.file_size}"
                    )
                total += max(nbytes, int(info.file_size))
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path}: not a valid .npz ({exc})") from None
    return total


def load_npz(path: str | Path, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Load an ``.npz`` without ever unpickling (object arrays raise).

    With ``max_bytes``, the arrays' declared sizes are checked first (:func:`npz_declared_bytes`)
    and a file declaring more raises :class:`FileTooLarge` before anything is inflated.
    """
    if max_bytes is not None:
        declared = npz_declared_bytes(path)
        if declared > max_bytes:
            raise FileTooLarge(
                f"{path}: its arrays declare {declared / 2**20:.1f} MiB, more than the allowed "
                f"{max_bytes / 2**20:.1f} MiB"
            )
    with np.load(str(path), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
