"""3D-OVS evaluation, as LEGaussians' script computes it (metric in :mod:`.metrics2d`).

Reference: repository ``buaavrcg/LEGaussians``, files ``eval.py`` (``read_3dovs_masks``,
``mean_iou``, ``lem_evaluate``) and ``render_mask.py`` (``msk = rele >= a``, ``a = 0.5``), commit
``ddf97931054e06195464e872821b2d82e53cadf8`` (:data:`LEGAUSSIANS_REFERENCE`).

Label folder layout (as distributed with the 3D-OVS scenes)::

    LABELS/segmentations/classes.txt          one query (class name) per line
    LABELS/segmentations/<view>/<class>.png   GT mask of the class in that view (.png / .jpg / .JPG)

``<view>`` names a capture frame by its image stem (``frame_00003``) or by its index in the
capture (``3``, ``03``). As in the reference:

- a view evaluates only the classes that have a mask file there (``missing_class="skip"``;
  ``"empty"`` counts a missing file as an empty GT mask instead, the project's earlier choice);
- the GT mask is the file's first channel, non-zero (``to_tensor(img)[:1]``, read with PIL);
- prediction = relevance ``>= 0.5``; IoU = ``|P & G| / (|P | G| + 1e-6)`` (an empty union scores 0);
- mIoU = mean over the view's classes, then mean over views; a view without any class is NaN and
  makes the mean NaN (``nan_mean="propagate"``, numpy's mean); ``"omit"`` drops such views.

Differences kept on purpose (not metric code): the reference renders at training resolution and
resizes the GT to it; the project renders at the mask's own size, so no resize happens. The
reference's relevance uses softmax scale 100 where the project uses 10, which leaves the mask
``>= 0.5`` unchanged (``min_k sigmoid(T (s_pos - s_neg_k)) >= 0.5`` iff ``s_pos >= max_k s_neg_k``
for every ``T > 0``); with several levels the project picks one per query by the LERF rule (the
reference's field has one level).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..capture.format import Capture
from ..config import Config
from ..semantics.relevance import RelevanceRenderer, pick_level, safe_name, write_relevance_pngs
from .metrics2d import OVS3D_THRESHOLD, ovs3d_image_miou, protocol_mean

#: The 3D-OVS reference implementation this module follows (repository, files, commit).
LEGAUSSIANS_REFERENCE = "buaavrcg/LEGaussians eval.py + render_mask.py @ ddf97931054e06195464e872821b2d82e53cadf8"
#: Mask file suffixes the reference reads (its ``is_pic``).
MASK_SUFFIXES = (".png", ".jpg", ".JPG")


def read_gt_mask(path: Path) -> np.ndarray:
    """A 3D-OVS GT mask file -> ``bool [H, W]``: its first channel, non-zero (as ``to_tensor(img)[:1]``)."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr != 0


def _resolve_view(name: str, capture: Capture) -> int | None:
    stems = {Path(f.file_path).stem: i for i, f in enumerate(capture.frames)}
    if name in stems:
        return stems[name]
    if name.isdigit() and int(name) < len(capture.frames):
        return int(name)
    return None


def evaluate_3d_ovs(scene_dir: str | Path, capture: Capture, labels: Path, cfg: Config, device: str = "cpu",
                    out_dir: str | Path | None = None, missing_class: str = "skip",
                    nan_mean: str = "propagate") -> dict[str, Any]:  # fmt: skip
    """Run the 3D-OVS protocol. Returns ``{"protocol": "3d-ovs", "miou", "images": {view: miou}, ...}``."""
    if missing_class not in ("skip", "empty"):
        raise ValueError(f"missing_class must be 'skip' or 'empty', not {missing_class!r}")
    seg = Path(labels)
    if (seg / "segmentations").is_dir():
        seg = seg / "segmentations"
    classes = [c.strip() for c in (seg / "classes.txt").read_text(encoding="utf-8").splitlines() if c.strip()]
    renderer = RelevanceRenderer(scene_dir, cfg.query.negatives, device=device, backend=cfg.rgb.backend,
                                 temperature=cfg.query.temperature)
    images: dict[str, float] = {}
    missing: list[str] = []
    for view_dir in sorted(p for p in seg.iterdir() if p.is_dir()):
        index = _resolve_view(view_dir.name, capture)
        if index is None:
            missing.append(view_dir.name)
            continue
        gts: dict[str, np.ndarray] = {}
        for cls in classes:
            f = next((view_dir / f"{cls}{s}" for s in MASK_SUFFIXES if (view_dir / f"{cls}{s}").is_file()), None)
            if f is not None:
                gts[cls] = read_gt_mask(f)
        if not gts:
            images[view_dir.name] = float("nan")  # the reference's mean over no classes
            continue
        shape = next(iter(gts.values())).shape
        if missing_class == "empty":
            for cls in classes:
                gts.setdefault(cls, np.zeros(shape, bool))
        queries = [c for c in classes if c in gts]
        maps = renderer.maps(capture, index, queries, width=shape[1], height=shape[0])
        chosen = {}
        for q, cls in enumerate(queries):
            per_level = {lv: m[q] for lv, m in maps.items()}
            chosen[cls] = per_level[pick_level(per_level)]
            if out_dir is not None:
                write_relevance_pngs(Path(out_dir), f"{view_dir.name}_{safe_name(cls)}", chosen[cls],
                                     chosen[cls] >= OVS3D_THRESHOLD)  # fmt: skip
        images[view_dir.name] = ovs3d_image_miou(chosen, gts)
    return {"protocol": "3d-ovs", "reference": LEGAUSSIANS_REFERENCE,
            "miou": protocol_mean(list(images.values()), nan_mean), "images": images,
            "missing_views": missing}  # fmt: skip
