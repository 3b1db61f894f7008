"""3D-OVS evaluation (LEGaussians' convention; protocol in :mod:`.metrics2d`).

Label folder layout (as distributed with the 3D-OVS scenes)::

    LABELS/segmentations/classes.txt          one query (class name) per line
    LABELS/segmentations/<view>/<class>.png   GT mask of the class in that view (non-zero = in)

``<view>`` names a capture frame by its image stem (``frame_00003``) or by its index in the
capture (``3``, ``03``). Missing class files count as empty GT masks. Each view's queries are
rendered at the mask's size, each query takes its level by the LERF rule (highest smoothed
maximum), the prediction is relevance ``>= 0.5``; IoU is averaged over an image's queries, then
over images.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..capture.format import Capture
from ..semantics.relevance import pick_level
from .metrics2d import OVS3D_THRESHOLD, ovs3d_image_miou


def _resolve_view(name: str, capture: Capture) -> int | None:
    stems = {Path(f.file_path).stem: i for i, f in enumerate(capture.frames)}
    if name in stems:
        return stems[name]
    if name.isdigit() and int(name) < len(capture.frames):
        return int(name)
    return None


def evaluate_3d_ovs(scene_dir, capture: Capture, labels: Path, cfg, device: str = "cpu", out_dir=None) -> dict:  # noqa: ANN001
    """Run the 3D-OVS protocol. Returns ``{"protocol": "3d-ovs", "miou", "images": {view: miou}}``."""
    from ..semantics.relevance import RelevanceRenderer, safe_name, write_relevance_pngs

    seg = Path(labels)
    if (seg / "segmentations").is_dir():
        seg = seg / "segmentations"
    classes = [c.strip() for c in (seg / "classes.txt").read_text(encoding="utf-8").splitlines() if c.strip()]
    renderer = RelevanceRenderer(scene_dir, cfg.query.negatives, device=device, backend=cfg.rgb.backend)
    images, missing = {}, []
    for view_dir in sorted(p for p in seg.iterdir() if p.is_dir()):
        index = _resolve_view(view_dir.name, capture)
        if index is None:
            missing.append(view_dir.name)
            continue
        gts: dict[str, np.ndarray] = {}
        shape: tuple[int, ...] | None = None
        for cls in classes:
            f = view_dir / f"{cls}.png"
            if f.is_file():
                m = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
                if m is None:
                    continue
                gts[cls] = m > 0
                shape = m.shape
        if shape is None:
            continue
        for cls in classes:
            gts.setdefault(cls, np.zeros(shape, bool))
        maps = renderer.maps(capture, index, classes, width=shape[1], height=shape[0])
        chosen = {}
        for q, cls in enumerate(classes):
            per_level = {lv: m[q] for lv, m in maps.items()}
            chosen[cls] = per_level[pick_level(per_level)]
            if out_dir is not None:
                write_relevance_pngs(Path(out_dir), f"{view_dir.name}_{safe_name(cls)}", chosen[cls],
                                     chosen[cls] >= OVS3D_THRESHOLD)  # fmt: skip
        images[view_dir.name] = ovs3d_image_miou(chosen, gts)
    vals = [v for v in images.values() if np.isfinite(v)]
    return {"protocol": "3d-ovs", "miou": float(np.mean(vals)) if vals else float("nan"), "images": images,
            "missing_views": missing}  # fmt: skip
