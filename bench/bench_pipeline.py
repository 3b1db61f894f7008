"""Whole pipeline on synthetic scenes: time per stage and 2D / 3D accuracy, per variant.

For each seed (default: seeds no test uses) a synthetic scene is generated, trained with the
priors simulator (``--corruption`` sets its realistic inconsistency) and evaluated with the
``synthetic`` protocol (3D: selected Gaussians vs GT object points; 2D: LERF-style thresholded
relevance on held-out views). ``--variants`` runs the ablation (codebook only, +pull, +push, full
CCL-LGS, GAGS, CGC). Writes one JSON (machine recorded) and a PNG plot.

    python bench/bench_pipeline.py --seeds 101 102 103
    python bench/bench_pipeline.py --variants baseline pull push ccl gags cgc --seeds 101 102
    python bench/bench_pipeline.py --variants baseline pull push ccl --corruptions 0 0.3 0.6 1

``--corruptions`` sweeps the simulator's inconsistency (one RGB stage per seed serves every
corruption: the priors do not touch it); the summary is then per corruption and variant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "baseline": {"field.lambda_pull": 0.0, "field.lambda_push": 0.0},
    "pull": {"field.lambda_push": 0.0},
    "push": {"field.lambda_pull": 0.0},
    "ccl": {},
    "ccl-decoded": {"field.query_codes": "decoded"},
    "ccl-spatial": {"field.spatial_lambda": 0.1},
    # Codebook size N per level (the tiny preset uses 32, the default 64).
    "ccl-n16": {"field.codebook_size": 16},
    "ccl-n64": {"field.codebook_size": 64},
    "ccl-n128": {"field.codebook_size": 128},
    "gags": {"field.method": "gags"},
    "cgc": {"field.method": "cgc"},
    # The variants' query index from each Gaussian's decoded feature (before: their only path).
    "gags-decoded": {"field.method": "gags", "field.query_codes": "decoded"},
    "cgc-decoded": {"field.method": "cgc", "field.query_codes": "decoded"},
}


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_start": os.getloadavg()}


def run_one(seed: int, variant: str, args: argparse.Namespace, work: Path, corruption: float) -> dict:
    from ccl_lgs_ros.capture.format import Capture
    from ccl_lgs_ros.config import load_config, parse_assignments
    from ccl_lgs_ros.eval.synthetic import evaluate_synthetic
    from ccl_lgs_ros.pipeline import train
    from ccl_lgs_ros.testing.synth import generate_scene

    cap_dir = work / f"capture_{seed}"
    if not cap_dir.exists():
        generate_scene(cap_dir, seed=seed, width=args.width, height=args.height, num_frames=args.frames)
    overrides = {"priors.backend": "simulator", "priors.sim_corruption": corruption,
                 "device": args.device, **parse_assignments(args.set), **VARIANTS[variant]}
    cfg = load_config(preset=args.preset, overrides=overrides)
    scene = work / (f"scene_{seed}_{variant}" + ("" if args.corruptions is None else f"_c{corruption:g}"))
    rgb_seconds = 0.0
    if args.share_rgb:
        # No variant changes the RGB stage: train it once per seed and start every variant from a
        # copy (the pipeline then skips the finished stage); its time is added to each variant's.
        base = work / f"rgb_{seed}"
        if not (base / "seconds").exists():
            t0 = time.monotonic()
            train(cap_dir, base / "scene", cfg, stages="rgb")
            (base / "seconds").write_text(str(time.monotonic() - t0))
        rgb_seconds = float((base / "seconds").read_text())
        shutil.copytree(base / "scene", scene)
    t0 = time.monotonic()
    record = train(cap_dir, scene, cfg)
    seconds = time.monotonic() - t0 + rgb_seconds
    if args.share_rgb:
        record["stages"]["rgb"]["seconds"] = rgb_seconds
    ev = evaluate_synthetic(scene, Capture.load(cap_dir), cfg, device=args.device)
    stages = {k: round(v.get("seconds", 0.0), 2) for k, v in record["stages"].items()}
    return {"seed": seed, "variant": variant, "corruption": corruption, "seconds_total": round(seconds, 2),
            "stages": stages,
            "rgb_psnr_test": record["stages"]["rgb"]["metrics"].get("psnr_test"),
            "n_gaussians": record["stages"]["rgb"]["metrics"].get("n_gaussians"),
            "miou_2d": ev["2d"]["miou"], "loc_accuracy_2d": ev["2d"]["loc_accuracy"],
            "f1_3d": ev["3d"]["mean_f1"], "count_accuracy_3d": ev["3d"]["count_accuracy"],
            "separation_rate_3d": ev["3d"]["separation_rate"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    p.add_argument("--variants", nargs="+", default=["ccl"], choices=sorted(VARIANTS))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--corruption", type=float, default=0.3, help="priors.sim_corruption of the simulator")
    p.add_argument("--corruptions", type=float, nargs="+", default=None,
                   help="sweep these corruptions instead of --corruption (summary keyed 'variant@corruption')")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="extra setting for every variant (after the preset; a variant's own settings win)")
    p.add_argument("--out", type=Path, default=Path("bench/results/pipeline.json"))
    p.add_argument("--no-share-rgb", dest="share_rgb", action="store_false",
                   help="train the RGB stage again for every variant (default: once per seed, copied)")
    p.add_argument("--keep", type=Path, default=None, help="keep scenes here instead of a temp folder")
    args = p.parse_args()

    host = machine()  # before the runs: its load average is the one at the start
    work = args.keep or Path(tempfile.mkdtemp(prefix="ccl_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    corruptions = [args.corruption] if args.corruptions is None else args.corruptions
    runs = []
    try:
        for corruption in corruptions:
            for variant in args.variants:
                for seed in args.seeds:
                    r = run_one(seed, variant, args, work, corruption)
                    print(json.dumps(r), flush=True)
                    runs.append(r)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for corruption, variant in [(c, v) for c in corruptions for v in args.variants]:
        rs = [r for r in runs if r["variant"] == variant and r["corruption"] == corruption]
        key = variant if args.corruptions is None else f"{variant}@{corruption:g}"
        summary[key] = {k: float(np.mean([r[k] for r in rs if r[k] is not None]))
                            for k in ("seconds_total", "miou_2d", "loc_accuracy_2d", "f1_3d", "count_accuracy_3d",
                                      "separation_rate_3d", "rgb_psnr_test")}
    doc = {"benchmark": "pipeline", "command": "python bench/bench_pipeline.py " + " ".join(
        ["--seeds", *map(str, args.seeds), "--variants", *args.variants, "--preset", args.preset,
         *(["--corruption", str(args.corruption)] if args.corruptions is None
           else ["--corruptions", *map(str, args.corruptions)]), *[f"--set {a}" for a in args.set],
         *([] if args.share_rgb else ["--no-share-rgb"])]),
        "note": "the machine may have been shared with other work while this ran (see loadavg_start / "
                "loadavg_end); seconds_total = the RGB stage (trained once per seed, shared by the variants "
                "unless --no-share-rgb) + the variant's priors, codebook, field and query index",
        "date": time.strftime("%Y-%m-%d"), "machine": host,
        "settings": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "summary": summary}
    doc["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if args.corruptions is None:
            fig, ax = plt.subplots(figsize=(6, 3))
            names = list(summary)
            x = np.arange(len(names))
            ax.bar(x - 0.2, [summary[n]["miou_2d"] for n in names], 0.4, label="2D mIoU")
            ax.bar(x + 0.2, [summary[n]["f1_3d"] for n in names], 0.4, label="3D F1")
            ax.set_xticks(x, names)
            ax.set_ylim(0, 1)
            ax.legend()
            ax.set_title(f"synthetic scenes, seeds {args.seeds}")
        else:
            # One line per variant over the corruption, the seed-to-seed range as error bars.
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
            for ax, key, title in zip(axes, ("miou_2d", "f1_3d"), ("2D mIoU (held out)", "3D F1")):
                for j, variant in enumerate(args.variants):
                    xs = np.asarray(corruptions) + (j - (len(args.variants) - 1) / 2) * 0.008
                    vals = [[r[key] for r in runs if r["variant"] == variant and r["corruption"] == c]
                            for c in corruptions]
                    mean = np.array([np.mean(v) for v in vals])
                    err = np.array([[m - min(v), max(v) - m] for m, v in zip(mean, vals)]).T
                    ax.errorbar(xs, mean, yerr=err, marker="o", capsize=3, label=variant)
                ax.set_xlabel("priors.sim_corruption")
                ax.set_title(title)
                ax.grid(alpha=0.3)
            axes[0].legend(fontsize=8)
            fig.suptitle(f"synthetic scenes, seeds {args.seeds}", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".png"), dpi=100)
    except ImportError:
        pass
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
