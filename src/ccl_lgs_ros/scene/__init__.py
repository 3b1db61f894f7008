"""The trained-scene folder: its layout (:mod:`.layout`), building its query index (:mod:`.build`)
and loading it for serving (:mod:`.load`).

The three modules sit on different floors: :mod:`.layout` below every stage (they all read or
write the folder through :class:`~.layout.SceneDir`), :mod:`.build` and :mod:`.load` above
:mod:`~ccl_lgs_ros.semantics` and :mod:`~ccl_lgs_ros.query`. So that a stage can import
``scene.layout`` without pulling in the query stack, this package re-exports the upper names
on first use (PEP 562), e.g. ``from ccl_lgs_ros.scene import load_scene``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .layout import SCENE_FORMAT_VERSION, SceneDir, SceneError

if TYPE_CHECKING:
    from .build import build_query_index
    from .load import LoadedScene, export_scene, load_scene

_UPPER = {"build_query_index": ".build", "LoadedScene": ".load", "export_scene": ".load", "load_scene": ".load"}


def __getattr__(name: str) -> Any:
    if name in _UPPER:
        return getattr(importlib.import_module(_UPPER[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SCENE_FORMAT_VERSION", "LoadedScene", "SceneDir", "SceneError", "build_query_index", "export_scene",
           "load_scene"]
