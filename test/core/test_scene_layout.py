"""scene/layout.py: the trained-scene folder's one owner (paths, record, version, frame)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ccl_lgs_ros.io import atomic_save_npz, atomic_write_json
from ccl_lgs_ros.scene import SCENE_FORMAT_VERSION, SceneDir, SceneError, load_scene


def test_paths_are_the_documented_layout(tmp_path: Path) -> None:
    s = SceneDir(tmp_path)
    names = ("record_path", "gaussians", "rgb_record", "priors_dir", "field", "codebook", "field_record", "query_index")
    rel = {k: str(getattr(s, k).relative_to(tmp_path)) for k in names}
    assert rel == {"record_path": "scene.json", "gaussians": "rgb/gaussians.npz", "rgb_record": "rgb/rgb.json",
                   "priors_dir": "priors", "field": "field/field.npz", "codebook": "field/codebook.npz",
                   "field_record": "field/field.json", "query_index": "query_index.npz"}  # fmt: skip
    assert not any(tmp_path.iterdir())  # constructing it touches nothing


def test_record_round_trip_and_refusals(tmp_path: Path) -> None:
    s = SceneDir(tmp_path)
    with pytest.raises(SceneError, match="no scene.json"):
        s.read_record()
    assert s.read_record_or_empty() == {}
    s.write_record({"frame_id": "map"})
    assert json.loads(s.record_path.read_text()) == {"frame_id": "map", "format_version": SCENE_FORMAT_VERSION}
    assert s.read_record()["frame_id"] == "map"
    atomic_write_json(s.record_path, {"format_version": SCENE_FORMAT_VERSION + 1})
    with pytest.raises(SceneError, match=f"scene format {SCENE_FORMAT_VERSION + 1}"):
        s.read_record()
    s.record_path.write_text("{not json")
    with pytest.raises(SceneError, match="invalid JSON"):
        s.read_record()
    assert s.read_record_or_empty() == {}
    with pytest.raises(SceneError, match="no such scene folder"):
        load_scene(tmp_path / "missing")


def test_frame_from_the_rgb_record_then_the_gaussians_then_identity(tmp_path: Path) -> None:
    s = SceneDir(tmp_path)
    s.rgb_dir.mkdir()
    atomic_save_npz(s.gaussians, {"means": np.zeros((1, 3))})
    np.testing.assert_array_equal(s.scene_from_world(), np.eye(4))
    sfw = np.diag([2.0, 2.0, 2.0, 1.0])
    sfw[:3, 3] = [1.0, 0.0, -1.0]
    atomic_save_npz(s.gaussians, {"means": np.zeros((1, 3)), "scene_from_world": sfw})
    np.testing.assert_array_equal(s.scene_from_world(), sfw)
    np.testing.assert_allclose(s.world_from_scene(), np.linalg.inv(sfw))
    wfs = np.diag([4.0, 4.0, 4.0, 1.0])
    atomic_write_json(s.rgb_record, {"world_from_scene": wfs.tolist()})  # the stage record wins
    np.testing.assert_array_equal(s.world_from_scene(), wfs)
    np.testing.assert_allclose(s.scene_from_world(), np.linalg.inv(wfs))


def test_text_encoder_spec_from_the_scene_then_the_priors(tmp_path: Path) -> None:
    s = SceneDir(tmp_path)
    assert s.text_encoder_spec() is None
    s.priors_dir.mkdir()
    atomic_write_json(s.priors_meta, {"text_encoder": {"kind": "simulator", "dim": 8}})
    assert s.text_encoder_spec() == {"kind": "simulator", "dim": 8}
    s.write_record({"text_encoder": {"kind": "simulator", "dim": 16}})
    assert s.text_encoder_spec() == {"kind": "simulator", "dim": 16}
