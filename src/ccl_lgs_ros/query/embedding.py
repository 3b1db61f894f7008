"""A thread-safe LRU cache of unit text embeddings in front of a text encoder."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np


class TextEncoderLike(Protocol):
    """What the engine needs from :class:`ccl_lgs_ros.priors.types.TextEncoder`."""

    def encode_text(self, texts: Sequence[str]) -> np.ndarray: ...


class EmbeddingCache:
    """``embed(texts) -> float32 [Q, D]`` unit rows, at most ``size`` phrases kept (LRU).

    The dictionary is guarded by a lock; encoder calls for missing phrases are serialised by a
    second lock (an encoder need not be thread-safe), so a query whose phrases are cached never
    waits for another query's encoder call."""

    def __init__(self, encoder: TextEncoderLike, dim: int, size: int) -> None:
        self.encoder, self.dim, self.size = encoder, int(dim), int(size)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._cache)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit embeddings ``float32 [Q, D]``; one encoder call for the phrases not cached."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            found = {t: self._cache[t] for t in texts if t in self._cache}
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            with self._encode_lock:
                emb = np.asarray(self.encoder.encode_text(missing), dtype=np.float32)
            if emb.shape != (len(missing), self.dim) or not np.isfinite(emb).all():
                raise ValueError(f"text encoder returned {emb.shape}, expected ({len(missing)}, {self.dim})")
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            emb.flags.writeable = False
            found.update(zip(missing, emb))
        out = np.stack([found[t] for t in texts])
        with self._lock:
            for t in texts:
                self._cache[t] = found[t]
                self._cache.move_to_end(t)
            while len(self._cache) > max(self.size, len(texts)):
                self._cache.popitem(last=False)
        return out


__all__ = ["EmbeddingCache", "TextEncoderLike"]
