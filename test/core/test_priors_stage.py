"""The priors stage: simulator backend end to end, cache resume and invalidation."""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ccl_lgs_ros.capture.format import Capture
from ccl_lgs_ros.config import Config
from ccl_lgs_ros.priors import PriorsError, build_text_encoder, compute_priors, load_priors
from ccl_lgs_ros.priors.simulator import SimulatorBackend
from ccl_lgs_ros.testing.synth import generate_scene

N = 6


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_scene(tmp_path_factory.mktemp("stage") / "scene", seed=1, width=64, height=48, num_frames=N).root


@pytest.fixture
def capture(source: Path, tmp_path: Path) -> Capture:
    """A private copy (tests touch files)."""
    shutil.copytree(source, tmp_path / "scene", copy_function=shutil.copy2)
    return Capture.load(tmp_path / "scene")


def _cfg(**priors) -> Config:
    cfg = Config()
    cfg.priors.backend = "simulator"
    for key, value in priors.items():
        setattr(cfg.priors, key, value)
    return cfg


def test_compute_and_load(capture: Capture, tmp_path: Path) -> None:
    out = tmp_path / "priors"
    stats = compute_priors(capture, _cfg(sim_corruption=0.0), out, "cpu", progress=False)
    assert stats["backend"] == "simulator" and stats["frames"] == N
    assert stats["computed"] == N and stats["reused"] == 0 and stats["associated"]
    assert stats["labelled_fraction"] == {"sp": 1.0, "wp": 1.0}
    assert stats["masks_per_frame"]["sp"] > 2
    priors, meta = load_priors(out)
    assert len(priors) == N and meta["levels"] == ["sp", "wp"] and meta["complete"]
    for i, fp in enumerate(priors):
        assert set(fp.levels) == {"sp", "wp"}
        lp = fp.levels["sp"]
        assert lp.masks.dtype == np.int32 and lp.masks.shape == (48, 64)
        assert lp.features.dtype == np.float16 and lp.features.shape[1] == 512
        assert (lp.labels >= 0).all()
        # What was cached is what the backend computes.
        direct = SimulatorBackend(_cfg(sim_corruption=0.0)).frame_priors(capture, i, ["sp"]).levels["sp"]
        np.testing.assert_array_equal(direct.masks, lp.masks)
        np.testing.assert_array_equal(direct.features, lp.features)
    encoder = build_text_encoder(meta["text_encoder"])
    assert encoder.dim == 512
    # GAGS levels on request.
    stats = compute_priors(capture, _cfg(), tmp_path / "gags", "cpu", levels=["s", "p", "w"], progress=False)
    assert set(stats["masks_per_frame"]) == {"s", "p", "w"}


def test_resume_after_crash(capture: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "priors"
    real = SimulatorBackend.frame_priors
    calls: list[int] = []

    def crashing(self, cap, index, levels):  # noqa: ANN001, ANN202
        if index == 3:
            raise KeyboardInterrupt("simulated crash")
        calls.append(index)
        return real(self, cap, index, levels)

    monkeypatch.setattr(SimulatorBackend, "frame_priors", crashing)
    with pytest.raises(KeyboardInterrupt):
        compute_priors(capture, _cfg(), out, "cpu", progress=False)
    with pytest.raises(PriorsError, match="incomplete"):
        load_priors(out)
    monkeypatch.setattr(SimulatorBackend, "frame_priors", real)
    stats = compute_priors(capture, _cfg(), out, "cpu", progress=False)
    assert stats["reused"] == 3 and stats["computed"] == N - 3
    assert len(load_priors(out)[0]) == N
    # Complete and unchanged: nothing to do.
    stats = compute_priors(capture, _cfg(), out, "cpu", progress=False)
    assert stats["computed"] == 0 and not stats["associated"]


def test_invalidation(capture: Capture, tmp_path: Path) -> None:
    out = tmp_path / "priors"
    compute_priors(capture, _cfg(sim_corruption=0.5), out, "cpu", progress=False)
    labels_before = [fp.levels["sp"].labels for fp in load_priors(out)[0]]
    # A per-frame setting recomputes everything.
    stats = compute_priors(capture, _cfg(sim_corruption=0.2), out, "cpu", progress=False)
    assert stats["computed"] == N
    # Another level set recomputes everything too.
    stats = compute_priors(capture, _cfg(sim_corruption=0.2), out, "cpu", levels=["sp"], progress=False)
    assert stats["computed"] == N and load_priors(out)[1]["levels"] == ["sp"]
    compute_priors(capture, _cfg(sim_corruption=0.5), out, "cpu", progress=False)
    # An association-only setting keeps the frames and reruns association.
    stats = compute_priors(capture, _cfg(sim_corruption=0.5, association_iou=0.9), out, "cpu", progress=False)
    assert stats["computed"] == 0 and stats["associated"]
    labels_after = [fp.levels["sp"].labels for fp in load_priors(out)[0]]
    assert sum((a >= 0).sum() for a in labels_after) < sum((b >= 0).sum() for b in labels_before)
    # A changed input image recomputes that frame only.
    image = capture.root / capture.frames[2].file_path
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    stats = compute_priors(capture, _cfg(sim_corruption=0.5, association_iou=0.9), out, "cpu", progress=False)
    assert stats["computed"] == 1 and stats["reused"] == N - 1


def test_frames_added_later_are_computed_alone(capture: Capture, tmp_path: Path) -> None:
    out = tmp_path / "priors"
    full = list(capture.frames)
    capture.frames = full[:4]
    compute_priors(capture, _cfg(), out, "cpu", progress=False)
    capture.frames = full
    stats = compute_priors(capture, _cfg(), out, "cpu", progress=False)
    assert stats["computed"] == 2 and stats["reused"] == 4
    capture.frames = full[:3]  # fewer frames: the stale ones are removed
    stats = compute_priors(capture, _cfg(), out, "cpu", progress=False)
    assert stats["computed"] == 0 and len(load_priors(out)[0]) == 3
    assert not (out / "frame_000004.npz").exists()


def test_progress_lines(capture: Capture, tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setenv("CCL_LGS_PROGRESS", "json")
    compute_priors(capture, _cfg(), tmp_path / "priors", "cpu")
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert records and all(r["stage"] == "priors" for r in records)
    assert records[-1]["step"] == records[-1]["total"] == N + 1


def test_errors(capture: Capture, tmp_path: Path) -> None:
    with pytest.raises(PriorsError, match="levels"):
        compute_priors(capture, _cfg(), tmp_path / "a", "cpu", levels=["xx"], progress=False)
    with pytest.raises(PriorsError, match="no priors cache"):
        load_priors(tmp_path / "missing")
    with pytest.raises(PriorsError):
        build_text_encoder({"dim": 3})


def test_real_backend_is_never_replaced_by_the_simulator(
    capture: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """backend=real goes to priors.models and its errors propagate; no fallback to the simulator.

    priors.models is replaced by a stub so this test does not import torch (seconds on 2 cores).
    """
    stub = types.ModuleType("ccl_lgs_ros.priors.models")
    seen: list[str] = []

    def build_real_backend(cfg: Config, device: str) -> None:
        seen.append(device)
        raise FileNotFoundError("priors.sam_checkpoint is not set")

    stub.build_real_backend = build_real_backend  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ccl_lgs_ros.priors.models", stub)
    cfg = Config()
    cfg.priors.backend = "real"
    with pytest.raises(FileNotFoundError, match="sam_checkpoint"):
        compute_priors(capture, cfg, tmp_path / "priors", "cuda:1", progress=False)
    assert seen == ["cuda:1"]  # the device is passed through
    with pytest.raises(PriorsError):
        load_priors(tmp_path / "priors")
