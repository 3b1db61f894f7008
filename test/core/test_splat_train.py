"""Gaussian model files, initialisation, RGB training, evaluation and resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ccl_lgs_ros.capture.format import Capture
from ccl_lgs_ros.config import Config
from ccl_lgs_ros.geometry import transform_points
from ccl_lgs_ros.io import load_npz, read_json
from ccl_lgs_ros.splat.data import initial_points, load_view, scene_normalization, split_indices
from ccl_lgs_ros.splat.evaluate import evaluate_rgb
from ccl_lgs_ros.splat.gaussians import GaussianModel
from ccl_lgs_ros.splat.trainer import _load_latest_checkpoint, _settings, train_rgb
from ccl_lgs_ros.testing.toy import make_toy_capture

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two threads contend and run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(iterations: int, **rgb) -> Config:
    cfg = Config()
    cfg.rgb.iterations = iterations
    cfg.rgb.sh_degree = 1
    cfg.rgb.holdout_every = 4
    cfg.rgb.max_init_points = 400
    cfg.rgb.max_gaussians = 3000
    cfg.rgb.checkpoint_every = max(1, iterations // 3)
    for k, v in rgb.items():
        setattr(cfg.rgb, k, v)
    return cfg


def test_gaussian_model_file_round_trip(tmp_path):
    pts = np.random.default_rng(0).normal(size=(50, 3))
    cols = np.random.default_rng(1).uniform(size=(50, 3))
    model = GaussianModel.from_points(pts, cols, sh_degree=2, init_opacity=0.3)
    assert len(model) == 50 and model.sh.shape == (50, 9, 3)
    act = model.to_numpy()
    np.testing.assert_allclose(act["means"], pts, atol=1e-6)
    np.testing.assert_allclose(act["colors"], cols, atol=1e-5)
    np.testing.assert_allclose(act["opacities"], 0.3, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(act["quats"], axis=1), 1.0, atol=1e-6)
    assert (act["scales"] > 0).all()
    sfw = scene_normalization(pts)
    model.save(tmp_path / "g.npz", scene_from_world=sfw)
    raw = load_npz(tmp_path / "g.npz")
    assert int(raw["format_version"]) == 1 and set(raw) >= {"log_scales", "opacity_logits", "sh0", "shN"}
    back = GaussianModel.load(tmp_path / "g.npz")
    for k, v in back.to_numpy().items():
        np.testing.assert_allclose(v, act[k], err_msg=k)
    raw["format_version"] = np.array(99)
    with pytest.raises(ValueError, match="format_version"):
        GaussianModel.from_arrays(raw)


def test_split_holds_out_every_nth_frame():
    assert split_indices(10, 4) == ([1, 2, 3, 5, 6, 7, 9], [0, 4, 8])
    assert split_indices(10, 0) == (list(range(10)), [])
    assert split_indices(2, 2) == ([0, 1], [])  # would leave one training frame


def test_initial_points_sources(tmp_path):
    capture, gt = make_toy_capture(tmp_path / "cap", n_views=6, size=24)
    sfw = scene_normalization(capture.c2w_all()[:, :3, 3])
    views = [load_view(capture, i, sfw) for i in range(6)]
    pts, cols, source = initial_points(capture, views, sfw, max_points=300)
    assert source == "depth" and 100 < len(pts) <= 300 and cols.shape == pts.shape
    # Back-projected depth lands on the blobs: near some ground-truth centre (world frame).
    world = transform_points(np.linalg.inv(sfw), pts)
    d = np.linalg.norm(world[:, None] - gt["means"][None], axis=-1).min(axis=1)
    assert np.median(d) < 0.15, np.median(d)
    # Without depth: random points inside the frusta, in front of the cameras.
    for v in views:
        v.depth = None
    pts, _, source = initial_points(capture, views, sfw, max_points=200)
    assert source == "random" and len(pts) == 200
    cam = pts @ views[0].viewmat[:3, :3].numpy().T.astype(np.float64) + views[0].viewmat[:3, 3].numpy()
    assert (cam[: 200 // 6, 2] > 0).all()


def test_train_recovers_toy_scene_and_evaluates(tmp_path):
    capture, _ = make_toy_capture(tmp_path / "cap", n_views=12, size=24)
    cfg = _cfg(120)
    out = tmp_path / "rgb"
    m = train_rgb(capture, cfg, out, "cpu", progress=False)
    assert m["init_source"] == "depth" and m["n_test_views"] == 3
    assert m["psnr_test"] > 24.0, m
    assert (out / "gaussians.npz").is_file()
    record = read_json(out / "rgb.json")
    assert record["format_version"] == 1 and record["test_indices"] == [0, 4, 8]
    sfw = np.array(record["scene_from_world"])
    np.testing.assert_allclose(np.array(record["world_from_scene"]) @ sfw, np.eye(4), atol=1e-9)
    ev = evaluate_rgb(capture, out, cfg, "cpu", out_dir=tmp_path / "eval")
    assert ev["n_views"] == 3 and abs(ev["psnr"] - m["psnr_test"]) < 1e-3
    assert len(list((tmp_path / "eval").glob("frame_*.png"))) == 3
    # A finished stage with unchanged settings is not retrained.
    assert train_rgb(capture, cfg, out, "cpu", progress=False).get("skipped") is True
    # On one thread (this module's setting) the same settings give the same Gaussians, bit for
    # bit; with more CPU threads float sums are ordered differently and they are not.
    again = tmp_path / "rgb_again"
    train_rgb(capture, cfg, again, "cpu", progress=False)
    first, second = load_npz(out / "gaussians.npz"), load_npz(again / "gaussians.npz")
    for key in ("means", "quats", "log_scales", "opacity_logits", "sh0"):
        np.testing.assert_array_equal(first[key], second[key])


_CHILD = """
import sys, torch
torch.set_num_threads(1)
from ccl_lgs_ros.capture.format import Capture
from ccl_lgs_ros.config import Config
from ccl_lgs_ros.splat.trainer import _load_latest_checkpoint, _settings, train_rgb
cfg = Config()
for k, v in {settings}.items():
    setattr(cfg.rgb, k, v)
train_rgb(Capture.load(sys.argv[1]), cfg, sys.argv[2], "cpu", progress=False)
"""


def test_killed_training_resumes_from_last_checkpoint(tmp_path):
    capture, _ = make_toy_capture(tmp_path / "cap", n_views=6, size=16, with_depth=False)
    settings = {"iterations": 150, "checkpoint_every": 5, "sh_degree": 0, "max_init_points": 200,
                "holdout_every": 0, "max_gaussians": 1000}  # fmt: skip
    out = tmp_path / "rgb"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(settings=repr(settings)), str(capture.root), str(out)], env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("ckpt_*.npz")):
            assert proc.poll() is None, "trainer exited before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    steps = sorted(int(p.stem.split("_")[1]) for p in out.glob("ckpt_*.npz"))
    assert steps and steps[-1] < 150 and not (out / "gaussians.npz").exists()
    cfg = Config()
    for k, v in settings.items():
        setattr(cfg.rgb, k, v)
    # A checkpoint of other settings is never resumed from.
    assert _load_latest_checkpoint(out, _settings(cfg.rgb))[0] == steps[-1]
    cfg.rgb.downscale = 2
    assert _load_latest_checkpoint(out, _settings(cfg.rgb)) is None
    cfg.rgb.downscale = 1
    m = train_rgb(Capture.load(capture.root), cfg, out, "cpu", progress=False)
    assert m["resumed_from"] == steps[-1], (m, steps)
    assert m["steps"] == 150 and np.isfinite(m["final_loss"])
    assert (out / "gaussians.npz").is_file() and len(list(out.glob("ckpt_*.npz"))) <= 1
    assert m["psnr_train"] > 15.0, m


def test_ssim_matches_the_2d_gaussian_window():
    import torch.nn.functional as F

    from ccl_lgs_ros.splat.metrics import ssim

    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 40, 30, 3, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    ax = torch.arange(11, dtype=torch.float64) - 5
    w1 = torch.exp(-(ax**2) / (2 * 1.5**2))
    w = (w1[:, None] * w1[None, :] / w1.sum() ** 2).expand(3, 1, 11, 11)

    def f(t):
        return F.conv2d(t, w, padding=5, groups=3)

    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    ref = ((2 * mx * my + 1e-4) * (2 * sxy + 9e-4) / ((mx**2 + my**2 + 1e-4) * (sxx + syy + 9e-4))).mean()
    torch.testing.assert_close(ssim(a, b), ref, rtol=1e-12, atol=1e-12)
    assert float(ssim(a, a)) == pytest.approx(1.0)
    assert float(ssim(a, b)) < 0.99
