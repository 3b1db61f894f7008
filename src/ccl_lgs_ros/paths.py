"""Caller-supplied paths must resolve inside configured roots (ROS-free).

Used by the node's ``~/load_scene`` and ``~/set_capture`` services: a path a caller names is
refused unless, with ``~`` expanded and every symlink resolved, it lies inside one of the
``node.allowed_roots``. A ``..`` component is refused outright (even when it would resolve
inside a root), so a request cannot probe the file system around the roots.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

#: Longest path accepted from a caller (PATH_MAX on Linux).
MAX_PATH_CHARS = 4096


class PathRefused(ValueError):
    """A caller-supplied path is not acceptable; the message says why."""


def resolve_roots(roots: Sequence[str | os.PathLike]) -> list[Path]:
    """Allowed roots, ``~`` expanded and symlinks resolved (a root need not exist yet)."""
    return [Path(os.path.expanduser(str(r))).resolve() for r in roots if str(r).strip()]


def resolve_inside(
    path: str | os.PathLike,
    roots: Sequence[str | os.PathLike],
    *,
    must_exist: bool = False,
    what: str = "path",
) -> Path:
    """The resolved ``path`` if it lies inside one of ``roots``; else :class:`PathRefused`.

    Args:
        path: absolute, ``~``-relative or relative path; a relative path is taken relative to
            the first root.
        roots: allowed roots (``node.allowed_roots``).
        must_exist: also refuse a path that does not exist.
        what: name used in messages ("scene folder", "capture folder").

    Returns:
        The absolute path with symlinks resolved.
    """
    text = os.fspath(path)
    if not isinstance(text, str):
        raise PathRefused(f"{what} must be text")
    if not text.strip():
        raise PathRefused(f"{what} is empty")
    if len(text) > MAX_PATH_CHARS:
        raise PathRefused(f"{what} is longer than {MAX_PATH_CHARS} characters")
    if "\x00" in text or any(ord(c) < 32 for c in text):
        raise PathRefused(f"{what} contains control characters")
    parts = Path(text).parts
    if ".." in parts:
        raise PathRefused(f"{what} {text!r} contains '..'; name the folder directly")
    allowed = resolve_roots(roots)
    if not allowed:
        raise PathRefused(f"no allowed roots are configured, so no {what} can be accepted")
    candidate = Path(os.path.expanduser(text))
    if not candidate.is_absolute():
        candidate = allowed[0] / candidate
    resolved = candidate.resolve()  # follows every symlink, also in parent folders
    if not any(resolved == root or root in resolved.parents for root in allowed):
        shown = ", ".join(str(r) for r in allowed)
        extra = f" (it resolves to {resolved})" if resolved != candidate else ""
        raise PathRefused(f"{what} {text!r} is outside the allowed roots [{shown}]{extra}")
    if must_exist and not resolved.exists():
        raise PathRefused(f"{what} {text!r} does not exist")
    return resolved


__all__ = ["MAX_PATH_CHARS", "PathRefused", "resolve_inside", "resolve_roots"]
