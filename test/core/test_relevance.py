"""One relevance for the 2D maps / heatmaps (and so the evaluation) and the 3D query engine.

The same Gaussians, field codebook and text must give the same relevance on every path, and every
path must follow ``query.temperature``. The expected formula is transcribed here by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ccl_lgs_ros.config import Config, to_dict
from ccl_lgs_ros.geometry import transform_points
from ccl_lgs_ros.ply import read_ply_points
from ccl_lgs_ros.priors.simulator import SimulatedTextEncoder
from ccl_lgs_ros.relevance import lerf_relevance
from ccl_lgs_ros.scene.build import build_query_index
from ccl_lgs_ros.scene.layout import SceneDir
from ccl_lgs_ros.scene.load import load_scene
from ccl_lgs_ros.semantics.methods import field_method
from ccl_lgs_ros.semantics.model import SemanticField
from ccl_lgs_ros.semantics.relevance import RelevanceRenderer, pixel_codes, render_field
from ccl_lgs_ros.semantics.views import camera_view
from ccl_lgs_ros.splat.data import camera_centers, scene_normalization
from ccl_lgs_ros.splat.gaussians import GaussianModel
from ccl_lgs_ros.testing.synth import generate_scene

NAMES = ["red mug", "blue box", "green plant", "wooden table", "white wall", "black cable"]
NEGATIVES = ["object", "things", "stuff", "texture"]


def _by_hand(vectors: np.ndarray, pos: np.ndarray, negs: np.ndarray, t: float) -> np.ndarray:
    s_pos = vectors @ pos
    s_neg = vectors @ negs.T if len(negs) else np.zeros((len(vectors), 1))
    return np.min(np.exp(t * s_pos[:, None]) / (np.exp(t * s_pos[:, None]) + np.exp(t * s_neg)), axis=1)


def test_formula_and_the_no_negatives_rule() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(7, 5))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pos, negs = v[0], v[4:]
    for t in (10.0, 3.0):
        np.testing.assert_allclose(lerf_relevance(v, pos, negs, t), _by_hand(v, pos, negs, t), rtol=1e-5)
        # Without negatives: one negative of zero similarity, sigmoid(T s_pos).
        np.testing.assert_allclose(lerf_relevance(v, pos, np.zeros((0, 5)), t),
                                   1 / (1 + np.exp(-t * (v @ pos))), rtol=1e-5)  # fmt: skip
    assert np.isfinite(lerf_relevance(v, pos, -pos[None], 1e6)).all()  # clipped logits stay finite


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, SimulatedTextEncoder]:
    root = tmp_path_factory.mktemp("rel")
    capture = generate_scene(root / "capture", seed=2, width=40, height=30, num_frames=2)
    pts = np.concatenate([read_ply_points(capture.root / inst["gt_points"])[0] for inst in capture.instances])
    pts = pts[np.random.default_rng(0).choice(len(pts), size=min(600, len(pts)), replace=False)]
    sfw = scene_normalization(camera_centers(capture))
    sd = SceneDir(root / "scene")
    sd.rgb_dir.mkdir(parents=True)
    GaussianModel.from_points(transform_points(sfw, pts), sh_degree=0, init_opacity=0.9, init_scale=1.5).save(
        sd.gaussians, scene_from_world=sfw)
    enc = SimulatedTextEncoder(dim=32, seed=0)
    rng = np.random.default_rng(1)
    n, d_f, nc = len(pts), 8, len(NAMES)
    cen = rng.normal(size=(nc, d_f)).astype(np.float32)
    cen /= np.linalg.norm(cen, axis=1, keepdims=True)
    # Each Gaussian's feature close to one centroid: regions of distinct codes in the renders.
    feats = cen[rng.integers(0, nc, n)] + 0.1 * rng.normal(size=(n, d_f)).astype(np.float32)
    field = SemanticField(method="cgc", features={"wp": feats}, codebooks={"wp": enc.encode_text(NAMES)},
                          centroids={"wp": cen}, temperature=0.1)  # fmt: skip
    sd.field_dir.mkdir()
    field.save(sd.field)
    cfg = Config()
    sd.write_record({"frame_id": "map", "world_from_scene": np.linalg.inv(sfw).tolist(), "config": to_dict(cfg),
                     "text_encoder": enc.spec()})  # fmt: skip
    build_query_index(sd.root)
    return sd.root, capture, enc


@pytest.mark.parametrize("temperature", [10.0, 3.0])
def test_2d_maps_evaluation_and_engine_agree(scene, temperature: float) -> None:
    """RelevanceRenderer (heatmaps, every 2D protocol) vs ``/semantic_query``'s engine (load_scene)."""
    root, capture, enc = scene
    cfg = Config()
    cfg.query.temperature = temperature
    cfg.query.negatives = list(NEGATIVES)
    text = "red mug"
    engine = load_scene(root, query_cfg=cfg.query).engine
    table = engine.relevance_tables(text)["wp"]  # the engine's per-code relevance
    codebook = SemanticField.load(SceneDir(root).field).codebooks["wp"]
    q = enc.encode_text([text, *NEGATIVES])
    np.testing.assert_allclose(table, _by_hand(codebook, q[0], q[1:], temperature), rtol=1e-5, atol=1e-7)
    # Per Gaussian: the engine's relevance is the table at the Gaussian's code.
    np.testing.assert_allclose(engine.relevance(text)["wp"], table[engine.index.levels["wp"].codes])

    renderer = RelevanceRenderer(root, cfg.query.negatives, backend="torch", temperature=cfg.query.temperature)
    maps = renderer.maps(capture, 0, [text])["wp"][0]  # [H, W]
    view = camera_view(capture, 0, renderer.scene_from_world, None, None, renderer.device)
    rendered = render_field(renderer.field, renderer.gaussians, [view], "torch")["wp"]
    view_codes = pixel_codes(field_method("cgc"), renderer.field, "wp", rendered)
    assert len(np.unique(view_codes)) >= 2  # several codes on screen, so the comparison means something
    np.testing.assert_allclose(maps, table[view_codes[0]], rtol=1e-6)


def test_temperature_changes_every_path(scene) -> None:
    root, capture, _ = scene
    tables, maps = [], []
    for t in (10.0, 3.0):
        cfg = Config()
        cfg.query.temperature = t
        tables.append(load_scene(root, query_cfg=cfg.query).engine.relevance_tables("red mug")["wp"])
        maps.append(RelevanceRenderer(root, cfg.query.negatives, backend="torch", temperature=t)
                    .maps(capture, 0, ["red mug"])["wp"])  # fmt: skip
    assert np.abs(tables[0] - tables[1]).max() > 0.05
    assert np.abs(maps[0] - maps[1]).max() > 0.05
