"""LERF-OVS evaluation on LangSplat's label layout (protocol and reference in :mod:`.metrics2d`).

Layout (LangSplat's ``label/<scene>/``, reference: ``minghanqin/LangSplat``
``eval/evaluate_iou_loc.py`` ``eval_gt_lerfdata`` @ ``26ed214``): one JSON per test frame,
``frame_00041.json`` beside its image ``frame_00041.jpg``::

    {"info": {"name": "frame_00041.jpg", "width": 986, "height": 728},
     "objects": [{"category": "egg", "segmentation": [[x, y], ...], "bbox": [x1, y1, x2, y2]}, ...]}

Only ``frame_*.json`` files are read when a folder holds any (the reference's glob), otherwise every
``*.json``. Objects of one category are merged into one GT mask and keep all their boxes; the frame
is matched to the capture frame whose image file has the same stem as ``info.name``
(``frame_00041``), else the same prefix and number (``frame_000041``); the reference instead takes
rendered view ``41 - 1`` of its own render folder, the same frame when every image was trained on.
Relevance maps are rendered at the label's ``width`` x ``height``. mIoU is the mean over (frame,
category), localisation accuracy likewise (hits / pairs).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..capture.format import Capture
from ..config import Config
from ..io import read_json
from ..semantics.relevance import RelevanceRenderer, safe_name, write_relevance_pngs
from .metrics2d import (
    LANGSPLAT_OPTIONS,
    LANGSPLAT_REFERENCE,
    LerfOptions,
    lerf_evaluate_query,
    lerf_prediction,
    polygon_mask,
    protocol_mean,
)


def read_lerf_labels(path: Path, vertices: str = "truncate") -> dict[str, Any]:
    """One label JSON -> ``{"name", "width", "height", "categories": {cat: {"mask", "boxes"}}}``.

    ``vertices``: how polygon coordinates become pixels (``"truncate"``: LangSplat's integer cast).
    """
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
        entry["mask"] |= polygon_mask(polys, h, w, vertices)
        if obj.get("bbox") is not None:
            # The reference reshapes every bbox to rows of 4 (x1 y1 x2 y2), so one entry may hold several.
            entry["boxes"].extend(np.asarray(obj["bbox"], dtype=np.float64).reshape(-1, 4).tolist())
    return {"name": str(info.get("name", path.stem)), "width": w, "height": h, "categories": cats}


def label_files(labels: Path) -> list[Path]:
    """The label JSONs of a folder (``frame_*.json`` if any, else ``*.json``) or the one file given."""
    labels = Path(labels)
    if not labels.is_dir():
        if not labels.is_file():
            raise FileNotFoundError(f"{labels}: no such label folder or file")
        return [labels]
    return sorted(labels.glob("frame_*.json")) or sorted(labels.glob("*.json"))


def _numbered(stem: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(.*?)(\d+)", stem)
    return (m.group(1), int(m.group(2))) if m else None


def frame_by_stem(capture: Capture) -> dict[str | tuple[str, int], int]:
    """Capture frame index by image stem, and by (prefix, number) so ``frame_00041`` also finds
    ``frame_000041`` (LangSplat names frames with 5 digits, other tools with 6)."""
    out: dict[str | tuple[str, int], int] = {}
    for i, f in enumerate(capture.frames):
        stem = Path(f.file_path).stem
        out[stem] = i
        key = _numbered(stem)
        if key is not None:
            out.setdefault(key, i)
    return out


def find_frame(by_stem: dict, stem: str) -> int | None:
    """The capture frame of a label's image stem (exact, else by prefix and number)."""
    if stem in by_stem:
        return by_stem[stem]
    key = _numbered(stem)
    return by_stem.get(key) if key is not None else None


def labelled_frames(files: list[Path], capture: Capture, vertices: str,
                    missing: list[str]) -> Iterator[tuple[str, int, dict[str, Any]]]:  # fmt: skip
    """Each label file whose image is a frame of ``capture``: ``(stem, frame index, labels)``.

    The stems of the others are appended to ``missing`` (every protocol reports them, none fails).
    """
    by_stem = frame_by_stem(capture)
    for path in files:
        lab = read_lerf_labels(path, vertices)
        stem = Path(lab["name"]).stem
        index = find_frame(by_stem, stem)
        if index is None:
            missing.append(stem)
            continue
        yield stem, index, lab


def evaluate_lerf_ovs(scene_dir: str | Path, capture: Capture, labels: Path, cfg: Config, device: str = "cpu",
                      out_dir: str | Path | None = None,
                      options: LerfOptions = LANGSPLAT_OPTIONS) -> dict[str, Any]:  # fmt: skip
    """Run the LERF-OVS protocol for every label file in ``labels`` (a folder or one JSON).

    Returns:
        ``{"protocol": "lerf-ovs", "reference", "miou", "loc_accuracy", "queries", "frames": {name:
        {cat: {"iou", "localised", "level"}}}, "missing_frames": [...]}``.
    """
    files = label_files(Path(labels))
    renderer = RelevanceRenderer(scene_dir, cfg.query.negatives, device=device, backend=cfg.rgb.backend,
                                 temperature=cfg.query.temperature)
    ious: list[float] = []
    locs: list[float] = []
    frames: dict[str, Any] = {}
    missing: list[str] = []
    for stem, index, lab in labelled_frames(files, capture, options.vertices, missing):
        cats = sorted(lab["categories"])
        if not cats:
            continue
        maps = renderer.maps(capture, index, cats, width=lab["width"], height=lab["height"])
        frames[stem] = {}
        for q, cat in enumerate(cats):
            per_level = {lv: m[q] for lv, m in maps.items()}
            gt = lab["categories"][cat]
            res = lerf_evaluate_query(per_level, gt["mask"], gt["boxes"], options=options)
            ious.append(res.iou)
            locs.append(float(res.localised))
            frames[stem][cat] = {"iou": res.iou, "localised": res.localised, "level": res.level}
            if out_dir is not None:
                rel = per_level[res.level]
                write_relevance_pngs(Path(out_dir), f"{stem}_{safe_name(cat)}", rel,
                                     lerf_prediction(rel, options=options))  # fmt: skip
    return {
        "protocol": "lerf-ovs",
        "reference": LANGSPLAT_REFERENCE,
        "miou": protocol_mean(ious, options.nan_mean),
        "loc_accuracy": protocol_mean(locs, options.nan_mean),
        "queries": len(ious),
        "frames": frames,
        "missing_frames": missing,
    }
