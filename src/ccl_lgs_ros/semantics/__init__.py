"""The semantic Gaussian field: contrastive codebook, field training, relevance, variants.

Entry points: :func:`train_field` (the pipeline's field stage), :func:`per_gaussian_code_probs`
and :func:`gaussian_code_probs` (per-Gaussian semantics for the query index),
:func:`build_query_index`. 2D relevance lives in :mod:`.relevance`.
"""

from .field import build_query_index, load_field, per_gaussian_code_probs, train_field
from .model import SemanticField, gaussian_code_probs

__all__ = [
    "SemanticField",
    "build_query_index",
    "gaussian_code_probs",
    "load_field",
    "per_gaussian_code_probs",
    "train_field",
]
