"""geometry.py: the one quaternion product, similarity split and activations, against rotation
matrices and the plain formulas (scipy as the independent reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from ccl_lgs_ros.geometry import (
    SIMILARITY_ATOL,
    activate_opacities,
    activate_scales,
    quat_multiply_wxyz,
    quats_to_rotmats,
    rotmat_to_quat_wxyz,
    split_similarity,
)


def _wxyz(r: Rotation) -> np.ndarray:
    x, y, z, w = r.as_quat()
    return np.array([w, x, y, z])


def test_quaternion_product_composes_rotations() -> None:
    a, b = Rotation.random(5, random_state=1), Rotation.random(5, random_state=2)
    qa = np.stack([_wxyz(r) for r in a])
    qb = np.stack([_wxyz(r) for r in b])
    np.testing.assert_allclose(quats_to_rotmats(quat_multiply_wxyz(qa, qb)), (a * b).as_matrix(), atol=1e-12)
    # Broadcasting one rotation over many, and the matrix -> quaternion round trip.
    q = rotmat_to_quat_wxyz(a[0].as_matrix())
    np.testing.assert_allclose(quats_to_rotmats(quat_multiply_wxyz(q, qb)), (a[0] * b).as_matrix(), atol=1e-12)


def test_similarity_split_and_its_one_tolerance() -> None:
    R = Rotation.from_euler("xyz", [0.3, -0.2, 1.1]).as_matrix()
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = 2.5 * R, [1.0, -2.0, 0.5]
    s, R2, t = split_similarity(T)
    assert s == pytest.approx(2.5) and np.allclose(R2, R) and np.allclose(t, [1.0, -2.0, 0.5])
    split_similarity(T.astype(np.float32))  # float32 storage passes
    sheared = T.copy()
    sheared[0, 1] += 10 * SIMILARITY_ATOL * 2.5
    with pytest.raises(ValueError, match="not a similarity"):
        split_similarity(sheared)
    mirrored = T.copy()
    mirrored[:3, 0] *= -1
    with pytest.raises(ValueError, match="orientation"):
        split_similarity(mirrored)


def test_activations_for_numpy_and_torch() -> None:
    x = np.array([-3.0, 0.0, 2.0])
    np.testing.assert_allclose(activate_scales(x), [np.exp(-3.0), 1.0, np.exp(2.0)])
    np.testing.assert_allclose(activate_opacities(x), [1 / (1 + np.exp(3.0)), 0.5, 1 / (1 + np.exp(-2.0))])
    tx = torch.tensor(x)
    assert torch.allclose(activate_scales(tx), torch.tensor(activate_scales(x)))
    assert torch.allclose(activate_opacities(tx), torch.tensor(activate_opacities(x)))
