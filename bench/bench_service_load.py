"""Benchmark of ``/semantic_query`` under heavy load: many client processes against one node.

Starts the real mapping node (its own process, serve-only) on the demo's scene (the synthetic
table-top scene ``make demo`` uses: ``ccl-lgs synth --seed 1``, 128x96, 24 frames, trained with
the tiny preset and the simulator priors; built once into ``--work/scene``, or ``--scene``), then
``--clients`` client processes (20) each make ``--calls`` calls (50) for the scene's labels, in
two patterns:

- ``sequential``: each client calls, waits for the answer, calls again (20 requests in flight);
- ``burst``: each client sends all its calls at once, then waits (1,000 requests in flight).

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
def client_main(args: argparse.Namespace) -> int:
    """A client process: wait for the go file, make the calls, write one JSON record per call."""
    import rclpy
    from ccl_lgs_interfaces.srv import SemanticQuery
    from rclpy.qos import QoSProfile

    rclpy.init()
    node = rclpy.create_node(f"load_client_{args.client}")
    # With Fast DDS a client's reply reader may hold replies meant for other clients too: a queue
    # deeper than the requests in flight keeps its own from being pushed out (README).
    cli = node.create_client(SemanticQuery, "/semantic_query", qos_profile=QoSProfile(depth=args.client_depth))
    if not cli.wait_for_service(timeout_sec=120):
        print(f"client {args.client}: no service", file=sys.stderr)
        return 1
    # wait_for_service sees the request topic; let discovery match the reply reader as well.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    Path(args.ready).write_text("ready")
    while not Path(args.go).exists():
        rclpy.spin_once(node, timeout_sec=0.05)
    labels = args.labels
    records: list[dict] = []

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

    if args.pattern == "sequential":
        for i in range(args.calls):
            t0 = time.perf_counter()
            fut = cli.call_async(SemanticQuery.Request(query=labels[(args.client + i) % len(labels)]))
            rclpy.spin_until_future_complete(node, fut, timeout_sec=args.timeout)
            record(fut, t0, time.perf_counter() if fut.done() else None)
    else:
        sent = []
        done_at: dict[int, float] = {}
        for i in range(args.calls):
            fut = cli.call_async(SemanticQuery.Request(query=labels[(args.client + i) % len(labels)]))
            sent.append((fut, time.perf_counter()))
        deadline = time.monotonic() + args.timeout
        while len(done_at) < len(sent) and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
            now = time.perf_counter()
            for k, (fut, _) in enumerate(sent):
                if k not in done_at and fut.done():
                    done_at[k] = now
        for k, (fut, t0) in enumerate(sent):
            record(fut, t0, done_at.get(k))
    Path(args.result).write_text(json.dumps(records))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


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


def run_pattern(pattern: str, args: argparse.Namespace, env: dict[str, str], base: Path, labels: list[str]) -> dict:
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
    t0 = time.perf_counter()
    go.write_text("go")
    records: list[dict] = []
    for c, (p, log) in enumerate(procs):
        try:
            p.wait(timeout=args.timeout * (args.calls if pattern == "sequential" else 1) + 120)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()
        result = work / f"result_{c}.json"
        if result.is_file():
            records += json.loads(result.read_text())
        else:  # a client that died: its calls count as timed out (nothing came back)
            records += [{"outcome": "timed_out", "ms": None}] * args.calls
    summary = summarise(records)
    summary.update(wall_s=time.perf_counter() - t0, loadavg_at_go=load,
                   latencies_ms=[r["ms"] for r in records if r["outcome"] == "answered"])
    return summary


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for pattern in PATTERNS:
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
    x = np.arange(len(PATTERNS))
    for k, kind in enumerate(kinds):
        axes[1].bar(x + (k - 1.5) * 0.2, [result["patterns"][p][kind] for p in PATTERNS], 0.2, label=kind)
    axes[1].set_xticks(x, PATTERNS)
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
            "node": {"max_queries_in_flight": ncfg.max_queries_in_flight, "query_queue_depth": ncfg.query_queue_depth,
                     "defaults": ncfg.max_queries_in_flight == Config().node.max_queries_in_flight},
            "commit": _commit(),
            "patterns": {},
            "targets": {"burst_timed_out": 0, "sequential_answered_p95_ms": 100.0},
        }
        for pattern in args.patterns:
            r = run_pattern(pattern, args, env, work, labels)
            result["patterns"][pattern] = r
            a = r["answered_ms"] or {"p50": float("nan"), "p95": float("nan")}
            print(f"{pattern}: {r['requests']} requests: answered {r['answered']}, busy {r['busy']}, "
                  f"failed {r['failed']}, timed out {r['timed_out']}; answered p50 {a['p50']:.1f} ms, "
                  f"p95 {a['p95']:.1f} ms; node query p50 {r['node_query_ms_p50']} ms; {r['wall_s']:.1f} s",
                  flush=True)
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
