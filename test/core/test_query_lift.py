"""Lifted assignment: codes voted from 2D index maps through rendering weights."""

from __future__ import annotations

import numpy as np

from ccl_lgs_ros.query.lift import lift_labels


def test_gaussians_take_the_code_of_the_pixels_they_cover_and_occluded_ones_get_little_weight():
    w, h = 64, 48
    K = np.array([[60.0, 0, w / 2], [0, 60.0, h / 2], [0, 0, 1]])
    means = np.array([[-0.4, 0.0, 2.0], [0.4, 0.0, 2.0], [0.4, 0.0, 4.0], [-0.4, 0.1, 2.0]])
    scales = np.array([[0.1, 0.1, 0.01], [0.15, 0.15, 0.01], [0.05, 0.05, 0.01], [0.08, 0.08, 0.01]])
    quats = np.tile([1.0, 0, 0, 0], (4, 1))
    opac = np.array([0.9, 0.99, 0.9, 0.9])
    index_map = np.full((h, w), -1, np.int64)
    index_map[:, : w // 2] = 2
    index_map[:, w // 2 :] = 1
    lifted = lift_labels(means, quats, scales, opac, np.eye(4)[None], K[None], [index_map], num_codes=3)
    assert lifted.codes[[0, 1, 3]].tolist() == [2, 1, 2]
    assert (lifted.share[[0, 1]] > 0.95).all()
    # Gaussian 2 sits behind the opaque Gaussian 1: it receives far less weight.
    assert lifted.total_weight[2] < 0.2 * lifted.total_weight[1]
    # A second view with no labels changes nothing; codes become LevelCodes with the share as confidence.
    again = lift_labels(
        means,
        quats,
        scales,
        opac,
        np.stack([np.eye(4)] * 2),
        np.stack([K] * 2),
        [index_map, np.full((h, w), -1)],
        num_codes=3,
    )
    assert np.allclose(again.votes, lifted.votes)
    lv = lifted.to_level_codes(np.eye(3, 8, dtype=np.float32))
    assert lv.codes.tolist()[:2] == [2, 1] and lv.confidence[0] > 240
