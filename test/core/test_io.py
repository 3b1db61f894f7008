"""The project's JSON writer (``io.json_text`` / ``atomic_write_json``) writes standard JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ccl_lgs_ros.io import atomic_write_json, json_text


def _strict_load(text: str):
    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_undefined_values_are_null_and_strict_parsers_accept_the_text(tmp_path: Path) -> None:
    data = {
        "miou": float("nan"),
        "per_class": {"mug": math.inf, "can": -math.inf, "cup": 0.5},
        "images": [np.float32("nan"), np.float64(0.25), 3],
        "array": np.array([1.0, np.nan, 2.0]),
        "flag": np.bool_(True),
        "where": Path("/tmp/x"),
    }
    path = tmp_path / "metrics.json"
    atomic_write_json(path, data)
    back = _strict_load(path.read_text())
    assert back == {
        "miou": None,
        "per_class": {"mug": None, "can": None, "cup": 0.5},
        "images": [None, 0.25, 3],
        "array": [1.0, None, 2.0],
        "flag": True,
        "where": "/tmp/x",
    }
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_unknown_types_are_refused_not_stringified() -> None:
    with pytest.raises(TypeError):
        json_text({"x": object()})
