"""End to end over real DDS, three processes: replay tool -> mapping node <- this test (client).

1. the replay tool publishes a synthetic capture (Image + CameraInfo + 16UC1 depth + PoseStamped);
   the node, in another process, writes a new capture folder with the expected keyframes and
   poses (within 1 mm / 0.01 rad) [issue 3 acceptance];
2. a train goal whose trainer crashes aborts with the reason; the node keeps capturing;
3. a train goal can be cancelled: the trainer process is stopped;
4. the retry (tiny preset, CPU, simulator priors) succeeds with feedback; the new scene is
   swapped in; ``/semantic_query`` for an object's label returns a cloud that matches the
   object's ground-truth points in the world frame (F1 above a floor) [issue 8 acceptance].

Tests depend on the previous ones (one node for the module) and run in file order.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from _rosutil import RosClient, RosProcesses, module_ros_env, start_mapper

pytestmark = [pytest.mark.ros, pytest.mark.timeout(300)]

SYNTH = {"seed": 1, "width": 64, "height": 48, "num_frames": 8, "num_objects": 3}
#: F1 floor of the returned cloud vs the object's GT points, at TAU metres. A 60-step CPU run
#: reaches ~0.9 for the cup (measured); a broken frame or wrong object gives ~0.
F1_FLOOR, TAU = 0.6, 0.02
FAST_TRAIN = ["priors.backend=simulator", "rgb.iterations=60", "field.iterations=60", "field.codebook_iterations=60"]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    from ccl_lgs_ros.testing.synth.generate import generate_scene

    tmp = tmp_path_factory.mktemp("e2e")
    root = tmp / "root"
    (root / "scenes").mkdir(parents=True)
    # Inside the allowed roots: the train goal names it as the simulator's ground truth.
    source = generate_scene(root / "source", **SYNTH)
    env = module_ros_env(tmp, __name__)
    procs = RosProcesses(env, tmp)
    node = start_mapper(procs, tmp, root, extra={"node.depth_topic": "/camera/depth", "query.threshold": 0.5})
    client = RosClient(int(env["ROS_DOMAIN_ID"]))
    try:
        yield SimpleNamespace(tmp=tmp, source=source, root=root, procs=procs, node=node, client=client, env=env)
    finally:
        client.close()
        procs.stop_all()


def _status(m):
    from ccl_lgs_interfaces.srv import GetStatus

    return m.client.call(GetStatus, "/ccl_lgs_mapper/get_status", GetStatus.Request()).status


def _expected_keyframes(source, cfg_overrides: dict) -> list[int]:
    """Indices the keyframe selector keeps when fed the source frames in order."""
    from ccl_lgs_ros.capture.keyframes import KeyframeSelector
    from ccl_lgs_ros.config import CaptureConfig

    sel = KeyframeSelector(CaptureConfig(**cfg_overrides))
    return [i for i in range(len(source.frames)) if sel.consider(source.frames[i].c2w, source.load_image(i))[0]]


def test_replay_is_captured_with_exact_poses(e2e):
    from ccl_lgs_ros.capture.format import Capture
    from ccl_lgs_ros.geometry import rotation_angle

    replay = e2e.procs.start(
        [
            "-m",
            "ccl_lgs_ros.ros.replay_node",
            e2e.root / "source",
            "--rate",
            "4",
            "--wait-subscribers",
            "1",
            "--depth-topic",
            "/camera/depth",
            "--linger",
            "0.5",
        ],
        name="replay",
    )
    assert replay.wait(timeout=90) == 0, e2e.procs.log(replay)
    assert "published 8 frames" in e2e.procs.log(replay)
    expected = _expected_keyframes(e2e.source, {"blur_rejection": False})
    assert e2e.client.spin_until(lambda: _status(e2e).num_keyframes >= len(expected), 20), e2e.procs.log(e2e.node)
    time.sleep(0.5)
    cap = Capture.load(e2e.root / "cap")
    assert len(cap.frames) == len(expected), e2e.procs.log(e2e.node)[-3000:]
    for f, i in zip(cap.frames, expected):
        src = e2e.source.frames[i]
        assert np.linalg.norm(f.c2w[:3, 3] - src.c2w[:3, 3]) < 1e-3
        assert rotation_angle(f.c2w[:3, :3].T @ src.c2w[:3, :3]) < 0.01
        assert f.intrinsics == src.intrinsics
    # images and depth arrive intact (PNG round trip is lossless; depth is millimetres)
    np.testing.assert_array_equal(cap.load_image(0), e2e.source.load_image(expected[0]))
    d_got, d_src = cap.load_depth(0), e2e.source.load_depth(expected[0])
    assert d_got is not None and np.abs(d_got - d_src).max() <= 0.0011
    assert cap.frame_id == "map"


def _train(m, goal_fields: dict, cancel_after_feedback: bool = False, timeout: float = 240.0):
    from ccl_lgs_interfaces.action import TrainScene
    from rclpy.action import ActionClient

    if not hasattr(m, "action"):
        m.action = ActionClient(m.client.node, TrainScene, "/ccl_lgs_mapper/train")
        assert m.action.wait_for_server(timeout_sec=20)
    feedback = []
    goal = TrainScene.Goal()
    for k, v in goal_fields.items():
        setattr(goal, k, v)
    fut = m.action.send_goal_async(goal, feedback_callback=lambda fb: feedback.append(fb.feedback))
    m.client.executor.spin_until_future_complete(fut, timeout_sec=20)
    handle = fut.result()
    assert handle is not None and handle.accepted
    if cancel_after_feedback:
        assert m.client.spin_until(lambda: len(feedback) > 0, 120), "no feedback before cancelling"
        cfut = handle.cancel_goal_async()
        m.client.executor.spin_until_future_complete(cfut, timeout_sec=20)
    rfut = handle.get_result_async()
    m.client.executor.spin_until_future_complete(rfut, timeout_sec=timeout)
    assert rfut.done(), f"no result within {timeout} s:\n{m.procs.log(m.node)[-3000:]}"
    res = rfut.result()
    return res.status, res.result, feedback


def _trainer_children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        kids += [int(k) for k in text]
    return kids


def test_bad_goal_and_crashing_trainer_abort_with_reason(e2e):
    from action_msgs.msg import GoalStatus

    status, res, _ = _train(e2e, {"overrides": ["rgb.iterations=lots"]})
    assert status == GoalStatus.STATUS_ABORTED and "invalid goal" in res.message and "integer" in res.message
    # Settings that cannot work are refused at once, before a snapshot or a trainer (issue 17):
    # the simulator on a live capture (no instance maps) without priors.sim_ground_truth, and the
    # real priors backend without its checkpoints.
    snapshots = e2e.root / "scenes" / ".captures"
    before = sorted(snapshots.iterdir()) if snapshots.is_dir() else []
    t0 = time.monotonic()
    status, res, _ = _train(e2e, {"preset": "tiny", "device": "cpu", "overrides": ["priors.backend=simulator"]})
    assert status == GoalStatus.STATUS_ABORTED and "invalid goal" in res.message, res.message
    assert "the priors simulator needs ground truth" in res.message
    status, res, _ = _train(e2e, {"preset": "tiny", "device": "cpu", "overrides": ["priors.backend=real"]})
    assert status == GoalStatus.STATUS_ABORTED and "invalid goal" in res.message, res.message
    assert "priors.sam_checkpoint is not set" in res.message and "priors.clip_checkpoint" in res.message
    assert time.monotonic() - t0 < 60
    assert (sorted(snapshots.iterdir()) if snapshots.is_dir() else []) == before  # no snapshot taken
    # A trainer that starts and then crashes: checkpoint files that are not checkpoints.
    junk = []
    for key in ("sam_checkpoint", "sam2_checkpoint", "clip_checkpoint"):
        (e2e.root / f"{key}.pt").write_bytes(b"not a checkpoint")
        junk.append(f"priors.{key}={e2e.root / f'{key}.pt'}")
    status, res, _ = _train(
        e2e, {"preset": "tiny", "device": "cpu", "overrides": ["rgb.iterations=1", "priors.backend=real", *junk]}
    )
    assert status == GoalStatus.STATUS_ABORTED, res.message
    assert "trainer exited with code" in res.message and "capture continues" in res.message
    st = _status(e2e)
    assert st.capturing and not st.training and st.last_error
    assert e2e.node.poll() is None


def test_cancel_stops_the_trainer(e2e):
    from action_msgs.msg import GoalStatus

    status, res, feedback = _train(
        e2e,
        {
            "preset": "tiny",
            "device": "cpu",
            "overrides": [
                "priors.backend=simulator",
                f"priors.sim_ground_truth={e2e.source.root}",
                "rgb.iterations=100000",
            ],
        },
        cancel_after_feedback=True,
        timeout=60,
    )
    assert status == GoalStatus.STATUS_CANCELED and "cancelled" in res.message
    assert feedback and feedback[0].stage
    assert e2e.client.spin_until(lambda: not _trainer_children(e2e.node.pid), 10), "trainer still running"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_train_succeeds_and_query_matches_ground_truth(e2e):
    import plyfile
    from action_msgs.msg import GoalStatus
    from ccl_lgs_interfaces.srv import SemanticQuery
    from scipy.spatial import cKDTree

    from ccl_lgs_ros.ros.conversions import cloud_to_arrays

    t0 = time.monotonic()
    # The simulator stands in for SAM/CLIP; a live capture has no instance maps, so it takes them
    # from the replayed scene's frames with the same poses.
    outside = {"preset": "tiny", "device": "cpu", "overrides": [*FAST_TRAIN, f"priors.sim_ground_truth={e2e.tmp}"]}
    status, res, _ = _train(e2e, outside)
    assert status == GoalStatus.STATUS_ABORTED and "outside the allowed roots" in res.message, res.message
    goal = {"preset": "tiny", "device": "cpu", "overrides": [*FAST_TRAIN, f"priors.sim_ground_truth={e2e.source.root}"]}
    status, res, feedback = _train(e2e, goal, timeout=1000)  # ~3 min alone on 2 loaded cores
    assert status == GoalStatus.STATUS_SUCCEEDED, res.message + "\n" + e2e.procs.log(e2e.node)[-3000:]
    assert res.success and Path(res.scene_path).is_dir() and res.duration_s > 0
    assert len(feedback) >= 2 and {fb.stage for fb in feedback} >= {"rgb"}
    progress = [fb.progress for fb in feedback]
    assert progress == sorted(progress) and 0.0 <= progress[0] and progress[-1] <= 1.0
    st = _status(e2e)
    assert st.scene_loaded and st.scene_path == res.scene_path and st.scene_gaussians > 0
    print(f"\ntrain action: {time.monotonic() - t0:.1f} s, {len(feedback)} feedback messages")

    # The object: a label held by exactly one instance (the cup), its GT points in the world frame.
    labels = [inst["label"] for inst in e2e.source.instances]
    label = next(lbl for lbl in labels if labels.count(lbl) == 1 and lbl != "table")
    inst = next(i for i in e2e.source.instances if i["label"] == label)
    v = plyfile.PlyData.read(str(e2e.source.root / inst["gt_points"]))["vertex"]
    gt = np.stack([v["x"], v["y"], v["z"]], axis=1)

    resp = e2e.client.call(SemanticQuery, "/semantic_query", SemanticQuery.Request(query=label))
    assert resp.success and resp.found, resp.message
    assert resp.cloud.header.frame_id == "map"
    pts = cloud_to_arrays(resp.cloud)["points"]
    precision = float((cKDTree(gt).query(pts)[0] < TAU).mean())
    recall = float((cKDTree(pts).query(gt)[0] < TAU).mean())
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    print(f"query {label!r}: {len(pts)} points, precision {precision:.3f} recall {recall:.3f} F1 {f1:.3f}")
    assert f1 > F1_FLOOR, (precision, recall)
    # the capture goes on after training
    assert _status(e2e).capturing
