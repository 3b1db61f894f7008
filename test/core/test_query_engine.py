"""The 3D query engine on synthetic Gaussian scenes with a deterministic fake text encoder."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from ccl_lgs_ros.config import QueryConfig
from ccl_lgs_ros.geometry import matrix_to_quat_xyzw, quats_to_rotmats
from ccl_lgs_ros.query.engine import LevelCodes, QueryEngine, QueryError, SemanticIndex, relevance_table
from ccl_lgs_ros.testing.blobs import blob_scene

GENERIC = ("object", "things", "stuff", "texture")


class FakeTextEncoder:
    """TextEncoder protocol: a deterministic random unit vector per phrase.

    Like CLIP, the generic negative phrases share a direction ``g`` with everything the
    codebook holds, so they are moderately similar to all prototypes, and an unrelated phrase
    is much less similar to a prototype than the negatives are.
    """

    def __init__(self, dim: int = 256) -> None:
        self._dim = dim
        self.calls = 0
        self.generic = self.vec("<generic>")

    @property
    def dim(self) -> int:
        return self._dim

    def vec(self, phrase: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(phrase.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self._dim)
        return v / np.linalg.norm(v)

    def encode_text(self, texts):
        self.calls += 1
        out = []
        for t in texts:
            v = self.generic + 0.3 * self.vec(t) if t in GENERIC else self.vec(t)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)

    def spec(self) -> dict:
        return {"kind": "fake", "dim": self._dim}

    def prototype(self, label: str) -> np.ndarray:
        """What a mask feature of ``label`` looks like: the label plus the shared direction."""
        v = self.vec(label) + 0.6 * self.generic
        return v / np.linalg.norm(v)


LABELS = ["mug", "table", "plant", "floor"]


@pytest.fixture
def encoder() -> FakeTextEncoder:
    return FakeTextEncoder()


def codebook(enc: FakeTextEncoder) -> np.ndarray:
    return np.stack([enc.prototype(lbl) for lbl in LABELS]).astype(np.float32)


def cfg(**kw) -> QueryConfig:
    base = {"cluster_eps": 0.05, "cluster_min_points": 5, "min_instance_gaussians": 20, "point_spacing": 0.02}
    base.update(kw)
    return QueryConfig(**base)


def two_mugs_scene(n: int = 6000, seed: int = 0):
    # Two mugs 1 m apart, a plant; codes index LABELS.
    centers = np.array([[0.0, 0.0, 0.1], [1.0, 0.0, 0.1], [0.5, 0.8, 0.1]])
    return blob_scene(n, centers, np.array([0, 0, 2]), floor_code=3, seed=seed), centers


def test_relevance_lookup_matches_direct_per_gaussian_computation(encoder):
    rng = np.random.default_rng(1)
    n, nc = 300, len(LABELS)
    probs = rng.random((n, nc)).astype(np.float16)
    cb = codebook(encoder) + 0.05 * rng.standard_normal((nc, encoder.dim)).astype(np.float32)
    levels = {"wp": LevelCodes.from_probs(probs, cb), "sp": LevelCodes.from_probs(probs[:, ::-1].copy(), cb)}
    index = SemanticIndex(
        rng.random((n, 3)), np.tile([1, 0, 0, 0], (n, 1)), np.full((n, 3), 0.01), np.ones(n), rng.random((n, 3)), levels
    )
    engine = QueryEngine(index, encoder, cfg())
    rel = engine.relevance("mug", negatives=["cup"])
    negs = encoder.encode_text([*GENERIC, "cup"])
    pos = encoder.encode_text(["mug"])[0]
    for level, p in (("wp", probs), ("sp", probs[:, ::-1])):
        for i in range(n):
            proto = cb[int(np.argmax(p[i]))].astype(np.float64)
            proto /= np.linalg.norm(proto)
            direct = min(1.0 / (1.0 + math.exp(-10.0 * (proto @ pos - proto @ neg))) for neg in negs)
            assert rel[level][i] == pytest.approx(direct, abs=1e-5)
    # The table itself is the same formula.
    table = relevance_table(levels["wp"].codebook, pos, negs, 10.0)
    assert np.allclose(rel["wp"], table[levels["wp"].codes])


def test_two_separated_objects_with_one_label_are_two_instances(encoder):
    scene, centers = two_mugs_scene()
    engine = QueryEngine(scene.index(codebook(encoder)), encoder, cfg())
    res = engine.query("mug")
    assert res.found and len(res.instances) == 2
    got = sorted(res.instances, key=lambda inst: inst.centroid[0])
    for inst, obj in zip(got, (0, 1)):
        # Every Gaussian of the instance belongs to that mug, and the mug is complete.
        assert set(scene.object_id[inst.gaussian_ids].tolist()) == {obj}
        assert inst.num_gaussians == int((scene.object_id == obj).sum())
        assert np.linalg.norm(inst.centroid - centers[obj]) < 0.01
        assert inst.points.shape[0] > 50 and inst.box.extent.max() == pytest.approx(0.2, abs=0.04)
        assert inst.relevance.shape == (inst.num_gaussians,) and (inst.relevance > 0.5).all()
    one = engine.query("plant")
    assert one.found and len(one.instances) == 1
    assert engine.query("mug", max_instances=1).instances[0].num_gaussians > 0
    assert len(engine.query("mug", max_instances=1).instances) == 1


def test_objects_closer_than_the_gap_are_merged_and_split_with_smaller_eps(encoder):
    centers = np.array([[0.0, 0.0, 0.1], [0.3, 0.0, 0.1]])  # 0.1 m gap between the spheres
    scene = blob_scene(4000, centers, np.array([0, 0]), floor_code=3)
    merged = QueryEngine(scene.index(codebook(encoder)), encoder, cfg(cluster_eps=0.2)).query("mug")
    split = QueryEngine(scene.index(codebook(encoder)), encoder, cfg(cluster_eps=0.025)).query("mug")
    assert len(merged.instances) == 1 and len(split.instances) == 2


def test_world_frame_round_trip(encoder):
    world_scene, centers = two_mugs_scene()
    # A normalised training frame: scene = s R^T (world - t); the index maps it back.
    angle = 0.7
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    R = R @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
    s, t = 2.5, np.array([3.0, -1.0, 0.5])
    world_from_scene = np.eye(4)
    world_from_scene[:3, :3] = s * R
    world_from_scene[:3, 3] = t
    means_scene = (world_scene.means - t) @ R / s
    rot_world = quats_to_rotmats(world_scene.quats)
    rot_scene = np.einsum("ji,njk->nik", R, rot_world)
    q_scene = np.array([matrix_to_quat_xyzw(r) for r in rot_scene])[:, [3, 0, 1, 2]]
    levels = {"wp": LevelCodes(world_scene.codes, np.full(len(world_scene.codes), 255), codebook(encoder))}
    index = SemanticIndex.from_scene_arrays(
        means_scene,
        q_scene,
        world_scene.scales / s,
        world_scene.opacities,
        world_scene.colors,
        levels,
        world_from_scene,
        frame_id="map",
    )
    assert np.allclose(index.means, world_scene.means, atol=1e-5)
    assert np.allclose(index.scales, world_scene.scales, atol=1e-6)
    assert np.allclose(quats_to_rotmats(index.quats), rot_world, atol=1e-5)
    res = QueryEngine(index, encoder, cfg()).query("mug")
    assert res.frame_id == "map" and len(res.instances) == 2
    got = sorted(res.instances, key=lambda inst: inst.centroid[0])
    assert np.allclose([g.centroid for g in got], centers[:2], atol=0.01)
    for inst in got:
        assert np.all(inst.points.min(axis=0) > inst.centroid - 0.15)
        assert np.all(inst.points.max(axis=0) < inst.centroid + 0.15)
    with pytest.raises(ValueError):
        SemanticIndex.from_scene_arrays(
            means_scene,
            q_scene,
            world_scene.scales,
            world_scene.opacities,
            world_scene.colors,
            levels,
            np.diag([1.0, 2.0, 1.0, 1.0]),
        )


def test_empty_scene(encoder):
    levels = {"wp": LevelCodes(np.zeros(0, np.uint8), np.zeros(0, np.uint8), codebook(encoder))}
    index = SemanticIndex(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)), levels)
    res = QueryEngine(index, encoder, cfg()).query("mug")
    assert not res.found and res.instances == [] and res.best_score == 0.0
    assert res.to_json()["found"] is False


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        ("", {}, "empty"),
        ("   \t ", {}, "empty"),
        ("x" * 300, {}, "at most"),
        ("mug\x00", {}, "control"),
        ("red\nmug", {}, "control"),
        ("mug", {"threshold": float("nan")}, "threshold"),
        ("mug", {"threshold": -0.1}, "threshold"),
        ("mug", {"threshold": 1.5}, "threshold"),
        ("mug", {"point_spacing": -1.0}, "point_spacing"),
        ("mug", {"max_instances": -1}, "max_instances"),
        ("mug", {"negatives": [""]}, "negative"),
        (None, {}, "string"),
    ],
)
def test_bad_input_is_an_explicit_error(encoder, text, kwargs, match):
    scene, _ = two_mugs_scene(2000)
    engine = QueryEngine(scene.index(codebook(encoder)), encoder, cfg())
    with pytest.raises(QueryError, match=match):
        engine.query(text, **kwargs)


def test_unknown_words_and_all_negative_query_find_nothing(encoder):
    scene, _ = two_mugs_scene(3000)
    engine = QueryEngine(scene.index(codebook(encoder)), encoder, cfg())
    unknown = engine.query("zorblax quintessential")
    assert not unknown.found and unknown.instances == [] and 0.0 <= unknown.best_score < 0.5
    for phrase in ("object", "  Object "):
        neg = engine.query(phrase)
        assert not neg.found and "negative" in neg.message
    # A user negative that names the target removes it too.
    assert not engine.query("mug", negatives=["mug"]).found
    # Unicode text is valid.
    assert not engine.query("tasse à café").found


def test_floaters_low_opacity_and_huge_gaussians_are_ignored(encoder):
    scene, _ = two_mugs_scene(4000)
    n = scene.means.shape[0]
    rng = np.random.default_rng(3)
    # Isolated "mug" Gaussians (fewer than cluster_min_points) far from everything,
    # one huge one and a transparent one on a mug.
    extra_means = np.concatenate([rng.random((3, 3)) * 0.1 + [5.0, 5.0, 1.0], [[0.5, 0.0, 0.1]], [[1.0, 0.0, 0.1]]])
    extra_scales = np.concatenate([np.full((3, 3), 0.005), [[3.0, 3.0, 3.0]], [[0.01, 0.01, 0.01]]])
    means = np.concatenate([scene.means, extra_means])
    scales = np.concatenate([scene.scales, extra_scales])
    opac = np.concatenate([scene.opacities, np.full(4, 0.9), [0.01]])
    codes = np.concatenate([scene.codes, np.zeros(5, np.int64)])
    quats = np.concatenate([scene.quats, np.tile([1.0, 0, 0, 0], (5, 1))])
    colors = np.concatenate([scene.colors, np.full((5, 3), 0.5)])
    levels = {"wp": LevelCodes(codes, np.full(n + 5, 255), codebook(encoder))}
    engine = QueryEngine(SemanticIndex(means, quats, scales, opac, colors, levels), encoder, cfg())
    res = engine.query("mug")
    chosen = np.concatenate([inst.gaussian_ids for inst in res.instances])
    assert len(res.instances) == 2 and not np.isin(np.arange(n, n + 5), chosen).any()
    assert not engine.eligible[n:].any()


def test_query_many_encodes_once_and_caches(encoder):
    scene, _ = two_mugs_scene(3000)
    engine = QueryEngine(scene.index(codebook(encoder)), encoder, cfg())
    results = engine.query_many(["mug", "plant", "floor"])
    assert [len(r.instances) for r in results] == [2, 1, 1]
    assert encoder.calls == 1
    engine.query("mug")
    assert encoder.calls == 1  # cached
    with pytest.raises(QueryError):
        engine.query_many(["mug", ""])


def test_level_modes_and_best_level(encoder):
    scene, _ = two_mugs_scene(3000)
    cb = codebook(encoder)
    # "sp" says every object Gaussian is a plant: "mug" must come from "wp", "plant" from "sp".
    sp_codes = np.where(scene.object_id >= 0, 2, 3)
    levels = {
        "sp": LevelCodes(sp_codes, np.full(len(sp_codes), 255), cb),
        "wp": LevelCodes(scene.codes, np.full(len(sp_codes), 255), cb),
    }
    index = SemanticIndex(scene.means, scene.quats, scene.scales, scene.opacities, scene.colors, levels)
    best = QueryEngine(index, encoder, cfg(level_mode="best"))
    assert best.query("mug").level == "wp" and len(best.query("mug").instances) == 2
    union = QueryEngine(index, encoder, cfg(level_mode="max")).query("plant")
    assert union.level == "max" and len(union.instances) == 3


def test_dbscan_agrees_with_voxel_clustering(encoder):
    scene, _ = two_mugs_scene(3000)
    index = scene.index(codebook(encoder))
    a = QueryEngine(index, encoder, cfg()).query("mug", point_spacing=0.0)
    b = QueryEngine(index, encoder, cfg(cluster_method="dbscan")).query("mug", point_spacing=0.0)
    sets_a = sorted(tuple(sorted(i.gaussian_ids.tolist())) for i in a.instances)
    sets_b = sorted(tuple(sorted(i.gaussian_ids.tolist())) for i in b.instances)
    assert sets_a == sets_b and len(sets_a) == 2
    assert a.instances[0].points.shape[0] == 0  # spacing 0: no cloud


def test_point_spacing_and_json(encoder):
    scene, _ = two_mugs_scene(3000)
    engine = QueryEngine(scene.index(codebook(encoder)), encoder, cfg())
    fine = engine.query("plant", point_spacing=0.005).instances[0]
    coarse = engine.query("plant", point_spacing=0.04).instances[0]
    assert fine.points.shape[0] > 3 * coarse.points.shape[0]
    lean = engine.query("plant", include_gaussians=False).instances[0]
    assert lean.means.shape == (0, 3) and lean.num_gaussians == fine.num_gaussians
    data = engine.query("mug").to_json()
    assert data["found"] and len(data["instances"]) == 2
    assert {"score", "centroid", "box", "num_points", "num_gaussians"} <= set(data["instances"][0])
    json.dumps(data)


def test_index_save_load_round_trip(encoder, tmp_path):
    scene, _ = two_mugs_scene(2000)
    index = scene.index(codebook(encoder), frame_id="odom")
    index.save(tmp_path / "idx.npz")
    loaded = SemanticIndex.load(tmp_path / "idx.npz")
    assert loaded.frame_id == "odom" and np.array_equal(loaded.levels["wp"].codes, index.levels["wp"].codes)
    assert loaded.levels["wp"].codes.dtype == np.uint8 and index.semantic_bytes_per_gaussian() == 2.0
    r1 = QueryEngine(index, encoder, cfg()).query("mug").to_json()
    r2 = QueryEngine(loaded, encoder, cfg()).query("mug").to_json()
    assert [i["num_gaussians"] for i in r1["instances"]] == [i["num_gaussians"] for i in r2["instances"]]


def mugs_with_big_gaussians(enc: FakeTextEncoder, seed: int = 0):
    """Two mugs whose every 20th Gaussian is a big round blob (scale 3.5 cm, six times the
    others), as a short training leaves them: their 2-sigma surface samples reach 7 cm out."""
    scene, centers = two_mugs_scene(6000, seed=seed)
    scales = scene.scales.copy()
    big = np.flatnonzero(scene.object_id >= 0)[::20]
    scales[big] = 0.035
    levels = {"wp": LevelCodes(scene.codes, np.full(scene.codes.shape[0], 230, np.uint8), codebook(enc))}
    index = SemanticIndex(scene.means, scene.quats, scales, scene.opacities, scene.colors, levels)
    return index, scene, centers


def uncached(**kw) -> QueryConfig:
    return cfg(cloud_cache_mb=0.0, **kw)


def per_gaussian_path(engine: QueryEngine) -> QueryEngine:
    engine._fast_path = lambda: False  # type: ignore[method-assign]
    return engine


@pytest.mark.parametrize("path", ["units-cached", "units-uncached", "per-gaussian"])
def test_cloud_is_clipped_to_the_centres_box(encoder, path):
    index, scene, centers = mugs_with_big_gaussians(encoder)

    def engine(**kw):
        make = uncached if path != "units-cached" else cfg
        e = QueryEngine(index, encoder, make(**kw))
        return per_gaussian_path(e) if path == "per-gaussian" else e

    on, off = engine().query("mug"), engine(clip_cloud=False).query("mug")
    assert len(on.instances) == len(off.instances) == 2
    for a, b in zip(on.instances, off.instances):
        # Gaussians, centroid and boxes come from the centres and do not change.
        np.testing.assert_array_equal(a.gaussian_ids, b.gaussian_ids)
        np.testing.assert_array_equal(a.centroid, b.centroid)
        np.testing.assert_array_equal(a.aabb_min, b.aabb_min)
        np.testing.assert_array_equal(a.aabb_max, b.aabb_max)
        np.testing.assert_array_equal(a.box.extent, b.box.extent)
        # The mug: a 0.1 m sphere; its Gaussians are 5.7 mm discs except the big ones.
        obj = int(np.argmin(np.linalg.norm(centers - a.centroid, axis=1)))
        true_lo, true_hi = centers[obj] - 0.1, centers[obj] + 0.1
        margin = 1.0 * 0.6 * np.sqrt(4 * np.pi * 0.01 / (scene.object_id == obj).sum())  # typical radius
        assert np.all(a.points >= a.aabb_min - margin - 1e-6) and np.all(a.points <= a.aabb_max + margin + 1e-6)
        # Without clipping the big Gaussians' tails stick out several centimetres.
        assert (b.points.min(axis=0) < true_lo - 0.03).any() or (b.points.max(axis=0) > true_hi + 0.03).any()
        # With it the cloud's box is the object's within a Gaussian radius (plus sampling slack).
        np.testing.assert_allclose(a.points.min(axis=0), true_lo, atol=0.01)
        np.testing.assert_allclose(a.points.max(axis=0), true_hi, atol=0.01)
        # Points off the sphere's surface (by 2 cm) are fewer; nearly all the points on it stay
        # (those within a Gaussian radius of the outermost centres).
        off_a, off_b = (np.abs(np.linalg.norm(p - centers[obj], axis=1) - 0.1) > 0.02 for p in (a.points, b.points))
        assert off_a.mean() < 0.75 * off_b.mean()
        assert (~off_a).sum() > 0.85 * (~off_b).sum()
        assert a.point_colors.shape == a.points.shape
    # A margin no point reaches: exactly the unclipped cloud (the setting off is the old cloud).
    wide = engine(clip_cloud_margin=1e4).query("mug")
    for a, b in zip(wide.instances, off.instances):
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.point_colors, b.point_colors)


def test_clipped_clouds_agree_between_the_engine_paths(encoder):
    index, _, _ = mugs_with_big_gaussians(encoder, seed=2)
    fast = QueryEngine(index, encoder, uncached())
    slow = per_gaussian_path(QueryEngine(index, encoder, uncached()))
    a, b = fast.query("mug"), slow.query("mug")
    pairs = zip(sorted(a.instances, key=lambda i: i.centroid[0]), sorted(b.instances, key=lambda i: i.centroid[0]))
    for x, y in pairs:
        # Same Gaussians, same box; the clouds are samples of the same Gaussians (drawn in a
        # different order), clipped to the same box.
        np.testing.assert_array_equal(np.sort(x.gaussian_ids), np.sort(y.gaussian_ids))
        np.testing.assert_array_equal(x.aabb_min, y.aabb_min)
        np.testing.assert_array_equal(x.aabb_max, y.aabb_max)
        np.testing.assert_allclose(x.points.min(axis=0), y.points.min(axis=0), atol=0.006)
        np.testing.assert_allclose(x.points.max(axis=0), y.points.max(axis=0), atol=0.006)
        assert abs(x.points.shape[0] - y.points.shape[0]) <= 0.1 * y.points.shape[0]


def test_typical_radius_and_clip_to_box():
    from ccl_lgs_ros.query.shapes import clip_to_box, typical_radius

    # The middle axis whatever the order of the columns, a median (one huge Gaussian changes nothing).
    scales = np.array([[0.001, 0.01, 0.02], [0.02, 0.001, 0.01], [0.01, 0.02, 0.001], [0.5, 0.4, 0.3]])
    assert typical_radius(scales) == pytest.approx(0.01)
    pts = np.array([[0.0, 0.0, 0.0], [1.05, 0.5, 0.5], [1.2, 0.5, 0.5], [0.5, -0.2, 0.5]], np.float32)
    cols = np.arange(12, dtype=np.float32).reshape(4, 3)
    p, c = clip_to_box(pts, cols, np.zeros(3), np.ones(3), 0.1)
    np.testing.assert_array_equal(p, pts[:2])
    np.testing.assert_array_equal(c, cols[:2])
    empty = np.zeros((0, 3), np.float32)
    assert clip_to_box(empty, empty, np.zeros(3), np.ones(3), 0.1)[0].shape == (0, 3)
