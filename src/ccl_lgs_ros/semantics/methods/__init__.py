"""Field methods (``field.method``), one module each; :func:`field_method` picks one."""

from __future__ import annotations

from ...config import Config
from .base import FieldMethod, LiftMaps
from .ccl import CCL
from .cgc import CGC
from .gags import GAGS

#: Every method by its ``field.method`` name.
METHODS: dict[str, FieldMethod] = {m.name: m for m in (CCL(), GAGS(), CGC())}


def field_method(which: Config | str) -> FieldMethod:
    """The method named by ``cfg.field.method`` (or by a field file's recorded name)."""
    name = which.field.method if isinstance(which, Config) else str(which)
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown field method {name!r}; choose from {sorted(METHODS)}") from None


__all__ = ["METHODS", "FieldMethod", "LiftMaps", "field_method"]
