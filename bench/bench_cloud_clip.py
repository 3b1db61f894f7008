"""3D accuracy of the query engine with and without ``query.clip_cloud``, on trained scenes.

Needs the scenes and captures that ``bench/bench_pipeline.py --keep DIR`` leaves in ``DIR``
(``scene_<seed>_<variant>``, ``capture_<seed>``); only querying runs here, no training:

    python bench/bench_pipeline.py --seeds 101 102 103 --variants ccl --keep /tmp/clip \\
        --out /tmp/clip/pipeline.json
    python bench/bench_cloud_clip.py --work /tmp/clip --out bench/results/query/cloud_clip.json

Each scene is queried with its recorded query settings, ``clip_cloud`` set off and on
(``synthetic`` protocol, 3D half: per-object F1 / precision / recall of the returned cloud at
2 cm, axis-aligned box IoU of the cloud, centroid error of the cloud's mean).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
from pathlib import Path

import numpy as np

from ccl_lgs_ros.capture.format import Capture
from ccl_lgs_ros.config import from_dict
from ccl_lgs_ros.eval.synthetic import evaluate_3d
from ccl_lgs_ros.io import atomic_write_json
from ccl_lgs_ros.scene import load_scene

KEYS = ("mean_f1", "mean_precision", "mean_recall", "mean_box_iou_aabb", "mean_centroid_error", "count_accuracy")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder of bench_pipeline.py --keep")
    p.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    p.add_argument("--variant", default="ccl")
    p.add_argument("--margins", type=float, nargs="+", default=[1.0], help="clip_cloud_margin values (on)")
    p.add_argument("--out", type=Path, default=Path("bench/results/query/cloud_clip.json"))
    args = p.parse_args()
    settings = [("off", {"clip_cloud": False})] + [
        (f"on, margin {m:g}", {"clip_cloud": True, "clip_cloud_margin": m}) for m in args.margins
    ]
    rows: dict[str, dict] = {name: {} for name, _ in settings}
    for seed in args.seeds:
        scene_dir = args.work / f"scene_{seed}_{args.variant}"
        capture = Capture.load(args.work / f"capture_{seed}")
        base = from_dict(load_scene(scene_dir).record["config"]).query  # the scene's own settings
        for name, change in settings:
            res = evaluate_3d(load_scene(scene_dir, query_cfg=dataclasses.replace(base, **change)), capture)
            rows[name][seed] = {k: res[k] for k in KEYS} | {
                "per_object_box_iou": [o["box_iou"] for lab in res["per_label"].values() for o in lab["objects"]]
            }
            print(seed, name, " ".join(f"{k}={res[k]:.4f}" for k in KEYS), flush=True)
    summary = {
        name: {k: float(np.mean([per_seed[s][k] for s in args.seeds])) for k in KEYS} for name, per_seed in rows.items()
    }
    for name, m in summary.items():
        print("mean", name, " ".join(f"{k}={v:.4f}" for k, v in m.items()))
    atomic_write_json(args.out, {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "protocol": "synthetic-3d (ccl_lgs_ros.eval.synthetic.evaluate_3d), dist_thresh 0.02 m",
        "mean": summary,
        "per_seed": {name: {str(s): v for s, v in per_seed.items()} for name, per_seed in rows.items()},
    })
    print("wrote", args.out)


if __name__ == "__main__":
    main()
