"""What a query returns: :class:`Instance` (one object, world frame) and :class:`QueryResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .shapes import Box


@dataclass
class Instance:
    """One object instance, world frame."""

    score: float  # opacity-weighted mean relevance of its Gaussians
    level: str
    num_gaussians: int
    centroid: np.ndarray  # [3], opacity-weighted mean of the Gaussian centres
    box: Box  # oriented box along the principal axes of the Gaussian centres
    aabb_min: np.ndarray  # [3], of the Gaussian centres
    aabb_max: np.ndarray  # [3]
    gaussian_ids: np.ndarray  # int64 [M], rows of the index
    # float32 [P, 3], sampled surface cloud (empty when spacing is 0); with cfg.clip_cloud inside
    # aabb_min..aabb_max grown by cfg.clip_cloud_margin typical Gaussian radii.
    points: np.ndarray
    point_colors: np.ndarray  # float32 [P, 3]
    # The Gaussians themselves; empty arrays when the query asked for include_gaussians=False.
    means: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    quats: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scales: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    opacities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    relevance: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def axes(self) -> np.ndarray:
        """Principal axes ``[3, 3]`` (columns, descending variance)."""
        return self.box.rotation

    def to_json(self) -> dict[str, Any]:
        return {
            "score": round(float(self.score), 6),
            "level": self.level,
            "num_gaussians": int(self.num_gaussians),
            "num_points": int(self.points.shape[0]),
            "centroid": self.centroid.tolist(),
            "box": self.box.to_json(),
            "aabb": {"min": self.aabb_min.tolist(), "max": self.aabb_max.tolist()},
        }


@dataclass
class QueryResult:
    """Answer to one text query. ``found=False`` is a valid answer (``best_score`` says how close)."""

    text: str
    found: bool
    best_score: float  # highest relevance of any eligible Gaussian (chosen level)
    threshold: float
    level: str  # level used ("max" when levels were combined per Gaussian)
    frame_id: str
    instances: list[Instance]
    num_selected: int  # Gaussians above the threshold before clustering
    negatives: list[str]
    message: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "found": self.found,
            "best_score": round(float(self.best_score), 6),
            "threshold": self.threshold,
            "level": self.level,
            "frame_id": self.frame_id,
            "num_selected": self.num_selected,
            "negatives": list(self.negatives),
            "message": self.message,
            "instances": [inst.to_json() for inst in self.instances],
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }
