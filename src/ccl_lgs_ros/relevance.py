"""LERF relevance of CLIP-space vectors to a text query: the one formula, used by the 3D query
engine (:mod:`ccl_lgs_ros.query.engine`), the 2D relevance maps and heatmaps
(:mod:`ccl_lgs_ros.semantics.relevance`) and through them every evaluation protocol.

For a vector ``v``, the query ``phi(text)`` and the negatives ``phi(neg_k)`` (all unit vectors),
with ``s = cos(v, .)`` and the temperature ``T`` (``query.temperature``, LERF: 10)::

    relevance(v) = min_k softmax(T [s_pos, s_neg_k])[0] = min_k sigmoid(T (s_pos - s_neg_k))

**No negatives**: one negative of zero similarity is assumed (``sigmoid(T s_pos)``), so a
vector unrelated to the text scores 0.5, as it does against a generic negative. The logits are
clipped to +-60 (``exp`` stays finite; float32 sigmoid is already 0 or 1 there).
"""

from __future__ import annotations

import numpy as np

#: |T (s_pos - s_neg)| is clipped here so exp() never overflows.
MAX_LOGIT = 60.0


def lerf_relevance(
    vectors: np.ndarray,  # [M, D] unit rows
    positive: np.ndarray,  # [D] unit
    negatives: np.ndarray,  # [K, D] unit (K may be 0)
    temperature: float,
) -> np.ndarray:
    """``min_k sigmoid(T (s_pos - s_neg_k))`` per row: ``float32 [M]`` in [0, 1]."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"vectors must be [M, D], got shape {v.shape}")
    s_pos = v @ np.asarray(positive, dtype=np.float32).reshape(v.shape[1])
    negs = np.asarray(negatives, dtype=np.float32).reshape(-1, v.shape[1])
    s_neg = v @ negs.T if negs.shape[0] else np.zeros((v.shape[0], 1), np.float32)  # [M, K]
    diff = np.clip(float(temperature) * (s_pos[:, None] - s_neg), -MAX_LOGIT, MAX_LOGIT)
    return (1.0 / (1.0 + np.exp(-diff))).min(axis=1).astype(np.float32)


__all__ = ["MAX_LOGIT", "lerf_relevance"]
