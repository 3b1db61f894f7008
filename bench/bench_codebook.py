"""Codebook stage alone: do pull/push make the masks of a view read as their own object?

For each seed a synthetic scene is generated and its priors simulated with CLIP misreads
(``priors.sim_confusion``) of several strengths (``priors.sim_misread_keep``: the share of its own
semantics a misread feature keeps; low = the view looks entirely like the confuser, high = a
near tie). The codebook of each level is then learnt with the ablation's losses (codebook only,
+pull, +push, full CCL-LGS) and scored by ``readout_accuracy``: the share of object pixels whose
prototype reads as the object's label among the scene's labels (the raw CLIP features' own
accuracy is the reference). ``<variant>_on_other`` is the share of the misread masks' pixels
whose prototype belongs to another object (most of that prototype's pixels are another label's):
there the codebook cannot tell the misread view from the confuser itself. No field is trained,
so this isolates stage 4 of the method in about a second per codebook. Writes one JSON
(machine recorded) and a PNG plot.

    python bench/bench_codebook.py --seeds 101 102 103 --confusions 0.3 0.5 --keeps 0.35 0.6 0.8 0.9
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {"baseline": (0.0, 0.0), "pull": (1.0, 0.0), "push": (0.0, 1.0), "ccl": (1.0, 1.0)}


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "loadavg_start": os.getloadavg()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    p.add_argument("--confusions", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--keeps", type=float, nargs="+", default=[0.35, 0.6, 0.8, 0.9])
    p.add_argument("--corruption", type=float, default=0.3, help="priors.sim_corruption")
    p.add_argument("--preset", default="tiny", help="config preset whose field.codebook_* settings are used")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--out", type=Path, default=Path("bench/results/codebook_readout.json"))
    args = p.parse_args()

    from ccl_lgs_ros.config import load_config
    from ccl_lgs_ros.priors.simulator import SimulatorBackend, mask_readouts, readout_accuracy
    from ccl_lgs_ros.semantics.codebook import train_codebook
    from ccl_lgs_ros.synth import generate_scene

    host = machine()
    work = Path(tempfile.mkdtemp(prefix="ccl_bench_codebook_"))
    settings = [(c, k) for c in args.confusions for k in args.keeps]
    runs = []
    for seed in args.seeds:
        capture = generate_scene(work / f"capture_{seed}", seed=seed, width=args.width, height=args.height,
                                 num_frames=args.frames)
        names = sorted({inst["label"] for inst in capture.instances if not inst.get("background")})
        for confusion, keep in settings:
            cfg = load_config(preset=args.preset, overrides={
                "priors.backend": "simulator", "priors.sim_corruption": args.corruption,
                "priors.sim_confusion": confusion, "priors.sim_misread_keep": keep})
            backend = SimulatorBackend(cfg)
            levels = ("sp", "wp")
            priors = [backend.frame_priors(capture, i, levels) for i in range(len(capture.frames))]
            backend.associate(capture, priors, levels)
            text = dict(zip(names, backend.text_encoder().encode_text(names)))
            f = cfg.field
            for level in levels:
                row = {"seed": seed, "confusion": confusion, "keep": keep, "level": level,
                       "raw": readout_accuracy(capture, priors, level, text)}
                truth, area, raw_read, _ = mask_readouts(capture, priors, level, text)
                misread = (truth >= 0) & (raw_read != truth)
                for variant, (pull, push) in VARIANTS.items():
                    t0 = time.monotonic()
                    cb = train_codebook(priors, level, f.codebook_size, f.codebook_iterations, lr=f.codebook_lr,
                                        lambda_pull=pull * f.lambda_pull, lambda_push=push * f.lambda_push,
                                        margin=f.push_margin, frames_per_batch=f.codebook_frames_per_batch,
                                        seed=f.seed)
                    vectors = [cb.codebook[c] for c in cb.mask_codes]
                    row[variant] = readout_accuracy(capture, priors, level, text, vectors)
                    codes = np.concatenate(cb.mask_codes)
                    owner = {}  # prototype -> the label holding most of its object pixels
                    for j in np.unique(codes[truth >= 0]):
                        sel = (codes == j) & (truth >= 0)
                        owner[int(j)] = int(np.bincount(truth[sel], weights=area[sel]).argmax())
                    on_other = [owner[int(j)] != t for j, t in zip(codes[misread], truth[misread])]
                    row[f"{variant}_on_other"] = (float(area[misread][on_other].sum() / area[misread].sum())
                                                  if misread.any() else 0.0)
                    row[f"{variant}_seconds"] = round(time.monotonic() - t0, 3)
                print(json.dumps(row), flush=True)
                runs.append(row)
    summary = {}
    for confusion, keep in settings:
        rs = [r for r in runs if r["confusion"] == confusion and r["keep"] == keep]
        summary[f"confusion={confusion:g},keep={keep:g}"] = {
            v: float(np.mean([r[v] for r in rs])) for v in ("raw", *VARIANTS, *(f"{u}_on_other" for u in VARIANTS))}
    cfg = load_config(preset=args.preset)
    doc = {"benchmark": "codebook_readout", "command": "python bench/bench_codebook.py " + " ".join(
        ["--seeds", *map(str, args.seeds), "--confusions", *map(str, args.confusions), "--keeps",
         *map(str, args.keeps), "--corruption", str(args.corruption), "--preset", args.preset]),
        "note": "readout accuracy: share of object pixels whose codebook prototype reads as the object's label "
                "among the scene's object labels, mean over seeds and the two levels (sp, wp); raw = the CLIP "
                "features themselves",
        "codebook": {"size": cfg.field.codebook_size, "iterations": cfg.field.codebook_iterations,
                     "lr": cfg.field.codebook_lr, "lambda_pull": cfg.field.lambda_pull,
                     "lambda_push": cfg.field.lambda_push, "margin": cfg.field.push_margin},
        "date": time.strftime("%Y-%m-%d"), "machine": host, "runs": runs, "summary": summary}
    doc["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(args.confusions), figsize=(4.5 * len(args.confusions), 3.2), squeeze=False)
        for ax, confusion in zip(axes[0], args.confusions):
            for variant in ("raw", *VARIANTS):
                ax.plot(args.keeps, [summary[f"confusion={confusion:g},keep={k:g}"][variant] for k in args.keeps],
                        marker="o", label="CLIP features" if variant == "raw" else variant,
                        linestyle="--" if variant == "raw" else "-")
            ax.set_xlabel("priors.sim_misread_keep")
            ax.set_ylabel("readout accuracy")
            ax.set_title(f"sim_confusion {confusion:g}")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"codebook stage alone, seeds {args.seeds}", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".png"), dpi=100)
    except ImportError:
        pass
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
