"""Forward + backward time and peak memory of the rasterizer backends.

Random Gaussians (a 2 m cube seen from 3 m, scales 0.5-3.5 cm) rendered at several sizes; each
case is timed ``--reps`` times after one warm-up; the median and the best are reported (the
best is the one to compare on a shared machine, where other work inflates single repeats). Peak memory is the
growth of the peak RSS over the RSS before the case (CPU) or ``torch.cuda.max_memory_allocated``
(CUDA). Every case runs in a fresh process, with the kernel's peak-RSS counter reset after the
imports (``/proc/self/clear_refs``): in one long process the allocator keeps freed memory, so a
case after a larger one showed no growth at all.

    PYTHONPATH=src python bench/bench_render.py --out bench/out/render
    PYTHONPATH=src python bench/bench_render.py --tiny          # seconds, for a smoke test

Writes ``render_bench.json`` (machine info + one record per case) and ``render_bench.png``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from _rss import proc_status_kb, reset_peak_rss

from ccl_lgs_ros.io import atomic_write_json
from ccl_lgs_ros.splat.render import rasterize


def machine(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_avg_1min": os.getloadavg()[0],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def random_scene(n: int, size: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 2.0
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.03 + 0.005
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=g)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    f = 1.2 * size
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])
    params = [t.to(device).requires_grad_(True) for t in (means, quats, scales, opacities, colors)]
    return params, viewmat[None].to(device), K[None].to(device)


def time_case(n: int, size: int, backend: str, device: torch.device, reps: int, tile_size: int) -> dict:
    params, viewmats, Ks = random_scene(n, size, device)
    kw = {"backend": backend}
    if backend == "torch":
        kw["tile_size"] = tile_size

    def once() -> dict:
        out, alpha, meta = rasterize(*params, viewmats, Ks, size, size, **kw)
        (out.sum() + alpha.sum()).backward()
        for p in params:
            p.grad = None
        return meta

    import gc

    gc.collect()
    rss0 = reset_peak_rss()  # None where the counter cannot be reset: then "not measured"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    meta = once()  # warm-up (and gsplat JIT on first CUDA use)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        once()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    peak_mb: float | None
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        hwm = proc_status_kb("VmHWM")
        peak_mb = None if rss0 is None or hwm is None else (hwm - rss0) / 1024.0
    return {
        "n_gaussians": n, "size": size, "backend": backend, "tile_size": tile_size if backend == "torch" else None,
        "fwd_bwd_ms_median": 1000 * statistics.median(times), "fwd_bwd_ms_min": 1000 * min(times),
        "fwd_bwd_ms_all": [1000 * t for t in times],
        "peak_mem_mb": peak_mb, "n_intersections": meta.get("n_intersections"),
    }  # fmt: skip


def _isolated_case(threads: int, *args) -> dict:
    if threads:
        torch.set_num_threads(threads)
    return time_case(*args)


def run_isolated(threads: int, *args) -> dict:
    """:func:`time_case` in a fresh (spawned) process, so its peak memory is its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_isolated_case, threads, *args).result()


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({(r["backend"], r["size"], r["tile_size"]) for r in records}, key=str):
        rs = sorted(
            (r for r in records if (r["backend"], r["size"], r["tile_size"]) == key), key=lambda r: r["n_gaussians"]
        )
        label = f"{key[0]} {key[1]}px" + (f" tile {key[2]}" if key[2] else "")
        ax.plot([r["n_gaussians"] for r in rs], [r["fwd_bwd_ms_median"] for r in rs], "o-", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Gaussians")
    ax.set_ylabel("forward + backward (ms)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out/render"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backends", default="torch", help="comma list: torch,gsplat")
    ap.add_argument("--counts", default="10000,50000")
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--tile-sizes", default="8", help="torch backend tile edges to compare, comma list")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--tiny", action="store_true", help="smoke-test settings (1k Gaussians, 32 px, 1 rep)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        args.counts, args.sizes, args.reps = "1000", "32", 1
    device = torch.device(args.device)
    records = []
    for backend in args.backends.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for n in (int(c) for c in args.counts.split(",")):
                for ts in (int(t) for t in args.tile_sizes.split(",")) if backend == "torch" else (16,):
                    r = run_isolated(args.threads, n, size, backend, device, args.reps, ts)
                    peak = "n/a" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
                    ms = r["fwd_bwd_ms_median"]
                    print(f"{backend:6s} {size:4d}px {n:7d} G tile {ts:2d}: {ms:9.1f} ms, peak {peak} MB")
                    records.append(r)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "render_bench.json", {"machine": machine(device), "cases": records})
    plot(records, args.out / "render_bench.png")
    print(f"wrote {args.out / 'render_bench.json'}")


if __name__ == "__main__":
    main()
