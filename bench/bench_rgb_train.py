"""RGB reconstruction: held-out PSNR against training wall time on a small capture.

Trains with :func:`ccl_lgs_ros.splat.trainer.train_rgb` for increasing iteration budgets (each a
fresh run, so every point is a complete run with its own schedule) and evaluates the held-out
frames. The capture is either a folder (``--capture``) or the built-in toy capture (coloured
blobs rendered by this package, ``--toy-views`` views at ``--toy-size`` px).

    PYTHONPATH=src python bench/bench_rgb_train.py --capture CAPTURE --downscale 6 --iters 500,1000,2000
    PYTHONPATH=src python bench/bench_rgb_train.py --tiny      # toy capture, seconds

Writes ``rgb_train_bench.json`` (machine info, settings, one record per run) and
``rgb_train_bench.png`` (PSNR vs seconds). Each run also records the process CPU seconds of its
training and the load average before and after it: on a shared machine the wall time includes
waiting for other work, the CPU time does not.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from _rss import proc_status_kb, reset_peak_rss

from ccl_lgs_ros.capture.format import Capture
from ccl_lgs_ros.config import Config, set_value
from ccl_lgs_ros.io import atomic_write_json
from ccl_lgs_ros.splat.trainer import train_rgb
from ccl_lgs_ros.testing.toy import make_toy_capture


def machine(device: str) -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "load_avg_1min": os.getloadavg()[0],
    }


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["train_time_s"] for r in records], [r["psnr_test"] or float("nan") for r in records], "o-")
    for r in records:
        ax.annotate(str(r["steps"]), (r["train_time_s"], r["psnr_test"] or 0), fontsize=7)
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--capture", type=Path, default=None, help="capture folder (default: the toy capture)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/rgb_train"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", default="300,1000")
    ap.add_argument("--downscale", type=int, default=1)
    ap.add_argument(
        "--preset-overrides", default="", help="extra rgb.* settings, e.g. 'sh_degree=1,max_gaussians=20000'"
    )
    ap.add_argument("--toy-views", type=int, default=20)
    ap.add_argument("--toy-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--tiny", action="store_true", help="smoke-test settings (toy 8 views at 24 px, 30 steps)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        args.capture, args.iters, args.toy_views, args.toy_size = None, "30", 8, 24
    work = Path(tempfile.mkdtemp(prefix="bench_rgb_"))
    if args.capture is None:
        capture, _ = make_toy_capture(work / "toy", n_views=args.toy_views, size=args.toy_size)
    else:
        capture = Capture.load(args.capture)
    records = []
    for iters in (int(i) for i in args.iters.split(",")):
        cfg = Config()
        cfg.rgb.iterations = iters
        cfg.rgb.downscale = args.downscale
        cfg.rgb.checkpoint_every = max(iters, 1)
        for item in filter(None, args.preset_overrides.split(",")):
            key, value = item.split("=", 1)
            set_value(cfg, f"rgb.{key.strip()}", value)  # validated; "false" really is False
        rss0 = reset_peak_rss()  # so a run is not hidden behind an earlier, larger one
        load0 = os.getloadavg()[0]
        t, cpu = time.perf_counter(), time.process_time()
        m = train_rgb(capture, cfg, work / f"run_{iters}", args.device, progress=False, resume=False)
        m["wall_s"] = time.perf_counter() - t
        m["cpu_s_with_eval"] = time.process_time() - cpu
        m["load_avg_1min_before_after"] = [load0, os.getloadavg()[0]]
        m["settings"] = {k: getattr(cfg.rgb, k) for k in vars(cfg.rgb)}
        hwm = proc_status_kb("VmHWM")
        m["peak_rss_growth_mb"] = None if rss0 is None or hwm is None else (hwm - rss0) / 1024.0
        print(
            f"{iters:6d} steps: {m['train_time_s']:8.1f} s (cpu {m['cpu_s_with_eval']:.0f} s incl. eval), "
            f"held-out PSNR {m['psnr_test']}, {m['n_gaussians']} G"
        )
        records.append(m)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "rgb_train_bench.json", {
        "machine": machine(args.device),
        "capture": str(args.capture or f"toy {args.toy_views} views {args.toy_size}px"),
        "downscale": args.downscale,
        "preset_overrides": args.preset_overrides,
        "note": "train_time_s is wall time; other work may have been running on the machine "
        "(see load_avg_1min_before_after and cpu_s_with_eval per run)",
        "runs": records,
    })  # fmt: skip
    plot(records, args.out / "rgb_train_bench.png")
    print(f"wrote {args.out / 'rgb_train_bench.json'}")


if __name__ == "__main__":
    main()
