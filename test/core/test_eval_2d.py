"""2D metrics against hand-made cases: polygon fill, smoothing, threshold, argmax-in-box, IoU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ccl_lgs_ros.eval.lerf_ovs import read_lerf_labels
from ccl_lgs_ros.eval.metrics2d import (
    inside_any_box,
    iou,
    label_masks,
    lerf_evaluate_query,
    lerf_prediction,
    localisation_hit,
    mask_boxes,
    normalise_minmax,
    ovs3d_image_miou,
    polygon_mask,
)
from ccl_lgs_ros.relevance import lerf_relevance
from ccl_lgs_ros.semantics.relevance import box_filter, pick_level, smooth_relevance


def test_polygon_fill_square_and_triangle() -> None:
    m = polygon_mask([[[2, 1], [5, 1], [5, 4], [2, 4]]], height=8, width=8)
    expected = np.zeros((8, 8), bool)
    expected[1:5, 2:6] = True  # OpenCV fills the boundary pixels too
    np.testing.assert_array_equal(m, expected)
    tri = polygon_mask([[[0, 0], [6, 0], [0, 6]]], 8, 8)
    assert tri[0, 0] and tri[0, 6] and tri[6, 0] and not tri[6, 6] and not tri[5, 5]
    # Union of polygons; degenerate polygons are ignored.
    both = polygon_mask([[[0, 0], [1, 0], [1, 1], [0, 1]], [[6, 6], [7, 6], [7, 7], [6, 7]], [[3, 3]]], 8, 8)
    assert both.sum() == 8


def test_box_filter_and_smoothing_by_hand() -> None:
    x = np.zeros((9, 9), np.float32)
    x[4, 4] = 9.0
    # A 3x3 box mean spreads the peak to its 3x3 neighbourhood with value 1.
    b = box_filter(x, 3)
    np.testing.assert_allclose(b[3:6, 3:6], 1.0, atol=1e-6)
    assert b[0, 0] == 0.0 and b.sum() == pytest.approx(9.0)
    s = smooth_relevance(x, 3)
    assert s[4, 4] == pytest.approx(0.5 * (9.0 + 1.0))
    assert s[3, 3] == pytest.approx(0.5)
    # Constant maps are unchanged by the smoothing (reflected borders).
    np.testing.assert_allclose(smooth_relevance(np.full((40, 40), 0.3, np.float32)), 0.3, atol=1e-6)


def test_threshold_is_seventy_percent_of_range() -> None:
    x = np.linspace(0.0, 1.0, 101, dtype=np.float32).reshape(1, 101).repeat(3, axis=0)
    pred = lerf_prediction(x, size=1)  # size 1: smoothing is the identity
    # Normalised x > 0.7 <=> LangSplat's clip((x - 0.5) * 2, 0, 1) > 0.4.
    np.testing.assert_array_equal(pred[0], np.clip((x[0] - 0.5) * 2, 0, 1) > 0.4)
    assert pred[0].sum() == 30  # 0.71 .. 1.00
    # Min-max normalisation makes it invariant to affine changes of the map.
    np.testing.assert_array_equal(lerf_prediction(3 * x + 2, size=1), pred)
    np.testing.assert_allclose(normalise_minmax(3 * x + 2), x, atol=1e-5)


def test_argmax_in_box() -> None:
    rel = np.zeros((50, 50), np.float32)
    rel[10:14, 30:34] = 1.0  # a blob centred near (x=31.5, y=11.5)
    rel[40, 5] = 5.0  # a single hot pixel: the box filter suppresses it
    assert localisation_hit(rel, [[28, 8, 36, 16]], size=5)
    assert not localisation_hit(rel, [[0, 35, 10, 45]], size=5)
    assert inside_any_box((3, 4), [[0, 0, 2, 2], [3, 4, 3, 4]])  # inclusive bounds
    assert not inside_any_box((3, 5), [[3, 4, 3, 4]])


def test_iou_and_level_pick() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert iou(a, b) == pytest.approx(4 / 12)
    assert np.isnan(iou(np.zeros((2, 2)), np.zeros((2, 2))))  # 0/0, as LangSplat (test_eval_parity)
    gt = np.zeros((40, 40), bool)
    gt[5:20, 5:20] = True
    good = gt.astype(np.float32)
    weak = 0.4 * gt.astype(np.float32)
    assert pick_level({"sp": weak, "wp": good}, size=5) == "wp"
    res = lerf_evaluate_query({"sp": weak, "wp": good}, gt, mask_boxes(gt), size=5)
    assert res.level == "wp" and res.localised and res.iou > 0.8
    assert mask_boxes(gt) == [[5, 5, 19, 19]]


def test_ovs3d_threshold_and_averaging() -> None:
    gt = {"a": np.array([[1, 1], [0, 0]], bool), "b": np.array([[0, 0], [0, 1]], bool)}
    maps = {"a": np.array([[0.5, 0.49], [0.0, 0.0]]), "b": np.array([[0.0, 0.0], [0.0, 0.9]])}
    # a: pred {(0,0)} vs gt {(0,0),(0,1)} -> 0.5 ; b: 1.0 ; mean 0.75 (>= 0.5 is inclusive)
    assert ovs3d_image_miou(maps, gt) == pytest.approx(0.75)


def test_relevance_formula() -> None:
    pos = np.array([1.0, 0.0, 0.0])
    negs = np.array([[0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    v = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    r = lerf_relevance(v, pos, negs, 10.0)
    # Row 0: s_pos = 1, s_neg = (0, 0.6): min(sigmoid(10), sigmoid(4)).
    assert r[0] == pytest.approx(1 / (1 + np.exp(-4.0)), rel=1e-5)
    # Row 1: s_pos = 0, s_neg = (1, 0.8): sigmoid(-10).
    assert r[1] == pytest.approx(1 / (1 + np.exp(10.0)), rel=1e-4)
    # Softmax form: exp(10 s_pos) / (exp(10 s_pos) + exp(10 s_neg)).
    s_pos, s_neg = 1.0, 0.6
    assert r[0] == pytest.approx(np.exp(10 * s_pos) / (np.exp(10 * s_pos) + np.exp(10 * s_neg)), rel=1e-5)


def test_label_masks_merge_and_skip_background() -> None:
    ids = np.array([[1, 2], [3, 0]])
    inst = [{"id": 1, "label": "mug"}, {"id": 2, "label": "mug"}, {"id": 3, "label": "table", "background": True}]
    masks = label_masks(ids, inst)
    assert list(masks) == ["mug"]
    np.testing.assert_array_equal(masks["mug"], [[True, True], [False, False]])


def test_read_lerf_labels(tmp_path) -> None:
    data = {
        "info": {"name": "frame_00007.jpg", "width": 10, "height": 6},
        "objects": [
            {"category": "egg", "segmentation": [[0, 0], [2, 0], [2, 2], [0, 2]], "bbox": [0, 0, 2, 2]},
            {"category": "egg", "segmentation": [[7, 3], [9, 3], [9, 5], [7, 5]], "bbox": [7, 3, 9, 5]},
            {"category": "bowl", "segmentation": [[4, 1], [5, 1], [5, 2], [4, 2]], "bbox": [4, 1, 5, 2]},
        ],
    }
    path = tmp_path / "frame_00007.json"
    path.write_text(json.dumps(data))
    lab = read_lerf_labels(path)
    assert lab["width"] == 10 and lab["height"] == 6 and sorted(lab["categories"]) == ["bowl", "egg"]
    egg = lab["categories"]["egg"]
    assert egg["mask"].sum() == 18 and len(egg["boxes"]) == 2
    assert lab["categories"]["bowl"]["mask"].sum() == 4
