"""The query engine's unit path (per code and voxel sums, precomputed surface clouds) against the
per-Gaussian computation it replaces."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree
from test_query_engine import LABELS, FakeTextEncoder, cfg, codebook, two_mugs_scene

from ccl_lgs_ros.query.cluster import VoxelGrid
from ccl_lgs_ros.query.engine import LevelCodes, QueryEngine, SemanticIndex
from ccl_lgs_ros.testing.blobs import blob_scene


@pytest.fixture
def encoder() -> FakeTextEncoder:
    return FakeTextEncoder()


def per_gaussian(engine: QueryEngine) -> QueryEngine:
    """The same engine forced onto the per-Gaussian path (select ids, cluster points, reduce)."""
    engine._fast_path = lambda: False  # type: ignore[method-assign]
    return engine


def busy_scene(encoder: FakeTextEncoder) -> SemanticIndex:
    """Two mugs, a plant, floor, floaters and two levels whose codes disagree on a random subset."""
    scene, _ = two_mugs_scene(5000, seed=4)
    rng = np.random.default_rng(5)
    n = scene.means.shape[0]
    extra = rng.random((6, 3)) * 0.1 + [4.0, 4.0, 1.0]  # floaters
    means = np.concatenate([scene.means, extra])
    quats = np.concatenate([scene.quats, np.tile([1.0, 0, 0, 0], (6, 1))])
    scales = np.concatenate([scene.scales, np.full((6, 3), 0.004)])
    opac = np.concatenate([rng.uniform(0.05, 1.0, n), np.full(6, 0.9)])
    colors = np.concatenate([scene.colors, np.full((6, 3), 0.5)])
    wp = np.concatenate([scene.codes, np.zeros(6, np.int64)])
    sp = np.where(rng.random(n + 6) < 0.2, 2, wp)
    conf = rng.integers(100, 256, n + 6)
    cb = codebook(encoder)
    levels = {"sp": LevelCodes(sp, conf, cb), "wp": LevelCodes(wp, conf, cb)}
    return SemanticIndex(means, quats, scales, opac, colors, levels)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"cluster_eps": 0.0}, {"min_confidence": 0.6}, {"cluster_eps": 0.3}, {"min_instance_gaussians": 400}],
)
def test_unit_path_matches_per_gaussian_path(encoder, overrides):
    index = busy_scene(encoder)
    fast = QueryEngine(index, encoder, cfg(**overrides))
    slow = per_gaussian(QueryEngine(index, encoder, cfg(**overrides)))
    for text, kwargs in (("mug", {}), ("plant", {}), ("floor", {}), ("zorblax", {}), ("mug", {"threshold": 0.99})):
        a = fast.query(text, point_spacing=0.0, **kwargs)
        b = slow.query(text, point_spacing=0.0, **kwargs)
        assert (a.found, a.level, a.num_selected, a.message) == (b.found, b.level, b.num_selected, b.message)
        assert a.best_score == pytest.approx(b.best_score)
        assert len(a.instances) == len(b.instances)
        # Best score first; equal scores (one code): the larger instance first.
        assert all((p.score, p.num_gaussians) >= (q.score - 1e-9, q.num_gaussians)
                   for p, q in zip(a.instances, a.instances[1:]))
        # The same instances (the per-Gaussian path orders exact ties by rounding noise).
        pairs = zip(sorted(a.instances, key=lambda i: i.gaussian_ids.min()),
                    sorted(b.instances, key=lambda i: i.gaussian_ids.min()))
        for x, y in pairs:
            assert x.num_gaussians == y.num_gaussians
            order_x, order_y = np.argsort(x.gaussian_ids), np.argsort(y.gaussian_ids)
            np.testing.assert_array_equal(x.gaussian_ids[order_x], y.gaussian_ids[order_y])
            for field in ("means", "quats", "scales", "opacities", "colors", "relevance"):
                np.testing.assert_array_equal(getattr(x, field)[order_x], getattr(y, field)[order_y])
            assert x.score == pytest.approx(y.score, abs=1e-6)
            np.testing.assert_allclose(x.centroid, y.centroid, atol=1e-6)
            np.testing.assert_array_equal(x.aabb_min, y.aabb_min)
            np.testing.assert_array_equal(x.aabb_max, y.aabb_max)
            np.testing.assert_allclose(x.box.extent, y.box.extent, atol=1e-5)
            np.testing.assert_allclose(x.box.center, y.box.center, atol=1e-5)
    if len(fast.query("mug").instances) > 1:
        top = fast.query("mug", max_instances=1).instances
        assert len(top) == 1 and np.array_equal(top[0].gaussian_ids, fast.query("mug").instances[0].gaussian_ids)


def reference_voxel_clusters(grid: VoxelGrid, ids: np.ndarray, min_points: int) -> np.ndarray:
    """Plain-Python DBSCAN-on-voxels: core voxels (with their 26 neighbours >= min_points) joined
    by adjacency, border voxels take a core neighbour's cluster, the rest is noise."""
    vox = grid.voxel_of[ids]
    count: dict[int, int] = {}
    for v in vox.tolist():
        count[v] = count.get(v, 0) + 1
    nbrs = {v: [int(u) for u in grid.neighbours[v] if u < grid.num_voxels and int(u) in count] for v in count}
    core = {v for v in count if count[v] + sum(count[u] for u in nbrs[v]) >= min_points}
    comp: dict[int, int] = {}
    for v in sorted(core):
        if v in comp:
            continue
        comp[v], stack = v, [v]
        while stack:
            w = stack.pop()
            for u in nbrs[w]:
                if u in core and u not in comp:
                    comp[u] = v
                    stack.append(u)
    label = {v: comp.get(v, next((comp[u] for u in nbrs[v] if u in core), -1)) for v in count}
    return np.array([label[v] for v in vox.tolist()])


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming of the clusters, noise (-1) equal; border ties may differ."""
    if not np.array_equal(a < 0, b < 0):
        return False
    pairs = set(zip(a[a >= 0].tolist(), b[b >= 0].tolist()))
    return len(pairs) == len({p for p, _ in pairs}) == len({q for _, q in pairs})


def test_cluster_voxels_matches_a_reference():
    rng = np.random.default_rng(7)
    pts = np.concatenate([rng.normal(c, 0.03, (300, 3)) for c in ([0, 0, 0], [0.5, 0, 0], [0, 0.4, 0.2])])
    pts = np.concatenate([pts, rng.random((40, 3)) * 2 - 1])  # sparse noise
    grid = VoxelGrid(pts, 0.04)
    for ids in (np.arange(pts.shape[0]), rng.choice(pts.shape[0], 500, replace=False), np.arange(300, 640)):
        for min_points in (1, 10, 40):
            got = grid.cluster(ids, min_points)
            assert same_partition(got, reference_voxel_clusters(grid, ids, min_points))
            # From per-voxel counts directly: the same labels.
            occupied, inverse, counts = np.unique(grid.voxel_of[ids], return_inverse=True, return_counts=True)
            np.testing.assert_array_equal(grid.cluster_voxels(occupied, counts, min_points)[inverse], got)
    assert grid.cluster_voxels(np.zeros(0, np.int64), np.zeros(0, np.int64), 5).shape == (0,)


def nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cKDTree(b).query(a)[0]


@pytest.mark.parametrize("spacing", [0.02, 0.007])  # 0.02 = cfg's point_spacing (precomputed at load)
def test_precomputed_cloud_matches_on_the_fly_sampling(encoder, spacing):
    scene, centers = two_mugs_scene(6000)
    index = scene.index(codebook(encoder))
    cached = QueryEngine(index, encoder, cfg())
    assert cached.clouds.pinned and cached.clouds.pinned_spacing == 0.02
    fly = QueryEngine(index, encoder, cfg(cloud_cache_mb=0.0))
    assert not fly.clouds.pinned
    for text in ("mug", "plant"):
        a = cached.query(text, point_spacing=spacing)
        b = fly.query(text, point_spacing=spacing)
        assert len(a.instances) == len(b.instances) >= 1
        for x, y in zip(a.instances, b.instances):
            np.testing.assert_array_equal(np.sort(x.gaussian_ids), np.sort(y.gaussian_ids))
            p, q = x.points, y.points
            assert p.dtype == np.float32 and x.point_colors.shape == p.shape
            assert abs(p.shape[0] - q.shape[0]) <= 0.1 * q.shape[0]
            # The same surface: every point of one cloud is near the other cloud, both ways.
            assert np.quantile(nearest(p, q), 0.95) < spacing and np.quantile(nearest(q, p), 0.95) < spacing
            assert nearest(p, q).max() < 3 * spacing and nearest(q, p).max() < 3 * spacing
            np.testing.assert_allclose(x.point_colors.mean(axis=0), y.point_colors.mean(axis=0), atol=0.01)


def test_cached_cloud_honours_the_spacing(encoder):
    scene, centers = two_mugs_scene(6000)
    engine = QueryEngine(scene.index(codebook(encoder)), encoder, cfg())
    for spacing in (0.02, 0.005, 0.04):
        res = engine.query("mug", point_spacing=spacing)
        assert len(res.instances) == 2
        for inst in res.instances:
            # One point per cube of side `spacing` (one code per instance here) ...
            cells = np.floor(inst.points / spacing).astype(np.int64)
            assert np.unique(cells, axis=0).shape[0] == cells.shape[0]
            # ... on the sphere of its mug, and only from its own Gaussians' surroundings.
            obj = int(np.argmin(np.linalg.norm(centers - inst.centroid, axis=1)))
            r = np.linalg.norm(inst.points - centers[obj], axis=1)
            assert np.abs(r - 0.1).max() < 0.02
            assert nearest(inst.points, scene.means[inst.gaussian_ids]).max() < 0.02
    fine = engine.query("plant", point_spacing=0.005).instances[0].points.shape[0]
    coarse = engine.query("plant", point_spacing=0.04).instances[0].points.shape[0]
    assert fine > 20 * coarse


def test_cloud_cache_reuse_and_budget(encoder):
    scene, _ = two_mugs_scene(6000)
    index = scene.index(codebook(encoder))
    engine = QueryEngine(index, encoder, cfg())
    first = engine.query("mug", point_spacing=0.01)
    assert len(engine.clouds.lru) == 1  # one code built at this spacing, kept
    again = engine.query("mug", point_spacing=0.01)
    for x, y in zip(first.instances, again.instances):
        np.testing.assert_array_equal(x.points, y.points)
    # Deterministic for a given scene and settings: another engine builds the same clouds.
    other = QueryEngine(index, encoder, cfg()).query("mug", point_spacing=0.01)
    for x, y in zip(first.instances, other.instances):
        np.testing.assert_array_equal(x.points, y.points)
    mem = engine.index_bytes_per_gaussian()
    assert mem["surface_cloud"] > 0 and mem["surface_cloud_other_spacings_total_bytes"] > 0
    # A budget too small for the whole scene's clouds: nothing pinned, per-code entries stay
    # within the budget (or are not kept at all), answers unchanged in shape.
    tiny = QueryEngine(index, encoder, cfg(cloud_cache_mb=0.004))
    assert not tiny.clouds.pinned
    for spacing in (0.02, 0.01, 0.015, 0.03):
        res = tiny.query("mug", point_spacing=spacing)
        assert len(res.instances) == 2 and all(i.points.shape[0] > 20 for i in res.instances)
        assert tiny.clouds.lru_bytes <= tiny.clouds.budget
        assert tiny.clouds.lru_bytes == sum(c.nbytes for c in tiny.clouds.lru.values())


@pytest.mark.parametrize("chunk", [500, 2500])
def test_big_code_is_split_into_chunks(encoder, monkeypatch, chunk):
    """A code with more samples than one chunk is sampled in pieces, merged per cube: the same
    surface, still one point per cube."""
    import ccl_lgs_ros.query.clouds as clouds_mod

    centers = np.array([[0.0, 0.0, 0.1], [1.0, 0.0, 0.1], [0.0, 1.0, 0.1]])
    scene = blob_scene(6000, centers, np.array([0, 1, 2]), floor_code=len(LABELS) - 1, radius=0.2)
    index = scene.index(codebook(encoder))
    whole = QueryEngine(index, encoder, cfg()).query("mug").instances[0].points
    monkeypatch.setattr(clouds_mod, "CLOUD_CHUNK_SAMPLES", chunk)
    engine = QueryEngine(index, encoder, cfg())
    assert {("wp", c) for c in range(4)} <= set(engine.clouds.pinned)
    pieces = engine.query("mug").instances[0].points
    for text in ("table", "plant", "floor"):
        assert engine.query(text).instances[0].points.shape[0] > 100
    assert abs(pieces.shape[0] - whole.shape[0]) <= 0.05 * whole.shape[0]
    cells = np.floor(pieces / 0.02).astype(np.int64)
    assert np.unique(cells, axis=0).shape[0] == cells.shape[0]
    assert nearest(pieces, whole).max() < 0.04 and nearest(whole, pieces).max() < 0.04


def test_connected_labels_match_scipy():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from ccl_lgs_ros.query.cluster import connected_labels

    rng = np.random.default_rng(11)
    for n, e in ((1, 0), (5, 0), (50, 30), (400, 380), (2000, 2500)):
        a, b = rng.integers(0, n, e), rng.integers(0, n, e)
        path = np.arange(n - 1)  # plus a long path over part of the nodes: many rounds
        a, b = np.concatenate([a, path[: n // 3]]), np.concatenate([b, path[: n // 3] + 1])
        _, expected = connected_components(coo_matrix((np.ones(a.size), (a, b)), shape=(n, n)), directed=False)
        np.testing.assert_array_equal(connected_labels(n, a, b), expected)
