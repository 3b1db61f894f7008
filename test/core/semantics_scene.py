"""A tiny trained-scene folder for the semantics tests, without running the RGB stage.

The synthetic generator's ground-truth surface samples become the Gaussians (their geometry is
what a good RGB reconstruction would give); priors come from the simulator. Not a test module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ccl_lgs_ros.capture.format import Capture
from ccl_lgs_ros.config import PRESETS, Config
from ccl_lgs_ros.geometry import transform_points
from ccl_lgs_ros.io import atomic_write_json
from ccl_lgs_ros.ply import read_ply_points
from ccl_lgs_ros.priors.stage import compute_priors
from ccl_lgs_ros.semantics.methods import field_method
from ccl_lgs_ros.splat.data import camera_centers, scene_normalization
from ccl_lgs_ros.splat.gaussians import GaussianModel
from ccl_lgs_ros.testing.synth import generate_scene


def tiny_cfg(method: str = "ccl", iterations: int = 150) -> Config:
    cfg = Config()
    cfg.priors.backend = "simulator"
    cfg.rgb.backend = "torch"
    cfg.rgb.holdout_every = 4
    cfg.field.method = method
    cfg.field.iterations = iterations
    cfg.field.codebook_iterations = 100
    cfg.field.codebook_size = 16
    # The tiny preset's learning rate, so the floors of the field tests fail when a preset's rate
    # cannot train the field within a short run (1e-3 over 300 steps here: held-out mIoU 0.001).
    cfg.field.lr = float(PRESETS["tiny"]["field.lr"])
    cfg.field.checkpoint_every = 50
    return cfg


def make_scene(root: Path, cfg: Config, seed: int = 3, num_frames: int = 12, width: int = 64, height: int = 48,
               n_gaussians: int = 1500) -> tuple[Path, Capture]:  # fmt: skip
    """``root/capture`` (synthetic) and ``root/scene`` with ``rgb/`` and ``priors/`` filled."""
    capture = generate_scene(root / "capture", seed=seed, width=width, height=height, num_frames=num_frames)
    scene = root / "scene"
    compute_priors(capture, cfg, scene / "priors", "cpu", levels=field_method(cfg).prior_levels(cfg), progress=False)
    pts = np.concatenate([read_ply_points(capture.root / inst["gt_points"])[0] for inst in capture.instances])
    rng = np.random.default_rng(seed)
    pts = pts[rng.choice(len(pts), size=min(n_gaussians, len(pts)), replace=False)]
    sfw = scene_normalization(camera_centers(capture))
    model = GaussianModel.from_points(transform_points(sfw, pts), sh_degree=0, init_opacity=0.9, init_scale=1.2)
    (scene / "rgb").mkdir(parents=True, exist_ok=True)
    model.save(scene / "rgb" / "gaussians.npz", scene_from_world=sfw)
    atomic_write_json(
        scene / "rgb" / "rgb.json", {"scene_from_world": sfw.tolist(), "world_from_scene": np.linalg.inv(sfw).tolist()}
    )
    return scene, capture
