"""Benchmark of ``/semantic_query`` under heavy load: many client processes against one node.

Starts the real mapping node (its own process, serve-only) on the demo's scene (the synthetic
table-top scene ``make demo`` uses: ``ccl-lgs synth --seed 1``, 128x96, 24 frames, trained with
the tiny preset and the simulator priors; built once into ``--work/scene``, or ``--scene``), then
``--clients`` client processes (20) each make ``--calls`` calls (50) for the scene's labels, in
two patterns:

- ``sequential``: each client calls, waits for the answer, calls again (20 requests in flight);
- ``burst``: each client sends all its calls at once, then waits (1,000 requests in flight).

Each client process is written as a careful rclpy client would be: one node (without parameter
services), one executor made once (``--client-executor``: rclpy's C++ ``EventsExecutor`` by
default, a ``SingleThreadedExecutor`` where rclpy has none, e.g. Humble, or on request), and
``spin_until_future_complete`` on that executor per call. With Fast DDS every client of a service
receives every reply (each client drops those not meant for it, ros2/rclcpp#2397). Under 20
clients a Python ``SingleThreadedExecutor`` keeps waking while the others' replies sit in its
reader, and runs its Python wait-set loop each time: measured 549 wakes and 20 ms of client CPU
per call, against 2.7 ms with the EventsExecutor (docs/BENCHMARKS.md). A sequential call's round
trip ends when ``spin_until_future_complete`` returns; in the burst pattern the client spins its
executor and notes each answer when it sees its future done.

CPU per call (``cpu_breakdown`` in the JSON): the node's utime + stime (``/proc/<pid>``), every
client's ``time.process_time()`` over its calls, both split by thread name (Python / Fast DDS's
``dds.shm`` / ``dds.ev`` / ``dds.udp`` threads), the whole machine's busy time (``/proc/stat``),
and the reply's size and (de)serialization time. ``--profile PY_SPY`` also samples the node and
client 0 with py-spy during the sequential pattern.

Every request ends as one of: answered (success true), refused busy (success false, "busy":
``node.max_queries_in_flight`` reached), failed (success false, another reason) or timed out (no
answer within ``--timeout`` s: a silent drop). Reports p50 / p95 of the round trip of the
answered calls and of all answers. Targets (issue 17): burst 0 timed out; sequential p95 <= 100
ms on 2 cores.

    .venv/bin/python bench/bench_service_load.py --out bench/results/service_load

DDS stays on this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a private ROS_DOMAIN_ID,
ROS_LOG_DIR inside --work). Writes ``service_load.json``, ``service_load.png`` and the node's log
to ``--out``; the scene and the clients' files stay in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
PATTERNS = ("sequential", "burst")


# ----------------------------------------------------------------------------- one client process
def make_executor(kind: str):  # noqa: ANN201 - an rclpy Executor
    """The client's one executor: rclpy's EventsExecutor (C++, rclpy >= 7.1 "experimental") or a
    SingleThreadedExecutor (every rclpy; Humble has no EventsExecutor)."""
    from rclpy.executors import SingleThreadedExecutor

    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:  # Humble: no EventsExecutor
            return SingleThreadedExecutor(), "single (no rclpy.experimental.EventsExecutor)"
        return EventsExecutor(), "events"
    return SingleThreadedExecutor(), "single"


def client_main(args: argparse.Namespace) -> int:
    """A client process: wait for the go file, make the calls, write one JSON record per call."""
    import rclpy
    from ccl_lgs_interfaces.srv import SemanticQuery
    from rclpy.qos import QoSProfile

    rclpy.init()
    node = rclpy.create_node(f"load_client_{args.client}", start_parameter_services=False)
    # With Fast DDS a client's reply reader may hold replies meant for other clients too: a queue
    # deeper than the requests in flight keeps its own from being pushed out (README).
    cli = node.create_client(SemanticQuery, "/semantic_query", qos_profile=QoSProfile(depth=args.client_depth))
    executor, executor_kind = make_executor(args.client_executor)
    executor.add_node(node)
    wakes = [0]
    if hasattr(executor, "wait_for_ready_callbacks"):  # a Python executor: count its wakes (one per handler)
        inner = executor.wait_for_ready_callbacks

        def counted(*a, **kw):  # noqa: ANN002, ANN003, ANN202 - passes through
            wakes[0] += 1
            return inner(*a, **kw)

        executor.wait_for_ready_callbacks = counted
    if not cli.wait_for_service(timeout_sec=120):
        print(f"client {args.client}: no service", file=sys.stderr)
        return 1
    # wait_for_service sees the request topic; let discovery match the reply reader as well.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    Path(args.ready).write_text("ready")
    while not Path(args.go).exists():
        executor.spin_once(timeout_sec=0.05)
    labels = args.labels
    records: list[dict] = []
    cpu0 = time.process_time()  # this process, all threads (rclpy, DDS)
    threads0 = thread_cpu_s()
    wakes0 = wakes[0]

    def record(fut, t0: float, t_end: float | None) -> None:  # noqa: ANN001 - an rclpy Future
        if t_end is None or not fut.done() or fut.result() is None:
            records.append({"outcome": "timed_out", "ms": None})
            return
        res = fut.result()
        if res.success:
            outcome = "answered"
        elif res.message.startswith("busy"):
            outcome = "busy"
        else:
            outcome = "failed"
        records.append({"outcome": outcome, "ms": (t_end - t0) * 1e3, "node_ms": float(res.query_time_ms),
                        "message": "" if res.success else res.message[:200]})

    def call(i: int) -> tuple:
        t0 = time.perf_counter()
        return cli.call_async(SemanticQuery.Request(query=labels[(args.client + i) % len(labels)])), t0

    if args.pattern == "sequential":
        for i in range(args.calls):
            fut, t0 = call(i)
            executor.spin_until_future_complete(fut, timeout_sec=args.timeout)
            record(fut, t0, time.perf_counter() if fut.done() else None)
    else:
        sent = [call(i) for i in range(args.calls)]
        done_at: dict[int, float] = {}
        # Each answer's arrival time: taken when its future is seen done, after every executor wake.
        deadline = time.monotonic() + args.timeout
        while len(done_at) < len(sent) and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            now = time.perf_counter()
            for k, (fut, _) in enumerate(sent):
                if k not in done_at and fut.done():
                    done_at[k] = now
        for k, (fut, t0) in enumerate(sent):
            record(fut, t0, done_at.get(k))
    cpu_s = time.process_time() - cpu0
    executor_wakes = wakes[0] - wakes0 if hasattr(executor, "wait_for_ready_callbacks") else None
    threads = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu_s().items()}
    reply = _reply_cost(cli, executor, labels[args.client % len(labels)], args.timeout) if args.client == 0 else None
    Path(args.result).write_text(json.dumps({"records": records, "cpu_s": cpu_s, "threads": threads, "reply": reply,
                                             "executor": executor_kind, "executor_wakes": executor_wakes}))
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def _reply_cost(cli, executor, label: str, timeout: float) -> dict | None:  # noqa: ANN001 - rclpy objects
    """One more call (after the timed ones): the reply's serialized size and the CPU time of its
    (de)serialization in this Python process (rclpy.serialization, the same C conversion rclpy does
    for every request and reply)."""
    from ccl_lgs_interfaces.srv import SemanticQuery
    from rclpy.serialization import deserialize_message, serialize_message

    req = SemanticQuery.Request(query=label)
    fut = cli.call_async(req)
    executor.spin_until_future_complete(fut, timeout_sec=timeout)
    res = fut.result() if fut.done() else None
    if res is None:
        return None
    reps = 200
    t = time.process_time()
    for _ in range(reps):
        blob = serialize_message(res)
    ser_ms = (time.process_time() - t) / reps * 1e3
    t = time.process_time()
    for _ in range(reps):
        deserialize_message(blob, SemanticQuery.Response)
    de_ms = (time.process_time() - t) / reps * 1e3
    return {"query": label, "reply_bytes": len(blob), "request_bytes": len(serialize_message(req)),
            "instances": len(res.instances), "cloud_points": int(res.cloud.width) * int(res.cloud.height),
            "instance_points": int(sum(int(i.points.width) * int(i.points.height) for i in res.instances)),
            "serialize_reply_ms": ser_ms, "deserialize_reply_ms": de_ms}


def _profile_summary(raw: Path, top: int = 15) -> dict:
    """py-spy's raw samples (one line per stack: frames separated by ';', then a count) -> the
    share of samples per function, by self time (innermost frame) and inclusive (anywhere in the
    stack); idle threads are not sampled (py-spy without --idle), so shares are of busy time."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.strip() for f in stack.split(";")]  # "func (path/file.py:line)", outermost first
        names = [f.split(" (", 1)[0] + " (" + f.rsplit("/", 1)[-1].split("(")[-1].split(":")[0] + ")"
                 if " (" in f else f for f in frames]
        if names:
            self_n[names[-1]] = self_n.get(names[-1], 0) + n
        for name in set(names):
            incl_n[name] = incl_n.get(name, 0) + n

    def share(d: dict[str, int]) -> list[list]:
        return [[k, round(v / total, 4)] for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "self": share(self_n), "inclusive": share(incl_n)} if total else {"samples": 0}


def thread_cpu_s(pid: int | str = "self") -> dict[str, float]:
    """CPU seconds (utime + stime) per thread name of a process so far, from /proc/<pid>/task
    (rclpy's executor threads, Fast DDS's receive / event threads, ...)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        name = name.rstrip("0123456789.") or name  # "dds.udp.7411" / "dds.shm.2" -> one entry per kind
        if task.name == str(pid if pid != "self" else os.getpid()):
            name += " (main thread)"  # the node's: its executor's wait loop; a client's: its executor
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def node_work(scene_dir: Path, labels: list[str], allowed: list[str], reps: int = 200) -> dict:
    """CPU time (ms, ``time.process_time`` in this one thread, no other load from the bench) of the
    steps the node's service callback runs per call, in this process on the same scene: the engine
    query, the reply message (``fill_query_response``), the RViz markers, the reply's serialization
    (what rclpy does in C before handing it to DDS) and publishing the two RViz topics. The node's CPU per call beyond
    their sum is its executor, the DDS send to every client's reader and threads waiting on each other."""
    from ccl_lgs_interfaces.srv import SemanticQuery
    from rclpy.serialization import serialize_message

    from ccl_lgs_ros.config import Config
    from ccl_lgs_ros.ros import conversions as conv
    from ccl_lgs_ros.scene.load import load_scene

    cfg = Config()
    scene = load_scene(scene_dir, device="cpu", query_cfg=cfg.query, allowed_dirs=allowed)
    header = conv.make_header(scene.frame_id)
    results = [scene.engine.query(label) for label in labels]  # warm the caches, as the node's are
    replies = [conv.fill_query_response(SemanticQuery.Response(), r, header) for r in results]
    for reply in replies:  # first calls import message types and type support
        conv.instances_to_markers(reply.instances, header)
        serialize_message(reply)

    def per_call(fn) -> float:  # noqa: ANN001 - a callable of the call index
        t = time.process_time()
        for i in range(reps):
            fn(i % len(labels))
        return (time.process_time() - t) / reps * 1e3

    steps = {
        "engine_query_ms": per_call(lambda i: scene.engine.query(labels[i])),
        "fill_query_response_ms": per_call(lambda i: conv.fill_query_response(SemanticQuery.Response(), results[i],
                                                                               header)),
        "instances_to_markers_ms": per_call(lambda i: conv.instances_to_markers(replies[i].instances, header)),
        "serialize_reply_ms": per_call(lambda i: serialize_message(replies[i])),
    }
    # the two latched RViz topics the node publishes per answer (a DDS participant of its own here,
    # no subscriber: as in the benchmark's runs)
    import rclpy
    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import MarkerArray

    from ccl_lgs_ros.ros.query_part import LATCHED

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        ros_node = rclpy.create_node("bench_node_work", context=context, start_parameter_services=False)
        clouds = ros_node.create_publisher(PointCloud2, "~/query_cloud", LATCHED)
        marks = ros_node.create_publisher(MarkerArray, "~/query_markers", LATCHED)
        markers = [conv.instances_to_markers(r.instances, header) for r in replies]
        steps["publish_rviz_topics_ms"] = per_call(lambda i: (clouds.publish(replies[i].cloud),
                                                               marks.publish(markers[i])))
        ros_node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    steps["sum_ms"] = sum(steps.values())
    return {"note": node_work.__doc__.split("\n\n")[0].replace("\n    ", " "), "labels": labels, **steps}


def _per_call(by_thread: dict[str, float], calls: int) -> dict[str, float]:
    return {k: round(v / calls * 1e3, 3) for k, v in sorted(by_thread.items(), key=lambda kv: -kv[1]) if v > 0}


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads) in seconds, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds all processes on the machine spent busy so far (/proc/stat, every CPU)."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- the benchmark
def isolate(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ROS_LOCALHOST_ONLY", None)
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(101, 200)))
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOG_DIR=str(work / "ros_log"), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def demo_scene(work: Path, env: dict[str, str]) -> Path:
    """The demo's scene (synthetic, tiny preset, simulator priors), trained once into ``work``."""
    scene = work / "scene"
    if (scene / "query_index.npz").is_file():
        return scene
    source = work / "source"
    py = [sys.executable, "-m", "ccl_lgs_ros"]
    subprocess.run([*py, "synth", str(source), "--seed", "1", "--width", "128", "--height", "96", "--frames", "24"],
                   check=True, env=env)
    print("[bench] training the demo scene (tiny preset, simulator priors, CPU) ...", flush=True)
    subprocess.run([*py, "train", str(source), str(scene), "--preset", "tiny", "--device", "cpu",
                    "--set", "priors.backend=simulator"], check=True, env=env, stdout=subprocess.DEVNULL)
    return scene


def summarise(records: list[dict]) -> dict:
    outcomes = {k: sum(r["outcome"] == k for r in records) for k in ("answered", "busy", "failed", "timed_out")}
    out: dict = {"requests": len(records), **outcomes}
    for key, keep in (("answered_ms", ("answered",)), ("all_answers_ms", ("answered", "busy", "failed"))):
        ms = np.array([r["ms"] for r in records if r["outcome"] in keep], dtype=float)
        out[key] = (
            {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "max": float(ms.max())}
            if ms.size
            else None
        )
    node_ms = np.array([r["node_ms"] for r in records if r["outcome"] == "answered"], dtype=float)
    out["node_query_ms_p50"] = float(np.percentile(node_ms, 50)) if node_ms.size else None
    failed = [r["message"] for r in records if r["outcome"] == "failed"]
    out["failure_examples"] = sorted(set(failed))[:5]
    return out


def run_pattern(
    pattern: str, args: argparse.Namespace, env: dict[str, str], base: Path, labels: list[str], node_pid: int
) -> dict:
    work = base / f"clients_{pattern}"
    work.mkdir(parents=True, exist_ok=True)
    for f in work.iterdir():
        f.unlink()
    go = work / "go"
    procs = []
    for c in range(args.clients):
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "--client", str(c), "--pattern", pattern,
            "--calls", str(args.calls), "--timeout", str(args.timeout), "--client-depth", str(args.client_depth),
            "--client-executor", args.client_executor,
            "--ready", str(work / f"ready_{c}"), "--go", str(go), "--result", str(work / f"result_{c}.json"),
            "--labels", *labels,
        ]
        log = open(work / f"client_{c}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + 300
    def ready() -> int:
        return sum((work / f"ready_{c}").exists() for c in range(args.clients))

    while time.monotonic() < deadline and ready() < args.clients:
        if any(p.poll() not in (None, 0) for p, _ in procs):
            break
        time.sleep(0.1)
    load = os.getloadavg()
    spies = []
    if args.profile and pattern == "sequential":  # sampled while the calls run: the node and client 0
        for who, pid in (("node", node_pid), ("client0", procs[0][0].pid)):
            raw = base / f"pyspy_{who}.txt"
            cmd = [args.profile, "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "--format", "raw",
                   "--output", str(raw)] + (["--native"] if args.profile_native else [])
            spies.append((who, raw, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        time.sleep(1.0)
    node_cpu0, busy0, node_threads0 = _proc_cpu_s(node_pid), _machine_busy_s(), thread_cpu_s(node_pid)
    t0 = time.perf_counter()
    go.write_text("go")
    records: list[dict] = []
    client_cpu: list[float] = []
    client_threads: dict[str, float] = {}
    executors: set[str] = set()
    wakes: list[int] = []
    reply = None
    for c, (p, log) in enumerate(procs):
        try:
            p.wait(timeout=args.timeout * (args.calls if pattern == "sequential" else 1) + 120)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()
        result = work / f"result_{c}.json"
        if result.is_file():
            data = json.loads(result.read_text())
            records += data["records"]
            client_cpu.append(float(data["cpu_s"]))
            for k, v in data["threads"].items():
                client_threads[k] = client_threads.get(k, 0.0) + v
            reply = reply or data["reply"]
            executors.add(data["executor"])
            if data.get("executor_wakes") is not None:
                wakes.append(int(data["executor_wakes"]))
        else:  # a client that died: its calls count as timed out (nothing came back)
            records += [{"outcome": "timed_out", "ms": None}] * args.calls
    wall = time.perf_counter() - t0
    node_cpu, busy = _proc_cpu_s(node_pid) - node_cpu0, _machine_busy_s() - busy0
    node_threads = {k: v - node_threads0.get(k, 0.0) for k, v in thread_cpu_s(node_pid).items()}
    profiles = {}
    for who, raw, spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
        profiles[who] = _profile_summary(raw) if raw.is_file() else None
    summary = summarise(records)
    calls = max(1, len(records))
    clients_cpu = float(sum(client_cpu))
    summary["cpu_breakdown"] = {
        "note": "CPU seconds during the pattern (go -> every client done); per call = / requests. clients: "
                "time.process_time() of each client process over its calls (its last extra call for the reply "
                "size is not counted); node: utime+stime of the node process from /proc; machine: every "
                "process on the machine (/proc/stat), so machine - node - clients is everything else "
                "(the bench's own waiting, other users of the machine)",
        "node_cpu_s": node_cpu, "clients_cpu_s": clients_cpu, "machine_busy_cpu_s": busy,
        "node_ms_per_call": node_cpu / calls * 1e3, "clients_ms_per_call": clients_cpu / calls * 1e3,
        "machine_ms_per_call": busy / calls * 1e3,
        "other_ms_per_call": (busy - node_cpu - clients_cpu) / calls * 1e3,
        "cpu_utilisation_of_all_cores": busy / (wall * (os.cpu_count() or 1)),
        "node_ms_per_call_by_thread": _per_call(node_threads, calls),
        "clients_ms_per_call_by_thread": _per_call(client_threads, calls),
        "reply": reply,
        "python_executor_wakes_per_call": sum(wakes) / calls if wakes else None,
    }
    if profiles:
        summary["cpu_breakdown"]["profiles"] = profiles
    summary.update(wall_s=wall, loadavg_at_go=load, client_executor=sorted(executors),
                   latencies_ms=[r["ms"] for r in records if r["outcome"] == "answered"])
    return summary


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for pattern in result["patterns"]:
        r = result["patterns"][pattern]
        ms = np.sort(np.array(r["latencies_ms"], dtype=float))
        if ms.size:
            label = f"{pattern} (p95 {r['answered_ms']['p95']:.0f} ms)"
            axes[0].plot(ms, np.arange(1, ms.size + 1) / ms.size, label=label)
    axes[0].axvline(100, color="grey", ls="--", lw=1, label="target p95, sequential")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("round trip of answered calls (ms)")
    axes[0].set_ylabel("fraction of calls")
    axes[0].legend(fontsize=8)
    kinds = ("answered", "busy", "failed", "timed_out")
    done = list(result["patterns"])
    x = np.arange(len(done))
    for k, kind in enumerate(kinds):
        axes[1].bar(x + (k - 1.5) * 0.2, [result["patterns"][p][kind] for p in done], 0.2, label=kind)
    axes[1].set_xticks(x, done)
    axes[1].set_ylabel(f"requests (of {result['clients'] * result['calls_per_client']})")
    axes[1].legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"/semantic_query, {result['clients']} client processes x {result['calls_per_client']} calls "
                 f"({m['cpus']} CPUs, load {m['loadavg_at_start'][0]:.1f} at start)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--patterns", nargs="+", choices=PATTERNS, default=list(PATTERNS))
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a call may take before it counts as dropped")
    p.add_argument("--client-depth", type=int, default=1000, help="QoS depth of each client's service queues")
    p.add_argument("--scene", type=Path, default=None, help="a trained scene (default: the demo's, built in --out)")
    p.add_argument("--set", dest="node_params", action="append", default=[], metavar="node.field=VALUE",
                   help="extra node parameter (e.g. node.max_queries_in_flight=8)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "service_load")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ccl_lgs_service_load",
                   help="scene (kept for the next run) and the clients' files")
    p.add_argument("--client-executor", choices=("events", "single"), default="events",
                   help="each client's one executor: rclpy's EventsExecutor (default; falls back to single "
                        "where rclpy has none) or a SingleThreadedExecutor")
    p.add_argument("--profile", default=None, metavar="PY_SPY",
                   help="path of a py-spy binary: sample the node and client 0 during the sequential pattern")
    p.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames too)")
    # client-process mode (internal)
    p.add_argument("--client", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--pattern", choices=PATTERNS, help=argparse.SUPPRESS)
    p.add_argument("--ready", help=argparse.SUPPRESS)
    p.add_argument("--go", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--labels", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client is not None:
        return client_main(args)

    out, work = args.out.resolve(), args.work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    env = isolate(work)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR")})
    scene = args.scene.resolve() if args.scene else demo_scene(work, env)
    scene_json = json.loads((scene / "scene.json").read_text())
    capture = Path(scene_json["capture"])
    instances = json.loads((capture / "transforms.json").read_text())["ccl_lgs"]["instances"]
    labels = sorted({str(i["label"]) for i in instances if not i.get("background")})
    node_params: dict = {"serve_only": True, "initial_scene": str(scene), "allowed_roots": [str(work)],
                         "publish_rate": 1.0}
    for item in args.node_params:
        key, _, value = item.partition("=")
        node_params[key.removeprefix("node.")] = yaml.safe_load(value)
    params = {"/**": {"ros__parameters": {"device": "cpu", "node": node_params}}}
    pfile = work / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    sys.path.insert(0, str(REPO / "src"))
    from ccl_lgs_ros.config import Config, load_config

    ncfg = load_config(pfile).node
    work_steps = node_work(scene, labels, [str(work)])  # before the node starts: nothing else runs
    print("node's steps per call, in one thread:", {k: round(v, 3) for k, v in work_steps.items()
                                                     if k.endswith("_ms")}, flush=True)
    log = open(out / "node.log", "wb")  # noqa: SIM115 - closed below
    node = subprocess.Popen(
        [sys.executable, "-m", "ccl_lgs_ros.ros.mapping_node", "--ros-args", "--params-file", str(pfile)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while b"/semantic_query is up" not in (out / "node.log").read_bytes():
            if node.poll() is not None or time.monotonic() > deadline:
                print("node did not come up; see", out / "node.log")
                return 1
            time.sleep(0.2)
        result: dict = {
            "clients": args.clients,
            "calls_per_client": args.calls,
            "timeout_s": args.timeout,
            "client_qos_depth": args.client_depth,
            "scene": {"path": str(scene), "labels": labels, "gaussians": _gaussians(scene)},
            "node": {"query_executor": ncfg.query_executor, "max_queries_in_flight": ncfg.max_queries_in_flight,
                     "query_queue_depth": ncfg.query_queue_depth, "set": list(args.node_params),
                     "defaults": all(getattr(ncfg, k) == getattr(Config().node, k)
                                     for k in ("query_executor", "max_queries_in_flight", "query_queue_depth"))},
            "commit": _commit(),
            "node_steps_cpu_ms": work_steps,
            "patterns": {},
            "targets": {"burst_timed_out": 0, "sequential_answered_p95_ms": 100.0},
        }
        for pattern in args.patterns:
            r = run_pattern(pattern, args, env, work, labels, node.pid)
            result["patterns"][pattern] = r
            a = r["answered_ms"] or {"p50": float("nan"), "p95": float("nan")}
            print(f"{pattern}: {r['requests']} requests: answered {r['answered']}, busy {r['busy']}, "
                  f"failed {r['failed']}, timed out {r['timed_out']}; answered p50 {a['p50']:.1f} ms, "
                  f"p95 {a['p95']:.1f} ms; node query p50 {r['node_query_ms_p50']} ms; {r['wall_s']:.1f} s",
                  flush=True)
            cb = r["cpu_breakdown"]
            print(f"  CPU per call: node {cb['node_ms_per_call']:.2f} ms, clients {cb['clients_ms_per_call']:.2f} ms, "
                  f"other {cb['other_ms_per_call']:.2f} ms (machine {cb['machine_ms_per_call']:.2f} ms); reply "
                  f"{cb['reply']}", flush=True)
        result["machine"] = {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": load_start,
            "loadavg_at_end": os.getloadavg(),
            "note": "the machine may have been shared with other work: see the load averages",
        }
        from ccl_lgs_ros.io import atomic_write_json

        atomic_write_json(out / "service_load.json", result)
        plot(result, out / "service_load.png")
        print("wrote", out / "service_load.json")
        return 0
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
        log.close()


def _gaussians(scene: Path) -> int | None:
    try:
        with np.load(scene / "query_index.npz", allow_pickle=False) as data:
            return int(data["means"].shape[0]) if "means" in data else None
    except (OSError, ValueError):
        return None


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
