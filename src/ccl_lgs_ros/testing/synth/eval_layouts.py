"""Write a synthetic capture's ground truth in the label layouts of the published evaluation scripts.

- :func:`write_lerf_ovs_labels`: LangSplat's LERF-OVS layout (below);
- :func:`write_3d_ovs_labels`: the 3D-OVS layout LEGaussians' ``eval.py`` reads
  (``segmentations/classes.txt`` + ``segmentations/<view>/<class>.png``, see :mod:`ccl_lgs_ros.eval.ovs3d`).

LangSplat evaluates LERF-OVS from ``label/<scene>/frame_XXXXX.json`` with the test image
``frame_XXXXX.jpg`` beside it (reference: ``minghanqin/LangSplat`` ``eval/evaluate_iou_loc.py``
``eval_gt_lerfdata`` @ ``26ed214``); each JSON is labelme-like::

    {"info": {"name": "frame_00003.jpg", "width": W, "height": H},
     "objects": [{"category": "red mug", "segmentation": [[x, y], ...], "bbox": [x1, y1, x2, y2]}]}

:func:`write_lerf_ovs_labels` turns a synthetic capture's instance maps into exactly that: one
object per connected component of an instance (its outer contour as the polygon, vertices at
pixel coordinates; the box spans the polygon's vertices), categories = the instances' labels
(instances sharing a label stay separate objects of one category, as in LERF's labels), frames
numbered like LERF's images (``frame_<capture index + 1, 5 digits>``), so ``ccl-lgs eval SCENE
--protocol lerf-ovs --labels ROOT/label/<scene>`` runs the whole LERF-OVS path in CI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ...capture.format import Capture, write_image
from ...eval.metrics2d import label_masks
from ...io import atomic_write_json


def _objects(ids: np.ndarray, instances: Sequence[dict], min_area: int) -> list[dict]:
    objs = []
    for inst in instances:
        if inst.get("background"):
            continue
        m = (np.asarray(ids) == int(inst["id"])).astype(np.uint8)
        if not m.any():
            continue
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            if cv2.contourArea(c) < min_area or len(c) < 3:
                continue
            poly = c.reshape(-1, 2).astype(int)
            x1, y1 = poly.min(0)
            x2, y2 = poly.max(0)
            objs.append({"category": str(inst["label"]), "segmentation": poly.tolist(),
                         "bbox": [int(x1), int(y1), int(x2), int(y2)]})  # fmt: skip
    return objs


def write_lerf_ovs_labels(capture: Capture, root: str | Path, scene_name: str, frames: Sequence[int] | None = None,
                          min_area: int = 4) -> Path:  # fmt: skip
    """Write ``root/label/<scene_name>/frame_XXXXX.{json,jpg}`` for ``frames`` (default: every frame
    with an instance map). Returns the label folder."""
    out = Path(root) / "label" / scene_name
    out.mkdir(parents=True, exist_ok=True)
    if frames is None:
        frames = [i for i, f in enumerate(capture.frames) if f.instance_file_path]
    for i in frames:
        ids = capture.load_instances(i)
        if ids is None:
            raise ValueError(f"frame {i} has no instance map")
        name = f"frame_{i + 1:05d}"
        h, w = ids.shape
        write_image(out / f"{name}.jpg", capture.load_image(i))
        atomic_write_json(out / f"{name}.json", {"info": {"name": f"{name}.jpg", "width": int(w), "height": int(h)},
                                                 "objects": _objects(ids, capture.instances, min_area)})  # fmt: skip
    return out


def write_3d_ovs_labels(capture: Capture, root: str | Path, frames: Sequence[int] | None = None,
                        classes: Sequence[str] | None = None) -> Path:  # fmt: skip
    """Write ``root/segmentations/classes.txt`` and ``root/segmentations/<frame stem>/<label>.png``
    (0 / 255 grayscale) for ``frames`` (default: every frame with an instance map). ``classes``
    (default: every non-background label) go to ``classes.txt``; as in the 3D-OVS data, a view only
    holds the masks of the classes visible in it. Returns the ``segmentations`` folder."""
    seg = Path(root) / "segmentations"
    seg.mkdir(parents=True, exist_ok=True)
    if classes is None:
        classes = sorted({str(i["label"]) for i in capture.instances if not i.get("background")})
    (seg / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    if frames is None:
        frames = [i for i, f in enumerate(capture.frames) if f.instance_file_path]
    for i in frames:
        ids = capture.load_instances(i)
        if ids is None:
            raise ValueError(f"frame {i} has no instance map")
        view = seg / Path(capture.frames[i].file_path).stem
        view.mkdir(exist_ok=True)
        for label, mask in label_masks(ids, capture.instances).items():
            if label in classes:
                if not cv2.imwrite(str(view / f"{label}.png"), mask.astype(np.uint8) * 255):
                    raise OSError(f"cannot write {view / f'{label}.png'}")
    return seg


__all__ = ["write_3d_ovs_labels", "write_lerf_ovs_labels"]
