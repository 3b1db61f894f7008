"""The semantic Gaussian field: contrastive codebook, field training, relevance, variants.

Entry points: :func:`train_field` (the pipeline's field stage), :func:`per_gaussian_code_probs`
and :func:`gaussian_code_probs` (per-Gaussian semantics for the query index).
2D relevance lives in :mod:`.relevance`; the query index is built by
:func:`ccl_lgs_ros.scene.build.build_query_index`.
"""

from .field import gaussian_code_probs, load_field, per_gaussian_code_probs, train_field
from .model import SemanticField

__all__ = [
    "SemanticField",
    "gaussian_code_probs",
    "load_field",
    "per_gaussian_code_probs",
    "train_field",
]
