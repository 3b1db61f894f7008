"""3D retrieval metrics on hand-made point sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ccl_lgs_ros.eval.metrics3d import aabb_iou, evaluate_label, point_metrics, summarise


def grid(lo, hi, step=0.01):
    axes = [np.arange(a, b + 1e-9, step) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def test_point_metrics_counts_points_within_the_threshold():
    gt = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]])
    pred = np.array([[0.0, 0, 0.005], [1, 0, 0.02], [10, 0, 0]])
    m = point_metrics(pred, gt, 0.01)
    assert m.precision == pytest.approx(1 / 3) and m.recall == pytest.approx(1 / 4)
    assert m.f1 == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4))
    assert point_metrics(gt, gt, 0.01).f1 == 1.0
    assert point_metrics(np.zeros((0, 3)), gt, 0.01).f1 == 0.0
    with pytest.raises(ValueError):
        point_metrics(pred, np.zeros((0, 3)), 0.01)


def test_aabb_iou():
    assert aabb_iou([0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1]) == pytest.approx(1.0)
    assert aabb_iou([0, 0, 0], [2, 1, 1], [1, 0, 0], [3, 1, 1]) == pytest.approx(1 / 3)
    assert aabb_iou([0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]) == 0.0


def test_hungarian_matching_of_instances_sharing_a_label():
    a, b = grid([0, 0, 0], [0.1, 0.1, 0.1]), grid([1, 0, 0], [1.1, 0.1, 0.1])
    # Predictions in the other order; the one for b is half of b (top half only).
    half_b = b[b[:, 2] >= 0.05]
    ev = evaluate_label([half_b, a], [a, b], 0.005, label="mug")
    assert ev.count_correct and [o.pred_index for o in ev.objects] == [1, 0]
    assert ev.objects[0].f1 == pytest.approx(1.0) and ev.objects[0].centroid_error == pytest.approx(0.0, abs=1e-9)
    assert ev.objects[1].precision == pytest.approx(1.0) and 0.4 < ev.objects[1].recall < 0.6
    assert ev.objects[1].box_iou == pytest.approx(0.5, abs=0.06)
    assert ev.separated  # F1 of the half is about 0.67 >= 0.5
    # Both objects merged into one instance: count wrong, one object unmatched.
    merged = evaluate_label([np.concatenate([a, b])], [a, b], 0.005)
    assert not merged.count_correct and not merged.separated
    assert sum(o.pred_index >= 0 for o in merged.objects) <= 1
    assert merged.union.f1 == pytest.approx(1.0)
    # Nothing returned.
    none = evaluate_label([], [a, b], 0.005)
    assert none.mean_f1 == 0.0 and all(math.isnan(o.centroid_error) for o in none.objects)
    assert none.to_dict()["objects"][0]["centroid_error"] is None
    s = summarise([ev, merged, none])
    assert s["num_objects"] == 6 and s["shared_labels"] == 3 and s["separation_rate"] == pytest.approx(1 / 3)


def test_far_prediction_is_not_matched():
    a = grid([0, 0, 0], [0.1, 0.1, 0.1])
    ev = evaluate_label([a + [5.0, 0, 0]], [a], 0.005)
    assert ev.objects[0].pred_index == -1 and ev.mean_f1 == 0.0 and ev.count_correct and not ev.separated


def test_engine_instances_score_high_against_their_ground_truth():
    from test_query_engine import FakeTextEncoder, cfg, codebook, two_mugs_scene

    from ccl_lgs_ros.eval.metrics3d import instance_points
    from ccl_lgs_ros.query.engine import QueryEngine

    enc = FakeTextEncoder()
    scene, _ = two_mugs_scene(6000)
    res = QueryEngine(scene.index(codebook(enc)), enc, cfg()).query("mug", point_spacing=0.0)
    gt = [scene.means[scene.object_id == k] for k in (0, 1)]
    ev = evaluate_label(instance_points(res), gt, 0.005, label="mug")
    assert ev.separated and ev.mean_f1 == pytest.approx(1.0)
    assert max(o.centroid_error for o in ev.objects) < 1e-3
