"""Files written for a query result: point clouds, 3DGS .ply, preview PNG, JSON."""

from __future__ import annotations

import json

import numpy as np
from gs_loader_reference import load_ply_3dgs
from plyfile import PlyData
from test_query_engine import FakeTextEncoder, cfg, codebook, two_mugs_scene

from ccl_lgs_ros.query.engine import QueryEngine
from ccl_lgs_ros.query.export import export_result, write_gaussians_ply

#: 1 / (2 sqrt(pi)), the degree-0 real SH basis (3DGS: rgb = 0.5 + C0 * f_dc), typed in by hand.
SH_C0_BY_HAND = 0.28209479177387814


def test_gaussian_ply_uses_the_3dgs_layout_and_activations(tmp_path):
    rng = np.random.default_rng(0)
    m = 50
    means, scales = rng.standard_normal((m, 3)), rng.random((m, 3)) * 0.1 + 1e-3
    quats, opac, colors = rng.standard_normal((m, 4)), rng.random(m) * 0.9 + 0.05, rng.random((m, 3))
    write_gaussians_ply(tmp_path / "g.ply", means, quats, scales, opac, colors)
    v = PlyData.read(str(tmp_path / "g.ply"))["vertex"]
    names = [p.name for p in v.properties]
    assert names == [
        "x",
        "y",
        "z",
        "nx",
        "ny",
        "nz",
        "f_dc_0",
        "f_dc_1",
        "f_dc_2",
        *[f"f_rest_{i}" for i in range(45)],  # degree-3 layout, zero bands: the 3DGS loader's default
        "opacity",
        "scale_0",
        "scale_1",
        "scale_2",
        "rot_0",
        "rot_1",
        "rot_2",
        "rot_3",
    ]
    assert np.allclose(np.stack([v["x"], v["y"], v["z"]], 1), means, atol=1e-6)
    assert np.allclose(1 / (1 + np.exp(-v["opacity"])), opac, atol=1e-5)
    assert np.allclose(np.exp(np.stack([v[f"scale_{i}"] for i in range(3)], 1)), scales, rtol=1e-5)
    assert np.allclose(0.5 + SH_C0_BY_HAND * np.stack([v[f"f_dc_{i}"] for i in range(3)], 1), colors, atol=1e-5)
    q = np.stack([v[f"rot_{i}"] for i in range(4)], 1)
    assert np.allclose(q, quats / np.linalg.norm(quats, axis=1, keepdims=True), atol=1e-6)
    g = load_ply_3dgs(tmp_path / "g.ply")  # the original 3DGS loader reads it (asserts 45 f_rest)
    assert g["features_rest"].shape == (m, 15, 3) and not g["features_rest"].any()
    assert np.allclose(g["xyz"], means, atol=1e-6) and np.allclose(g["rotation"], q)


def test_export_result_writes_clouds_gaussians_png_and_json(tmp_path):
    enc = FakeTextEncoder()
    scene, _ = two_mugs_scene(3000)
    index = scene.index(codebook(enc))
    res = QueryEngine(index, enc, cfg()).query("mug")
    files = export_result(tmp_path, index, res)
    assert len(files["instances"]) == 2
    for i, path in enumerate(files["instances"]):
        v = PlyData.read(path)["vertex"]
        assert v.count == res.instances[i].points.shape[0] and "red" in [p.name for p in v.properties]
    g = PlyData.read(files["gaussians"])["vertex"]
    assert g.count == sum(inst.num_gaussians for inst in res.instances)
    assert open(files["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    data = json.loads(open(files["json"]).read())
    assert data["found"] and len(data["instances"]) == 2 and data["files"]["gaussians"] == files["gaussians"]
    # Nothing found still writes a valid (empty) selection and a preview.
    empty = export_result(tmp_path / "none", index, QueryEngine(index, enc, cfg()).query("zorblax"))
    assert PlyData.read(empty["gaussians"])["vertex"].count == 0 and empty["instances"] == []


def test_selection_png_shows_each_instance_in_its_colour(tmp_path):
    import cv2

    from ccl_lgs_ros.query.export import _PALETTE, render_selection_png

    enc = FakeTextEncoder()
    scene, _ = two_mugs_scene(3000)
    index = scene.index(codebook(enc))
    res = QueryEngine(index, enc, cfg()).query("mug")
    render_selection_png(tmp_path / "sel.png", index, res, width=400, height=300)
    img = cv2.imread(str(tmp_path / "sel.png"))[:, :, ::-1].astype(int)
    for k in range(2):  # both mugs visible, each in its palette colour
        near = np.abs(img - np.round(_PALETTE[k] * 255)).max(axis=2) < 20
        assert near.sum() > 30, k
