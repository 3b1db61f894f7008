"""Two processes talk over real DDS: a SemanticQuery whose response carries a PointCloud2."""

from __future__ import annotations

from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parent / "helpers"

pytestmark = [pytest.mark.ros, pytest.mark.timeout(90)]


def test_semantic_query_across_processes(ros_procs):
    server = ros_procs.start([HELPERS / "dds_service_peer.py", "server"], name="server")
    ros_procs.wait_for_line(server, "SERVER READY", timeout=30)
    client = ros_procs.start([HELPERS / "dds_service_peer.py", "client"], name="client")
    rc = client.wait(timeout=60)
    out = ros_procs.log(client)
    assert rc == 0 and "CLIENT OK" in out, out[-3000:]
    assert server.poll() is None, "the server died while answering:\n" + ros_procs.log(server)[-3000:]
    assert ros_procs.stop(server) is not None


def test_domains_are_isolated(ros_procs, ros_env_vars):
    """A client in another domain must not see the server (the isolation actually isolates)."""
    server = ros_procs.start([HELPERS / "dds_service_peer.py", "server"], name="server")
    ros_procs.wait_for_line(server, "SERVER READY", timeout=30)
    other = str(1 + int(ros_env_vars["ROS_DOMAIN_ID"]) % 100)
    client = ros_procs.start(
        [
            "-c",
            "import rclpy; from ccl_lgs_interfaces.srv import SemanticQuery as S; rclpy.init(); "
            "n = rclpy.create_node('probe'); c = n.create_client(S, '/semantic_query'); "
            "print('FOUND' if c.wait_for_service(timeout_sec=3.0) else 'NOT FOUND', flush=True)",
        ],
        name="probe",
        extra_env={"ROS_DOMAIN_ID": other},
    )
    client.wait(timeout=30)
    assert "NOT FOUND" in ros_procs.log(client), ros_procs.log(client)
