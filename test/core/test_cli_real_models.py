"""The user's path with checkpoints: ``ccl-lgs train`` on the real backend, then ``ccl-lgs query``.

Random-weight checkpoints are written in the official file layouts (SAM: plain state dict; SAM
2.1: ``{"model": state dict}``; OpenCLIP: plain state dict) at the reduced sizes of
``priors.models.write_random_checkpoints`` and handed to the command line exactly as a user's
files are: ``--set priors.sam_checkpoint=...`` etc. ``priors.sam_model_type`` and
``priors.sam2_config`` stay at ``auto`` (read from the files). The capture is the shared real
``nerfstudio_fakeplant`` (8 frames at 160x128).

Small settings, documented in README.md (GPU and checkpoints): ``--preset tiny --device cpu``,
the reduced models' ``priors.clip_model=ViT-S-32`` and ``priors.sam2_image_size=128``, SAM's
quality thresholds at 0 (random weights score nothing; real ones keep the defaults),
``priors.points_per_side=8``, and 20 RGB / codebook / field steps.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import dataset_path

pytestmark = pytest.mark.slow

SMALL = {
    "priors.clip_model": "ViT-S-32",
    "priors.sam2_image_size": "128",
    "priors.pred_iou_thresh": "0",
    "priors.stability_score_thresh": "0",
    "priors.points_per_side": "8",
    "rgb.iterations": "20",
    "rgb.max_init_points": "1500",
    "field.codebook_iterations": "20",
    "field.iterations": "20",
}


def _cli(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ccl_lgs_ros", *args], capture_output=True, text=True, timeout=timeout
    )


def _sets(values: dict[str, str]) -> list[str]:
    return [x for k, v in values.items() for x in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    from ccl_lgs_ros.priors.models import write_random_checkpoints

    return write_random_checkpoints(tmp_path_factory.mktemp("checkpoints"))


def test_train_real_backend_on_a_real_capture_then_query(tmp_path, checkpoints):
    src = dataset_path("nerfstudio_fakeplant")
    capture, scene = tmp_path / "capture", tmp_path / "scene"
    r = _cli("import", str(src), str(capture), "--max-frames", "8", "--downscale", "4")
    assert r.returncode == 0, r.stderr
    train = ["train", str(capture), str(scene), "--preset", "tiny", "--device", "cpu", "--json"]
    r = _cli(*train, *_sets({**checkpoints, **SMALL}))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "frames without any mask" not in r.stderr

    record = json.loads((scene / "scene.json").read_text())
    priors = record["stages"]["priors"]["stats"]
    assert priors["backend"] == "real" and priors["frames"] == 8
    assert all(priors["frames_without_masks"][lv] == 0 for lv in ("sp", "wp"))
    for lv, st in priors["association"].items():  # SAM 2 ran, within its bound
        assert st["masks_total"] > 0 and 0 < st["frames_tracked"] <= 3 * 8 and not st["capped"], (lv, st)
    spec = priors["text_encoder"]
    assert spec["kind"] == "open_clip" and spec["checkpoint"] == checkpoints["priors.clip_checkpoint"]

    r = _cli("query", str(scene), "plant", "--json", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    answer = json.loads(r.stdout)
    assert "instances" in answer and answer["best_score"] is not None

    # A setting that does not fit its file: one line naming the setting and the right value, before
    # any model is built (the RGB stage is reused; the priors stage stops at once).
    r = _cli(*train, *_sets({**checkpoints, **SMALL, "priors.sam_model_type": "vit_h"}))
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "priors.sam_model_type=reduced" in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_zero_masks_warned_and_field_error_names_the_thresholds(tmp_path, checkpoints):
    """SAM's default thresholds with random weights keep nothing: the user is told which settings."""
    src = dataset_path("nerfstudio_fakeplant")
    capture, scene = tmp_path / "capture", tmp_path / "scene"
    assert _cli("import", str(src), str(capture), "--max-frames", "3", "--downscale", "4").returncode == 0
    small = {k: v for k, v in SMALL.items() if "thresh" not in k} | {"rgb.iterations": "2"}
    r = _cli("train", str(capture), str(scene), "--preset", "tiny", "--device", "cpu", *_sets({**checkpoints, **small}))
    assert r.returncode != 0
    assert "frames without any mask (level sp: 3/3, level wp: 3/3)" in r.stderr
    assert "priors.pred_iou_thresh=0.7" in r.stderr and "priors.stability_score_thresh=0.85" in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "no mask features" in last and "priors.pred_iou_thresh" in last, last
