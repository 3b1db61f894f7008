"""Codebook stage alone: do pull/push make the masks of a view read as their own object?

For each seed a synthetic scene is generated and its priors simulated with CLIP misreads
(``priors.sim_confusion``) of several strengths (``priors.sim_misread_keep``: the share of its own
semantics a misread feature keeps; low = the view looks entirely like the confuser, high = a
near tie). The codebook of each level is then learnt with the ablation's losses (codebook only,
+pull, +push, full CCL-LGS) and scored by ``readout_accuracy``: the share of object pixels whose
prototype reads as the object's label among the scene's labels (the raw CLIP features' own
accuracy is the reference), and by the synthetic protocol's LERF 2D mIoU computed on every
view's index maps directly (``<variant>_miou_2d``: each pixel takes its mask's prototype, no
field; what the 2D metric makes of the readout). ``<variant>_on_other`` is the share of the misread masks' pixels
whose prototype belongs to another object (most of that prototype's pixels are another label's):
there the codebook cannot tell the misread view from the confuser itself.
``<variant>_rel_own_clean`` / ``_rel_own_misread`` / ``_rel_misread_as``: the LERF relevance
(against the canonical negatives, as the 2D query scores it) of the prototypes of correctly read
masks for their label, of misread masks for their own label and for the label CLIP read instead
(area-weighted). No field is trained,
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


def relevance_of(vectors: np.ndarray, which: np.ndarray, names: list, text: dict, negatives: np.ndarray) -> np.ndarray:
    """LERF relevance of ``vectors[m]`` for the label ``names[which[m]]`` (NaN where ``which`` < 0)."""
    from ccl_lgs_ros.config import QueryConfig
    from ccl_lgs_ros.relevance import lerf_relevance

    out = np.full(len(which), np.nan)
    for j, name in enumerate(names):
        sel = which == j
        if sel.any():
            out[sel] = lerf_relevance(vectors[sel], text[name], negatives, QueryConfig().temperature)
    return out


def lerf_miou(capture, priors, books, backend, cfg) -> float:  # noqa: ANN001
    """The synthetic protocol's LERF 2D mIoU on every view's index maps, without a field: each
    pixel's vector is its mask's prototype (``books[level]``; ``None``: the CLIP feature)."""
    from ccl_lgs_ros.eval.metrics2d import (
        LERF_REFERENCE_WIDTH,
        SMOOTH_SIZE,
        SYNTHETIC_OPTIONS,
        label_masks,
        lerf_evaluate_query,
        mask_boxes,
    )
    from ccl_lgs_ros.relevance import lerf_relevance

    encoder = backend.text_encoder()
    negatives = encoder.encode_text(list(cfg.query.negatives))
    per_label: dict[str, list[float]] = {}
    for i in range(len(capture.frames)):
        ids = capture.load_instances(i)
        gts = label_masks(ids, capture.instances)
        size = max(1, round(SMOOTH_SIZE * ids.shape[1] / LERF_REFERENCE_WIDTH))
        for label in sorted(gts):
            positive = encoder.encode_text([label])[0]
            maps = {}
            for level, book in books.items():
                lp = priors[i].levels[level]
                vec = lp.features.astype(np.float32) if book is None else book.codebook[book.mask_codes[i]]
                rel = np.zeros(lp.masks.shape, np.float32)
                inside = lp.masks >= 0
                if len(vec):
                    rel[inside] = lerf_relevance(vec, positive, negatives, cfg.query.temperature)[lp.masks[inside]]
                maps[level] = rel
            result = lerf_evaluate_query(maps, gts[label], mask_boxes(gts[label]), size, SYNTHETIC_OPTIONS)
            per_label.setdefault(label, []).append(result.iou)
    return float(np.mean([np.mean(v) for v in per_label.values()]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    p.add_argument("--confusions", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--keeps", type=float, nargs="+", default=[0.35, 0.6, 0.8, 0.9])
    p.add_argument("--corruption", type=float, default=0.3, help="priors.sim_corruption")
    p.add_argument("--objectness", type=float, default=0.0, help="priors.sim_objectness")
    p.add_argument("--preset", default="tiny", help="config preset whose field.codebook_* settings are used")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--out", type=Path, default=Path("bench/results/codebook_readout.json"))
    args = p.parse_args()

    from ccl_lgs_ros.config import load_config
    from ccl_lgs_ros.eval.priors_metrics import mask_readouts, readout_accuracy
    from ccl_lgs_ros.priors.simulator import SimulatorBackend
    from ccl_lgs_ros.semantics.codebook import train_codebook
    from ccl_lgs_ros.testing.synth import generate_scene

    host = machine()
    work = Path(tempfile.mkdtemp(prefix="ccl_bench_codebook_"))
    settings = [(c, k) for c in args.confusions for k in args.keeps]
    runs, runs_2d = [], []
    for seed in args.seeds:
        capture = generate_scene(work / f"capture_{seed}", seed=seed, width=args.width, height=args.height,
                                 num_frames=args.frames)
        names = sorted({inst["label"] for inst in capture.instances if not inst.get("background")})
        for confusion, keep in settings:
            cfg = load_config(preset=args.preset, overrides={
                "priors.backend": "simulator", "priors.sim_corruption": args.corruption,
                "priors.sim_confusion": confusion, "priors.sim_misread_keep": keep,
                "priors.sim_objectness": args.objectness})
            backend = SimulatorBackend(cfg)
            levels = ("sp", "wp")
            priors = [backend.frame_priors(capture, i, levels) for i in range(len(capture.frames))]
            backend.associate(capture, priors, levels)
            text = dict(zip(names, backend.text_encoder().encode_text(names)))
            negatives = backend.text_encoder().encode_text(list(cfg.query.negatives))
            f = cfg.field
            rows, reads = {}, {}
            for level in levels:
                rows[level] = {"seed": seed, "confusion": confusion, "keep": keep, "level": level,
                               "raw": readout_accuracy(capture, priors, level, text)}
                reads[level] = mask_readouts(capture, priors, level, text)[:3]  # truth, area, CLIP's read
            lerf = {"seed": seed, "confusion": confusion, "keep": keep,
                    "raw": lerf_miou(capture, priors, {lv: None for lv in levels}, backend, cfg)}
            for variant, (pull, push) in VARIANTS.items():
                books = {}
                for level in levels:
                    t0 = time.monotonic()
                    cb = books[level] = train_codebook(
                        priors, level, f.codebook_size, f.codebook_iterations, lr=f.codebook_lr,
                        lambda_pull=pull * f.lambda_pull, lambda_push=push * f.lambda_push, margin=f.push_margin,
                        frames_per_batch=f.codebook_frames_per_batch, seed=f.seed)
                    row = rows[level]
                    row[f"{variant}_seconds"] = round(time.monotonic() - t0, 3)
                    vectors = [cb.codebook[c] for c in cb.mask_codes]
                    row[variant] = readout_accuracy(capture, priors, level, text, vectors)
                    truth, area, raw_read = reads[level]
                    misread = (truth >= 0) & (raw_read != truth)
                    codes = np.concatenate(cb.mask_codes)
                    owner = {}  # prototype -> the label holding most of its object pixels
                    for j in np.unique(codes[truth >= 0]):
                        sel = (codes == j) & (truth >= 0)
                        owner[int(j)] = int(np.bincount(truth[sel], weights=area[sel]).argmax())
                    on_other = [owner[int(j)] != t for j, t in zip(codes[misread], truth[misread])]
                    row[f"{variant}_on_other"] = (float(area[misread][on_other].sum() / area[misread].sum())
                                                  if misread.any() else 0.0)
                    # LERF relevance (against the canonical negatives) of each mask's prototype for
                    # its own label and, on misread masks, for the label CLIP read instead.
                    flat = np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)
                    own = relevance_of(flat, truth, names, text, negatives)
                    other = relevance_of(flat, raw_read, names, text, negatives)
                    clean = (truth >= 0) & ~misread
                    for key, sel, rel in (("own_clean", clean, own), ("own_misread", misread, own),
                                          ("misread_as", misread, other)):
                        row[f"{variant}_rel_{key}"] = (float(np.average(rel[sel], weights=area[sel]))
                                                       if sel.any() else float("nan"))
                lerf[variant] = lerf_miou(capture, priors, books, backend, cfg)
            for level in levels:
                print(json.dumps(rows[level]), flush=True)
                runs.append(rows[level])
            print(json.dumps(lerf), flush=True)
            runs_2d.append(lerf)
    summary = {}
    for confusion, keep in settings:
        rs = [r for r in runs if r["confusion"] == confusion and r["keep"] == keep]
        r2 = [r for r in runs_2d if r["confusion"] == confusion and r["keep"] == keep]
        summary[f"confusion={confusion:g},keep={keep:g}"] = {
            **{v: float(np.mean([r[v] for r in rs])) for v in ("raw", *VARIANTS, *(f"{u}_on_other" for u in VARIANTS))},
            **{f"{u}_rel_{k}": float(np.nanmean([r[f"{u}_rel_{k}"] for r in rs]))
               for u in VARIANTS for k in ("own_clean", "own_misread", "misread_as")},
            **{f"{v}_miou_2d": float(np.mean([r[v] for r in r2])) for v in ("raw", *VARIANTS)}}
    cfg = load_config(preset=args.preset)
    doc = {"benchmark": "codebook_readout", "command": "python bench/bench_codebook.py " + " ".join(
        ["--seeds", *map(str, args.seeds), "--confusions", *map(str, args.confusions), "--keeps",
         *map(str, args.keeps), "--corruption", str(args.corruption), "--objectness", str(args.objectness),
         "--preset", args.preset]),
        "note": "readout accuracy: share of object pixels whose codebook prototype reads as the object's label "
                "among the scene's object labels, mean over seeds and the two levels (sp, wp); raw = the CLIP "
                "features themselves; <variant>_miou_2d: the synthetic protocol's LERF 2D mIoU on every view's "
                "index maps (the prototype of each pixel's mask, no field), mean over seeds",
        "codebook": {"size": cfg.field.codebook_size, "iterations": cfg.field.codebook_iterations,
                     "lr": cfg.field.codebook_lr, "lambda_pull": cfg.field.lambda_pull,
                     "lambda_push": cfg.field.lambda_push, "margin": cfg.field.push_margin},
        "date": time.strftime("%Y-%m-%d"), "machine": host, "runs": runs, "runs_2d": runs_2d, "summary": summary}
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
        extra = f", sim_objectness {args.objectness:g}" if args.objectness else ""
        fig.suptitle(f"codebook stage alone, seeds {args.seeds}{extra}", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".png"), dpi=100)
    except ImportError:
        pass
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
