"""Mapping node start-up modes: the shipped params file, serve-only with an initial scene."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from _rosutil import RosClient, write_blob_scene, write_params

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]


def test_starts_with_the_shipped_params_file(ros_procs, tmp_path):
    """config/ccl_lgs.yaml as is (defaults: pose_source tf, folders under ~/.ros/ccl_lgs)."""
    from ccl_lgs_ros.ros.capture_part import HAVE_TF2

    proc = ros_procs.start(
        ["-m", "ccl_lgs_ros.ros.mapping_node", "--ros-args", "--params-file", REPO / "config" / "ccl_lgs.yaml"],
        name="defaults",
        extra_env={"HOME": str(tmp_path)},
    )
    log = ros_procs.wait_for_line(proc, "/semantic_query is up", timeout=60)
    assert (tmp_path / ".ros" / "ccl_lgs" / "capture").is_dir()
    if not HAVE_TF2:
        assert "pose_source 'tf' needs tf2_ros" in log  # a clear reason, and the node keeps running
    assert proc.poll() is None
    assert ros_procs.stop(proc) == 0


def test_serve_only_with_initial_scene(ros_procs, tmp_path, ros_env_vars):
    from action_msgs.msg import GoalStatus
    from ccl_lgs_interfaces.action import TrainScene
    from ccl_lgs_interfaces.srv import GetStatus, SemanticQuery, SetCapture
    from rclpy.action import ActionClient

    root = tmp_path / "root"
    write_blob_scene(root / "scenes" / "lab")
    pfile = write_params(
        tmp_path / "p.yaml",
        {
            "node.serve_only": True,
            "node.initial_scene": str(root / "scenes" / "lab"),
            "node.allowed_roots": [str(root)],
            "query.threshold": 0.8,
            "device": "cpu",
        },
    )
    proc = ros_procs.start(
        ["-m", "ccl_lgs_ros.ros.mapping_node", "--ros-args", "--params-file", pfile, "-r", "__node:=robot_mapper"],
        name="serve",
    )
    ros_procs.wait_for_line(proc, "/semantic_query is up", timeout=60)
    client = RosClient(int(ros_env_vars["ROS_DOMAIN_ID"]))
    try:
        r = client.call(SemanticQuery, "/semantic_query", SemanticQuery.Request(query="green apple"))
        assert r.success and r.found
        st = client.call(GetStatus, "/robot_mapper/get_status", GetStatus.Request()).status
        assert st.scene_loaded and not st.capturing and st.num_keyframes == 0
        r = client.call(SetCapture, "/robot_mapper/set_capture", SetCapture.Request(enable=True))
        assert not r.success and "serve-only" in r.message
        ac = ActionClient(client.node, TrainScene, "/robot_mapper/train")
        assert ac.wait_for_server(timeout_sec=20)
        fut = ac.send_goal_async(TrainScene.Goal(preset="tiny"))
        client.executor.spin_until_future_complete(fut, timeout_sec=20)
        rfut = fut.result().get_result_async()
        client.executor.spin_until_future_complete(rfut, timeout_sec=20)
        assert rfut.result().status == GoalStatus.STATUS_ABORTED
        assert "serve-only" in rfut.result().result.message
    finally:
        client.close()


@pytest.mark.skipif(
    [name for _, name in socket.if_nameindex()] != ["lo"],
    reason="the profile's UDP transport is not limited to loopback: run only in a private network namespace "
    "(make test's unshare -n), where no interface but lo exists",
)
def test_large_answers_with_the_shipped_fastdds_profile(ros_procs, tmp_path, ros_env_vars):
    """config/fastdds_large_data.xml (the launch file's default for the node): Fast DDS accepts it
    and a multi-MB answer reaches a client that has no profile of its own."""
    from ccl_lgs_interfaces.srv import SemanticQuery

    root = tmp_path / "root"
    write_blob_scene(root / "scenes" / "lab", labels=("red mug",), centers=((2.0, 0.0, 1.0),), num_gaussians=20_000)
    pfile = write_params(
        tmp_path / "p.yaml",
        {
            "node.serve_only": True,
            "node.initial_scene": str(root / "scenes" / "lab"),
            "node.allowed_roots": [str(root)],
            "query.threshold": 0.8,
            "device": "cpu",
        },
    )
    profile = str(REPO / "config" / "fastdds_large_data.xml")
    proc = ros_procs.start(
        ["-m", "ccl_lgs_ros.ros.mapping_node", "--ros-args", "--params-file", pfile],
        name="profile",
        extra_env={"FASTRTPS_DEFAULT_PROFILES_FILE": profile, "FASTDDS_DEFAULT_PROFILES_FILE": profile},
    )
    log = ros_procs.wait_for_line(proc, "/semantic_query is up", timeout=60)
    assert "XMLPARSER" not in log and "Error" not in log, log[-3000:]
    client = RosClient(int(ros_env_vars["ROS_DOMAIN_ID"]))
    try:
        r = client.call(SemanticQuery, "/semantic_query", SemanticQuery.Request(query="red mug", point_spacing=0.002))
        assert r.success and r.found, r.message
        size = len(r.cloud.data) + sum(len(i.points.data) for i in r.instances)
        assert size > 600_000 and r.cloud.width == r.instances[0].points.width  # well past one 0.5 MB segment
    finally:
        client.close()
    assert ros_procs.stop(proc) == 0
