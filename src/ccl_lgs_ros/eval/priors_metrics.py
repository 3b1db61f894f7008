"""Scores of 2D priors against a capture's ground-truth instance maps (synthetic scenes): how
consistent the masks and their association are, and how well mask features read as their labels.

Used by the simulator's tests and the codebook benchmark; the simulator itself only needs
:func:`~ccl_lgs_ros.priors.simulator.mask_objects`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..capture.format import Capture
from ..priors.simulator import SimulatorBackend, compact_ids, mask_objects, match_shape
from ..priors.types import FramePriors


def _require_ids(capture: Capture, index: int) -> np.ndarray:
    ids = capture.load_instances(index)
    if ids is None:
        raise ValueError(f"{capture.root}: frame {index} has no instance map (instances/ ground truth)")
    return ids


def mask_inconsistency(capture: Capture, priors: Sequence[FramePriors], level: str) -> float:
    """Fraction of object pixels whose mask disagrees with the ground truth (0..1).

    Per frame and GT object (background ids excluded), an object pixel agrees when it lies in
    the mask that overlaps the object most *and* that mask's dominant object is this object.
    Splits, misses and boundary errors lose the pixels outside the best mask; a merge loses all
    pixels of the smaller object. 0 means the masks equal the instance map.
    """
    _, background = SimulatorBackend._gt_labels(capture)
    bad = total = 0.0
    for i, fp in enumerate(priors):
        lp = fp.levels[level]
        k = len(lp.labels)
        ids = match_shape(_require_ids(capture, i), lp.masks.shape)
        dominant, _ = mask_objects(lp.masks, ids, k)
        gt_values, gt_index = compact_ids(ids)
        n_gt = len(gt_values)
        valid = lp.masks >= 0
        inter = np.bincount(gt_index[valid] * max(k, 1) + lp.masks[valid], minlength=n_gt * max(k, 1))
        inter = inter.reshape(n_gt, max(k, 1))
        areas = np.bincount(gt_index.ravel(), minlength=n_gt)
        for j, g in enumerate(gt_values):
            if int(g) in background:
                continue
            total += areas[j]
            best = int(inter[j].argmax())
            good = inter[j, best] if k and inter[j, best] > 0 and dominant[best] == g else 0
            bad += areas[j] - good
    return float(bad / max(total, 1.0))


def identity_switch_rate(capture: Capture, priors: Sequence[FramePriors], level: str) -> float:
    """How often an object's label changes between consecutive frames where it is labelled.

    Per GT object, the label of the mask that is dominated by it with the highest IoU in each
    frame (unlabelled frames skipped); the rate is changes / transitions over all objects.
    0 means every object keeps one label throughout, which is what a perfect tracker gives.
    """
    seq: dict[int, list[int]] = {}
    for i, fp in enumerate(priors):
        lp = fp.levels[level]
        ids = match_shape(_require_ids(capture, i), lp.masks.shape)
        dominant, iou = mask_objects(lp.masks, ids, len(lp.labels))
        best: dict[int, tuple[float, int]] = {}
        for g, q, lab in zip(dominant, iou, lp.labels):
            if lab >= 0 and q > best.get(int(g), (-1.0, -1))[0]:
                best[int(g)] = (float(q), int(lab))
        for g, (_, lab) in best.items():
            seq.setdefault(g, []).append(lab)
    changes = sum(int(np.count_nonzero(np.diff(v))) for v in seq.values())
    transitions = sum(len(v) - 1 for v in seq.values())
    return float(changes / transitions) if transitions else 0.0


def mask_readouts(
    capture: Capture,
    priors: Sequence[FramePriors],
    level: str,
    text_embeddings: dict[str, np.ndarray],
    vectors: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """What each mask of ``level`` reads as, over all frames (masks in frame order).

    Every mask's vector (``vectors[frame][mask]``, default the mask's CLIP feature, e.g. the
    codebook prototype it was assigned to) reads as the label of ``text_embeddings`` (label ->
    unit text embedding, usually the scene's object labels) with the highest cosine.

    Returns:
        ``truth int64 [M]`` (index into ``names`` of the label of the mask's dominant GT object;
        -1 for background or a label not in ``text_embeddings``), ``area float64 [M]`` (pixels),
        ``read int64 [M]`` (index into ``names``) and ``names`` (the sorted labels).
    """
    gt_labels, background = SimulatorBackend._gt_labels(capture)
    names = sorted(text_embeddings)
    text = np.stack([np.asarray(text_embeddings[n], dtype=np.float32) for n in names])
    truth, area, read = [], [], []
    for i, fp in enumerate(priors):
        lp = fp.levels[level]
        k = len(lp.labels)
        if k == 0:
            continue
        ids = match_shape(_require_ids(capture, i), lp.masks.shape)
        dominant, _ = mask_objects(lp.masks, ids, k)
        truth.append([-1 if int(g) in background or gt_labels.get(int(g)) not in text_embeddings
                      else names.index(gt_labels[int(g)]) for g in dominant])  # fmt: skip
        area.append(np.bincount(lp.masks[lp.masks >= 0], minlength=k).astype(np.float64))
        vec = np.asarray(lp.features if vectors is None else vectors[i], dtype=np.float32)
        read.append(np.argmax(vec @ text.T, axis=1))
    if not truth:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), names
    return np.concatenate(truth).astype(np.int64), np.concatenate(area), np.concatenate(read).astype(np.int64), names


def readout_accuracy(
    capture: Capture,
    priors: Sequence[FramePriors],
    level: str,
    text_embeddings: dict[str, np.ndarray],
    vectors: Sequence[np.ndarray] | None = None,
) -> float:
    """Share of object pixels whose mask vector reads as its object's label (0..1).

    Every mask dominated by a non-background GT object counts with its pixel area (see
    :func:`mask_readouts`): a closed-vocabulary reading of one view's masks over the scene's
    labels, before the field averages over views; 1 means every mask reads right. (The 2D query
    scores relevance against canonical negatives instead, which a flipped argmax may hardly move;
    see docs/BENCHMARKS.md.)
    """
    truth, area, read, _ = mask_readouts(capture, priors, level, text_embeddings, vectors)
    counted = truth >= 0
    total = float(area[counted].sum())
    return float(area[counted & (read == truth)].sum() / total) if total > 0 else 1.0


__all__ = ["identity_switch_rate", "mask_inconsistency", "mask_readouts", "readout_accuracy"]
