"""Contrastive codebook learning: losses against hand-computed values, training behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ccl_lgs_ros.priors.types import FramePriors, LevelPriors
from ccl_lgs_ros.semantics.codebook import (
    assign_codes,
    codebook_losses,
    index_map_from_codes,
    kmeanspp_init,
    train_codebook,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny tensors: a second intra-op thread only adds synchronisation (on a loaded machine, a lot).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _unit(*v: float) -> list[float]:
    a = np.asarray(v, dtype=np.float64)
    return (a / np.linalg.norm(a)).tolist()


def test_losses_match_hand_computation() -> None:
    # Codebook in 2D: T0 = x, T1 = (cos 30deg, sin 30deg), T2 = y.
    c30, s30 = math.cos(math.radians(30)), math.sin(math.radians(30))
    codebook = torch.tensor([[1.0, 0.0], [c30, s30], [0.0, 2.0]])  # T2 unnormalised on purpose
    feats = torch.tensor(
        [
            _unit(1.0, 0.1),  # -> T0
            _unit(0.8, 0.5),  # -> T1
            _unit(0.1, 1.0),  # -> T2
            _unit(1.0, -0.2),  # -> T0
        ]
    )
    labels = torch.tensor([3, 3, 5, -1])
    out = codebook_losses(feats, labels, codebook, lambda_pull=0.25, lambda_push=0.25, margin=0.7)

    protos = np.array([[1, 0], [c30, s30], [0, 1]])
    f = feats.numpy()
    best = [0, 1, 2, 0]
    l_max = np.mean([1 - f[i] @ protos[best[i]] for i in range(4)])
    # Pull pairs: (0,1) and (1,0): 1 - cos(T0, T1) = 1 - cos30.
    l_pull = 1 - c30
    # Push pairs (ordered): (0,2),(2,0): cos(T0,T2)=0 -> 0; (1,2),(2,1): cos(T1,T2)=0.5 -> relu(-0.2)=0.
    l_push = 0.0
    assert out.max.item() == pytest.approx(l_max, abs=1e-6)
    assert out.pull.item() == pytest.approx(l_pull, abs=1e-6)
    assert out.push.item() == pytest.approx(l_push, abs=1e-6)
    assert out.total.item() == pytest.approx(l_max + 0.25 * l_pull + 0.25 * l_push, abs=1e-6)


def test_push_is_active_above_margin_and_has_gradient() -> None:
    # Two prototypes 20 degrees apart (cos = 0.9397 > 0.7), two different labels.
    a = math.radians(20)
    codebook = torch.tensor([[1.0, 0.0], [math.cos(a), math.sin(a)]], requires_grad=True)
    feats = torch.tensor([[1.0, 0.0], [math.cos(a), math.sin(a)]])
    labels = torch.tensor([0, 1])
    out = codebook_losses(feats, labels, codebook, lambda_pull=0.0, lambda_push=1.0, margin=0.7)
    assert out.push.item() == pytest.approx(math.cos(a) - 0.7, abs=1e-6)
    assert out.pull.item() == 0.0
    out.total.backward()
    # Pushing apart rotates T1 away from T0 (positive y direction gradient is negative).
    assert codebook.grad[1, 1].item() < 0


def test_unlabelled_masks_take_no_pairs_and_pair_mask() -> None:
    codebook = torch.eye(3)
    feats = torch.eye(3)
    labels = torch.tensor([-1, -1, 2])
    out = codebook_losses(feats, labels, codebook)
    assert out.pull.item() == 0.0 and out.push.item() == 0.0
    # Same label, but the only pair is excluded by the pair mask.
    labels = torch.tensor([1, 1, -1])
    pm = torch.ones(3, 3, dtype=torch.bool)
    pm[0, 1] = pm[1, 0] = False
    assert codebook_losses(feats, labels, codebook, pair_mask=pm).pull.item() == 0.0
    assert codebook_losses(feats, labels, codebook).pull.item() == pytest.approx(1.0)


def test_index_map_from_codes() -> None:
    masks = np.array([[-1, 0], [1, 1]])
    codes = np.array([7, 3])
    np.testing.assert_array_equal(index_map_from_codes(masks, codes), [[-1, 7], [3, 3]])


def test_kmeanspp_covers_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:, :4].astype(np.float32)
    feats = np.repeat(centres, 20, axis=0) + rng.normal(0, 0.01, (80, 4)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    protos = kmeanspp_init(feats, 4, rng)
    assert sorted(assign_codes(centres, protos).tolist()) == [0, 1, 2, 3]


def _toy_frames(n_frames: int, n_obj: int, dim: int, noise: float, seed: int) -> list[FramePriors]:
    """Objects with a CLIP direction each, seen in every frame with per-view noise."""
    rng = np.random.default_rng(seed)
    obj = rng.normal(size=(n_obj, dim))
    obj /= np.linalg.norm(obj, axis=1, keepdims=True)
    frames = []
    for _ in range(n_frames):
        f = obj + rng.normal(0, noise, obj.shape)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        masks = np.repeat(np.arange(n_obj, dtype=np.int32), 4).reshape(n_obj, 4)
        frames.append(FramePriors(levels={"sp": LevelPriors(masks, f.astype(np.float16), np.arange(n_obj))}))
    return frames


def _same_object_coherence(result, n_obj: int) -> float:
    """Mean cosine between the prototypes one object picks in different views."""
    codes = np.stack(result.mask_codes)  # [frames, objects]
    t = result.codebook
    return float(np.mean([(t[codes[:, k]] @ t[codes[:, k]].T).mean() for k in range(n_obj)]))


def test_training_reduces_loss_and_pull_binds_tracked_objects() -> None:
    frames = _toy_frames(n_frames=6, n_obj=5, dim=32, noise=0.25, seed=1)
    history = []
    full = train_codebook(
        frames,
        "sp",
        n_codes=8,
        iterations=150,
        lr=2e-2,
        seed=0,
        on_step=lambda s, losses: history.append(losses.max.item()),
    )
    assert full.codebook.shape == (8, 32)
    assert np.allclose(np.linalg.norm(full.codebook, axis=1), 1.0, atol=1e-5)
    assert np.mean(history[-10:]) < np.mean(history[:10])
    base = train_codebook(frames, "sp", n_codes=8, iterations=150, lr=2e-2, seed=0, lambda_pull=0.0, lambda_push=0.0)
    # View-dependent noise splits an object over several prototypes; pull makes those agree.
    assert _same_object_coherence(full, 5) > _same_object_coherence(base, 5) + 0.03
    codes = np.stack(full.mask_codes)
    majority = [np.bincount(codes[:, k]).argmax() for k in range(5)]
    assert len(set(majority)) == 5
    im = full.index_map(0, frames[0].levels["sp"].masks)
    assert im.shape == (5, 4) and set(np.unique(im)) <= set(range(8))


def test_missing_level_raises() -> None:
    with pytest.raises(ValueError):
        train_codebook([FramePriors()], "wp", n_codes=4, iterations=1)


def test_pull_push_correct_near_tie_clip_misreads(tmp_path) -> None:
    """The point of CCL on simulated priors: when CLIP misreads an object in some views as a
    near tie with its confuser (``sim_misread_keep`` 0.8) while SAM 2 keeps tracking it, full CCL
    pulls the misread views' prototypes toward the object's other views, so that more masks read
    as their own object than with the codebook alone. (Misreads that look almost entirely like
    the confuser, keep 0.35, lie so close to it that a prototype reading as their own label loses
    them to the confuser's; see docs/BENCHMARKS.md.)"""
    from ccl_lgs_ros.config import Config
    from ccl_lgs_ros.eval.priors_metrics import readout_accuracy
    from ccl_lgs_ros.priors.simulator import SimulatorBackend
    from ccl_lgs_ros.testing.synth import generate_scene

    capture = generate_scene(tmp_path / "scene", seed=2, width=96, height=72, num_frames=24)
    cfg = Config()
    cfg.priors.backend = "simulator"
    cfg.priors.sim_confusion = 0.5
    cfg.priors.sim_misread_keep = 0.8
    backend = SimulatorBackend(cfg)
    levels = ("sp", "wp")
    priors = [backend.frame_priors(capture, i, levels) for i in range(len(capture.frames))]
    backend.associate(capture, priors, levels)
    names = sorted({inst["label"] for inst in capture.instances if not inst.get("background")})
    text = dict(zip(names, backend.text_encoder().encode_text(names)))
    gain = []
    for level in levels:
        raw = readout_accuracy(capture, priors, level, text)
        assert raw < 0.9  # the misreads are there
        acc = {}
        for name, weight in (("full", 0.25), ("codebook only", 0.0)):
            cb = train_codebook(priors, level, 32, 300, lambda_pull=weight, lambda_push=weight, seed=0)
            acc[name] = readout_accuracy(capture, priors, level, text, [cb.codebook[c] for c in cb.mask_codes])
        gain.append(acc["full"] - acc["codebook only"])
    assert np.mean(gain) > 0.05
