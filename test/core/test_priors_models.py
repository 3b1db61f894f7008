"""The real priors backend on random-initialised REDUCED real models (segment_anything, sam2, open_clip).

The weights are random, so only shapes, invariants and plumbing are checked here; semantics are
tested with the simulator. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ccl_lgs_ros.capture.format import Capture, Frame, Intrinsics, write_image
from ccl_lgs_ros.config import Config
from ccl_lgs_ros.priors.association import VideoFrames, _frames_loader, associate_masks
from ccl_lgs_ros.priors.models import (
    CheckpointMismatchError,
    MissingCheckpointError,
    RealPriorsBackend,
    build_clip_text_encoder,
    build_random_sam,
    build_random_sam2_video,
    build_real_backend,
    load_clip,
    load_sam,
    load_sam2_video,
)
from ccl_lgs_ros.priors.sam_masks import MaskSettings, generate_level_masks
from ccl_lgs_ros.priors.types import FramePriors

H, W = 48, 64


# ------------------------------------------------------------------ checkpoints
def test_missing_sam_checkpoint_names_parameter_file_and_source(tmp_path):
    with pytest.raises(MissingCheckpointError) as err:
        load_sam("vit_h", "", "cpu")
    msg = str(err.value)
    assert "priors.sam_checkpoint" in msg and "sam_vit_h_4b8939.pth" in msg and "Segment Anything" in msg
    with pytest.raises(MissingCheckpointError, match="does not exist"):
        load_sam("vit_b", str(tmp_path / "nope.pth"), "cpu")


def test_missing_sam2_and_clip_checkpoints():
    with pytest.raises(MissingCheckpointError) as err:
        load_sam2_video("configs/sam2.1/sam2.1_hiera_l.yaml", "", "cpu")
    assert "priors.sam2_checkpoint" in str(err.value) and "sam2.1_hiera_large.pt" in str(err.value)
    with pytest.raises(MissingCheckpointError) as err:
        load_clip("ViT-B-16", "laion2b_s34b_b88k", "", "cpu")  # no download unless allowed
    assert "priors.clip_checkpoint" in str(err.value) and "open_clip_pytorch_model.bin" in str(err.value)
    with pytest.raises(MissingCheckpointError):
        build_real_backend(Config(), "cpu")  # the default config names no checkpoint


def test_clip_loads_a_checkpoint_file(tmp_path, clip):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.model.state_dict(), path)
    spec = {"kind": "open_clip", "model": "ViT-S-32", "pretrained": "", "checkpoint": str(path)}
    loaded = build_clip_text_encoder(spec, "cpu")  # the path a trained scene's query takes
    text = ["a red mug", "a blue box"]
    np.testing.assert_allclose(loaded.encode_text(text), clip.encode_text(text), atol=1e-5)
    assert loaded.spec() == spec


# ------------------------------------------------------------------ checkpoint / setting mismatches
# Random-weight checkpoints in the official layouts, written to tmp_path (never committed):
# SAM as a plain state dict, SAM 2 as {"model": state dict}, OpenCLIP as a plain state dict.


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and len(msg) < 600, msg  # one line, not PyTorch's load_state_dict dump
    return msg


@pytest.mark.slow
def test_sam_vit_b_checkpoint_detected_and_mismatch_named(tmp_path):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(build_random_sam("vit_b", "cpu", seed=1).state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_sam("vit_h", str(path), "cpu")  # the old default with a ViT-B file: named before loading
    msg = _one_line(err.value)
    assert "priors.sam_model_type=vit_b" in msg and "priors.sam_checkpoint" in msg
    model = load_sam("auto", str(path), "cpu")
    assert model.image_encoder.patch_embed.proj.weight.shape[0] == 768 and len(model.image_encoder.blocks) == 12
    ref = torch.load(path, weights_only=True)
    key = "mask_decoder.iou_prediction_head.layers.0.weight"
    assert torch.equal(model.state_dict()[key], ref[key])
    assert load_sam("vit_b", str(path), "cpu") is not None


def test_reduced_sam_checkpoint_loads_with_auto(tmp_path, sam):
    path = tmp_path / "sam_reduced.pth"
    torch.save(sam.state_dict(), path)
    loaded = load_sam("auto", str(path), "cpu")
    assert torch.equal(loaded.image_encoder.pos_embed, sam.image_encoder.pos_embed)
    with pytest.raises(CheckpointMismatchError, match="priors.sam_model_type=reduced"):
        load_sam("vit_b", str(path), "cpu")


@pytest.mark.slow
def test_sam2_hiera_tiny_checkpoint_detected_and_mismatch_named(tmp_path):
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    official = build_random_sam2_video("configs/sam2.1/sam2.1_hiera_t.yaml", "cpu", image_size=None, seed=2)
    torch.save({"model": official.state_dict()}, path)  # the layout of Meta's release files
    with pytest.raises(CheckpointMismatchError) as err:
        load_sam2_video("configs/sam2.1/sam2.1_hiera_l.yaml", str(path), "cpu")
    msg = _one_line(err.value)
    assert "priors.sam2_config=configs/sam2.1/sam2.1_hiera_t.yaml" in msg
    with pytest.raises(CheckpointMismatchError, match="sam2_hiera_t"):  # SAM 2.1 file, SAM 2 config
        load_sam2_video("configs/sam2/sam2_hiera_t.yaml", str(path), "cpu")
    with pytest.raises(CheckpointMismatchError, match="is not a Segment Anything checkpoint.*priors.sam2_checkpoint"):
        load_sam("auto", str(path), "cpu")  # the SAM 2 file given as SAM's
    predictor = load_sam2_video("auto", str(path), "cpu", image_size=256)
    assert predictor.image_size == 256
    key = "memory_attention.layers.0.self_attn.q_proj.weight"
    assert torch.equal(predictor.state_dict()[key], official.state_dict()[key])


def test_reduced_sam2_checkpoint_rebuilt_with_its_layers(tmp_path):
    reduced = build_random_sam2_video(
        device="cpu", image_size=128, seed=0, hydra_overrides=["++model.memory_attention.num_layers=1"]
    )
    path = tmp_path / "sam2_reduced.pt"
    torch.save({"model": reduced.state_dict()}, path)
    predictor = load_sam2_video("auto", str(path), "cpu", image_size=128)
    assert len(predictor.memory_attention.layers) == 1 and predictor.image_size == 128


def test_clip_checkpoint_of_another_architecture_named(tmp_path, clip):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.model.state_dict(), path)  # a ViT-S-32 file
    with pytest.raises(CheckpointMismatchError) as err:
        load_clip("ViT-B-16", "laion2b_s34b_b88k", str(path), "cpu")  # the default clip_model
    msg = _one_line(err.value)
    assert "priors.clip_model=ViT-S-32" in msg and "priors.clip_checkpoint" in msg


def test_unreadable_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="not a readable PyTorch checkpoint"):
        load_sam("auto", str(path), "cpu")


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def clip():
    return load_clip("ViT-S-32", "", "", "cpu", seed=0)


@pytest.fixture(scope="module")
def sam():
    return build_random_sam("reduced", "cpu", seed=0)


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Capture:
    root = tmp_path_factory.mktemp("cap")
    intr = Intrinsics(60.0, 60.0, W / 2, H / 2, W, H)
    frames = []
    for i in range(3):
        img = np.full((H, W, 3), 40, np.uint8)
        img[10:30, 8 + 3 * i : 28 + 3 * i] = (220, 30, 30)
        img[20:44, 36:60] = (30, 30, 220)
        write_image(root / f"images/{i:03d}.png", img)
        c2w = np.eye(4)
        c2w[0, 3] = 0.1 * i
        frames.append(Frame(f"images/{i:03d}.png", c2w, intr))
    cap = Capture(Path(root), frames)
    cap.save()
    return cap


def _cfg() -> Config:
    cfg = Config()
    p = cfg.priors
    # Random weights: no mask passes real quality thresholds, and NMS would leave ~1 mask.
    p.pred_iou_thresh, p.stability_score_thresh = 0.0, 0.0
    p.box_nms_thresh, p.overlap_thresh = 0.95, 0.95
    p.points_per_side, p.points_per_batch, p.min_mask_area = 6, 16, 4
    return cfg


@pytest.fixture(scope="module")
def backend(sam, clip) -> RealPriorsBackend:
    sam2 = build_random_sam2_video(
        device="cpu", image_size=128, seed=0, hydra_overrides=["++model.memory_attention.num_layers=1"]
    )
    return RealPriorsBackend(sam, sam2, clip, _cfg().priors, "cpu")


@pytest.fixture(scope="module")
def priors(backend, capture) -> list[FramePriors]:
    return [backend.frame_priors(capture, i, ["sp", "wp"]) for i in range(len(capture.frames))]


# ------------------------------------------------------------------ masks + features
def test_frame_priors_shapes_and_invariants(priors, clip):
    for fp in priors:
        assert set(fp.levels) == {"sp", "wp"}
        for lp in fp.levels.values():
            k = lp.features.shape[0]
            assert k > 0
            assert lp.masks.shape == (H, W) and lp.masks.dtype == np.int32
            assert lp.masks.min() >= -1 and lp.masks.max() == k - 1
            # non-overlapping by construction; every listed mask owns >= min_mask_area pixels
            counts = np.bincount(lp.masks[lp.masks >= 0].ravel(), minlength=k)
            assert (counts >= 4).all()
            assert lp.features.dtype == np.float16 and lp.features.shape[1] == clip.dim
            np.testing.assert_allclose(np.linalg.norm(lp.features.astype(np.float32), axis=1), 1.0, atol=2e-3)
            assert (lp.labels == -1).all() and lp.labels.shape == (k,)


def test_image_encoded_once_and_batching_invariant(sam, capture):
    from segment_anything import SamPredictor

    calls = []
    hook = sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        image = capture.load_image(0)
        results = []
        for batch in (7, 64):
            settings = MaskSettings(
                points_per_side=5,
                points_per_batch=batch,
                pred_iou_thresh=0.0,
                stability_score_thresh=0.0,
                box_nms_thresh=0.95,
                overlap_thresh=0.95,
                min_mask_area=4,
            )
            cands, levels = generate_level_masks(SamPredictor(sam), image, ("s", "p", "w", "sp"), settings)
            results.append((cands, levels))
    finally:
        hook.remove()
    assert len(calls) == 2  # one image embedding per frame, whatever the prompt batching
    (c1, l1), (c2, l2) = results
    present = set(c1.level.tolist())
    assert present <= {0, 1, 2} and len(present) >= 2  # three outputs per prompt, level kept
    for lv in ("s", "p", "w"):
        assert set(c1.level[l1[lv].candidate_index].tolist()) <= {"spw".index(lv)}
    assert set(c1.level[l1["sp"].candidate_index].tolist()) <= {0, 1}
    # Per-batch NMS may keep a different pool, but the level maps must agree closely.
    assert np.mean(l1["sp"].id_map >= 0) == pytest.approx(np.mean(l2["sp"].id_map >= 0), abs=0.2)


def test_text_encoder_space_matches_features(backend, priors):
    enc = backend.text_encoder()
    t = enc.encode_text(["red mug", "blue box", "table"])
    assert t.shape == (3, priors[0].levels["sp"].features.shape[1]) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert enc.spec()["kind"] == "open_clip"


def test_image_size_limits_mask_resolution(sam, clip, capture):
    cfg = _cfg()
    cfg.priors.image_size = 32
    be = RealPriorsBackend(sam, None, clip, cfg.priors, "cpu")
    fp = be.frame_priors(capture, 0, ["wp"])
    assert fp.levels["wp"].masks.shape == (24, 32)


# ------------------------------------------------------------------ association (real SAM 2 code path)
@pytest.mark.slow
@pytest.mark.parametrize("reseed", [False, True])
def test_association_labels(backend, capture, priors, reseed):
    backend.cfg.reseed = reseed
    work = [
        FramePriors({lv: type(lp)(lp.masks, lp.features, lp.labels.copy()) for lv, lp in fp.levels.items()})
        for fp in priors
    ]
    backend.associate(capture, work, ["sp"])
    stats = backend.association_stats["sp"]
    labels = [fp.levels["sp"].labels for fp in work]
    k0 = len(labels[0])
    assert (labels[0] == np.arange(k0)).all()  # the first frame seeds labels 0..K0-1
    for lab, fp, orig in zip(labels, work, priors):
        assert lab.dtype == np.int32 and lab.shape == (fp.levels["sp"].features.shape[0],)
        assert lab.min() >= -1 and lab.max() < stats.objects
        assert fp.levels["sp"].masks is orig.levels["sp"].masks  # only labels are touched
        assert (orig.levels["sp"].labels == -1).all()
    labelled = sum(int((lab >= 0).sum()) for lab in labels)
    assert stats.masks_labelled == labelled and stats.masks_total == sum(len(lab) for lab in labels)
    if reseed:
        assert stats.fraction_labelled == 1.0  # every mask eventually seeds or joins an object
    else:
        assert stats.objects == k0 and stats.passes == 1 and 0.0 < stats.fraction_labelled <= 1.0


def test_real_tracker_takes_seeds_in_later_frames_than_its_start(backend):
    """The carry pass seeds objects in later overlap frames and propagates from the window start:
    sam2's predictor conditions on those frames (the output there is the seed mask) and tracks every
    object from the start frame on."""
    predictor = backend.sam2_video
    n, h, w = 5, 32, 48
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]
    frames = VideoFrames(lambda i: imgs[i], n, predictor.image_size)
    with _frames_loader(predictor, frames, h, w), torch.inference_mode():
        state = predictor.init_state(video_path="<in-memory frames>")
    early = torch.zeros(h, w, dtype=torch.bool)
    early[4:20, 4:20] = True
    late = torch.zeros(h, w, dtype=torch.bool)
    late[10:30, 25:45] = True
    with torch.inference_mode():
        predictor.reset_state(state)
        predictor.add_new_mask(state, frame_idx=3, obj_id=7, mask=late)
        predictor.add_new_mask(state, frame_idx=1, obj_id=5, mask=early)
        out = {t: (list(ids), logits) for t, ids, logits in predictor.propagate_in_video(state, start_frame_idx=1)}
    assert sorted(out) == [1, 2, 3, 4] and all(sorted(ids) == [5, 7] for ids, _ in out.values())
    ids, logits = out[3]
    got = logits[ids.index(7), 0] > 0
    assert (got & late).sum() / (got | late).sum() > 0.9  # the conditioning frame gives back its seed

    # The whole association over two overlapping windows with the real predictor: valid labels.
    maps = []
    for t in range(n):
        m = np.full((h, w), -1, np.int32)
        m[4:20, 4 + t : 20 + t] = 0
        m[10:30, 25:45] = 1
        maps.append(m)
    labels, stats = associate_masks(predictor, frames, maps, window=3, overlap=2, budget=0)
    assert stats.fraction_labelled == 1.0 and all(lab.shape == (2,) and lab.dtype == np.int32 for lab in labels)
    assert sorted({int(x) for lab in labels for x in lab}) == list(range(stats.objects))
    assert len(stats.seed_frames) >= 3  # windows start at 0, 1, 2: every one carried objects on


def test_granularity_aware_prompting_needs_and_uses_depth(sam, clip, capture):
    cfg = _cfg()
    cfg.priors.granularity_aware, cfg.priors.points_per_side, cfg.priors.gags_patches = True, 4, 2
    be = RealPriorsBackend(sam, None, clip, cfg.priors, "cpu")
    with pytest.raises(ValueError, match="granularity_aware needs depth"):
        be.frame_priors(capture, 0, ["sp"])
    # All cameras see the plane z = -2 at the same distance: GAGS density equals the uniform grid's.
    be.depth_source = lambda cap, i: np.full((H, W), 2.0, np.float32)
    assert len(be._gags_points(capture, 1)) == 16
    fp = be.frame_priors(capture, 1, ["sp"])
    assert fp.levels["sp"].masks.shape == (H, W) and fp.levels["sp"].features.shape[0] > 0
