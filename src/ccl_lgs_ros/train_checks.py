"""Settings of a training run checked before any stage starts.

A run whose settings cannot work used to fail only when the stage that needs them began (e.g.
the simulator without ground truth after the RGB stage, minutes in). :func:`check_train_settings`
looks at everything that can be known up front, with the messages the stages themselves give:

- the device exists on this machine (``cuda`` needs a usable CUDA device);
- the renderer backend fits the device (``rgb.backend: gsplat`` needs CUDA and the gsplat package);
- the priors levels are valid for the method;
- ``priors.backend: real``: the SAM / SAM 2 / OpenCLIP checkpoint files exist;
- ``priors.backend: simulator``: the capture (or ``priors.sim_ground_truth``) has ground truth
  for every frame.

``ccl-lgs train`` (:func:`ccl_lgs_ros.pipeline.train`) runs it before its first stage and the
mapping node's train action before it snapshots the capture or starts a trainer. Presets and
the values of single settings are checked earlier still, by the config tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Config

if TYPE_CHECKING:
    from .capture.format import Capture

#: The pipeline's stages (pipeline.STAGES), in order.
ALL_STAGES = ("rgb", "priors", "field")


class TrainSettingsError(ValueError):
    """Settings a training run cannot work with; ``problems`` lists each one (its message)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def device_problem(device: str) -> str:
    """Why ``device`` cannot run training here ("" when it can)."""
    if device == "cpu":
        return ""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        return f"invalid device {device!r}: {exc}"
    if dev.type == "cpu":
        return ""
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return (
                f"device {device!r} was asked for, but CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); use device cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            return f"device {device!r} does not exist: this machine has {count} CUDA device(s)"
        return ""
    backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        return f"device {device!r} is not available on this machine; use cuda or cpu"
    return ""


def check_train_settings(
    cfg: Config, capture: Capture | str | Path, stages: Iterable[str] = ALL_STAGES
) -> None:
    """Raise :class:`TrainSettingsError` (every problem found) unless the run can start.

    Args:
        cfg: the run's configuration (preset, YAML and overrides applied).
        capture: the capture it trains on (folder or loaded).
        stages: the stages that will run (cached ones need no checks).
    """
    from .capture.format import Capture

    stages = set(stages)
    if not stages:
        return
    problems: list[str] = []
    cap = capture if isinstance(capture, Capture) else Capture.load(capture)
    if not cap.frames:
        raise TrainSettingsError([f"{cap.root}: the capture has no frames"])
    device_bad = device_problem(cfg.device)
    if device_bad:
        problems.append(device_bad)
    if stages & {"rgb", "field"} and cfg.rgb.backend == "gsplat" and not device_bad:
        from .splat.render import RenderError, resolve_backend

        try:
            resolve_backend(cfg.rgb.backend, cfg.device)
        except RenderError as exc:
            problems.append(str(exc))
    if "priors" in stages:
        problems += _priors_problems(cfg, cap)
    if problems:
        raise TrainSettingsError(problems)


def _priors_problems(cfg: Config, cap: Capture) -> list[str]:
    from .priors.stage import VALID_LEVELS, default_levels

    problems = []
    levels = default_levels(cfg)
    if not levels or any(lv not in VALID_LEVELS for lv in levels):
        problems.append(f"invalid priors levels {list(levels)}; choose from {VALID_LEVELS}")
    if cfg.priors.backend == "real":
        from .priors.checkpoints import missing_checkpoints

        problems += [str(exc) for exc in missing_checkpoints(cfg)]
    elif cfg.priors.backend == "simulator":
        from .capture.format import CaptureError
        from .priors.simulator import SimulatorBackend

        try:
            SimulatorBackend(cfg.priors).check_inputs(cap)
        except (ValueError, CaptureError, OSError) as exc:
            problems.append(str(exc))
    return problems


def config_of_train_argv(argv: Sequence[str]) -> Config:
    """The configuration ``ccl-lgs train`` builds from ``argv`` as made by
    :func:`ccl_lgs_ros.supervisor.train_command` (``--preset=``, ``--device=``, ``--set=k=v``):
    preset, then the settings, then the device, as the command line applies them."""
    from .config import load_config, parse_assignments

    preset, device, items = None, None, []
    for arg in argv:
        if arg.startswith("--preset="):
            preset = arg.partition("=")[2]
        elif arg.startswith("--device="):
            device = arg.partition("=")[2]
        elif arg.startswith("--set="):
            items.append(arg.partition("=")[2])
    overrides: dict[str, str] = parse_assignments(items)
    if device:
        overrides["device"] = device
    return load_config(None, preset=preset, overrides=overrides)


__all__ = ["ALL_STAGES", "TrainSettingsError", "check_train_settings", "config_of_train_argv", "device_problem"]
