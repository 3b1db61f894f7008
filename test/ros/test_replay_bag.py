"""The replay tool publishes a rosbag2 as live topics (through the bag importer)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from _rosutil import RosClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from test_capture_rosbag import _rgb, _write_bag  # noqa: E402

from ccl_lgs_ros.capture.format import Capture  # noqa: E402


@pytest.mark.timeout(180)
def test_replay_publishes_a_bag(tmp_path, ros_env_vars, ros_domain, ros_procs):
    from rosbags.rosbag2 import StoragePlugin
    from sensor_msgs.msg import Image

    bag = _write_bag(tmp_path / "bag", StoragePlugin.MCAP)
    imported = tmp_path / "imported"
    client = RosClient(ros_domain, "bag_listener")
    received: list[np.ndarray] = []

    def on_image(msg: Image) -> None:
        received.append(np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3).copy())

    client.node.create_subscription(Image, "/camera/color/image_raw", on_image, 50)
    try:
        proc = ros_procs.start(
            ["-m", "ccl_lgs_ros.ros.replay_node", str(bag), "--rate", "20", "--no-tf",
             "--wait-subscribers", "1", "--keep-import", str(imported),
             "--set", "node.pose_source=topic", "--set", "node.depth_topic=/camera/depth"],
            name="replay_bag",
        )
        cap_frames = None

        def done() -> bool:
            nonlocal cap_frames
            if cap_frames is None and (imported / "transforms.json").is_file():
                cap_frames = len(Capture.load(imported).frames)
            return cap_frames is not None and len(received) >= cap_frames

        assert client.spin_until(done, timeout=120), ros_procs.log(proc)[-3000:]
    finally:
        client.close()
    capture = Capture.load(imported)
    assert len(capture.frames) > 10  # every synchronised frame kept (motion thresholds off)
    np.testing.assert_array_equal(received[0], capture.load_image(0))
    assert any(np.array_equal(received[0], _rgb(k)) for k in range(40))
