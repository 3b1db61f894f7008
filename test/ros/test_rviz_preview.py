"""ros/rviz_preview.py: the node's markers and clouds read back and drawn (hand-built messages, no DDS).

The whole path over real DDS (the node's latched topics -> this module -> PNG) runs in the
`make demo` test (test_demo.py checks `rviz_preview.png`)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.timeout(60)]

conv = pytest.importorskip("ccl_lgs_ros.ros.conversions")
preview = pytest.importorskip("ccl_lgs_ros.ros.rviz_preview")
from ccl_lgs_interfaces.msg import ObjectInstance  # noqa: E402
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3  # noqa: E402


def instance_msg(label: str, k: int, centre: list[float], score: float) -> ObjectInstance:
    s = float(np.sqrt(0.5))  # box rotated 90 degrees about z
    pose = Pose(position=Point(x=centre[0], y=centre[1], z=centre[2]), orientation=Quaternion(x=0.0, y=0.0, z=s, w=s))
    return ObjectInstance(
        label=label,
        instance_id=k,
        score=score,
        centroid=Point(x=centre[0], y=centre[1], z=centre[2]),
        box_pose=pose,
        box_size=Vector3(x=0.1, y=0.2, z=0.3),
    )


def test_markers_round_trip_into_the_drawing_primitives():
    insts = [instance_msg("red mug", 0, [1.0, 0.0, 0.5], 0.8), instance_msg("red mug", 1, [0.0, 2.0, 0.5], 0.6)]
    markers = conv.instances_to_markers(insts, conv.make_header("map"))
    boxes, texts, spheres = preview.markers_to_viz(markers)
    assert len(boxes) == len(texts) == len(spheres) == 2
    np.testing.assert_allclose(boxes[1].center, [0.0, 2.0, 0.5])
    np.testing.assert_allclose(boxes[0].size, [0.1, 0.2, 0.3])
    # the box corners follow the marker's orientation (90 degrees about z in instance_msg)
    c = boxes[0].corners()
    np.testing.assert_allclose(c.max(0) - c.min(0), [0.2, 0.1, 0.3], atol=1e-9)
    assert "red mug #1" in texts[1].text and texts[1].position[2] > 0.5
    np.testing.assert_allclose(spheres[0].position, [1.0, 0.0, 0.5])
    # a DELETEALL in a later array clears everything before it, as in RViz
    markers.markers += conv.instances_to_markers([], conv.make_header("map")).markers
    assert preview.markers_to_viz(markers) == ([], [], [])


def test_render_from_messages(tmp_path):
    header = conv.make_header("map")
    rng = np.random.default_rng(0)
    scene = conv.arrays_to_cloud(rng.uniform(-1, 1, (500, 3)), header, colors=rng.random((500, 3)))
    qpts = rng.normal([1.0, 0.0, 0.5], 0.02, (200, 3))
    query = conv.arrays_to_cloud(qpts, header, fields={"relevance": np.full(200, 0.9, np.float32)})
    markers = conv.instances_to_markers([instance_msg("red mug", 0, [1.0, 0.0, 0.5], 0.9)], header)
    out = tmp_path / "rviz.png"
    png = preview.render({"scene": scene, "query": query, "markers": markers}, out, title="red mug")
    assert out.read_bytes() == png
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (900, 1400, 3)
    # the view is focused on the query: its centre is not the background
    assert np.abs(img[440:460, 690:710].astype(int) - 48).max() > 40
    # only the scene cloud (no query yet): still a picture
    assert preview.render({"scene": scene}, None)[:8] == b"\x89PNG\r\n\x1a\n"
