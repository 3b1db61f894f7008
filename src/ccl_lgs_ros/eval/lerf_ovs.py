"""LERF-OVS evaluation with LangSplat's label files (protocol in :mod:`.metrics2d`).

Label folder: one JSON per test frame (``frame_00041.json``, usually beside ``frame_00041.jpg``)::

    {"info": {"name": "frame_00041.jpg", "width": 986, "height": 728},
     "objects": [{"category": "egg", "segmentation": [[x, y], ...], "bbox": [x1, y1, x2, y2]}, ...]}

Objects of one category are merged into one GT mask; the frame is matched to the capture frame
whose image file has the same stem (``frame_00041``). Relevance maps are rendered at the label's
``width`` x ``height``. mIoU is the mean over (frame, category), localisation accuracy likewise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..capture.format import Capture
from ..io import read_json
from .metrics2d import lerf_evaluate_query, lerf_prediction, polygon_mask


def read_lerf_labels(path: Path) -> dict[str, Any]:
    """One label JSON -> ``{"name", "width", "height", "categories": {cat: {"mask", "boxes"}}}``."""
    data = read_json(path)
    info = data.get("info", {})
    w, h = int(info["width"]), int(info["height"])
    cats: dict[str, dict[str, Any]] = {}
    for obj in data.get("objects", []):
        cat = str(obj["category"])
        seg = obj.get("segmentation") or []
        # LangSplat's files hold one polygon per object; tolerate a list of polygons too.
        polys = seg if seg and isinstance(seg[0][0], (list, tuple)) else [seg]
        entry = cats.setdefault(cat, {"mask": np.zeros((h, w), bool), "boxes": []})
        entry["mask"] |= polygon_mask(polys, h, w)
        if obj.get("bbox") is not None:
            entry["boxes"].append([float(v) for v in obj["bbox"]])
    return {"name": str(info.get("name", path.stem)), "width": w, "height": h, "categories": cats}


def _frame_by_stem(capture: Capture) -> dict[str, int]:
    return {Path(f.file_path).stem: i for i, f in enumerate(capture.frames)}


def evaluate_lerf_ovs(scene_dir, capture: Capture, labels: Path, cfg, device: str = "cpu", out_dir=None) -> dict:  # noqa: ANN001
    """Run the LERF-OVS protocol for every label file in ``labels`` (a folder or one JSON).

    Returns:
        ``{"protocol": "lerf-ovs", "miou", "loc_accuracy", "frames": {name: {cat: {"iou",
        "localised", "level"}}}, "missing_frames": [...]}``.
    """
    from ..semantics.relevance import RelevanceRenderer, safe_name, write_relevance_pngs

    labels = Path(labels)
    files = sorted(labels.glob("*.json")) if labels.is_dir() else [labels]
    renderer = RelevanceRenderer(scene_dir, cfg.query.negatives, device=device, backend=cfg.rgb.backend)
    by_stem = _frame_by_stem(capture)
    ious: list[float] = []
    locs: list[float] = []
    frames: dict[str, Any] = {}
    missing: list[str] = []
    for path in files:
        lab = read_lerf_labels(path)
        stem = Path(lab["name"]).stem
        if stem not in by_stem:
            missing.append(stem)
            continue
        cats = sorted(lab["categories"])
        if not cats:
            continue
        maps = renderer.maps(capture, by_stem[stem], cats, width=lab["width"], height=lab["height"])
        frames[stem] = {}
        for q, cat in enumerate(cats):
            per_level = {lv: m[q] for lv, m in maps.items()}
            gt = lab["categories"][cat]
            res = lerf_evaluate_query(per_level, gt["mask"], gt["boxes"])
            ious.append(res.iou)
            locs.append(float(res.localised))
            frames[stem][cat] = {"iou": res.iou, "localised": res.localised, "level": res.level}
            if out_dir is not None:
                rel = per_level[res.level]
                write_relevance_pngs(Path(out_dir), f"{stem}_{safe_name(cat)}", rel, lerf_prediction(rel))
    return {
        "protocol": "lerf-ovs",
        "miou": float(np.mean(ious)) if ious else float("nan"),
        "loc_accuracy": float(np.mean(locs)) if locs else float("nan"),
        "queries": len(ious),
        "frames": frames,
        "missing_frames": missing,
    }
