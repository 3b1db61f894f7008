"""LERF-OVS and 3D-OVS parity with the reference scripts, pinned by hand-made cases.

References (read, not copied): LangSplat ``eval/evaluate_iou_loc.py`` + ``eval/utils.py`` @ 26ed214d;
LEGaussians ``eval.py`` + ``render_mask.py`` @ ddf97931. Expected values come from hand counts or
from the reference formulas written out again here (``_ref_*``), never from the project's functions.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from ccl_lgs_ros.eval.metrics2d import (
    LANGSPLAT_OPTIONS,
    SYNTHETIC_OPTIONS,
    LerfOptions,
    iou,
    lerf_evaluate_query,
    localisation_hit,
    majority_vote,
    ovs3d_image_miou,
    ovs3d_iou,
    polygon_mask,
    protocol_mean,
)


# ---------------------------------------------------------------- reference formulas, written out
def _ref_vote(mask: np.ndarray) -> np.ndarray:
    """LangSplat's 7x7 vote: the window of (i, j) is rows max(0, i-3) .. min(i+4, H-1) (end excluded),
    columns alike; the value is the most frequent one, the smaller on a tie."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for i in range(h):
        for j in range(w):
            win = mask[max(0, i - 3) : min(i + 4, h - 1), max(0, j - 3) : min(j + 4, w - 1)].ravel()
            counts = np.bincount(win, minlength=2)
            out[i, j] = int(np.argmax(counts))
    return out


def _ref_lerf_iou(levels: list[np.ndarray], gt: np.ndarray) -> float:
    """LangSplat's IoU of one query: smoothing, level choice, normalisation, threshold 0.4 after
    stretching to [-1, 1], vote, 0/0 left as NaN."""
    kernel = np.ones((30, 30)) / 900.0
    smoothed = [0.5 * (cv2.filter2D(x.astype(np.float32), -1, kernel) + x.astype(np.float32)) for x in levels]
    chosen = int(np.argmax([s.max() for s in smoothed]))
    s = smoothed[chosen]
    s = s - s.min()
    s = s / (s.max() + 1e-9)
    s = np.clip(s * 2.0 - 1.0, 0, 1)
    pred = _ref_vote((s > 0.4).astype(np.uint8))
    inter = np.logical_and(gt, pred).sum()
    union = np.logical_or(gt, pred).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(inter) / np.float64(union))


# ---------------------------------------------------------------- point 1: the 7x7 majority vote
def test_vote_matches_the_reference_windows_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for shape in [(9, 11), (20, 17), (2, 5), (7, 7), (12, 3)]:
        m = (rng.random(shape) < 0.45).astype(np.uint8)
        np.testing.assert_array_equal(majority_vote(m), _ref_vote(m).astype(bool), err_msg=str(shape))


def test_vote_by_hand() -> None:
    # Only the last row and last column set: no window ever contains them (end excluded at H-1).
    m = np.zeros((8, 8), np.uint8)
    m[-1, :] = 1
    m[:, -1] = 1
    assert not majority_vote(m).any()
    # Corner (0, 0): window rows 0..3, cols 0..3 = 16 pixels; 8 set is a tie -> not set, 9 -> set.
    m = np.zeros((8, 8), np.uint8)
    m[0:2, 0:4] = 1  # 8 pixels
    assert not majority_vote(m)[0, 0]
    m[2, 0] = 1  # 9 of 16
    assert majority_vote(m)[0, 0]
    # An isolated pixel disappears, a filled block keeps its interior.
    m = np.zeros((20, 20), np.uint8)
    m[3, 3] = 1
    m[8:16, 8:16] = 1
    v = majority_vote(m)
    assert not v[3, 3] and v[11, 11] and v[8:16, 8:16].sum() > 40


def test_vote_clamp_by_hand() -> None:
    # Last two rows and the last column set. With windows clipped to the image, corner (7, 7) sees rows
    # 4..7 x cols 4..7 = 16 pixels: rows 6, 7 (8) + column 7 in rows 4, 5 (2) = 10 set -> set.
    # The reference's window is rows 4..6 x cols 4..6: only row 6 (3 of 9) -> not set.
    m = np.zeros((8, 8), np.uint8)
    m[-2:, :] = 1
    m[:, -1] = 1
    assert majority_vote(m, edges="clamp")[7, 7]
    assert not majority_vote(m)[7, 7]


# ---------------------------------------------------------------- point 2: polygon vertices truncated
def test_polygon_vertices_are_truncated() -> None:
    sq = [[[1.6, 1.6], [4.6, 1.6], [4.6, 4.6], [1.6, 4.6]]]
    expected = np.zeros((8, 8), bool)
    expected[1:5, 1:5] = True  # int(1.6) = 1, int(4.6) = 4, boundary pixels filled
    np.testing.assert_array_equal(polygon_mask(sq, 8, 8), expected)
    rounded = np.zeros((8, 8), bool)
    rounded[2:6, 2:6] = True
    np.testing.assert_array_equal(polygon_mask(sq, 8, 8, vertices="round"), rounded)


def test_overlapping_polygons_are_a_union() -> None:
    a = [[0, 0], [5, 0], [5, 5], [0, 5]]
    b = [[3, 3], [7, 3], [7, 7], [3, 7]]
    m = polygon_mask([a, b], 8, 8)
    assert m.sum() == 36 + 25 - 9  # the overlap is not cancelled


# ---------------------------------------------------------------- point 3: tied maxima
def test_localisation_counts_any_tied_maximum() -> None:
    rel = np.zeros((20, 40), np.float32)
    rel[5:10, 2:7] = 1.0  # two identical blocks: their box-filtered centres tie at the maximum
    rel[5:10, 30:35] = 1.0
    box_second = [[29, 4, 35, 10]]
    assert localisation_hit(rel, box_second, size=3)
    first = LerfOptions(ties="first")
    assert not localisation_hit(rel, box_second, size=3, options=first)  # first maximum in row-major order: left block


# ---------------------------------------------------------------- point 4: reversed corners
def test_reversed_box_corners_are_ordered() -> None:
    rel = np.zeros((20, 20), np.float32)
    rel[10:13, 10:13] = 1.0
    reversed_box = [[14, 14, 8, 8]]  # x2, y2, x1, y1
    assert localisation_hit(rel, reversed_box, size=3)
    assert not localisation_hit(rel, reversed_box, size=3, options=LerfOptions(order_boxes=False))


# ---------------------------------------------------------------- point 5: empty union and the mean
def test_empty_union_is_nan_and_poisons_the_mean() -> None:
    empty = np.zeros((4, 4), bool)
    assert math.isnan(iou(empty, empty))
    assert iou(empty, empty, empty=1.0) == 1.0
    assert math.isnan(protocol_mean([0.5, float("nan"), 1.0]))  # sum / len, as the reference
    assert protocol_mean([0.5, float("nan"), 1.0], "omit") == pytest.approx(0.75)
    # A constant relevance map predicts nothing; with an empty GT the query scores NaN.
    res = lerf_evaluate_query({"a": np.full((4, 4), 0.3, np.float32)}, empty, [[0, 0, 1, 1]], size=3)
    assert math.isnan(res.iou)
    assert SYNTHETIC_OPTIONS.empty_union == 1.0


# ---------------------------------------------------------------- the whole IoU of one query
def test_lerf_query_iou_matches_the_reference_pipeline() -> None:
    rng = np.random.default_rng(3)
    h, w = 48, 64
    yy, xx = np.mgrid[:h, :w]
    gt = (np.hypot(xx - 40, yy - 20) < 9) | ((xx > 5) & (xx < 9) & (yy > 4))  # a blob and a thin bar
    for trial in range(3):
        levels = []
        for _ in range(3):
            x = 0.45 + 0.1 * rng.random((h, w))
            x[gt] += rng.uniform(0.05, 0.3)
            x += 0.15 * (rng.random((h, w)) < 0.05)  # speckle the vote must remove
            levels.append(x.astype(np.float32))
        maps = {f"l{k}": m for k, m in enumerate(levels)}
        got = lerf_evaluate_query(maps, gt, [[0, 0, w - 1, h - 1]]).iou
        assert got == pytest.approx(_ref_lerf_iou(levels, gt), abs=1e-12), trial
        assert got != lerf_evaluate_query(maps, gt, [[0, 0, w - 1, h - 1]], options=LerfOptions(vote=False)).iou
    assert LANGSPLAT_OPTIONS.vote and LANGSPLAT_OPTIONS.ties == "any"


# ---------------------------------------------------------------- 3D-OVS (LEGaussians)
def test_ovs3d_iou_by_hand() -> None:
    p = np.zeros((3, 3), bool)
    g = np.zeros((3, 3), bool)
    p[0, :] = True  # 3 px
    g[:, 0] = True  # 3 px, 1 shared
    assert ovs3d_iou(p, g) == pytest.approx(1 / (5 + 1e-6), rel=1e-12)
    assert ovs3d_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0  # 0 / (0 + 1e-6)
    rel = {"a": np.array([[0.5, 0.49]]), "b": np.array([[0.0, 0.9]])}
    gts = {"a": np.array([[True, False]]), "b": np.array([[False, False]])}
    # a: >= 0.5 keeps the first pixel exactly -> 1/(1+1e-6); b: predicts 1 px, GT empty -> 0.
    assert ovs3d_image_miou(rel, gts) == pytest.approx(0.5 / (1 + 1e-6), rel=1e-12)


def test_ovs3d_gt_mask_is_the_first_channel(tmp_path) -> None:
    from PIL import Image

    from ccl_lgs_ros.eval.ovs3d import read_gt_mask

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1, 1] = (255, 0, 0)  # red: in
    rgb[2, 2] = (0, 255, 0)  # green only: out (to_tensor(img)[:1] keeps red)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    m = read_gt_mask(tmp_path / "m.png")
    assert m.shape == (4, 5) and m[1, 1] and not m[2, 2] and m.sum() == 1
    Image.fromarray((rgb[..., 1]).astype(np.uint8)).save(tmp_path / "g.png")  # grayscale
    assert read_gt_mask(tmp_path / "g.png").sum() == 1


def test_lerf_label_reading_as_the_reference(tmp_path) -> None:
    import json

    from ccl_lgs_ros.eval.lerf_ovs import find_frame, read_lerf_labels

    data = {"info": {"name": "frame_00003.jpg", "width": 12, "height": 8},
            "objects": [{"category": "egg", "segmentation": [[1.9, 1.9], [4.9, 1.9], [4.9, 4.9], [1.9, 4.9]],
                         "bbox": [4.9, 4.9, 1.9, 1.9, 8, 0, 10, 2]}]}  # fmt: skip
    (tmp_path / "frame_00003.json").write_text(json.dumps(data))
    egg = read_lerf_labels(tmp_path / "frame_00003.json")["categories"]["egg"]
    assert egg["mask"].sum() == 16 and egg["mask"][1:5, 1:5].all()  # vertices 1.9 -> 1, 4.9 -> 4
    assert egg["boxes"] == [[4.9, 4.9, 1.9, 1.9], [8.0, 0.0, 10.0, 2.0]]  # rows of 4, as reshape(-1, 4)
    # LangSplat's 5-digit frame names find a capture's 6-digit ones (same prefix and number).
    by_stem = {"frame_000003": 2, ("frame_", 3): 2}
    assert find_frame(by_stem, "frame_00003") == 2 and find_frame(by_stem, "frame_00004") is None
