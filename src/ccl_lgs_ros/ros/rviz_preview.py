"""An RViz-like PNG of the mapping node's visualisation topics, for machines without RViz.

Subscribes (latched QoS, like ``config/ccl_lgs.rviz``) to ``<node>/scene_cloud``,
``<node>/query_cloud`` and ``<node>/query_markers``, waits for what the node has published, and
draws it offscreen with :func:`ccl_lgs_ros.viz.render_rviz_like` (grid, fixed frame axes, scene
cloud, last query coloured by relevance, instance boxes, labels and centroids)::

    python -m ccl_lgs_ros.ros.rviz_preview snapshot.png [--node /ccl_lgs_mapper] [--timeout 10]

Useful on a headless robot to see what RViz would show; it is a picture of the same data, not a
screenshot of RViz. ``make demo`` writes one (``demo_out/rviz_preview.png``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .conversions import ConversionError, cloud_to_arrays, markers_to_viz


def collect(node: Any, ns: str = "/ccl_lgs_mapper", timeout: float = 10.0, need_query: bool = True) -> dict:
    """Spin ``node`` until the latched scene cloud (and, with ``need_query``, the query cloud
    and markers) arrived or ``timeout`` passed; returns the messages received by topic name."""
    import rclpy
    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import MarkerArray

    from .query_part import LATCHED

    got: dict[str, Any] = {}
    subs = [
        node.create_subscription(PointCloud2, f"{ns}/scene_cloud", lambda m: got.__setitem__("scene", m), LATCHED),
        node.create_subscription(PointCloud2, f"{ns}/query_cloud", lambda m: got.__setitem__("query", m), LATCHED),
        node.create_subscription(MarkerArray, f"{ns}/query_markers", lambda m: got.__setitem__("markers", m), LATCHED),
    ]
    wanted = {"scene", "query", "markers"} if need_query else {"scene"}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not wanted <= got.keys():
            rclpy.spin_once(node, timeout_sec=0.1)
        # A moment more for the optional topics once the required ones are in.
        end = min(deadline, time.monotonic() + 0.5)
        while time.monotonic() < end and len(got) < 3:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        for s in subs:
            node.destroy_subscription(s)
    return got


def render(messages: dict, path: str | Path | None, title: str = "") -> bytes:
    """Messages from :func:`collect` -> PNG (see :func:`ccl_lgs_ros.viz.render_rviz_like`)."""
    from ..viz import render_rviz_like

    kwargs: dict[str, Any] = {}
    frame = ""
    if "scene" in messages:
        arr = cloud_to_arrays(messages["scene"])
        kwargs["scene_points"] = arr.get("points")
        if "colors" in arr:
            kwargs["scene_colors"] = arr["colors"].astype(np.float64) / 255.0
        frame = messages["scene"].header.frame_id
    if "query" in messages and messages["query"].width * messages["query"].height > 0:
        arr = cloud_to_arrays(messages["query"])
        kwargs["query_points"] = arr.get("points")
        kwargs["query_relevance"] = arr.get("relevance")
        frame = frame or messages["query"].header.frame_id
    if "markers" in messages:
        kwargs["boxes"], kwargs["texts"], kwargs["spheres"] = markers_to_viz(messages["markers"])
    return render_rviz_like(path, fixed_frame=frame or "map", title=title, **kwargs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="PNG file to write")
    p.add_argument("--node", default="/ccl_lgs_mapper", help="the mapping node's namespace + name")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the latched topics")
    p.add_argument("--title", default="", help="a line of text drawn in the corner")
    args = p.parse_args(argv)

    import rclpy

    rclpy.init()
    node = rclpy.create_node("ccl_lgs_rviz_preview")
    try:
        got = collect(node, args.node, args.timeout, need_query=False)
        if "scene" not in got and "query" not in got:
            print(
                f"nothing received from {args.node} within {args.timeout} s (is the node serving a scene?)",
                file=sys.stderr,
            )
            return 1
        try:
            render(got, args.out, args.title)
        except ConversionError as exc:
            print(f"cannot draw what the node published: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.out} ({', '.join(sorted(got))})")
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
