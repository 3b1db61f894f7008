"""`make demo`: the whole pipeline over real ROS 2, on CPU, in a few minutes.

1. writes a synthetic table-top scene with ground truth (``ccl-lgs synth``);
2. starts the mapping node (its own process) and replays the scene into it as live topics
   (Image + CameraInfo + aligned depth + PoseStamped, another process); the node keeps
   keyframes on disk;
3. sends the ``TrainScene`` action (tiny preset, CPU, the priors *simulator* — the documented
   stand-in for SAM / SAM 2 / CLIP, since no checkpoints ship with the project — reading the
   ground truth of the replayed scene through ``priors.sim_ground_truth``) and prints its
   feedback while training runs in the node's separate trainer process;
4. calls ``/semantic_query`` from this process for every object label (one label is shared by
   two objects) and scores each returned cloud against the ground-truth object points;
5. writes to the output folder: per-object ``.ply`` clouds (as received over ROS), a 3DGS
   ``.ply`` of each selection, PNG renders with the found objects highlighted (RViz-style, and
   photoreal in ``renders/<label>/highlight/``: the rendered training view with the answer tinted
   and outlined, the 2D relevance over it), relevance maps of a held-out view, and
   ``summary.json`` with the 3D metrics.

Exit status 0 only when every queried object is found with F1 above ``--min-f1``.

With real checkpoints the same command runs on your data instead:
``ccl-lgs demo --source CAPTURE_OR_BAG --query "red mug" --query "chair" --device cuda --preset fast
--set priors.sam_checkpoint=... --set priors.sam2_checkpoint=... --set priors.clip_checkpoint=...``
(replayed like a robot, trained with the real SAM / SAM 2 / CLIP; scored where the capture has
ground truth).

DDS stays on this machine: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, a private
``ROS_DOMAIN_ID`` (random unless set) and ``ROS_LOG_DIR`` inside the output folder, for this
process and every child.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

#: An RGB-D robot: depth initialises the Gaussians (random initialisation fits far worse in
#: the few hundred steps the demo can afford on a CPU).
DEPTH_TOPIC = "/camera/aligned_depth_to_color/image_raw"


def _isolate_dds(out: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(110, 160)))
    env["ROS_LOG_DIR"] = str(out / "ros_log")
    env["PYTHONUNBUFFERED"] = "1"
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_LOG_DIR")})
    return env


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _allowed_roots(out: Path, args: argparse.Namespace) -> list[str]:
    """The node confines every path a goal names to its allowed roots: the output folder plus
    the folders of files the user named on the command line (checkpoints, ground truth)."""
    roots = {str(out)}
    for item in args.set:
        value = item.split("=", 1)[-1]
        if value and Path(value).expanduser().exists():
            roots.add(str(Path(value).expanduser().resolve().parent))
    return sorted(roots)


def _write_params(out: Path, args: argparse.Namespace, synthetic: bool, depth: bool) -> Path:
    # A synthetic scene is sparse already: keep every frame. A real capture keeps the node's
    # keyframe selection.
    capture = {"min_translation": 0.0, "min_rotation_deg": 0.0, "blur_rejection": False} if synthetic else {}
    params = {
        "ccl_lgs_mapper": {
            "ros__parameters": {
                "device": "cpu",
                "capture": {**capture, "image_format": "png"},
                "node": {
                    "pose_source": "topic",
                    "pose_topic": "/camera/pose",
                    "pose_topic_type": "PoseStamped",
                    "depth_topic": DEPTH_TOPIC if depth else "",
                    # The replay is a recording, not a live sensor: reliable QoS, so that a busy
                    # machine slows the capture down instead of dropping frames (the default,
                    # sensor_data, is best effort with a short queue, as a live camera wants).
                    "sensor_qos": "reliable",
                    "capture_dir": str(out / "capture"),
                    "scene_dir": str(out / "scenes"),
                    "allowed_roots": _allowed_roots(out, args),
                    "device": "cpu",
                    "train_preset": "tiny",
                },
            }
        }
    }
    path = out / "demo_params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()) and not args.keep:
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    env = _isolate_dds(out)
    t_start = time.monotonic()

    # 1. scene: a synthetic one, or the user's capture folder / bag (real models)
    from ..capture.format import Capture
    from ..testing.synth import generate_scene

    real = args.source is not None
    if real:
        if not args.query:
            raise RuntimeError("--source needs at least one --query TEXT")
        source_path = Path(args.source).resolve()
        from ..capture.importers import detect_format

        source = Capture.load(source_path) if detect_format(source_path) != "rosbag2" else None
        _say(f"replaying {source_path} with the real SAM / SAM 2 / CLIP (checkpoints from --set priors.*)")
    else:
        source_path = out / "source"
        _say(f"writing a synthetic scene ({args.frames} frames, {args.width}x{args.height}) to {source_path}")
        source = generate_scene(
            source_path, seed=args.seed, width=args.width, height=args.height, num_frames=args.frames
        )

    import rclpy
    from ccl_lgs_interfaces.action import TrainScene
    from ccl_lgs_interfaces.srv import GetStatus, SemanticQuery
    from rclpy.action import ActionClient
    from rclpy.node import Node

    from .conversions import cloud_to_arrays

    node_proc = replay_proc = None
    rclpy.init()
    client = Node("ccl_lgs_demo_client")
    try:
        # 2. node + replay
        has_depth = source is not None and any(f.depth_file_path for f in source.frames)
        params = _write_params(out, args, synthetic=not real, depth=has_depth)
        n_src = len(source.frames) if source is not None else 0
        _say("starting the mapping node")
        node_log = open(out / "mapping_node.log", "w")  # noqa: SIM115 - closed in finally via the process
        node_proc = subprocess.Popen(
            [sys.executable, "-m", "ccl_lgs_ros.ros.mapping_node", "--ros-args", "--params-file", str(params)],
            env=env,
            stdout=node_log,
            stderr=subprocess.STDOUT,
        )
        query_cli = client.create_client(SemanticQuery, "/semantic_query")
        status_cli = client.create_client(GetStatus, "/ccl_lgs_mapper/get_status")
        if not query_cli.wait_for_service(timeout_sec=60) or not status_cli.wait_for_service(timeout_sec=30):
            raise RuntimeError(f"the mapping node did not come up (see {out / 'mapping_node.log'})")

        _say(f"replaying {n_src} frames as ROS topics at {args.rate} Hz")
        replay_proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ccl_lgs_ros.ros.replay_node",
                str(source_path),
                "--rate",
                str(args.rate),
                "--depth-topic",
                DEPTH_TOPIC,
                "--pose-topic",
                "/camera/pose",
                "--no-tf",
                "--wait-subscribers",
                "1",
                "--linger",
                "2",
            ],
            env=env,
            stdout=open(out / "replay.log", "w"),
            stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        replay_proc.wait(timeout=60 + (n_src or 2000) / args.rate * 3)
        deadline = time.monotonic() + 30
        keyframes = 0
        while time.monotonic() < deadline:
            fut = status_cli.call_async(GetStatus.Request())
            rclpy.spin_until_future_complete(client, fut, timeout_sec=5)
            if fut.result() is not None:
                keyframes = int(fut.result().status.num_keyframes)
                if n_src and keyframes >= n_src:
                    break
            time.sleep(0.5)
        _say(f"the node kept {keyframes} keyframes in {out / 'capture'}")
        if keyframes < max(4, n_src // 2):
            node_log.flush()
            tail = (out / "mapping_node.log").read_text(errors="replace").splitlines()[-25:]
            raise RuntimeError(
                f"only {keyframes} of {n_src} keyframes captured; the end of {out / 'mapping_node.log'}:\n"
                + "\n".join(tail)
            )

        # 3. train
        backend = "real SAM / SAM 2 / CLIP" if real else "simulator"
        _say(f"training (separate process; priors: {backend}, preset {args.preset}, {args.device})")
        action = ActionClient(client, TrainScene, "/ccl_lgs_mapper/train")
        if not action.wait_for_server(timeout_sec=30):
            raise RuntimeError("the train action server is not available")
        if real:
            overrides = ["priors.backend=real", *args.set]
        else:
            overrides = ["priors.backend=simulator", f"priors.sim_ground_truth={source_path}", *args.set]
        goal = TrainScene.Goal(preset=args.preset, method="ccl", device=args.device, overrides=overrides)
        last: dict[str, Any] = {"stage": "", "t": 0.0}

        def feedback(msg: Any) -> None:
            fb = msg.feedback
            now = time.monotonic()
            if fb.stage != last["stage"] or now - last["t"] > 5.0:
                last.update(stage=fb.stage, t=now)
                eta = f", stage eta {fb.eta_s:.0f} s" if fb.eta_s >= 0 else ""
                _say(f"  {fb.stage:9s} {fb.progress * 100:5.1f}%  {fb.message}{eta}")

        send = action.send_goal_async(goal, feedback_callback=feedback)
        rclpy.spin_until_future_complete(client, send, timeout_sec=30)
        handle = send.result()
        if handle is None or not handle.accepted:
            raise RuntimeError("the train goal was rejected")
        res_fut = handle.get_result_async()
        rclpy.spin_until_future_complete(client, res_fut, timeout_sec=args.train_timeout)
        if res_fut.result() is None:
            raise RuntimeError("training did not finish in time")
        result = res_fut.result().result
        if not result.success:
            raise RuntimeError(f"training failed: {result.message}")
        scene_path = Path(result.scene_path)
        _say(f"trained in {result.duration_s:.0f} s: {scene_path}")

        # 4. queries over ROS
        from ..eval.metrics3d import evaluate_label, summarise
        from ..eval.synthetic import gt_objects
        from ..query.export import write_points_ply

        objects = gt_objects(source) if source is not None and source.instances else {}
        if real:  # the user's phrases; ground truth only where the capture has it
            objects = {q: objects.get(q, []) for q in args.query}
        (out / "objects").mkdir(exist_ok=True)
        evaluations, per_label = [], {}
        for label, gts in sorted(objects.items()):
            req = SemanticQuery.Request(query=label)
            fut = query_cli.call_async(req)
            rclpy.spin_until_future_complete(client, fut, timeout_sec=30)
            resp = fut.result()
            if resp is None or not resp.success:
                raise RuntimeError(f"/semantic_query {label!r} failed: {getattr(resp, 'message', 'no answer')}")
            clouds = []
            for k, inst in enumerate(resp.instances):
                arr = cloud_to_arrays(inst.points)
                pts = arr["points"]
                clouds.append(pts)
                colors = arr["colors"].astype(np.float32) / 255.0 if "colors" in arr else None
                write_points_ply(out / "objects" / f"{label.replace(' ', '_')}_{k}.ply", pts, colors)
            record = {"num_pred": len(clouds)}
            if gts:
                ev = evaluate_label(clouds, gts, dist_thresh=0.02, label=label)
                evaluations.append(ev)
                record = ev.to_dict()
            per_label[label] = {
                **record,
                "query_time_ms": float(resp.query_time_ms),
                "best_score": float(resp.best_score),
                "centroids": [[i.centroid.x, i.centroid.y, i.centroid.z] for i in resp.instances],
            }
            f1s = ", ".join(f"{o.f1:.2f}" for o in ev.objects) if gts else "no ground truth"
            _say(
                f"  {label!r}: {len(resp.instances)} instance(s) for {len(gts)} object(s), F1 [{f1s}], "
                f"{resp.query_time_ms:.1f} ms"
            )
        summary = summarise(evaluations)

        # 5. pictures: what RViz would show (the node's latched topics, as received over ROS)
        # for the label with the most objects, then renders from the scene the node serves
        rviz_png = _rviz_preview(client, query_cli, objects, out)
        files = _pictures(scene_path, Capture.load(out / "capture"), sorted(objects), out)
        if rviz_png is not None:
            files["rviz_preview"] = str(rviz_png)
        ok = all(o.f1 >= args.min_f1 for e in evaluations for o in e.objects)
        ok = ok and (real or bool(evaluations))
        report = {
            "success": ok,
            "min_f1": args.min_f1,
            "seconds": time.monotonic() - t_start,
            "frames": len(source.frames) if source is not None else None,
            "keyframes": keyframes,
            "scene": str(scene_path),
            "priors_backend": "real (SAM / SAM 2 / CLIP)" if real
            else "simulator (documented stand-in for SAM / SAM 2 / CLIP)",
            "metrics_3d": summary,
            "per_label": per_label,
            "files": files,
        }
        (out / "summary.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        _say(
            f"3D mean F1 {summary['mean_f1']:.3f} over {summary['num_objects']} objects, "
            f"count accuracy {summary['count_accuracy']:.2f}, shared label separated: "
            f"{summary['separation_rate']}; total {report['seconds']:.0f} s"
        )
        _say(f"results: {out} (summary.json, objects/*.ply, renders/*.png)")
        if not ok:
            _say(f"FAILED: an object was not found with F1 >= {args.min_f1}")
        return 0 if ok else 1
    finally:
        _stop(replay_proc)
        _stop(node_proc)
        client.destroy_node()
        rclpy.try_shutdown()


def _rviz_preview(client: Any, query_cli: Any, objects: dict[str, list], out: Path) -> Path | None:
    """Query the label with the most objects once more, then draw the node's visualisation
    topics (scene cloud, query cloud, markers) as received, like ``config/ccl_lgs.rviz``."""
    import rclpy
    from ccl_lgs_interfaces.srv import SemanticQuery

    from .rviz_preview import collect, render

    if not objects:
        return None
    label = max(sorted(objects), key=lambda k: len(objects[k]))
    fut = query_cli.call_async(SemanticQuery.Request(query=label))
    rclpy.spin_until_future_complete(client, fut, timeout_sec=30)
    resp = fut.result()
    if resp is None or not resp.success:
        _say(f"  no RViz preview: the query {label!r} failed")
        return None
    got = collect(client, "/ccl_lgs_mapper", timeout=10.0)
    if "scene" not in got:
        _say("  no RViz preview: the latched scene cloud did not arrive")
        return None
    path = out / "rviz_preview.png"
    title = f'/semantic_query "{label}": {len(resp.instances)} instance(s)  (RViz topics, drawn offscreen)'
    render(got, path, title=title)
    _say(f"  RViz-like preview of the node's topics for {label!r}: {path}")
    return path


def _pictures(scene_path: Path, source: Any, labels: list[str], out: Path) -> dict[str, Any]:
    """Selection renders (PNG, 3DGS .ply) and held-out relevance maps."""
    from ..config import from_dict
    from ..query.export import export_result
    from ..scene import load_scene
    from ..semantics.relevance import RelevanceRenderer, write_relevance_pngs
    from ..splat.data import split_indices
    from ..viewer.highlight import write_highlights

    scene = load_scene(scene_path)
    files: dict[str, Any] = {"renders": {}, "relevance": {}}
    for label in labels:
        result = scene.engine.query(label)
        files["renders"][label] = export_result(out / "renders" / label.replace(" ", "_"), scene.index, result)
        # Photoreal: the rendered training view with the answer tinted, and the relevance over it.
        files["renders"][label]["highlight"] = write_highlights(
            out / "renders" / label.replace(" ", "_") / "highlight", scene, result, capture=source
        )
    cfg = from_dict(scene.record["config"])
    _, test = split_indices(len(source.frames), cfg.rgb.holdout_every)
    frame = (test or [0])[0]
    renderer = RelevanceRenderer(scene_path, cfg.query.negatives, device="cpu", backend=cfg.rgb.backend,
                                 temperature=cfg.query.temperature)
    intr = source.frames[frame].intrinsics
    maps = renderer.maps(source, frame, labels, intr.width, intr.height)
    level = next(iter(maps))
    for qi, label in enumerate(labels):
        rel = maps[level][qi]
        mask = rel >= 0.5 + 0.7 * (rel.max() - 0.5)
        heat, msk = write_relevance_pngs(out / "relevance", f"frame{frame}_{label.replace(' ', '_')}", rel, mask)
        files["relevance"][label] = [str(heat), str(msk)]
    return files


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ccl-lgs demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out", help="output folder (replaced unless --keep)")
    p.add_argument("--keep", action="store_true", help="do not clear the output folder first")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--rate", type=float, default=6.0, help="replay rate (frames per second)")
    p.add_argument("--min-f1", type=float, default=0.5, help="success floor of every object's F1")
    p.add_argument("--train-timeout", type=float, default=900.0)
    p.add_argument("--set", action="append", default=[], help="extra section.field=value for training")
    p.add_argument("--source", default=None,
                   help="replay this capture folder or rosbag2 instead of a synthetic scene and train with the "
                        "real models (give their checkpoints with --set priors.sam_checkpoint=... etc.)")
    p.add_argument("--query", action="append", default=[], help="with --source: a phrase to query; repeatable")
    p.add_argument("--preset", default="tiny", help="training preset (tiny, fast, default)")
    p.add_argument("--device", default="cpu", help="device of the training process (cpu, cuda)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"[demo] error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
