"""Benchmark of the capture path: can it keep up with a 30 Hz 1280x720 rgb8 camera plus poses?

Per frame, the work the live node does after rclpy hands over a message: decode the raw
``sensor_msgs/Image`` bytes (:func:`decode_image` + :func:`to_rgb`), look the pose up in a
100 Hz :class:`PoseBuffer` (interpolation), then :meth:`CaptureSession.offer` (keyframe
selection incl. blur score; PNG/JPEG encoding + atomic writes of the kept keyframes).

Dropped frames are counted by replaying the measured per-frame times against the camera clock
with a keep-last-1 subscription queue (what a sensor-data QoS gives): a frame that arrives while
the previous one is being processed waits; a newer arrival replaces it (dropped).

    PYTHONPATH=src python bench/bench_capture.py --seconds 5 --speed 0.3 --out bench/out/capture

Writes ``capture_throughput.json`` (machine info, per-stage ms, CPU usage, dropped frames).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ccl_lgs_ros.capture.format import Intrinsics
from ccl_lgs_ros.capture.image_codec import decode_image, encode_image, to_rgb
from ccl_lgs_ros.capture.pose_sync import PoseBuffer, camera_c2w_gl
from ccl_lgs_ros.capture.session import CaptureSession
from ccl_lgs_ros.config import CaptureConfig
from ccl_lgs_ros.io import atomic_write_json

W, H = 1280, 720


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "numpy": np.__version__,
        "load_avg_1min": os.getloadavg()[0],
    }


def scene_image(rng: np.random.Generator) -> np.ndarray:
    """A textured synthetic 'room' larger than the frame; frames are shifted crops of it."""
    img = np.zeros((H + 400, W + 1200, 3), np.uint8)
    img[:] = (90, 110, 130)
    for _ in range(400):
        x, y = int(rng.integers(0, img.shape[1])), int(rng.integers(0, img.shape[0]))
        w, h = int(rng.integers(10, 160)), int(rng.integers(10, 160))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(img, (x, y), (x + w, y + h), color, -1)
    noise = rng.normal(0, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def run(seconds: float, rate: float, speed: float, image_format: str, root: Path) -> dict:
    rng = np.random.default_rng(0)
    world = scene_image(rng)
    n = int(seconds * rate)
    # camera moves along x at `speed` m/s; 1 m = 400 px of image shift (crop offset)
    poses = PoseBuffer(max_gap=0.1)
    for k in range(int(seconds * 100) + 2):
        t = k / 100.0
        poses.add(t, [speed * t, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0])
    msgs = []
    for i in range(n):
        t = i / rate
        x0 = int(speed * t * 400) % (world.shape[1] - W)
        frame = np.ascontiguousarray(world[200 : 200 + H, x0 : x0 + W])
        msgs.append((t, encode_image(frame[..., ::-1].copy(), "bgr8")))  # cameras often publish bgr8
    intr = Intrinsics(fx=900.0, fy=900.0, cx=W / 2, cy=H / 2, width=W, height=H)
    cfg = CaptureConfig(image_format=image_format)
    session = CaptureSession(root, "map", cfg)

    stages = {"decode": [], "pose": [], "offer_kept": [], "offer_rejected": []}
    totals = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for t, (h, w, step, data) in msgs:
        a = time.perf_counter()
        rgb = to_rgb(decode_image("bgr8", h, w, step, data, max_pixels=cfg.max_image_pixels), "bgr8")
        b = time.perf_counter()
        body = poses.lookup(t + 0.004)  # image stamps fall between pose stamps: interpolation
        c2w = camera_c2w_gl(body)
        c = time.perf_counter()
        frame, _ = session.offer(rgb, c2w, intr, None, t)
        d = time.perf_counter()
        stages["decode"].append(b - a)
        stages["pose"].append(c - b)
        stages["offer_kept" if frame is not None else "offer_rejected"].append(d - c)
        totals.append(d - a)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0

    # keep-last-1 queue against the camera clock
    busy_until, dropped, queued = 0.0, 0, None
    processed = 0
    for i, (t, _) in enumerate(msgs):
        while queued is not None and busy_until <= t:
            busy_until = max(busy_until, queued[0]) + totals[queued[1]]
            processed += 1
            queued = None
        if busy_until <= t:
            busy_until = t + totals[i]
            processed += 1
        else:
            if queued is not None:
                dropped += 1
            queued = (t, i)
    if queued is not None:
        processed += 1

    def ms(values: list[float]) -> dict:
        if not values:
            return {"count": 0}
        v = np.asarray(values) * 1000.0
        return {"count": len(v), "mean_ms": float(v.mean()), "p50_ms": float(np.median(v)),
                "p95_ms": float(np.percentile(v, 95)), "max_ms": float(v.max())}  # fmt: skip

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "frames": n,
        "rate_hz": rate,
        "resolution": [W, H],
        "encoding": "bgr8",
        "camera_speed_m_s": speed,
        "image_format": image_format,
        "keyframes": session.stats.kept,
        "rejected": session.stats.rejected,
        "stages": {k: ms(v) for k, v in stages.items()},
        "per_frame": ms(totals),
        "throughput_fps": n / wall,
        "cpu_percent_of_one_core": 100.0 * cpu / wall,
        "cpu_percent_at_rate": 100.0 * (cpu / n) * rate,
        "dropped_frames_keep_last_1": dropped,
        "dropped_fraction": dropped / n,
        "max_rss_mb": usage.ru_maxrss / 1024.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="simulated stream length")
    ap.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz)")
    ap.add_argument("--speed", type=float, default=0.3, help="camera speed (m/s)")
    ap.add_argument("--formats", nargs="+", default=["png", "jpg"], choices=["png", "jpg"])
    ap.add_argument("--out", type=Path, default=Path("bench/out/capture"))
    args = ap.parse_args()
    results = {"machine": machine(), "runs": []}
    for image_format in args.formats:
        with tempfile.TemporaryDirectory() as tmp:
            res = run(args.seconds, args.rate, args.speed, image_format, Path(tmp) / "capture")
        results["runs"].append(res)
        frame_ms = res["per_frame"]
        print(
            f"{image_format}: {res['throughput_fps']:.1f} fps, per frame p50 {frame_ms['p50_ms']:.1f} ms "
            f"p95 {frame_ms['p95_ms']:.1f} ms, keyframes {res['keyframes']}, dropped "
            f"{res['dropped_frames_keep_last_1']}/{res['frames']}, CPU {res['cpu_percent_at_rate']:.0f}% at rate"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "capture_throughput.json", results)
    print(f"wrote {args.out / 'capture_throughput.json'}")


if __name__ == "__main__":
    main()
