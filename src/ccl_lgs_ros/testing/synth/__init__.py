"""Procedural synthetic scenes with ground truth (tests, the demo, benchmarks).

:func:`generate_scene` writes a capture folder (``docs/DATASET_FORMAT.md``) with RGB, depth,
instance maps, ground-truth object points and labels; :mod:`ccl_lgs_ros.priors.simulator` reads
such captures to stand in for the foundation models.
"""

from .generate import CATALOGUE, GENERATOR_VERSION, ObjectKind, generate_scene

__all__ = ["CATALOGUE", "GENERATOR_VERSION", "ObjectKind", "generate_scene"]
