"""Benchmark of the 3D query engine: latency vs Gaussian count, cold time, index memory.

Synthetic scenes (``ccl_lgs_ros.testing.blobs.blob_scene``): objects on a grid over a floor,
``--labels`` labels shared round-robin by ``--objects`` objects, so one query selects
``objects / labels`` instances. Latency is measured with the text embedding cached (the ROS
service's steady state) and clustering included; the cold time adds the text encoder's call.
``prepare_s`` is the engine's per-scene work (filters, inverted index, per-unit sums and the
surface cloud at the default spacing ``--spacing``); ``other_spacing`` is a cloud at a spacing
that was not precomputed: its first query samples the selected codes, later ones reuse them.

    PYTHONPATH=src python bench/bench_query.py --sizes 10000 100000 1000000 --out bench/out/query

Writes ``query_latency.json`` and ``query_latency.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import time
from pathlib import Path

import numpy as np

from ccl_lgs_ros.config import QueryConfig
from ccl_lgs_ros.io import atomic_write_bytes, atomic_write_json
from ccl_lgs_ros.query.cluster import dbscan_open3d, kdtree_components
from ccl_lgs_ros.query.engine import QueryEngine
from ccl_lgs_ros.testing.blobs import blob_scene

GENERIC = ("object", "things", "stuff", "texture")


class HashTextEncoder:
    """Deterministic stand-in text encoder (a random unit vector per phrase) for timing only."""

    def __init__(self, dim: int = 512) -> None:
        self.dim = dim
        self._generic = self._vec("<generic>")

    def _vec(self, phrase: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(phrase.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.dim)
        return v / np.linalg.norm(v)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        out = [self._generic + 0.3 * self._vec(t) if t in GENERIC else self._vec(t) for t in texts]
        return np.asarray([v / np.linalg.norm(v) for v in out], dtype=np.float32)

    def spec(self) -> dict:
        return {"kind": "bench-hash", "dim": self.dim}

    def prototype(self, label: str) -> np.ndarray:
        v = self._vec(label) + 0.6 * self._generic
        return v / np.linalg.norm(v)


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        info["affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    return info


def make_scene(n: int, num_objects: int, num_labels: int, encoder: HashTextEncoder, seed: int = 0):
    side = int(np.ceil(np.sqrt(num_objects)))
    grid = np.array([(i % side, i // side) for i in range(num_objects)], dtype=np.float64) * 0.5
    centers = np.concatenate([grid, np.full((num_objects, 1), 0.1)], axis=1)
    labels = [f"label {j}" for j in range(num_labels)] + ["floor"]
    codebook = np.stack([encoder.prototype(lbl) for lbl in labels]).astype(np.float32)
    codes = np.arange(num_objects) % num_labels
    scene = blob_scene(n, centers, codes, floor_code=num_labels, seed=seed)
    return scene.index(codebook), labels


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1e3, q))


def bench_size(n: int, args: argparse.Namespace, encoder: HashTextEncoder) -> dict:
    index, labels = make_scene(n, args.objects, args.labels, encoder)
    cfg = QueryConfig(cluster_eps=args.eps, cluster_min_points=args.min_points, point_spacing=args.spacing)
    t0 = time.perf_counter()
    engine = QueryEngine(index, encoder, cfg)
    prepare_s = time.perf_counter() - t0
    queries = labels[: args.labels]
    # Cold: first query of a phrase, text encoder included.
    t0 = time.perf_counter()
    first = engine.query(queries[0], point_spacing=0.0)
    cold_ms = (time.perf_counter() - t0) * 1e3
    engine.query_many(queries, point_spacing=0.0)  # warm every embedding
    row: dict = {
        "num_gaussians": n,
        "prepare_s": prepare_s,
        "prepare_cloud_s": engine.cloud_prepare_s,
        "cold_ms": cold_ms,
    }
    for name, spacing in (("no_cloud", 0.0), ("cloud", args.spacing)):
        times, cpu, selected, inst = [], [], [], []
        for rep in range(args.repeats):
            q = queries[rep % len(queries)]
            t0, c0 = time.perf_counter(), time.thread_time()
            res = engine.query(q, point_spacing=spacing)
            times.append(time.perf_counter() - t0)
            # CPU time of this thread: robust to other processes competing for the cores.
            cpu.append(time.thread_time() - c0)
            selected.append(res.num_selected)
            inst.append(len(res.instances))
        row[name] = {
            "p50_ms": percentile_ms(times, 50),
            "p95_ms": percentile_ms(times, 95),
            "cpu_p50_ms": percentile_ms(cpu, 50),
            "cpu_p95_ms": percentile_ms(cpu, 95),
            "mean_selected": float(np.mean(selected)),
            "mean_instances": float(np.mean(inst)),
        }
    other = args.spacing / 2
    t0 = time.perf_counter()
    res = engine.query(queries[0], point_spacing=other)
    first_ms = (time.perf_counter() - t0) * 1e3
    again = []
    for _ in range(5):
        t0 = time.perf_counter()
        engine.query(queries[0], point_spacing=other)
        again.append(time.perf_counter() - t0)
    row["other_spacing"] = {
        "spacing": other,
        "first_ms": first_ms,
        "then_p50_ms": percentile_ms(again, 50),
        "points": int(sum(inst.points.shape[0] for inst in res.instances)),
    }
    row["expected_instances"] = args.objects / args.labels
    row["first_query_instances"] = len(first.instances)
    row["bytes_per_gaussian"] = engine.index_bytes_per_gaussian()
    return row


def bench_clustering(n: int, args: argparse.Namespace, encoder: HashTextEncoder) -> dict:
    """Time the clustering alternatives on one query's selection."""
    index, labels = make_scene(n, args.objects, args.labels, encoder)
    engine = QueryEngine(index, encoder, QueryConfig(cluster_eps=args.eps, cluster_min_points=args.min_points))
    res = engine.query(labels[0], point_spacing=0.0)
    ids = np.concatenate([inst.gaussian_ids for inst in res.instances])
    pts = index.means[ids]
    out = {"num_gaussians": n, "num_selected": int(ids.size)}
    for name, fn in (
        ("voxel_grid", lambda: engine.grid.cluster(ids, args.min_points)),
        ("open3d_dbscan", lambda: dbscan_open3d(pts, args.eps, args.min_points)),
        ("kdtree_components", lambda: kdtree_components(pts, args.eps, args.min_points)),
    ):
        t0 = time.perf_counter()
        labels_ = fn()
        out[name] = {"ms": (time.perf_counter() - t0) * 1e3, "clusters": int(labels_.max() + 1)}
    return out


def plot(rows: list[dict], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["num_gaussians"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in (("no_cloud", "-o"), ("cloud", "--s")):
        ax.plot(n, [r[name]["p50_ms"] for r in rows], style, label=f"p50 ({name})")
        ax.plot(n, [r[name]["p95_ms"] for r in rows], style, label=f"p95 ({name})", alpha=0.6)
    ax.plot([1e5, 1e6], [2, 10], "k*", markersize=10, label="targets (p95)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Gaussians")
    ax.set_ylabel("latency per query (ms), embedding cached")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000, 1_000_000, 2_000_000])
    parser.add_argument("--objects", type=int, default=24)
    parser.add_argument("--labels", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--min-points", type=int, default=10)
    parser.add_argument("--spacing", type=float, default=0.01)
    parser.add_argument("--cluster-compare-size", type=int, default=100_000, help="0 = skip")
    parser.add_argument("--out", type=Path, default=Path("bench/out/query"))
    args = parser.parse_args()
    info = machine()
    encoder = HashTextEncoder()
    rows = []
    for n in args.sizes:
        row = bench_size(n, args, encoder)
        rows.append(row)
        print(
            f"N={n:>9,}  p50 {row['no_cloud']['p50_ms']:7.2f} ms  p95 {row['no_cloud']['p95_ms']:7.2f} ms  "
            f"cpu p50/p95 {row['no_cloud']['cpu_p50_ms']:.2f}/{row['no_cloud']['cpu_p95_ms']:.2f} ms  "
            f"(with cloud p95 {row['cloud']['p95_ms']:7.2f} ms)  cold {row['cold_ms']:.1f} ms  "
            f"selected {row['no_cloud']['mean_selected']:.0f}  instances {row['no_cloud']['mean_instances']:.1f}  "
            f"prepare {row['prepare_s']:.2f} s  other spacing first/then "
            f"{row['other_spacing']['first_ms']:.1f}/{row['other_spacing']['then_p50_ms']:.2f} ms",
            flush=True,
        )
    report = {
        "machine": info,
        "note": "the machine may have been shared with other work: see loadavg_at_start / loadavg_at_end",
        "loadavg_at_end": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "sizes": rows,
    }
    if args.cluster_compare_size:
        report["clustering"] = bench_clustering(args.cluster_compare_size, args, encoder)
        print("clustering:", report["clustering"])
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "query_latency.json", report)
    plot(rows, args.out / "query_latency.png")
    print(f"wrote {args.out / 'query_latency.json'} and query_latency.png")


if __name__ == "__main__":
    main()
