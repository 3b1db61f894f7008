"""Peer process of test_dds_service.py: ``server`` serves SemanticQuery, ``client`` calls it.

The cloud is packed by hand here (not with ccl_lgs_ros.ros.conversions) so this test checks the
transport on its own: x y z float32 + rgb float32-packed, point i = (i, 2i, 3i) / 100.
"""

from __future__ import annotations

import sys

import numpy as np
import rclpy
from ccl_lgs_interfaces.srv import SemanticQuery
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import PointCloud2, PointField

N = 1000


def make_cloud(n: int) -> PointCloud2:
    pts = (np.arange(n, dtype=np.float32)[:, None] * np.array([1, 2, 3], np.float32)) / 100.0
    rgb = (np.arange(n, dtype=np.uint32) % 256) << 16
    rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
    rec["x"], rec["y"], rec["z"], rec["rgb"] = pts[:, 0], pts[:, 1], pts[:, 2], rgb
    msg = PointCloud2()
    msg.header.frame_id = "map"
    msg.height, msg.width = 1, n
    msg.fields = [PointField(name=c, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, c in enumerate("xyz")]
    msg.fields.append(PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1))
    msg.point_step, msg.row_step = 16, 16 * n
    msg.is_bigendian, msg.is_dense = False, True
    msg.data = rec.tobytes()
    return msg


def server() -> None:
    node = rclpy.create_node("dds_test_server")

    def handle(req: SemanticQuery.Request, resp: SemanticQuery.Response) -> SemanticQuery.Response:
        resp.success = req.query == "red mug"
        resp.message = f"echo:{req.query}"
        resp.cloud = make_cloud(N)
        resp.query_time_ms = 1.5
        return resp

    node.create_service(SemanticQuery, "/semantic_query", handle)
    print("SERVER READY", flush=True)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    try:
        ex.spin()
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass


def client() -> None:
    node = rclpy.create_node("dds_test_client")
    cli = node.create_client(SemanticQuery, "/semantic_query")
    if not cli.wait_for_service(timeout_sec=20.0):
        print("CLIENT: service not found", flush=True)
        sys.exit(2)
    req = SemanticQuery.Request(query="red mug")
    fut = cli.call_async(req)
    rclpy.spin_until_future_complete(node, fut, timeout_sec=20.0)
    resp = fut.result()
    if resp is None:
        print("CLIENT: no response", flush=True)
        sys.exit(3)
    rec = np.frombuffer(bytes(resp.cloud.data), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
    want = make_cloud(N)
    ok = (
        resp.success
        and resp.message == "echo:red mug"
        and resp.cloud.width == N
        and bytes(resp.cloud.data) == bytes(want.data)
        and abs(float(rec["y"][10]) - 0.2) < 1e-6
        and [f.name for f in resp.cloud.fields] == ["x", "y", "z", "rgb"]
    )
    print("CLIENT OK" if ok else f"CLIENT MISMATCH success={resp.success} msg={resp.message!r}", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    rclpy.init()
    try:
        {"server": server, "client": client}[sys.argv[1]]()
    finally:
        if rclpy.ok():
            rclpy.shutdown()
