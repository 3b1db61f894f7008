"""The one query-text check (:mod:`ccl_lgs_ros.query.text`): what real writing needs passes,
controls and bidi overrides are refused with the reason."""

from __future__ import annotations

import pytest

from ccl_lgs_ros.query.text import QueryError, validate_text

ACCEPTED = [
    "red mug",
    "  red mug  ",  # stripped
    "tasse rouge à café",
    "кружка",  # Cyrillic
    "赤いマグカップ",  # Japanese
    "कप्‌",  # Devanagari with ZWNJ U+200C
    "क्‍ष",  # ZWJ U+200D
    "👩\u200d🔬 figure",  # an emoji ZWJ sequence
    "🍎",  # a pictograph alone
    "Kaffee\u00adtasse",  # soft hyphen U+00AD
    "\u05db\u05d5\u05e1 \u200fcup",  # Hebrew with a right-to-left mark U+200F
    "mug #2",
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_printable_text_of_real_writing_systems_is_accepted(text: str) -> None:
    assert validate_text(text, 200) == text.strip()


@pytest.mark.parametrize(
    "text,why",
    [
        ("", "empty"),
        (" \t ", "empty"),
        ("x" * 201, "201 characters long"),
        ("red\x07mug", "control characters (U+0007)"),  # C0
        ("red\x1b[2Jmug", "control characters (U+001B)"),
        ("red\x85mug", "control characters (U+0085)"),  # C1 (NEL)
        ("red\x9bmug", "control characters (U+009B)"),  # C1 (CSI)
        ("red\nmug", "control characters (U+000A)"),
        ("mug\u202egnp.exe", "bidi override / isolate characters (U+202E)"),
        ("\u202amug", "U+202A"),
        ("\u202dmug", "U+202D"),
        ("\u2066mug\u2069", "U+2066, U+2069"),
        ("\u2068mug", "U+2068"),
        ("\ufffd\ufffd", "not valid UTF-8"),
        ("mug\ue000", "private-use"),
        ("mug\udc80", "surrogate"),
        ("mug\U000e0080", "unassigned"),
        ("#$%^&*", "no letters or digits"),
    ],
)
def test_bad_text_is_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(QueryError, match=".*") as err:
        validate_text(text, 200)
    assert why in str(err.value), str(err.value)


def test_non_strings_and_what_names_the_field() -> None:
    with pytest.raises(QueryError, match="must be text"):
        validate_text(42, 200)
    with pytest.raises(QueryError, match="^negative phrase is empty"):
        validate_text(" ", 200, "negative phrase")
