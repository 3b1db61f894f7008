"""One process against two (torchrun, gloo, CPU) through the whole pipeline, per stage.

Generates a synthetic scene, then runs ``ccl-lgs train`` once as one process and once with
``--nproc 2`` (torchrun, gloo, loopback rendezvous), each rank on one thread
(``OMP_NUM_THREADS=1``), with the tiny preset and the simulator's priors. Per stage it records
the wall seconds of the stage record, the steps, the bytes each step's gradient all-reduce
carries (payload per rank), the priors' per-frame share and the sequential association, the CPU
seconds of all processes, and the load average before and after (the machine is shared: wall
time includes waiting for other work).

Then it writes an *estimate* (marked as such in the JSON) for 8 GPUs on one machine and 2 x 8
across machines, from the measured bytes per Gaussian per step and stated, unmeasured
interconnect bandwidths: the all-reduce time per step of a ring (``2 (W-1)/W * bytes / bw``) for
scenes of 0.1M / 1M / 3M Gaussians, and the priors stage as ``frames * t_frame / W + t_assoc``.
No GPU time is measured here.

    PYTHONPATH=src python bench/bench_distributed.py   # writes bench/results/distributed/distributed.{json,png}
    (run it inside `unshare -n sh -c 'ip link set lo up && ...'` to keep the rendezvous in a private netns)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results"

#: Assumed effective all-reduce bandwidths (bytes/s) for the estimate; none is measured here.
LINKS = {
    "8 GPUs, one machine, NVLink (assumed 150 GB/s effective)": (8, 150e9),
    "8 GPUs, one machine, PCIe 4 x16 (assumed 20 GB/s effective)": (8, 20e9),
    "2 x 8 GPUs, 100 Gb/s InfiniBand / RoCE (assumed 10 GB/s effective)": (16, 10e9),
    "2 x 8 GPUs, 10 Gb/s Ethernet (assumed 1 GB/s effective)": (16, 1e9),
}


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "note": "shared machine, loaded by other work during the run (see load averages)",
    }


def run(capture: Path, scene: Path, nproc: int, args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "ccl_lgs_ros", "train", str(capture), str(scene), *args]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    load0 = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"training with {nproc} process(es) failed:\n{proc.stderr[-3000:]}")
    record = json.loads((scene / "scene.json").read_text())
    stages = {}
    for name, st in record["stages"].items():
        m = st.get("metrics") or st.get("stats") or {}
        stages[name] = {
            "seconds": st["seconds"],
            "world_size": st.get("world_size"),
            "backend": st.get("backend"),
            "steps": m.get("steps"),
            "n_gaussians": m.get("n_gaussians"),
            "allreduce_bytes_per_step": m.get("allreduce_bytes_per_step"),
            "train_time_s": m.get("train_time_s"),
            "psnr_test": m.get("psnr_test"),
            "priors_frames_s_rank0": m.get("frames_s"),
            "priors_wait_s": m.get("wait_s"),
            "association_s": m.get("association_s"),
            "frames": m.get("frames"),
        }
    return {
        "nproc": nproc,
        "wall_s": wall,
        "cpu_s_all_processes": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "load_avg_1min_before_after": [load0, os.getloadavg()[0]],
        "stages": stages,
    }


def estimate(runs: list[dict]) -> dict:
    two = next(r for r in runs if r["nproc"] == 2)
    rgb = two["stages"]["rgb"]
    bytes_per_gaussian = rgb["allreduce_bytes_per_step"] / max(rgb["n_gaussians"] or 1, 1)
    out: dict = {
        "is_estimate": True,
        "basis": "measured: all-reduce payload per Gaussian per step of the RGB stage (float32 gradients of "
                 "every parameter at rgb.sh_degree of the run); assumed: the link bandwidths named below. "
                 "Per-step GPU compute is not measured here, so no speed-up is claimed, only the time a "
                 "step spends in the gradient all-reduce.",
        "rgb_bytes_per_gaussian_per_step_measured": bytes_per_gaussian,
        "rgb_bytes_per_gaussian_per_step_sh3": 4 * (3 + 3 + 4 + 1 + 3 + 45),
        "allreduce_ms_per_step": {},
    }
    per_g = out["rgb_bytes_per_gaussian_per_step_sh3"]
    for link, (world, bw) in LINKS.items():
        out["allreduce_ms_per_step"][link] = {
            f"{n / 1e6:g}M Gaussians": round(1e3 * 2 * (world - 1) / world * n * per_g / bw, 2)
            for n in (1e5, 1e6, 3e6)
        }
    pri = two["stages"].get("priors", {})
    out["priors"] = {
        "model": "t(W) = frames * t_frame / W + t_association (rank 0 alone) + cache reads",
        "association_s_measured_simulator": pri.get("association_s"),
        "note": "t_frame of the real SAM + CLIP is not measured here (no checkpoints, no GPU); with the "
                "simulator t_frame is milliseconds, so this run shows the structure, not the gain.",
    }
    return out


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = ["rgb", "priors", "field"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.35
    for i, r in enumerate(runs):
        xs = [j + i * width for j in range(len(stages))]
        axes[0].bar(xs, [r["stages"][s]["seconds"] for s in stages], width, label=f"{r['nproc']} rank(s)")
    axes[0].set_xticks([j + width / 2 for j in range(len(stages))], stages)
    axes[0].set_ylabel("stage wall seconds (shared, loaded 2-core CPU)")
    axes[0].legend()
    axes[0].set_title("1 vs 2 ranks, gloo, 1 thread per rank")
    two = next(r for r in runs if r["nproc"] == 2)
    vals = [two["stages"][s]["allreduce_bytes_per_step"] or 0 for s in ("rgb", "field")]
    axes[1].bar(["rgb", "field"], [v / 1e6 for v in vals])
    axes[1].set_ylabel("MB all-reduced per step per rank (2 ranks)")
    axes[1].set_title("gradient all-reduce payload")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=48)
    ap.add_argument("--out", type=Path, default=OUT / "distributed" / "distributed.json")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from ccl_lgs_ros.testing.synth import generate_scene

    args = ["--preset", "tiny", "--set", "priors.backend=simulator"]
    with tempfile.TemporaryDirectory() as tmp:
        capture = Path(tmp) / "capture"
        generate_scene(capture, seed=1, width=a.width, height=a.height, num_frames=a.frames, num_objects=3)
        runs = [run(capture, Path(tmp) / f"scene{n}", n, args) for n in (1, 2)]
    result = {
        "machine": machine(),
        "settings": {"frames": a.frames, "size": [a.width, a.height], "train_args": args,
                     "threads_per_rank": 1, "backend": "gloo (CPU)"},  # fmt: skip
        "runs": runs,
        "estimate": estimate(runs),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    plot(runs, a.out.with_suffix(".png"))
    print(json.dumps({r["nproc"]: {s: round(v["seconds"], 2) for s, v in r["stages"].items()} for r in runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
