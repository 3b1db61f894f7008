"""The service's request check uses the core's one text validator (no rules of its own)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ccl_lgs_ros.query.text import QueryError, validate_text
from ccl_lgs_ros.ros import conversions as conv
from ccl_lgs_ros.ros.query_part import RequestError, check_request


def _req(query: str, negatives: tuple[str, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(query=query, negatives=list(negatives), threshold=0.0, point_spacing=0.0,
                           clouds=conv.CLOUDS_BOTH)  # fmt: skip


@pytest.mark.parametrize("text", ["क्‍ष", "कप्‌", "Kaffee\u00adtasse", "👩\u200d🔬", "кружка"])
def test_the_service_accepts_what_the_engine_accepts(text: str) -> None:
    validate_text(text, 200)
    check_request(_req(text), 200)


@pytest.mark.parametrize("text", ["mug\u202egnp", "\u2066mug\u2069", "red\x07mug", "red\x9bmug", "#$%"])
def test_the_service_refuses_with_the_engines_reason(text: str) -> None:
    with pytest.raises(QueryError) as core:
        validate_text(text, 200)
    with pytest.raises(RequestError) as node:
        check_request(_req(text), 200)
    assert str(node.value) == str(core.value)


def test_negative_phrases_go_through_the_same_check() -> None:
    with pytest.raises(RequestError, match="negative phrase contains bidi"):
        check_request(_req("red mug", ("thing\u202e",)), 200)
    check_request(_req("red mug", ("क्‍ष",)), 200)
