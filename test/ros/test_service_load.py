"""``/semantic_query`` under load, over real DDS: every request gets an answer. With
``node.query_executor: threads``, beyond ``node.max_queries_in_flight`` the node answers "busy" at
once (success false, a reason); with ``events`` (the default) queries are answered one after another
from the sized request queue, none refused. (Throughput and latency: bench/bench_service_load.py.)"""

from __future__ import annotations

import time

import pytest
from _rosutil import RosClient, start_mapper, write_blob_scene

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]


@pytest.mark.parametrize("executor", ["threads", "events"])
def test_a_burst_is_answered_never_dropped(ros_procs, tmp_path, ros_env_vars, executor):
    from ccl_lgs_interfaces.srv import SemanticQuery
    from rclpy.qos import QoSProfile

    root = tmp_path / "root"
    write_blob_scene(root / "scenes" / "blob", num_gaussians=20_000)
    proc = start_mapper(
        ros_procs,
        tmp_path,
        root,
        extra={
            "node.serve_only": True,
            "node.initial_scene": str(root / "scenes" / "blob"),
            "node.max_queries_in_flight": 1,
            "node.query_executor": executor,
        },
        ros_args=("-r", "__node:=mapper_renamed"),  # as a launch file's name= does
    )
    client = RosClient(int(ros_env_vars["ROS_DOMAIN_ID"]))
    try:
        # A client expecting many replies at once needs a reply queue that holds them (README).
        cli = client.node.create_client(SemanticQuery, "/semantic_query", qos_profile=QoSProfile(depth=1000))
        assert cli.wait_for_service(timeout_sec=30)
        client.spin_until(lambda: False, 1.5)  # let DDS match the reply reader too
        n = 200
        futures = [cli.call_async(SemanticQuery.Request(query="red mug", point_spacing=0.01)) for _ in range(n)]
        assert client.spin_until(lambda: all(f.done() for f in futures), 90), (
            f"{sum(not f.done() for f in futures)} of {n} requests unanswered"
        )
        answers = [f.result() for f in futures]
        ok = [r for r in answers if r.success]
        busy = [r for r in answers if not r.success and r.message.startswith("busy")]
        other = [r.message for r in answers if not r.success and not r.message.startswith("busy")]
        assert not other, other[:3]
        assert ok and all(r.found for r in ok)
        assert len(ok) + len(busy) == n
        if executor == "threads":
            assert busy, "200 requests at once against a bound of 1 and not one 'busy' answer"
            assert "node.max_queries_in_flight" in busy[0].message and not busy[0].instances
        else:  # one query at a time from the queue: nothing to refuse
            assert not busy and len(ok) == n
            names = client.node.get_node_names()
            assert "mapper_renamed" in names and "mapper_renamed_query" in names, names
        # the node is still fine: one query at a time is answered
        time.sleep(0.2)
        fut = cli.call_async(SemanticQuery.Request(query="red mug"))
        assert client.spin_until(fut.done, 30) and fut.result().success
        # (README, SemanticQuery.srv) a NUL ends a ROS string: the text after it never arrives
        fut = cli.call_async(SemanticQuery.Request(query="red mug\x00 and the rest"))
        assert client.spin_until(fut.done, 30)
        cut = fut.result()
        assert cut.success and cut.found and cut.instances[0].label == "red mug", cut.message
    finally:
        client.close()
    assert proc.poll() is None
