"""Concurrent queries on one engine (no engine-wide lock) give exactly the serial answers.

The unit index is immutable, the cloud cache and the embedding cache have their own locks; a
small cloud budget and embedding cache force evictions while the threads run."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from test_query_engine import FakeTextEncoder, cfg, codebook, two_mugs_scene

from ccl_lgs_ros.query.engine import QueryEngine, QueryResult
from ccl_lgs_ros.query.units import UnitIndex

TEXTS = ["mug", "plant", "table", "floor", "red mug", "coffee mug"]
SPACINGS = [0.02, 0.01, 0.015, 0.03, 0.0]


def _requests() -> list[dict]:
    out = []
    for i in range(48):
        out.append({"text": TEXTS[i % len(TEXTS)], "point_spacing": SPACINGS[i % len(SPACINGS)],
                    "include_gaussians": bool(i % 2), "negatives": ["thing"] if i % 3 == 0 else None})  # fmt: skip
    return out


def _same(a: QueryResult, b: QueryResult) -> None:
    assert (a.found, a.level, a.num_selected, a.message) == (b.found, b.level, b.num_selected, b.message)
    assert a.best_score == b.best_score and len(a.instances) == len(b.instances)
    for x, y in zip(a.instances, b.instances):
        assert x.score == y.score
        for name in ("gaussian_ids", "centroid", "points", "point_colors", "means", "relevance"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))


class _SlowEncoder(FakeTextEncoder):
    """Checks that encoder calls never overlap (the cache serialises them) and yields the GIL."""

    def __init__(self) -> None:
        super().__init__()
        self._inside = threading.Lock()

    def encode_text(self, texts):  # noqa: ANN001, ANN201
        assert self._inside.acquire(blocking=False), "two encoder calls at once"
        try:
            threading.Event().wait(0.002)
            return super().encode_text(texts)
        finally:
            self._inside.release()


@pytest.mark.parametrize("budget_mb", [64.0, 0.004])  # everything cached / constant LRU evictions
def test_threads_get_the_serial_answers(budget_mb: float) -> None:
    scene, _ = two_mugs_scene(4000)
    enc = _SlowEncoder()
    index = scene.index(codebook(enc))
    settings = cfg(cloud_cache_mb=budget_mb, embedding_cache_size=3)
    serial = QueryEngine(index, enc, settings)
    want = [serial.query(**r) for r in _requests()]
    shared = QueryEngine(index, enc, settings)
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda r: shared.query(**r), _requests() * 3))
    for i, res in enumerate(got):
        _same(res, want[i % len(want)])
    clouds = shared.clouds
    assert clouds.lru_bytes == sum(c.nbytes for c in clouds.lru.values()) <= max(clouds.budget, 0)
    assert len(shared.embeddings) <= max(3, 1 + len(settings.negatives) + 1)


def test_the_unit_index_is_read_only() -> None:
    scene, _ = two_mugs_scene(2000)
    enc = FakeTextEncoder()
    units = UnitIndex.build(scene.index(codebook(enc)), cfg())
    with pytest.raises(ValueError):
        units.eligible[0] = False
    lk = next(iter(units.levels.values()))
    with pytest.raises(ValueError):
        lk.sorted_ids[0] = 0
    with pytest.raises(AttributeError):
        units.grid = None  # type: ignore[misc]
