"""The replay tool's ``--wait-subscribers``: it starts once the image topic is matched with its
subscribers and each of their nodes' subscriptions to the other replayed topics (CameraInfo,
depth, pose) is matched as well; then every frame reaches a listener with its pose. (It used to
wait for the image topic alone, so frames could go out before the pose subscription matched.)"""

from __future__ import annotations

import pytest
from _rosutil import RosClient

from ccl_lgs_ros.testing.synth import generate_scene


@pytest.mark.timeout(120)
def test_replay_sends_every_frame_with_its_pose(tmp_path, ros_domain, ros_procs):
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    cap = generate_scene(tmp_path / "scene", seed=3, width=32, height=24, num_frames=6)
    client = RosClient(ros_domain, "replay_listener")
    got: dict[str, list] = {"image": [], "pose": [], "info": []}
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    node = client.node
    node.create_subscription(Image, "/camera/color/image_raw", lambda m: got["image"].append(m), reliable)
    node.create_subscription(CameraInfo, "/camera/color/camera_info", lambda m: got["info"].append(m), reliable)
    node.create_subscription(PoseStamped, "/camera/pose", lambda m: got["pose"].append(m), reliable)
    try:
        proc = ros_procs.start(
            ["-m", "ccl_lgs_ros.ros.replay_node", str(tmp_path / "scene"), "--rate", "30", "--no-tf",
             "--wait-subscribers", "1", "--linger", "2"],
            name="replay",
        )
        n = len(cap.frames)
        assert client.spin_until(lambda: min(len(v) for v in got.values()) >= n, timeout=60), (
            ros_procs.log(proc)[-3000:]
        )
        assert client.spin_until(lambda: proc.poll() is not None, timeout=30)
        assert proc.returncode == 0, ros_procs.log(proc)[-3000:]
    finally:
        client.close()
    stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in got["image"]]
    assert len(set(stamps)) == n
    assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in got["pose"]] == stamps
    assert [(m.header.stamp.sec, m.header.stamp.nanosec) for m in got["info"]] == stamps


@pytest.mark.timeout(120)
def test_replay_does_not_start_while_a_subscription_is_unmatched(tmp_path, ros_domain, ros_procs):
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    generate_scene(tmp_path / "scene", seed=3, width=32, height=24, num_frames=3)
    client = RosClient(ros_domain, "replay_listener")
    images: list = []
    client.node.create_subscription(Image, "/camera/color/image_raw", images.append, 10)
    # Transient-local asks more than the replay's volatile pose publisher offers: the ROS graph
    # lists this subscription, but DDS never matches it, so the poses would never arrive.
    never = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    client.node.create_subscription(PoseStamped, "/camera/pose", lambda m: None, never)
    try:
        proc = ros_procs.start(
            ["-m", "ccl_lgs_ros.ros.replay_node", str(tmp_path / "scene"), "--rate", "30", "--no-tf",
             "--wait-subscribers", "1", "--wait-timeout", "5"],
            name="replay",
        )
        assert client.spin_until(lambda: proc.poll() is not None, timeout=60), ros_procs.log(proc)[-3000:]
    finally:
        client.close()
    log = ros_procs.log(proc)
    assert proc.returncode == 3, log[-3000:]
    assert "/camera/pose did not match" in log, log[-3000:]
    assert images == []
