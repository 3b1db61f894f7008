"""The priors simulator: text space, masks vs ground truth, features, association errors."""

from __future__ import annotations

import numpy as np
import pytest

from ccl_lgs_ros.capture.format import Capture
from ccl_lgs_ros.config import Config
from ccl_lgs_ros.eval.priors_metrics import identity_switch_rate, mask_inconsistency, readout_accuracy
from ccl_lgs_ros.priors.simulator import ALL_LEVELS, SimulatedTextEncoder, SimulatorBackend, mask_objects
from ccl_lgs_ros.priors.stage import build_text_encoder
from ccl_lgs_ros.priors.types import PriorsBackend
from ccl_lgs_ros.testing.synth import generate_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    # 24 frames: enough tracked transitions for identity-error rates to be measured reliably.
    return generate_scene(tmp_path_factory.mktemp("sim") / "scene", seed=2, width=96, height=72, num_frames=24)


def _run(capture: Capture, corruption: float, levels=("sp", "wp"), **kw) -> list:
    cfg = Config()
    cfg.priors.backend = "simulator"
    cfg.priors.sim_corruption = corruption
    for key, value in kw.items():
        setattr(cfg.priors, key, value)
    backend = SimulatorBackend(cfg)
    priors = [backend.frame_priors(capture, i, levels) for i in range(len(capture.frames))]
    backend.associate(capture, priors, levels)
    return priors


def test_text_encoder_space() -> None:
    enc = SimulatedTextEncoder(dim=512, seed=0)
    phrases = ["red mug", "The red mug", "mug", "blue box", "object", "things", "zorblax", "RED MUG!"]
    q = enc.encode_text(phrases)
    assert q.dtype == np.float32 and q.shape == (8, 512)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    sem = np.stack([enc.semantic(p) for p in phrases])
    sim = sem @ sem.T
    assert sim[0, 1] > 0.999 and sim[0, 7] > 0.999  # case, punctuation and articles ignored
    assert 0.3 < sim[0, 2] < 0.8  # shares a word: partly similar
    for j in (3, 4, 5, 6):
        assert abs(sim[0, j]) < 0.3  # unrelated phrases and unknown words
    # Modality gap as in CLIP: an image feature of a red mug is closest to "red mug", at a
    # CLIP-like cosine, and every other phrase (negatives included) sits well below it.
    image = enc.to_image_space(enc.semantic("red mug"))
    cos = q @ image
    assert 0.35 < cos[0] < 0.6
    assert cos[2] < cos[0] - 0.1  # "mug": partial
    for j in (3, 4, 5, 6):
        assert cos[j] < cos[2] and 0.05 < cos[j] < 0.3
    # LERF relevance against a negative does not saturate: the ordering survives softmax(10 x).
    rel = 1.0 / (1.0 + np.exp(-10.0 * (cos - cos[4])))
    assert rel[0] > rel[2] + 0.1 > rel[3] + 0.1
    # Deterministic and rebuildable from its spec; another seed is another space.
    again = build_text_encoder(enc.spec())
    np.testing.assert_array_equal(again.encode_text(["red mug"]), q[:1])
    other = SimulatedTextEncoder(dim=512, seed=1)
    assert float(other.semantic("red mug") @ sem[0]) < 0.3
    assert enc.encode_text([]).shape == (0, 512)


def test_implements_backend_protocol() -> None:
    assert isinstance(SimulatorBackend(Config()), PriorsBackend)


def test_no_corruption_masks_equal_instance_maps(scene: Capture) -> None:
    priors = _run(scene, 0.0, levels=ALL_LEVELS, sim_feature_noise=0.0)
    enc = SimulatorBackend(Config()).text_encoder()
    labels = {inst["id"]: inst["label"] for inst in scene.instances}
    for i, fp in enumerate(priors):
        ids = scene.load_instances(i)
        for level in ALL_LEVELS:
            lp = fp.levels[level]
            assert lp.masks.shape == ids.shape and lp.features.dtype == np.float16
            # A bijection between mask ids and GT ids (0 = background gets its own mask).
            pairs = np.unique(np.stack([lp.masks.ravel(), ids.ravel()]), axis=1)
            assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
            assert lp.masks.min() >= 0
            # Without noise, an object's feature is its label's direction in image space.
            dominant, iou = mask_objects(lp.masks, ids, len(lp.labels))
            np.testing.assert_allclose(iou, 1.0)
            for m, g in enumerate(dominant):
                if g in labels:
                    ref = enc.to_image_space(enc.semantic(labels[g]))
                    assert float(lp.features[m].astype(np.float32) @ ref) > 0.99
        # Perfect association: one consistent label per object across frames and levels.
    for level in ALL_LEVELS:
        obj_to_label: dict[int, int] = {}
        for i, fp in enumerate(priors):
            lp = fp.levels[level]
            dominant, _ = mask_objects(lp.masks, scene.load_instances(i), len(lp.labels))
            assert (lp.labels >= 0).all()
            for g, lab in zip(dominant.tolist(), lp.labels.tolist()):
                assert obj_to_label.setdefault(g, lab) == lab
        assert len(set(obj_to_label.values())) == len(obj_to_label)  # distinct objects, distinct labels
        assert identity_switch_rate(scene, priors, level) == 0.0
        assert mask_inconsistency(scene, priors, level) == 0.0


def test_background_masks_optional(scene: Capture) -> None:
    fp = _run(scene, 0.0, levels=("sp",), sim_background=False)[0]
    ids = scene.load_instances(0)
    assert ((fp.levels["sp"].masks == -1) == (ids == 0)).all()


def test_inconsistency_grows_with_corruption(scene: Capture) -> None:
    settings = (0.0, 0.3, 0.6, 1.0)
    masks_bad, switches, labelled = [], [], []
    for c in settings:
        priors = _run(scene, c)
        masks_bad.append(sum(mask_inconsistency(scene, priors, lv) for lv in ("sp", "wp")))
        switches.append(sum(identity_switch_rate(scene, priors, lv) for lv in ("sp", "wp")))
        labelled.append(np.mean([(fp.levels["sp"].labels >= 0).mean() for fp in priors]))
        for fp in priors:  # invariants hold whatever the corruption
            for lp in fp.levels.values():
                assert lp.masks.min() >= -1 and lp.masks.max() < len(lp.labels)
                assert set(np.unique(lp.masks[lp.masks >= 0])) == set(range(len(lp.labels)))
                norms = np.linalg.norm(lp.features.astype(np.float32), axis=1)
                np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    assert masks_bad[0] == 0.0 and switches[0] == 0.0 and labelled[0] == 1.0
    assert all(np.diff(masks_bad) > 0), masks_bad
    assert all(np.diff(switches) > 0), switches
    assert labelled[-1] < labelled[0]


def test_levels_differ_in_granularity(scene: Capture) -> None:
    """Sub-part masks split objects more (more masks); whole masks merge more (fewer)."""
    priors = _run(scene, 0.8, levels=("s", "w"))
    n_s = np.mean([len(fp.levels["s"].labels) for fp in priors])
    n_w = np.mean([len(fp.levels["w"].labels) for fp in priors])
    assert n_s > n_w


def test_impure_masks_mix_features(scene: Capture) -> None:
    """A mask covering two objects has a feature between their label embeddings."""
    enc = SimulatedTextEncoder(512, 0)
    labels = {inst["id"]: inst["label"] for inst in scene.instances}
    priors = _run(scene, 1.0, levels=("w",), sim_feature_noise=0.0)
    checked = 0
    for i, fp in enumerate(priors):
        lp = fp.levels["w"]
        ids = scene.load_instances(i)
        for m in range(len(lp.labels)):
            inside = ids[lp.masks == m]
            gts, counts = np.unique(inside, return_counts=True)
            big = counts >= 0.25 * inside.size  # objects making up a good share of the mask
            gts = gts[big]
            if len(gts) != 2 or 0 in gts or labels[gts[0]] == labels[gts[1]]:
                continue
            # Compared without the shared image direction: a mixed mask resembles both objects.
            feat = lp.features[m].astype(np.float64)
            sims = np.stack([enc.to_image_space(enc.semantic(labels[g])) for g in gts]) @ feat
            pure = enc.to_image_space(enc.semantic(labels[gts[0]])) @ enc.to_image_space(enc.semantic(labels[gts[1]]))
            assert (sims > pure + 0.02).all() and (sims < 0.99).all()
            checked += 1
    assert checked > 0


def test_deterministic(scene: Capture) -> None:
    a = _run(scene, 0.5)
    b = _run(scene, 0.5)
    for fa, fb in zip(a, b):
        for level in ("sp", "wp"):
            np.testing.assert_array_equal(fa.levels[level].masks, fb.levels[level].masks)
            np.testing.assert_array_equal(fa.levels[level].features, fb.levels[level].features)
            np.testing.assert_array_equal(fa.levels[level].labels, fb.levels[level].labels)


def test_needs_ground_truth(tmp_path) -> None:
    cap = Capture(root=tmp_path)
    with pytest.raises(ValueError, match="ground truth"):
        SimulatorBackend(Config()).frame_priors(cap, 0, ("sp",))


def test_misreads(scene: Capture) -> None:
    """``sim_confusion``: CLIP reads an object as its confuser in some views; the views cluster by
    direction, both levels agree, and more confusion misreads a superset of the views."""
    enc = SimulatedTextEncoder(512, 0)
    labels = {inst["id"]: inst["label"] for inst in scene.instances}
    shapes = {inst["label"]: inst.get("shape") for inst in scene.instances}
    backend = SimulatorBackend(Config())
    confusers = backend._confusers(scene)
    for a, b in confusers.items():
        assert a != b
        same_shape = [o for o in confusers if o != a and shapes[o] == shapes[a]]
        if same_shape:  # a can is mistaken for a cup before it is mistaken for a ball
            assert shapes[b] == shapes[a]

    def misread_views(confusion: float) -> dict[tuple[int, str], set[int]]:
        priors = _run(scene, 0.0, sim_feature_noise=0.0, sim_confusion=confusion)
        out: dict[tuple[int, str], set[int]] = {}
        for i, fp in enumerate(priors):
            ids = scene.load_instances(i)
            for level in ("sp", "wp"):
                lp = fp.levels[level]
                dominant, _ = mask_objects(lp.masks, ids, len(lp.labels))
                for m, g in enumerate(dominant.tolist()):
                    if g not in labels or labels[g] not in confusers:
                        continue
                    feat = lp.features[m].astype(np.float64)
                    own = float(feat @ enc.to_image_space(enc.semantic(labels[g])))
                    other = float(feat @ enc.to_image_space(enc.semantic(confusers[labels[g]])))
                    if own < 0.99:  # misread: now closer to the confuser than to itself
                        assert other > own
                        out.setdefault((g, level), set()).add(i)
        return out

    assert misread_views(0.0) == {}
    low, high = misread_views(0.3), misread_views(0.8)
    n_low, n_high = sum(map(len, low.values())), sum(map(len, high.values()))
    n_obj_views = sum(1 for i in range(len(scene.frames)) for g in np.unique(scene.load_instances(i)) if g in labels)
    assert 0 < n_low < n_high < n_obj_views
    for key, views in low.items():
        assert views <= high[key]  # a superset at the stronger setting
    for (g, level), views in high.items():
        if level == "sp":
            assert views == high.get((g, "wp"), set())  # one draw per frame and object
    # Misreads follow the viewing direction: far more consecutive frames share the state of
    # their neighbour than independent draws at the same rate would give.
    runs = same = 0
    for (g, _level), views in high.items():
        seen = [i for i in range(len(scene.frames)) if g in scene.load_instances(i)]
        states = [i in views for i in seen]
        runs += len(states) - 1
        same += sum(a == b for a, b in zip(states, states[1:]))
    rate = n_high / max(1, 2 * n_obj_views)
    assert same / runs > 1.0 - 2.0 * rate * (1.0 - rate) + 0.1


def test_readout_accuracy_and_misread_strength(scene: Capture) -> None:
    """``readout_accuracy``: every mask reads right without misreads; misreads lower it by the
    same masks whatever ``sim_misread_keep`` is, and a higher keep leaves a nearer tie."""
    enc = SimulatedTextEncoder(512, 0)
    names = sorted({inst["label"] for inst in scene.instances if not inst.get("background")})
    text = dict(zip(names, enc.encode_text(names)))
    assert readout_accuracy(scene, _run(scene, 0.0, sim_feature_noise=0.0), "wp", text) == 1.0
    strong = _run(scene, 0.0, sim_feature_noise=0.0, sim_confusion=0.8, sim_misread_keep=0.35)
    tie = _run(scene, 0.0, sim_feature_noise=0.0, sim_confusion=0.8, sim_misread_keep=0.8)
    acc = readout_accuracy(scene, strong, "wp", text)
    assert 0.3 < acc < 1.0 and readout_accuracy(scene, tie, "wp", text) == acc
    # A mask's own vectors can be passed in: the features themselves give the same answer.
    assert readout_accuracy(scene, strong, "wp", text, [fp.levels["wp"].features for fp in strong]) == acc
    labels = {inst["id"]: inst["label"] for inst in scene.instances}
    confusers = SimulatorBackend(Config())._confusers(scene)
    margins = {}
    for name, priors in (("strong", strong), ("tie", tie)):
        gaps = []
        for i, fp in enumerate(priors):
            lp = fp.levels["wp"]
            dominant, _ = mask_objects(lp.masks, scene.load_instances(i), len(lp.labels))
            for m, g in enumerate(dominant.tolist()):
                if g in labels and labels[g] in confusers:
                    f = lp.features[m].astype(np.float32)
                    own, other = f @ text[labels[g]], f @ enc.encode_text([confusers[labels[g]]])[0]
                    if other > own:
                        gaps.append(other - own)
        margins[name] = float(np.mean(gaps))
    assert 0 < margins["tie"] < 0.5 * margins["strong"]


def test_objectness_brings_the_canonical_negatives_closer() -> None:
    """``sim_objectness``: generic phrases and every image feature share a direction, so LERF's
    relevance of an object's own label against "object", "things", ... stops saturating, while
    the label still beats the negatives and other labels; the spec carries it to query time."""
    from ccl_lgs_ros.relevance import lerf_relevance

    negatives = ["object", "things", "stuff", "texture"]
    rel = {}
    for g in (0.0, 0.6):
        enc = SimulatedTextEncoder(512, 0, objectness=g)
        image = enc.to_image_space(enc.semantic("red mug"))[None].astype(np.float32)
        q = enc.encode_text(["red mug", "blue box", *negatives])
        rel[g] = (lerf_relevance(image, q[0], q[2:], 10.0)[0], lerf_relevance(image, q[1], q[2:], 10.0)[0])
        assert float(image[0] @ q[0]) > float((q[1:] @ image[0]).max())  # the label still reads best
        assert build_text_encoder(enc.spec()).spec() == enc.spec()
        np.testing.assert_allclose(build_text_encoder(enc.spec()).encode_text(negatives), q[2:])
    assert rel[0.0][0] > 0.9 and 0.55 < rel[0.6][0] < 0.85  # no longer saturated
    assert rel[0.6][1] < rel[0.6][0] - 0.3  # another label stays far below
    # Non-generic phrases are untouched; a phrase with a generic word and another is not generic.
    a, b = SimulatedTextEncoder(512, 0), SimulatedTextEncoder(512, 0, objectness=0.6)
    np.testing.assert_array_equal(a.semantic("red object"), b.semantic("red object"))
    assert float(a.semantic("things") @ b.semantic("things")) < 0.9
    with pytest.raises(ValueError, match="objectness"):
        SimulatedTextEncoder(512, 0, objectness=1.0)
