"""Training settings are checked before any stage runs (train_checks.py), with the stages' messages."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from ccl_lgs_ros.config import load_config
from ccl_lgs_ros.testing.synth.generate import generate_scene
from ccl_lgs_ros.train_checks import TrainSettingsError, check_train_settings, config_of_train_argv, device_problem


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A synthetic capture with ground truth and a copy of it without (like a robot's capture)."""
    root = tmp_path_factory.mktemp("captures")
    generate_scene(root / "gt", seed=0, width=48, height=36, num_frames=4, num_objects=2)
    generate_scene(root / "plain", seed=0, width=48, height=36, num_frames=4, num_objects=2)
    data = json.loads((root / "plain" / "transforms.json").read_text())
    data["ccl_lgs"]["instances"] = []
    for frame in data["frames"]:
        frame.pop("instance_file_path", None)
    (root / "plain" / "transforms.json").write_text(json.dumps(data))
    generate_scene(root / "other", seed=5, width=48, height=36, num_frames=4, num_objects=2)
    return root


def _problems(cfg, capture, **kw) -> list[str]:
    with pytest.raises(TrainSettingsError) as err:
        check_train_settings(cfg, capture, **kw)
    return err.value.problems


def test_simulator_without_ground_truth_is_refused_with_the_stage_message(synth):
    cfg = load_config(preset="tiny", overrides={"priors.backend": "simulator"})
    (msg,) = _problems(cfg, synth / "plain")
    # The message the simulator gave when the priors stage reached it (simulator._gt_labels).
    assert msg == (
        f"{synth / 'plain'}: the priors simulator needs ground truth (ccl_lgs.instances and "
        "instances/ maps, e.g. from `ccl-lgs synth`); use priors.backend=real for real data"
    )
    check_train_settings(cfg, synth / "gt")  # with ground truth: nothing to say
    # ground truth from a reference capture of the same scene (the robot replays it) ...
    ok = load_config(overrides={"priors.backend": "simulator", "priors.sim_ground_truth": str(synth / "gt")})
    check_train_settings(ok, synth / "plain")
    # ... but not from another scene: its poses match none of the capture's frames
    bad = load_config(overrides={"priors.backend": "simulator", "priors.sim_ground_truth": str(synth / "other")})
    (msg,) = _problems(bad, synth / "plain")
    assert "frame 0 matches no frame of the ground-truth capture" in msg and "priors.sim_ground_truth" in msg
    # only the RGB stage runs: the priors' inputs do not matter
    check_train_settings(cfg, synth / "plain", stages=["rgb"])


def test_real_backend_needs_every_checkpoint_file(synth, tmp_path):
    cfg = load_config(overrides={"priors.backend": "real"})
    probs = _problems(cfg, synth / "gt")
    assert len(probs) == 3
    assert probs[0].startswith("priors.sam_checkpoint is not set. Expected the checkpoint file sam_vit_h_4b8939.pth")
    assert probs[1].startswith("priors.sam2_checkpoint is not set. Expected the checkpoint file sam2.1_hiera_large.pt")
    assert probs[2].startswith("priors.clip_checkpoint is not set. Expected the checkpoint file open_clip_pytorch")
    files = {}
    for key in ("sam_checkpoint", "sam2_checkpoint", "clip_checkpoint"):
        files[f"priors.{key}"] = str(tmp_path / f"{key}.pt")
    cfg = load_config(overrides={"priors.backend": "real", **files})
    probs = _problems(cfg, synth / "gt")
    assert len(probs) == 3 and all("does not exist" in p for p in probs)
    for path in files.values():
        open(path, "wb").close()
    check_train_settings(cfg, synth / "gt")
    # OpenCLIP may fetch its tagged weights when the user allows downloads
    del files["priors.clip_checkpoint"]
    online = load_config(overrides={"priors.backend": "real", "priors.allow_download": "true", **files})
    check_train_settings(online, synth / "gt")


def test_the_same_checkpoint_message_as_the_loader(tmp_path):
    """The loader's own error (priors.models.load_sam) and the check's agree word for word."""
    from ccl_lgs_ros.priors.models import MissingCheckpointError, load_sam

    missing = str(tmp_path / "nope.pth")
    with pytest.raises(MissingCheckpointError) as err:
        load_sam("vit_b", missing, "cpu")
    cfg = load_config(overrides={"priors.sam_model_type": "vit_b", "priors.sam_checkpoint": missing})
    from ccl_lgs_ros.priors.checkpoints import missing_checkpoints

    assert str(missing_checkpoints(cfg)[0]) == str(err.value)


def test_devices_and_renderer_backends(synth):
    import torch

    assert device_problem("cpu") == ""
    assert "invalid device 'gpu0'" in device_problem("gpu0")
    if not torch.cuda.is_available():
        assert "CUDA is not available on this machine" in device_problem("cuda")
        cfg = load_config(preset="tiny", overrides={"device": "cuda:1", "priors.backend": "simulator"})
        (msg,) = _problems(cfg, synth / "gt")
        assert msg.startswith("device 'cuda:1' was asked for")
    cfg = load_config(overrides={"device": "cpu", "rgb.backend": "gsplat", "priors.backend": "simulator"})
    (msg,) = _problems(cfg, synth / "gt")
    assert msg == "the gsplat backend needs CUDA tensors (got device cpu); use backend='torch'"


def test_config_of_train_argv_is_what_the_trainer_builds():
    from ccl_lgs_ros.supervisor import train_command

    argv = train_command("/c", "/s", preset="tiny", device="cpu", method="gags", overrides=["priors.backend=simulator"])
    cfg = config_of_train_argv(argv)
    # what the trainer's own command line makes of the same arguments
    from ccl_lgs_ros.cli import _config_from_args, build_parser

    assert cfg == _config_from_args(build_parser().parse_args(argv[3:]))
    assert (cfg.device, cfg.field.method, cfg.priors.backend, cfg.rgb.iterations) == ("cpu", "gags", "simulator", 300)


def test_ccl_lgs_train_refuses_before_the_rgb_stage(synth, tmp_path):
    """The issue's case: the simulator on a capture without ground truth used to fail after the
    RGB stage (minutes); now `ccl-lgs train` stops at once and writes no stage output."""
    scene = tmp_path / "scene"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ccl_lgs_ros", "train", str(synth / "plain"), str(scene), "--preset", "tiny",
         "--set", "priors.backend=simulator", "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "ccl-lgs train: error:" in proc.stderr and "the priors simulator needs ground truth" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (scene / "rgb").exists()
    assert time.monotonic() - t0 < 60
