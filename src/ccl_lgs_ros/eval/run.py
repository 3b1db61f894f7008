"""``ccl-lgs eval``: the evaluation entry point, one function per protocol picked by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..capture.format import Capture
from ..config import from_dict
from ..scene.layout import SceneDir
from ..splat.evaluate import evaluate_rgb
from .lerf_ovs import evaluate_lerf_ovs
from .ovs3d import evaluate_3d_ovs
from .protocol3d import evaluate_3d
from .synthetic import evaluate_synthetic

PROTOCOLS = ("rgb", "synthetic", "lerf-ovs", "3d-ovs", "3d")


def evaluate(scene_dir: str | Path, protocol: str = "rgb", capture: str | Path | None = None,
             labels: str | Path | None = None, out_dir: str | Path | None = None,
             device: str = "cpu") -> dict[str, Any]:
    """``ccl-lgs eval``: RGB quality, or one of the semantic protocols (``PROTOCOLS``)."""
    scene = SceneDir(scene_dir)
    scene_dir = scene.root
    record = scene.read_record()
    capture_path = Path(capture) if capture else Path(record["capture"])
    cap = Capture.load(capture_path)
    cfg = from_dict(record["config"])
    if protocol == "rgb":
        return evaluate_rgb(cap, scene.rgb_dir, cfg, device=device, out_dir=out_dir)
    if protocol == "synthetic":
        return evaluate_synthetic(scene_dir, cap, cfg, device=device, out_dir=out_dir)
    if protocol == "lerf-ovs":
        if labels is None:
            raise ValueError("--labels is required for the lerf-ovs protocol")
        return evaluate_lerf_ovs(scene_dir, cap, Path(labels), cfg, device=device, out_dir=out_dir)
    if protocol == "3d-ovs":
        if labels is None:
            raise ValueError("--labels is required for the 3d-ovs protocol")
        return evaluate_3d_ovs(scene_dir, cap, Path(labels), cfg, device=device, out_dir=out_dir)
    if protocol == "3d":
        return evaluate_3d(scene_dir, cap, cfg, labels=Path(labels) if labels else None, device=device,
                           out_dir=out_dir)  # fmt: skip
    raise ValueError(f"unknown protocol {protocol!r}")
