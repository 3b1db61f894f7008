"""The viewer's server side (no browser): splat arrays, answers through the scene's own engine,
scene swaps, errors on the page, recent queries, per-level relevance colours."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest

pytest.importorskip("viser", reason="viser is not installed (scripts/requirements.txt)")


def _blob_scene(dest, labels=("red mug", "blue bowl"), centers=((2.0, 0.0, 0.8), (2.5, 0.6, 0.8)), n=3000):
    """A loadable scene without training: Gaussian spheres whose codes are their labels'
    simulator text embeddings (plus 'floor')."""
    from ccl_lgs_ros.config import Config, to_dict
    from ccl_lgs_ros.io import atomic_write_json
    from ccl_lgs_ros.priors.simulator import SimulatedTextEncoder
    from ccl_lgs_ros.scene import load_scene
    from ccl_lgs_ros.scene.layout import SCENE_FORMAT_VERSION, SceneDir
    from ccl_lgs_ros.testing.blobs import blob_scene

    enc = SimulatedTextEncoder(dim=64, seed=0)
    names = [*labels, "floor"]
    codes = np.arange(len(labels))
    scene = blob_scene(n, np.asarray(centers, float), codes, len(labels), radius=0.1, seed=1)
    dest.mkdir(parents=True, exist_ok=True)
    scene.index(enc.encode_text(names), level="wp", frame_id="map").save(SceneDir(dest).query_index)
    atomic_write_json(dest / "scene.json", {
        "format_version": SCENE_FORMAT_VERSION, "frame_id": "map", "world_from_scene": np.eye(4).tolist(),
        "config": to_dict(Config()), "text_encoder": enc.spec(),
    })  # fmt: skip
    return load_scene(dest)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viewer")
    return _blob_scene(tmp / "a"), _blob_scene(tmp / "b", labels=("green apple",), centers=((1.0, 1.0, 0.5),), n=1000)


@pytest.fixture
def viewer(scenes):
    from ccl_lgs_ros.viewer.server import SceneViewer

    v = SceneViewer(port=0)
    v.set_scene(scenes[0])
    yield v
    v.stop()


def _quat_to_matrix(q):
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip


def test_splat_covariances_are_r_s2_rt():
    from ccl_lgs_ros.viewer.server import splat_covariances

    rng = np.random.default_rng(0)
    quats = rng.normal(size=(20, 4)) * rng.uniform(0.5, 3, size=(20, 1))  # any norm
    scales = rng.uniform(0.001, 0.2, size=(20, 3))
    cov = splat_covariances(quats, scales)
    for q, s, c in zip(quats, scales, cov):
        R = _quat_to_matrix(q)
        np.testing.assert_allclose(c, R @ np.diag(s**2) @ R.T, rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(c)), np.sort(s**2), rtol=1e-3, atol=1e-9)


def test_pack_splats_is_visers_own_buffer_layout(viewer):
    from ccl_lgs_ros.viewer.server import pack_splats

    rng = np.random.default_rng(1)
    n = 50
    centers = rng.normal(size=(n, 3)).astype(np.float32)
    a = rng.normal(size=(n, 3, 3)) * 0.05
    covs = (a @ a.transpose(0, 2, 1)).astype(np.float32)
    rgb = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    opac = rng.uniform(0, 1, (n, 1)).astype(np.float32)
    handle = viewer.server.scene.add_gaussian_splats("/test/pack", centers=centers, covariances=covs, rgbs=rgb,
                                                     opacities=opac)  # viser packs it itself
    np.testing.assert_array_equal(pack_splats(centers, covs, rgb, opac), handle.buffer)
    handle.remove()


def test_highlight_colors_tint_instances_and_dim_the_rest():
    from ccl_lgs_ros.viewer.highlight import PALETTE
    from ccl_lgs_ros.viewer.server import DIM, TINT, highlight_colors

    base = np.full((6, 3), 0.5, np.float32)
    out = highlight_colors(base, [np.array([0, 1]), np.array([4])])
    np.testing.assert_allclose(out[0], (1 - TINT) * 0.5 + TINT * PALETTE[0], atol=1e-6)
    np.testing.assert_allclose(out[4], (1 - TINT) * 0.5 + TINT * PALETTE[1], atol=1e-6)
    np.testing.assert_allclose(out[[2, 3, 5]], DIM * 0.5, atol=1e-6)


def test_binds_loopback_and_serves_the_page_offline(viewer):
    assert viewer.host == "127.0.0.1"
    assert viewer.url == f"http://127.0.0.1:{viewer.port}/"
    with urllib.request.urlopen(viewer.url, timeout=10) as resp:
        page = resp.read().decode("utf-8", "replace")
    assert resp.status == 200 and "<title>Viser</title>" in page
    # The client is one self-contained file: no script or stylesheet from another host.
    assert "src=\"http" not in page and "href=\"http" not in page


def test_query_goes_through_the_scene_engine_and_lights_up_the_answer(viewer, scenes):
    from ccl_lgs_ros.viewer.highlight import PALETTE
    from ccl_lgs_ros.viewer.server import DIM, TINT

    scene = scenes[0]
    ref = scene.engine.query("red mug")
    got = viewer.ask("red mug")
    assert got.found and len(got.instances) == len(ref.instances) == 1
    np.testing.assert_array_equal(got.instances[0].gaussian_ids, ref.instances[0].gaussian_ids)
    rgbs = viewer._splats.rgbs.astype(np.float32) / 255  # what goes to the page
    base = np.clip(scene.index.colors, 0, 1)
    sel = np.zeros(scene.num_gaussians, bool)
    sel[ref.instances[0].gaussian_ids] = True
    np.testing.assert_allclose(rgbs[sel], (1 - TINT) * base[sel] + TINT * PALETTE[0], atol=1.5 / 255)
    np.testing.assert_allclose(rgbs[~sel], DIM * base[~sel], atol=1.5 / 255)
    assert "red mug" in viewer.gui_answer.content and "1 instance(s)" in viewer.gui_answer.content
    # box, label and centroid of the one instance
    assert len(viewer._answer_nodes) == 3


def test_bad_query_is_shown_on_the_page_not_raised(viewer):
    from ccl_lgs_ros.query.engine import QueryError

    with pytest.raises(QueryError):
        viewer.ask("   ")
    viewer.gui_text.value = "\x00\x01"
    viewer._on_find()  # what the Find button runs
    assert viewer.gui_answer.content.startswith("**Error:**")
    assert viewer.ask("red mug").found  # still serving


def test_nothing_found_says_so_and_restores_nothing_tinted(viewer):
    from ccl_lgs_ros.viewer.server import DIM

    res = viewer.ask("purple giraffe")
    assert not res.found
    assert "nothing found" in viewer.gui_answer.content
    base = np.clip(viewer.scene.index.colors, 0, 1)
    np.testing.assert_allclose(viewer._splats.rgbs.astype(np.float32) / 255, DIM * base, atol=1.5 / 255)
    viewer.clear_answer()
    np.testing.assert_allclose(viewer._splats.rgbs.astype(np.float32) / 255, base, atol=1.5 / 255)


def test_recent_queries_and_per_level_relevance_colours(viewer, scenes):
    from ccl_lgs_ros.viewer.server import relevance_colors

    viewer.ask("red mug")
    viewer.ask("blue bowl")
    viewer.ask("red mug")
    assert viewer.recent == ["red mug", "blue bowl"]
    assert tuple(viewer.gui_recent.options) == ("", "red mug", "blue bowl")
    assert tuple(viewer.gui_color_by.options) == ("instances", "relevance: wp")
    viewer.gui_color_by.value = "relevance: wp"
    viewer._color_splats(viewer.last_result)
    rel = scenes[0].engine.relevance("red mug")["wp"]
    np.testing.assert_allclose(viewer._splats.rgbs.astype(np.float32) / 255, relevance_colors(rel), atol=1.5 / 255)
    hot = rel > 0.5
    assert hot.any() and (~hot).any()


def test_scene_swap_replaces_splats_and_answer(viewer, scenes):
    viewer.ask("red mug")
    viewer.set_scene(scenes[1])
    assert viewer.scene is scenes[1] and viewer.last_result is None and not viewer._answer_nodes
    assert viewer._splats.centers.shape == (scenes[1].num_gaussians, 3)
    assert viewer.ask("green apple").found
    assert not viewer.ask("red mug").found  # the old scene's object is gone


def test_answers_from_elsewhere_are_shown(viewer, scenes):
    result = scenes[0].engine.query("blue bowl")  # e.g. the node's /semantic_query
    viewer.show_result(result, source="/semantic_query")
    assert viewer.answers_shown == 1 and "/semantic_query" in viewer.gui_answer.content


def test_ccl_lgs_view_serves_until_interrupted(scenes):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "ccl_lgs_ros", "view", str(scenes[0].path), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        end = time.monotonic() + 120
        while "viewer of" not in line and time.monotonic() < end:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "ccl-lgs view exited early"
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ccl_lgs_view_of_a_missing_scene_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ccl_lgs_ros", "view", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no such scene folder" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------- level of detail


def test_select_splats_keeps_the_most_significant_within_the_budget():
    from ccl_lgs_ros.viewer.server import select_splats

    rng = np.random.default_rng(3)
    n = 500
    opac = rng.uniform(0.01, 1.0, n)
    scales = rng.uniform(0.001, 0.1, (n, 3))
    # By hand: opacity x the product of the two largest scales (face-on ellipse area / pi).
    score = [o * sorted(s)[1] * sorted(s)[2] for o, s in zip(opac, scales)]
    for budget in (1, 37, 250, 499):
        got = select_splats(opac, scales, budget)
        assert len(got) == budget and np.all(np.diff(got) > 0)
        expect = sorted(range(n), key=lambda i: -score[i])[:budget]
        assert set(got.tolist()) == set(expect)
    for budget in (0, n, n + 10):  # 0 = all; a budget above the count keeps all
        np.testing.assert_array_equal(select_splats(opac, scales, budget), np.arange(n))
    with pytest.raises(ValueError, match="max_splats"):
        select_splats(opac, scales, -1)


def test_select_splats_samples_alike_gaussians_evenly():
    from ccl_lgs_ros.viewer.server import select_splats

    n = 10_000  # all alike: the budget must not take the first objects' Gaussians only
    got = select_splats(np.full(n, 0.9), np.full((n, 3), 0.01), 1000)
    assert len(got) == 1000
    per_tenth = np.bincount(got * 10 // n, minlength=10)
    assert per_tenth.min() > 60 and per_tenth.max() < 140, per_tenth
    np.testing.assert_array_equal(got, select_splats(np.full(n, 0.9), np.full((n, 3), 0.01), 1000))  # stable


def test_coverage_scales_enlarge_by_the_left_out_share_of_each_cell():
    from ccl_lgs_ros.viewer.server import coverage_scales, grid_cells

    # Two far apart clusters: 8 Gaussians of which 2 are drawn (x sqrt(4) = 2), 3 of which 3 (x 1).
    means = np.concatenate([np.zeros((8, 3)) + [0.0, 0.0, 0.0], np.zeros((3, 3)) + [10.0, 10.0, 10.0]])
    cells = grid_cells(means, cells_per_axis=4)
    assert len(set(cells[:8].tolist())) == 1 and len(set(cells[8:].tolist())) == 1 and cells[0] != cells[8]
    np.testing.assert_allclose(coverage_scales(cells, np.array([0, 5, 8, 9, 10])), [2, 2, 1, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(coverage_scales(cells, np.array([3])), [np.sqrt(8)], rtol=1e-6)
    np.testing.assert_allclose(coverage_scales(cells, np.array([3]), max_scale=2.5), [2.5])


def test_budget_sends_the_most_visible_splats_enlarged_and_half_of_it_to_the_answer(scenes):
    from ccl_lgs_ros.viewer.highlight import PALETTE
    from ccl_lgs_ros.viewer.server import DIM, LOD_MAX_SCALE, TINT, SceneViewer, grid_cells, select_splats

    scene = scenes[0]
    idx = scene.index
    budget = 500
    v = SceneViewer(port=0, max_splats=budget)
    try:
        v.set_scene(scene)
        lod = select_splats(idx.opacities, idx.scales, budget)
        np.testing.assert_array_equal(v.shown, lod)
        np.testing.assert_allclose(v._splats.centers, idx.means[lod], atol=1e-6)  # what goes to the page
        assert "showing 500 of them" in v.gui_status.content and f"{scene.num_gaussians:,}" in v.gui_status.content

        # Sizes: by hand, each drawn Gaussian's covariance times n/k of its grid cell (capped).
        cells = grid_cells(idx.means)
        sent = v._splats.covariances
        for j in (0, 17, 250, 499):
            i = lod[j]
            n, k = (cells == cells[i]).sum(), (cells[lod] == cells[i]).sum()
            f2 = min(n / k, LOD_MAX_SCALE**2)
            R = _quat_to_matrix(idx.quats[i])
            np.testing.assert_allclose(sent[j], f2 * R @ np.diag(idx.scales[i] ** 2) @ R.T, rtol=2e-3, atol=1e-7)

        res = v.ask("red mug")
        ids = res.instances[0].gaussian_ids
        assert res.found and len(ids) > budget
        # Still `budget` splats: half of them the answer's most significant, the rest the others' most.
        sig = idx.opacities * np.sort(idx.scales, axis=1)[:, 1:].prod(axis=1)
        ans = np.isin(np.arange(scene.num_gaussians), ids)
        own, rest = v.shown[ans[v.shown]], v.shown[~ans[v.shown]]
        assert len(v.shown) == budget and len(own) == budget // 2 and len(rest) == budget - budget // 2
        assert sig[own].min() >= np.sort(sig[ans])[::-1][budget // 2 - 1]
        assert sig[rest].min() >= np.sort(sig[~ans])[::-1][len(rest) - 1]
        np.testing.assert_allclose(v._splats.centers, idx.means[v.shown], atol=1e-6)
        rgbs = v._splats.rgbs.astype(np.float32) / 255
        base = np.clip(idx.colors, 0, 1)[v.shown]
        sel = np.isin(v.shown, ids)
        np.testing.assert_allclose(rgbs[sel], (1 - TINT) * base[sel] + TINT * PALETTE[0], atol=1.5 / 255)
        np.testing.assert_allclose(rgbs[~sel], DIM * base[~sel], atol=1.5 / 255)

        v.clear_answer()  # back to the budget's own splats, undimmed
        np.testing.assert_array_equal(v.shown, lod)
        np.testing.assert_allclose(v._splats.rgbs.astype(np.float32) / 255, np.clip(idx.colors, 0, 1)[lod],
                                   atol=1.5 / 255)
    finally:
        v.stop()


def test_select_with_answer_small_answers_are_drawn_whole():
    from ccl_lgs_ros.viewer.server import select_with_answer

    rank = np.array([5, 3, 9, 0, 1, 2, 4, 6, 7, 8])  # 5 the most significant
    answer = np.zeros(10, bool)
    answer[[8, 7]] = True  # the two least significant
    np.testing.assert_array_equal(select_with_answer(rank, answer, 4), [3, 5, 7, 8])  # 8, 7 + 5, 3
    answer[[0, 1, 2, 4, 6]] = True  # 7 answer Gaussians: only budget // 2 = 2 of them (0, 1)
    np.testing.assert_array_equal(select_with_answer(rank, answer, 4), [0, 1, 3, 5])
    np.testing.assert_array_equal(select_with_answer(rank, answer, 0), np.arange(10))


def test_budget_zero_or_above_the_count_sends_all_and_negative_is_refused(scenes):
    from ccl_lgs_ros.viewer.server import SceneViewer

    for budget in (0, 10**7):
        v = SceneViewer(port=0, max_splats=budget)
        try:
            v.set_scene(scenes[0])
            assert len(v.shown) == scenes[0].num_gaussians and "showing" not in v.gui_status.content
            assert v.ask("red mug").found and len(v.shown) == scenes[0].num_gaussians
        finally:
            v.stop()
    with pytest.raises(ValueError, match="max_splats"):
        SceneViewer(port=0, max_splats=-1)


def test_the_splat_budget_changes_from_the_page_and_keeps_the_answer(scenes):
    from ccl_lgs_ros.viewer.server import SceneViewer, select_splats

    scene = scenes[0]
    v = SceneViewer(port=0, max_splats=300)
    try:
        v.set_scene(scene)
        assert len(v.shown) == 300
        res = v.ask("red mug")
        v.gui_budget.value = 0  # what the page's number field does: all splats, the answer kept
        assert v.max_splats == 0 and len(v.shown) == scene.num_gaussians
        assert v.last_result is res and v.answers_shown == 2 and "red mug" in v.gui_answer.content
        v.set_max_splats(800)
        assert int(v.gui_budget.value) == 800 and len(v.shown) == 800
        v.clear_answer()
        np.testing.assert_array_equal(v.shown, select_splats(scene.index.opacities, scene.index.scales, 800))
        with pytest.raises(ValueError, match=">= 0"):
            v.set_max_splats(-1)
    finally:
        v.stop()
