"""Hostile and broken input (issue 18), ROS-free parts: stamps, cameras, poses, capture and scene
files, memory bounds, trainer failure reasons. The node-level cases over real DDS are in
test/ros/test_hostile_node.py."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ccl_lgs_ros.capture.camera_model import Distortion, check_camera, intrinsics_from_camera_info
from ccl_lgs_ros.capture.format import Capture, CaptureError, Intrinsics
from ccl_lgs_ros.capture.pose_sync import PoseBuffer, StampGate
from ccl_lgs_ros.capture.session import CaptureSession
from ccl_lgs_ros.config import CaptureConfig
from ccl_lgs_ros.geometry import pose_to_matrix

K = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]


# ------------------------------------------------------------------------------ stamps


def _frames(gate: StampGate, buf: PoseBuffer, events: list[tuple[str, float]]) -> tuple[list[float], list[str]]:
    """Replay ``(kind, stamp)`` events the way the node's capture does (pose topic mode): poses
    through the gate into the buffer; images through the gate, then looked up, and an image
    whose pose has not come yet ("future") waits for the next pose."""
    kept: list[float] = []
    refused: list[str] = []
    waiting: list[float] = []

    def lookup(t: float) -> None:
        T, why = buf.lookup_with_reason(t)
        if T is None and why.startswith(("future", "no poses")):
            waiting.append(t)
        elif T is None:
            refused.append(why)
        else:
            assert T[0, 3] == pytest.approx(t)  # the pose interpolated at the image's own stamp
            kept.append(t)

    for kind, t in events:
        if kind == "pose":
            ok, why = gate.check_pose(t)
            if not ok:
                refused.append(why)
                continue
            assert buf.add(t, [t, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0])[0]
            retry, waiting[:] = list(waiting), []
            for w in retry:
                lookup(w)
        else:
            ok, why = gate.check_image(t)
            if not ok:
                refused.append(why)
                continue
            if why != "ok":
                buf.drop_outside(t - gate.max_skew, t + gate.max_skew)
            lookup(t)
    return kept, refused


def test_one_pose_a_million_seconds_in_the_future_never_blocks_later_frames():
    """The issue's sequence: good poses and images at 10 Hz, one pose stamped 10^6 s ahead."""
    events: list[tuple[str, float]] = []
    t0 = 1000.0
    for i in range(40):
        t = t0 + 0.1 * i
        events.append(("pose", t))
        if i == 5:
            events.append(("pose", t + 1e6))  # the clock glitch
        events.append(("image", t + 0.02))  # the image comes before its later pose
        events.append(("pose", t + 0.05))
    # Without the gate the bad pose enters the buffer and every later image is "stale".
    kept_plain, _ = _frames(StampGate(max_skew=float("inf")), PoseBuffer(max_gap=0.1), events)
    assert len(kept_plain) < 10
    kept, refused = _frames(StampGate(max_skew=10.0), PoseBuffer(max_gap=0.1), events)
    assert len(kept) == 40, refused  # every good frame
    assert len(refused) == 1 and "after the newest image" in refused[0] and "max_stamp_skew" in refused[0]


def test_a_pose_far_in_the_past_and_a_bad_image_stamp_are_refused_alone():
    gate, buf = StampGate(max_skew=5.0, jump_frames=3), PoseBuffer(max_gap=0.2)
    events = [("pose", 100.0), ("image", 100.05), ("pose", 100.1), ("pose", 100.0 - 1e6), ("pose", 100.2),
              ("image", 100.15), ("image", 100.1 + 3e5), ("pose", 100.3), ("image", 100.25)]
    kept, refused = _frames(gate, buf, events)
    assert kept == [100.05, 100.15, 100.25]
    assert any("before the newest image" in r for r in refused)
    assert any("image stamp" in r and "clock jump is accepted after 3" in r for r in refused)


def test_a_real_clock_jump_is_followed_after_a_few_frames():
    gate, buf = StampGate(max_skew=5.0, jump_frames=3), PoseBuffer(max_gap=0.2)
    before = [e for i in range(10) for e in (("pose", 50.0 + 0.1 * i), ("image", 50.05 + 0.1 * i))]
    after = [e for i in range(10) for e in (("pose", 9000.0 + 0.1 * i), ("image", 9000.05 + 0.1 * i))]
    kept, refused = _frames(gate, buf, [*before, ("pose", 50.95), *after])
    assert len([t for t in kept if t < 100]) == 10
    new = [t for t in kept if t > 9000]
    assert len(new) >= 6, refused  # after 3 agreeing images the new time is accepted
    assert buf.span is not None and buf.span[0] > 8000  # the old time's poses were forgotten


def test_non_finite_stamps_are_refused():
    gate = StampGate(max_skew=1.0)
    assert not gate.check_image(float("nan"))[0]
    assert not gate.check_pose(float("inf"))[0]


# ------------------------------------------------------------------------------ cameras and poses


@pytest.mark.parametrize(
    "k, d, model, match",
    [
        ([500.0, 0, -1e9, 0, 500.0, 240.0, 0, 0, 1], [], "plumb_bob", "principal point"),
        ([500.0, 0, 320.0, 0, 500.0, 1e9, 0, 0, 1], [], "plumb_bob", "principal point"),
        ([1e12, 0, 320.0, 0, 500.0, 240.0, 0, 0, 1], [], "plumb_bob", "focal"),
        (K, [1e30, 0, 0, 0, 0], "plumb_bob", "outside the source image"),
        (K, [0, 0, 1e30, 0, 0], "plumb_bob", "outside the source image"),
        (K, [float("nan"), 0, 0, 0, 0], "plumb_bob", "not finite"),
    ],
)
def test_implausible_camera_info_is_refused_with_a_reason(k, d, model, match):
    with pytest.raises(ValueError, match=match):
        intrinsics_from_camera_info(640, 480, k, d, model)


def test_real_lens_distortions_pass():
    for d, model in (([-0.28, 0.07, 0.0, 0.0, 0.0], "plumb_bob"), ([0.1, -0.05, 0.001, 0.002, 0.0], "plumb_bob"),
                     ([0.05, 0.01, -0.005, 0.001], "equidistant")):
        intr, dist = intrinsics_from_camera_info(640, 480, K, d, model)
        assert not dist.is_identity
    # The share that is checked, computed by hand for a strong barrel lens: every output pixel
    # of a k1 = -0.28 camera samples a point closer to the centre, i.e. inside the image.
    check_camera(Intrinsics(500.0, 500.0, 320.0, 240.0, 640, 480), Distortion("opencv", (-0.28, 0.0, 0.0, 0.0, 0.0)))


def test_pose_far_from_the_origin_is_never_a_keyframe(tmp_path):
    session = CaptureSession(tmp_path / "cap", "map", CaptureConfig(blur_rejection=False))
    intr = Intrinsics(40.0, 40.0, 16.0, 12.0, 32, 24)
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    frame, why = session.offer(rgb, pose_to_matrix([1e300, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]), intr)
    assert frame is None and "capture.max_position" in why
    frame, why = session.offer(rgb, pose_to_matrix([3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]), intr)
    assert frame is not None, why


# ------------------------------------------------------------------------------ capture folders


@pytest.mark.parametrize(
    "content, match",
    [
        ("not json {", "invalid JSON"),
        ("[]", "expected an object"),
        ('{"frames": [], "ccl_lgs": {"format_version": 99}}', "not supported"),
        ('{"frames": [], "ccl_lgs": {"format_version": "1"}}', "must be an integer"),
        ('{"frames": [], "ccl_lgs": {"format_version": 1.5}}', "must be an integer"),
        ('{"frames": [], "ccl_lgs": 5}', "'ccl_lgs' must be an object"),
        ('{"frames": [], "ccl_lgs": {"instances": 3}}', "instances"),
        ('{"frames": [], "fl_x": "wide", "fl_y": 1, "cx": 1, "cy": 1, "w": 2, "h": 2}', "shared intrinsics"),
        ('{"frames": [], "depth_unit_scale_factor": [1]}', "depth_unit_scale_factor"),
        ('{"frames": [], "ply_file_path": "/etc/passwd"}', "inside the capture folder"),
    ],
)
def test_invalid_transforms_json_is_a_capture_error(tmp_path, content, match):
    (tmp_path / "transforms.json").write_text(content)
    with pytest.raises(CaptureError, match=match):
        Capture.load(tmp_path)


@pytest.mark.parametrize("key, value", [("file_path", "/etc/passwd"), ("file_path", "../outside.png"),
                                        ("depth_file_path", "images/../../x.png"), ("mask_path", "/tmp/m.png")])
def test_capture_file_paths_stay_inside_the_capture_folder(tmp_path, key, value):
    frame = {"file_path": "images/0.png", "transform_matrix": np.eye(4).tolist(),
             "fl_x": 10, "fl_y": 10, "cx": 5, "cy": 5, "w": 10, "h": 10, key: value}
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": [frame]}))
    with pytest.raises(CaptureError, match="inside the capture folder"):
        Capture.load(tmp_path)


# ------------------------------------------------------------------------------ trainer failures


def test_trainer_failure_reason_is_its_error_not_the_last_log_line():
    from ccl_lgs_ros.supervisor import TrainerProcess

    body = (
        "import sys, os, signal\n"
        "print('Traceback (most recent call last):', file=sys.stderr)\n"
        "print('ccl_lgs_ros.priors.models.MissingCheckpointError: priors.clip_checkpoint is empty', file=sys.stderr)\n"
        "print('INFO ccl_lgs_ros.pipeline: writing scene.json', file=sys.stderr)\n"
        "print('WARNING ccl_lgs_ros.pipeline: slow', file=sys.stderr, flush=True)\n"
        "sys.exit(1)\n"
    )
    proc = TrainerProcess([sys.executable, "-c", body])
    proc.start()
    out = proc.wait(timeout=30)
    assert out.message == "trainer exited with code 1: ccl_lgs_ros.priors.models.MissingCheckpointError: " \
        "priors.clip_checkpoint is empty"
    body = (
        "import os, sys\nprint('INFO ccl_lgs_ros.splat: step 5', file=sys.stderr, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = TrainerProcess([sys.executable, "-c", body])
    proc.start()
    out = proc.wait(timeout=30)
    assert out.message == "trainer killed by signal 9 (SIGKILL)"


# ------------------------------------------------------------------------------ scene folders


def _scene(dest: Path, encoder_spec: object = None, n: int = 400) -> Path:
    """A small loadable scene folder (simulator text encoder unless ``encoder_spec``)."""
    from ccl_lgs_ros.config import Config, to_dict
    from ccl_lgs_ros.io import atomic_write_json
    from ccl_lgs_ros.priors.simulator import SimulatedTextEncoder
    from ccl_lgs_ros.scene.layout import SCENE_FORMAT_VERSION, SceneDir
    from ccl_lgs_ros.testing.blobs import blob_scene

    enc = SimulatedTextEncoder(dim=16, seed=0)
    codebook = enc.encode_text(["red mug", "floor"])
    scene = blob_scene(n, np.array([[1.0, 0.0, 0.5]]), np.array([0]), floor_code=1, seed=0)
    dest.mkdir(parents=True, exist_ok=True)
    scene.index(codebook, level="wp", frame_id="map").save(SceneDir(dest).query_index)
    record = {"format_version": SCENE_FORMAT_VERSION, "frame_id": "map", "world_from_scene": np.eye(4).tolist(),
              "config": to_dict(Config()), "text_encoder": enc.spec() if encoder_spec is None else encoder_spec}
    atomic_write_json(dest / "scene.json", record)
    return dest


def _rewrite_index(scene_dir: Path, change) -> None:  # noqa: ANN001
    from ccl_lgs_ros.io import atomic_save_npz, load_npz

    arrays = load_npz(scene_dir / "query_index.npz")
    change(arrays)
    atomic_save_npz(scene_dir / "query_index.npz", arrays)


@pytest.fixture
def no_clip_build(monkeypatch):
    """Records the specs OpenCLIP would be built from (nothing is built, nothing is read)."""
    from ccl_lgs_ros.priors import models

    built: list[dict] = []

    def fake(spec, device):  # noqa: ANN001, ANN202
        built.append(dict(spec))
        raise RuntimeError("test: OpenCLIP not built")

    monkeypatch.setattr(models, "build_clip_text_encoder", fake)
    return built


def test_a_good_scene_loads(tmp_path):
    from ccl_lgs_ros.scene import load_scene

    scene = load_scene(_scene(tmp_path / "s"), allowed_dirs=[tmp_path])
    assert scene.num_gaussians > 0 and scene.engine.query("red mug").found


@pytest.mark.parametrize(
    "record, match",
    [([], "must hold a JSON object"), ({"format_version": "2"}, "format_version must be an integer"),
     ({"format_version": None}, "format_version must be an integer"), ("text", "must hold a JSON object")],
)
def test_scene_json_that_is_not_a_scene_record_is_refused(tmp_path, record, match):
    from ccl_lgs_ros.scene import SceneError, load_scene

    d = _scene(tmp_path / "s")
    (d / "scene.json").write_text(json.dumps(record))
    with pytest.raises(SceneError, match=match):
        load_scene(d)


def _clip_spec(checkpoint: str, **extra) -> dict:
    return {"kind": "open_clip", "model": "ViT-B-16", "pretrained": "laion2b_s34b_b88k", "checkpoint": checkpoint,
            **extra}


@pytest.mark.parametrize(
    "spec, match",
    [
        (_clip_spec("/etc/passwd"), "outside the allowed roots"),
        (_clip_spec("/proc/self/environ"), "outside the allowed roots"),
        (_clip_spec("", allow_download=True), "downloaded"),
        (_clip_spec("ckpt.bin", allow_download=True), "downloaded"),
        (_clip_spec(""), "random weights"),
        ({"kind": "open_clip", "model": "ViT-B-16", "pretrained": "", "checkpoint": "", "seed": 0}, "random weights"),
        ({"kind": "pickle", "checkpoint": "x"}, "unknown text encoder kind"),
        ([], "names no text encoder"),
        (_clip_spec("../outside/ckpt.bin"), "contains '..'"),
        (_clip_spec("missing.bin"), "does not exist"),
    ],
)
def test_scene_text_encoder_entry_is_confined(tmp_path, no_clip_build, spec, match):
    from ccl_lgs_ros.scene import SceneError, load_scene

    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "ckpt.bin").write_bytes(b"weights")
    d = _scene(tmp_path / "root" / "s", encoder_spec=spec)
    (d / "ckpt.bin").write_bytes(b"weights")
    with pytest.raises(SceneError, match=match):
        load_scene(d, allowed_dirs=[tmp_path / "root"])
    assert no_clip_build == [], "the encoder was built from a refused spec"


def test_scene_checkpoint_is_resolved_against_the_scene_folder_not_the_working_directory(
    tmp_path, monkeypatch, no_clip_build
):
    from ccl_lgs_ros.scene import SceneError, load_scene

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "ckpt.bin").write_bytes(b"not this one")
    monkeypatch.chdir(elsewhere)
    d = _scene(tmp_path / "root" / "s", encoder_spec=_clip_spec("ckpt.bin"))
    (d / "ckpt.bin").write_bytes(b"this one")
    with pytest.raises(SceneError, match="text encoder not loaded"):
        load_scene(d, allowed_dirs=[tmp_path / "root"])
    assert [s["checkpoint"] for s in no_clip_build] == [str((d / "ckpt.bin").resolve())]
    # A configured checkpoint folder outside the roots is accepted (node.checkpoint_dirs).
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    (ckpts / "clip.bin").write_bytes(b"w")
    d2 = _scene(tmp_path / "root" / "s2", encoder_spec=_clip_spec(str(ckpts / "clip.bin")))
    with pytest.raises(SceneError, match="outside the allowed roots"):
        load_scene(d2, allowed_dirs=[tmp_path / "root"])  # not configured: refused before building
    assert len(no_clip_build) == 1
    with pytest.raises(SceneError, match="text encoder not loaded"):
        load_scene(d2, allowed_dirs=[tmp_path / "root", ckpts])
    assert no_clip_build[-1]["checkpoint"] == str(ckpts / "clip.bin") and "allow_download" not in no_clip_build[-1]


def test_training_records_the_checkpoint_absolute(tmp_path, monkeypatch):
    from ccl_lgs_ros.pipeline import _absolute_checkpoint

    monkeypatch.chdir(tmp_path)
    spec = _absolute_checkpoint(_clip_spec("ckpts/clip.bin"))
    assert spec["checkpoint"] == str(tmp_path.resolve() / "ckpts" / "clip.bin")
    assert _absolute_checkpoint({"kind": "simulator", "dim": 8}) == {"kind": "simulator", "dim": 8}


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update({k: v[:0] for k, v in a.items() if k in ("means", "quats", "scales", "opacities", "colors",
                                                                      "wp.codes", "wp.confidence")}), "no Gaussians"),
        (lambda a: a["means"].__setitem__((3, 0), np.nan), "means of 1 Gaussians are NaN"),
        (lambda a: a["scales"].__setitem__((7, 2), np.inf), "scales of 1 Gaussians"),
        (lambda a: a["wp.codebook"].__setitem__((0, 0), np.nan), "codebook"),
    ],
)
def test_scene_with_no_or_non_finite_gaussians_is_refused(tmp_path, change, match):
    from ccl_lgs_ros.scene import SceneError, load_scene

    d = _scene(tmp_path / "s")
    _rewrite_index(d, change)
    with pytest.raises(SceneError, match=match):
        load_scene(d)


def _npz_bomb(path: Path, shape: tuple[int, ...], data_bytes: int) -> None:
    """An .npz whose member ``means`` declares ``shape`` float32 and holds ``data_bytes`` zeros
    after its header, deflated (a few hundred kB on disk for hundreds of MB inflated)."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf, zf.open("means.npy", "w",
                                                                                       force_zip64=True) as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        chunk = bytes(1 << 22)
        for _ in range(data_bytes // len(chunk)):
            fh.write(chunk)


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from Linux /proc")
def test_npz_bomb_is_refused_from_its_headers_and_repeated_failed_loads_keep_memory_flat(tmp_path):
    from ccl_lgs_ros.io import FileTooLarge, load_npz, npz_declared_bytes
    from ccl_lgs_ros.scene import SceneError, load_scene

    d = _scene(tmp_path / "s")
    bomb = d / "query_index.npz"
    _npz_bomb(bomb, (16 << 20, 4), 256 << 20)  # 256 MiB of float32 in well under 1 MB of file
    assert bomb.stat().st_size < 1 << 20
    assert 256 << 20 <= npz_declared_bytes(bomb) <= (256 << 20) + 4096  # + the .npy header
    with pytest.raises(FileTooLarge):
        load_npz(bomb, max_bytes=64 << 20)
    from ccl_lgs_ros.config import QueryConfig

    cfg = QueryConfig(max_index_bytes=64 << 20)
    # A header declaring more than its zip entry holds is inconsistent, whatever the limit.
    lying = tmp_path / "lying.npz"
    _npz_bomb(lying, (1 << 30,), 4 << 20)
    with pytest.raises(ValueError, match="declares"):
        npz_declared_bytes(lying)
    # Also the valid scene's failing loads: NaN means are read in full, then refused.
    nan_scene = _scene(tmp_path / "nan", n=20000)
    _rewrite_index(nan_scene, lambda a: a["means"].__setitem__((0, 0), np.nan))
    load_scene(_scene(tmp_path / "warm"), query_cfg=cfg)  # imports and caches before measuring
    for path in (d, nan_scene):
        with pytest.raises(SceneError):
            load_scene(path, query_cfg=cfg)
    before = _rss_kb()
    for _ in range(8):
        for path in (d, nan_scene):
            with pytest.raises(SceneError):
                load_scene(path, query_cfg=cfg)
    grown_mb = (_rss_kb() - before) / 1024
    assert grown_mb < 40, f"eight rounds of failed loads left {grown_mb:.0f} MB more resident"
    shutil.rmtree(d)


def test_images_declaring_huge_sizes_are_refused_from_their_headers(tmp_path):
    """A PNG declaring 8000x8000 (a few kB on disk) is refused before it is decoded, both as a
    ROS CompressedImage payload and as a capture file."""
    import cv2

    from ccl_lgs_ros.capture import image_codec

    big = np.zeros((8000, 8000), np.uint8)
    ok, png = cv2.imencode(".png", big, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok and len(png) < 200_000
    raw = png.tobytes()
    assert image_codec.header_size(raw) == (8000, 8000)
    with pytest.raises(image_codec.ImageDecodeError, match="from its header"):
        image_codec.decode_compressed("png", raw, max_pixels=4096 * 4096)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0.png").write_bytes(raw)
    frame = {"file_path": "images/0.png", "transform_matrix": np.eye(4).tolist(),
             "fl_x": 10, "fl_y": 10, "cx": 5, "cy": 5, "w": 8000, "h": 8000}
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": [frame]}))
    cap = Capture.load(tmp_path)
    cap.max_image_pixels = 4096 * 4096
    with pytest.raises(CaptureError, match="more than 16777216 pixels"):
        cap.load_image(0)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from Linux /proc")
def test_a_corrupt_text_encoder_checkpoint_is_refused_and_its_failed_loads_release_memory(tmp_path):
    """A checkpoint inside the allowed folders that is not a weights file: the (real, reduced)
    OpenCLIP model is built, its load fails, the scene is refused with the reason, and the
    repeated failures do not pile up memory (the issue saw +1 GB per failed load)."""
    import os

    from ccl_lgs_ros.scene import SceneError, load_scene

    spec = {"kind": "open_clip", "model": "ViT-S-32", "pretrained": "", "checkpoint": "bad.bin"}
    d = _scene(tmp_path / "s", encoder_spec=spec)
    (d / "bad.bin").write_bytes(os.urandom(1 << 20))
    with pytest.raises(SceneError, match="not a plain weights file"):
        load_scene(d, allowed_dirs=[tmp_path])
    before = _rss_kb()
    for _ in range(4):
        with pytest.raises(SceneError, match="not a plain weights file"):
            load_scene(d, allowed_dirs=[tmp_path])
    grown_mb = (_rss_kb() - before) / 1024
    assert grown_mb < 150, f"four failed loads left {grown_mb:.0f} MB more resident"
