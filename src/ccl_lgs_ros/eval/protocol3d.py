"""The 3D protocol: select Gaussians by the text in 3D, render the selection, IoU against 2D GT.

This is how OpenGaussian, LangSplatV2, Dr. Splat and COS3D report 3D open-vocabulary retrieval
(METHOD.md: "selecting Gaussians in 3D and then rendering scores very differently from
thresholding rendered 2D maps"). Here the selection is exactly what ``/semantic_query`` answers:
the project's :class:`~ccl_lgs_ros.query.engine.QueryEngine` with the scene's query settings
(threshold, clustering, ``max_instances``); every returned instance's Gaussians form the selection.

Rendering: the selection's Gaussians alone (``occlusion=False``, the papers' "render the selected
Gaussians") or all Gaussians with the selection as a one-channel feature (``occlusion=True``:
what of the selection a camera actually sees). The rendered accumulated weight above
``alpha_threshold`` (0.5) is the predicted mask. These two choices are the project's; the papers'
scripts differ in them and are not transcribed here.

Ground truth, one of:

- a LERF-OVS label folder (``labels``; :mod:`.lerf_ovs` layout): per (frame, category) IoU
  (NaN for an empty union), mIoU the mean over pairs as in the LERF-OVS protocol;
- a synthetic capture's instance maps (no ``labels``): held-out views, per label IoU averaged
  over views, then over labels (the ``synthetic`` 2D protocol's averaging).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..capture.format import Capture, write_image
from ..config import Config
from ..scene.layout import SceneDir
from ..scene.load import load_scene
from ..semantics.relevance import safe_name
from ..semantics.views import FrozenGaussians, camera_view, render_features
from ..splat.data import split_indices
from .lerf_ovs import label_files, labelled_frames
from .metrics2d import LANGSPLAT_OPTIONS, iou, label_masks, protocol_mean

#: Rendered accumulated weight above which a pixel belongs to the rendered selection.
ALPHA_THRESHOLD = 0.5


class SelectionRenderer:
    """Text -> selected Gaussians (query engine) -> their rendered mask for a capture camera."""

    def __init__(self, scene_dir: str | Path, device: str = "cpu", backend: str = "auto", occlusion: bool = False,
                 alpha_threshold: float = ALPHA_THRESHOLD) -> None:  # fmt: skip
        scene = SceneDir(scene_dir)
        self.scene = load_scene(scene.root, device=device)
        self.gaussians = FrozenGaussians.load(scene.gaussians, device)
        if len(self.gaussians) != self.scene.index.num_gaussians:
            raise ValueError(f"{scene.root}: query index and RGB Gaussians differ in size")
        self.scene_from_world = scene.scene_from_world()
        self.device, self.backend = device, backend
        self.occlusion, self.alpha_threshold = occlusion, float(alpha_threshold)
        self._selected: dict[str, np.ndarray] = {}

    def selection(self, text: str) -> np.ndarray:
        """Indices of the Gaussians the query engine returns for ``text`` (cached per text)."""
        if text not in self._selected:
            res = self.scene.engine.query(text, point_spacing=0.0, include_gaussians=False)
            ids = [np.asarray(inst.gaussian_ids, np.int64) for inst in res.instances] if res.found else []
            self._selected[text] = np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
        return self._selected[text]

    def mask(self, capture: Capture, index: int, text: str, width: int, height: int) -> np.ndarray:
        """Predicted ``bool [H, W]`` mask of ``text`` in frame ``index``."""
        ids = self.selection(text)
        if ids.size == 0:
            return np.zeros((height, width), bool)
        view = camera_view(capture, index, self.scene_from_world, width, height, self.device)
        g = self.gaussians
        if self.occlusion:
            feat = torch.zeros((len(g), 1), dtype=torch.float32, device=g.means.device)
            feat[torch.as_tensor(ids, device=g.means.device)] = 1.0
        else:
            sel = torch.as_tensor(ids, device=g.means.device)
            g = FrozenGaussians(g.means[sel], g.quats[sel], g.scales[sel], g.opacities[sel])
            feat = torch.ones((len(g), 1), dtype=torch.float32, device=g.means.device)
        with torch.no_grad():
            out = render_features(g, feat, [view], self.backend)[0, ..., 0]
        return out.cpu().numpy() > self.alpha_threshold


def evaluate_3d(scene_dir: str | Path, capture: Capture, cfg: Config, labels: Path | None = None, device: str = "cpu",
                out_dir: str | Path | None = None, occlusion: bool = False, alpha_threshold: float = ALPHA_THRESHOLD,
                frames: list[int] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the 3D protocol (see module docstring).

    Returns:
        ``{"protocol": "3d", "gt": "lerf-ovs" | "synthetic", "miou", "queries", ...}`` with per
        (frame, category) IoUs for LERF labels, per-label means for synthetic scenes.
    """
    sel = SelectionRenderer(scene_dir, device=device, backend=cfg.rgb.backend, occlusion=occlusion,
                            alpha_threshold=alpha_threshold)  # fmt: skip
    settings = {"occlusion": occlusion, "alpha_threshold": alpha_threshold}

    def save(name: str, mask: np.ndarray) -> None:
        if out_dir is not None:
            m = mask.astype(np.uint8) * 255
            write_image(Path(out_dir) / f"{name}_3d_mask.png", np.repeat(m[..., None], 3, axis=2))

    if labels is not None:
        ious: list[float] = []
        per_frame: dict[str, dict[str, float]] = {}
        missing: list[str] = []
        for stem, index, lab in labelled_frames(label_files(Path(labels)), capture, LANGSPLAT_OPTIONS.vertices,
                                                missing):  # fmt: skip
            per_frame[stem] = {}
            for cat in sorted(lab["categories"]):
                pred = sel.mask(capture, index, cat, lab["width"], lab["height"])
                val = iou(pred, lab["categories"][cat]["mask"], LANGSPLAT_OPTIONS.empty_union)
                ious.append(val)
                per_frame[stem][cat] = val
                save(f"{stem}_{safe_name(cat)}", pred)
        return {"protocol": "3d", "gt": "lerf-ovs", **settings, "miou": protocol_mean(ious), "queries": len(ious),
                "frames": per_frame, "missing_frames": missing}  # fmt: skip

    if frames is None:
        train, test = split_indices(len(capture.frames), cfg.rgb.holdout_every)
        frames = test or train
    per_label: dict[str, list[float]] = {}
    for i in frames:
        ids = capture.load_instances(i)
        if ids is None:
            continue
        gts = label_masks(ids, capture.instances)
        h, w = ids.shape
        for label in sorted(gts):
            pred = sel.mask(capture, i, label, w, h)
            per_label.setdefault(label, []).append(iou(pred, gts[label]))
            save(f"frame{i:05d}_{safe_name(label)}", pred)
    summary = {lb: {"miou": float(np.mean(v)), "views": len(v)} for lb, v in sorted(per_label.items())}
    return {"protocol": "3d", "gt": "synthetic", **settings,
            "miou": float(np.mean([s["miou"] for s in summary.values()])) if summary else float("nan"),
            "queries": sum(len(v) for v in per_label.values()), "per_label": summary,
            "frames": [int(i) for i in frames]}  # fmt: skip
