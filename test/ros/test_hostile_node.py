"""Hostile and broken input over real DDS (issue 18): the mapping node in its own process keeps
answering and capturing whatever a caller, a sensor topic or a file throws at it.

One node serves the module (tests run in file order and share its capture); a second node is
started only to check start-up with a broken capture folder.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from _rosutil import RosClient, RosProcesses, module_ros_env, start_mapper, write_blob_scene

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]

#: The invalid transforms.json variants of the issue (each once crashed the node).
BAD_TRANSFORMS = {
    "not_json": "this is { not json",
    "list": "[]",
    "future_version": json.dumps({"frames": [], "ccl_lgs": {"format_version": 999}}),
    "non_integer_version": json.dumps({"frames": [], "ccl_lgs": {"format_version": "one"}}),
    "ccl_lgs_5": json.dumps({"frames": [], "ccl_lgs": 5}),
}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    env = module_ros_env(tmp, __name__)
    root = tmp / "root"
    (root / "scenes").mkdir(parents=True)
    write_blob_scene(root / "scenes" / "good")
    for name, content in BAD_TRANSFORMS.items():
        (root / "bad_caps" / name).mkdir(parents=True)
        (root / "bad_caps" / name / "transforms.json").write_text(content)
    procs = RosProcesses(env, tmp)
    proc = start_mapper(procs, tmp, root, extra={"node.min_train_keyframes": 3})
    client = RosClient(int(env["ROS_DOMAIN_ID"]))
    try:
        yield SimpleNamespace(proc=proc, procs=procs, client=client, root=root, tmp=tmp, env=env, stamp=5000.0)
    finally:
        client.close()
        procs.stop_all()


def _status(m):
    from ccl_lgs_interfaces.srv import GetStatus

    return m.client.call(GetStatus, "/ccl_lgs_mapper/get_status", GetStatus.Request()).status


def _alive(m) -> None:
    assert m.proc.poll() is None, "node died:\n" + m.procs.log(m.proc)[-3000:]
    _status(m)


def _set_capture(m, folder: str, enable: bool = True):
    from ccl_lgs_interfaces.srv import SetCapture

    req = SetCapture.Request(enable=enable, capture_dir=folder)
    return m.client.call(SetCapture, "/ccl_lgs_mapper/set_capture", req)


def _load(m, path: str):
    from ccl_lgs_interfaces.srv import LoadScene

    return m.client.call(LoadScene, "/ccl_lgs_mapper/load_scene", LoadScene.Request(path=path))


def _query(m, text: str = "red mug"):
    from ccl_lgs_interfaces.srv import SemanticQuery

    return m.client.call(SemanticQuery, "/semantic_query", SemanticQuery.Request(query=text))


def _pubs(m):
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    if not hasattr(m, "pubs"):
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        n = m.client.node
        m.pubs = SimpleNamespace(
            image=n.create_publisher(Image, "/camera/color/image_raw", qos),
            info=n.create_publisher(CameraInfo, "/camera/color/camera_info", qos),
            pose=n.create_publisher(PoseStamped, "/camera/pose", QoSProfile(depth=100)),
        )
        assert m.client.spin_until(
            lambda: all(p.get_subscription_count() > 0 for p in (m.pubs.image, m.pubs.info, m.pubs.pose)), 20
        )
        m.client.spin_until(lambda: False, 0.5)
    return m.pubs


def _pose(m, t: float, x: float) -> None:
    from geometry_msgs.msg import PoseStamped

    from ccl_lgs_ros.ros import conversions as conv

    ps = PoseStamped()
    ps.header = conv.make_header("map", conv.sec_to_stamp(t))
    ps.pose.position.x = x
    ps.pose.orientation.w = 1.0
    _pubs(m).pose.publish(ps)


def _info(m, t: float, k=None, d=None) -> None:  # noqa: ANN001
    from ccl_lgs_ros.capture.format import Intrinsics
    from ccl_lgs_ros.ros import conversions as conv

    msg = conv.intrinsics_to_camera_info(
        Intrinsics(40.0, 40.0, 16.0, 12.0, 32, 24), conv.make_header("camera_color_optical_frame", conv.sec_to_stamp(t))
    )
    if k is not None:
        msg.k = k
    if d is not None:
        msg.d = d
    _pubs(m).info.publish(msg)


def _image(m, t: float) -> None:
    from ccl_lgs_ros.ros import conversions as conv

    rgb = np.random.default_rng(int(t * 10) % 2**31).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    _pubs(m).image.publish(conv.rgb_to_image_msg(rgb, conv.make_header("camera_color_optical_frame",
                                                                       conv.sec_to_stamp(t)), "rgb8"))


def _spin(m, seconds: float) -> None:
    m.client.spin_until(lambda: False, seconds)


# ------------------------------------------------------------------------------ capture folders


def test_set_capture_with_invalid_transforms_json_is_answered_and_the_node_lives(node):
    ok = _set_capture(node, str(node.root / "cap_good"))
    assert ok.success, ok.message
    for name in BAD_TRANSFORMS:
        r = _set_capture(node, str(node.root / "bad_caps" / name))
        assert not r.success, name
        assert r.message.startswith("refused:") and "transforms.json" in r.message, (name, r.message)
        _alive(node)
    st = _status(node)
    assert st.capturing and st.capture_dir == str((node.root / "cap_good").resolve())  # the old folder is kept


def test_start_with_an_invalid_capture_folder_reports_it_and_serves(node):
    procs = RosProcesses(node.env, node.tmp)
    try:
        for name in ("ccl_lgs_5", "non_integer_version"):
            proc = start_mapper(procs, node.tmp, node.root, name=f"bad_start_{name}",
                                extra={"node.capture_dir": str(node.root / "bad_caps" / name)})
            log = procs.log(proc)
            assert "capture disabled: capture folder" in log and "Traceback" not in log, log[-2000:]
            assert proc.poll() is None
            procs.stop(proc)
    finally:
        procs.stop_all()


# ------------------------------------------------------------------------------ stamps and poses


def test_one_pose_a_million_seconds_ahead_loses_no_frame(node):
    """The issue's run: good frames with poses, one pose stamped 10^6 s in the future."""
    assert _set_capture(node, str(node.root / "cap_jump")).success
    _info(node, node.stamp)
    n_frames = 8
    for i in range(n_frames):
        t = node.stamp + i
        _pose(node, t - 0.01, 0.5 * i)
        if i == 2:
            _pose(node, t + 1e6, 0.5 * i)  # the glitch
        _image(node, t)
        _pose(node, t + 0.01, 0.5 * i)
        _spin(node, 0.3)
    node.stamp += n_frames + 1
    assert node.client.spin_until(lambda: _status(node).num_keyframes == n_frames, 15), (
        f"{_status(node).num_keyframes} of {n_frames} frames kept:\n{node.procs.log(node.proc)[-3000:]}"
    )
    log = node.procs.log(node.proc)
    assert "pose refused: pose stamp" in log and "after the newest image" in log
    assert "stale" not in log


def test_implausible_pose_and_camera_info_are_refused_with_a_log_line(node):
    n = _status(node).num_keyframes
    t = node.stamp
    _info(node, t, k=[40.0, 0.0, -1e9, 0.0, 40.0, 12.0, 0.0, 0.0, 1.0])
    _info(node, t, d=[1e30, 0.0, 0.0, 0.0, 0.0])
    _pose(node, t - 0.01, 1e300)
    _image(node, t)
    _pose(node, t + 0.01, 1e300)
    _spin(node, 1.0)
    log = node.procs.log(node.proc)
    for needle in ("principal point", "outside the source image", "capture.max_position"):
        assert needle in log, f"no log line about {needle!r}:\n{log[-3000:]}"
    assert _status(node).num_keyframes == n
    # The good calibration stays in use: a good frame is still kept.
    _pose(node, t + 0.99, 20.0)
    _image(node, t + 1.0)
    _pose(node, t + 1.01, 20.0)
    node.stamp += 3
    assert node.client.spin_until(lambda: _status(node).num_keyframes == n + 1, 10), node.procs.log(node.proc)[-3000:]


# ------------------------------------------------------------------------------ scenes


def _bad_scene(m, name: str, change) -> str:  # noqa: ANN001
    from ccl_lgs_ros.io import atomic_save_npz, load_npz, read_json

    d = m.root / "scenes" / name
    write_blob_scene(d, num_gaussians=300)
    record = read_json(d / "scene.json")
    arrays = load_npz(d / "query_index.npz")
    record = change(record, arrays)
    (d / "scene.json").write_text(json.dumps(record))
    atomic_save_npz(d / "query_index.npz", arrays)
    return str(d)


def test_refused_scenes_never_replace_the_served_one(node):
    outside = node.tmp / "outside.bin"
    outside.write_bytes(b"not weights")
    r = _load(node, str(node.root / "scenes" / "good"))
    assert r.success, r.message
    clip = {"kind": "open_clip", "model": "ViT-B-16", "pretrained": "laion2b_s34b_b88k"}
    def index_change(fn):  # noqa: ANN001, ANN202 - edit the index arrays, keep scene.json
        return lambda rec, a: (fn(a), rec)[1]

    def encoder(**spec):  # noqa: ANN202 - replace scene.json's text encoder
        return lambda rec, a: {**rec, "text_encoder": {**clip, **spec}}

    cases = {
        "list": (lambda rec, a: [], "must hold a JSON object"),
        "zero": (index_change(lambda a: a.update({k: v[:0] for k, v in a.items() if v.ndim and v.shape[0] == 300})),
                 "no Gaussians"),
        "nan": (index_change(lambda a: a["means"].__setitem__((0, 1), np.nan)), "NaN or infinite"),
        "inf": (index_change(lambda a: a["scales"].__setitem__((5, 0), np.inf)), "NaN or infinite"),
        "passwd": (encoder(checkpoint="/etc/passwd"), "outside the allowed"),
        "outside": (encoder(checkpoint=str(outside)), "outside the allowed"),
        "download": (encoder(checkpoint="", allow_download=True), "downloaded"),
        "random": (encoder(checkpoint="", pretrained=""), "random weights"),
    }
    for name, (change, why) in cases.items():
        r = _load(node, _bad_scene(node, name, change))
        assert not r.success and why in r.message, (name, r.message)
        q = _query(node)
        assert q.success and q.found, f"after {name}: the good scene is no longer served ({q.message})"
    _alive(node)
    assert "/etc/passwd" not in node.procs.log(node.proc).split("refused")[0]


def test_point_spacing_out_of_bounds_is_refused(node):
    from ccl_lgs_interfaces.srv import SemanticQuery

    for spacing in (1e-40, 1e9):
        r = node.client.call(SemanticQuery, "/semantic_query", SemanticQuery.Request(query="red mug",
                                                                                     point_spacing=spacing))
        assert not r.success and "point_spacing" in r.message, r.message
    assert "RuntimeWarning" not in node.procs.log(node.proc)


# ------------------------------------------------------------------------------ goal paths


def test_relative_goal_override_path_reaches_the_trainer_absolute_inside_the_roots(node):
    """``priors.sim_ground_truth=rel`` is checked as ``<root>/rel`` and the trainer is given that
    absolute path (before, it opened ``rel`` in the node's working directory)."""
    from action_msgs.msg import GoalStatus
    from ccl_lgs_interfaces.action import TrainScene
    from rclpy.action import ActionClient

    (node.tmp / "gt_rel").mkdir()  # the node's working directory is node.tmp: a decoy outside the roots
    (node.root / "gt_rel").mkdir()
    ac = ActionClient(node.client.node, TrainScene, "/ccl_lgs_mapper/train")
    assert ac.wait_for_server(timeout_sec=20)
    try:
        def send(overrides):  # noqa: ANN001, ANN202
            fut = ac.send_goal_async(TrainScene.Goal(preset="tiny", device="cpu", overrides=overrides))
            node.client.executor.spin_until_future_complete(fut, timeout_sec=20)
            return fut.result()

        (node.tmp / "only_in_cwd").mkdir()
        handle = send(["priors.sim_ground_truth=only_in_cwd"])
        rfut = handle.get_result_async()
        node.client.executor.spin_until_future_complete(rfut, timeout_sec=30)
        res = rfut.result()
        assert res.status == GoalStatus.STATUS_ABORTED and "does not exist" in res.result.message, res.result.message
        # Checkpoint files (empty) so the goal passes the settings checks (train_checks.py) and a
        # trainer is started; it is cancelled below.
        ckpts = []
        for key in ("sam_checkpoint", "sam2_checkpoint", "clip_checkpoint"):
            (node.root / f"{key}.pt").touch()
            ckpts.append(f"priors.{key}={node.root / f'{key}.pt'}")
        handle = send(["priors.sim_ground_truth=gt_rel", *ckpts])
        expected = f"--set=priors.sim_ground_truth={(node.root / 'gt_rel').resolve()}"
        node.procs.wait_for_line(node.proc, expected, timeout=30)
        cfut = handle.cancel_goal_async()
        node.client.executor.spin_until_future_complete(cfut, timeout_sec=20)
        rfut = handle.get_result_async()
        node.client.executor.spin_until_future_complete(rfut, timeout_sec=60)
        assert rfut.done()
    finally:
        ac.destroy()
    _alive(node)


def test_a_capture_linking_out_of_the_roots_is_not_trained_and_nothing_is_read(node):
    """A capture folder inside the roots whose image is a symlink to a file elsewhere: the goal is
    refused with the file named, before the snapshot reads (or hard-links) anything."""
    from action_msgs.msg import GoalStatus
    from ccl_lgs_interfaces.action import TrainScene
    from rclpy.action import ActionClient

    from ccl_lgs_ros.capture.format import Capture, Intrinsics
    from ccl_lgs_ros.capture.writer import CaptureWriter

    folder = node.root / "cap_link"
    w = CaptureWriter(folder)
    rng = np.random.default_rng(0)
    for i in range(4):
        pose = np.eye(4)
        pose[0, 3] = 0.3 * i
        w.add_frame(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), pose,
                    Intrinsics(fx=40.0, fy=40.0, cx=16.0, cy=12.0, width=32, height=24))
    rel = Capture.load(folder).frames[2].file_path
    secret = node.tmp / "outside_secret.png"  # outside node.root, the only allowed root
    secret.write_bytes((folder / rel).read_bytes())
    (folder / rel).unlink()
    (folder / rel).symlink_to(secret)
    assert _set_capture(node, str(folder)).success
    ckpts = []
    for key in ("sam_checkpoint", "sam2_checkpoint", "clip_checkpoint"):
        (node.root / f"{key}.pt").touch()
        ckpts.append(f"priors.{key}={node.root / f'{key}.pt'}")
    ac = ActionClient(node.client.node, TrainScene, "/ccl_lgs_mapper/train")
    assert ac.wait_for_server(timeout_sec=20)
    try:
        fut = ac.send_goal_async(TrainScene.Goal(preset="tiny", device="cpu", overrides=ckpts))
        node.client.executor.spin_until_future_complete(fut, timeout_sec=20)
        rfut = fut.result().get_result_async()
        node.client.executor.spin_until_future_complete(rfut, timeout_sec=60)
        res = rfut.result()
    finally:
        ac.destroy()
    assert res.status == GoalStatus.STATUS_ABORTED, res.result.message
    assert "outside the allowed roots" in res.result.message and "outside_secret.png" in res.result.message
    assert secret.stat().st_nlink == 1  # never hard-linked into a snapshot
    _alive(node)
