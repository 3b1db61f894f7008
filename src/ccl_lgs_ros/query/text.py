"""The one check of query text (queries and negative phrases), used by the engine and the node.

Accepted: any printable Unicode text, in any script, including the format characters that real
writing needs (zero-width joiner U+200D and non-joiner U+200C in Indic scripts and emoji
sequences, the soft hyphen U+00AD, left-to-right / right-to-left marks U+200E / U+200F).
Refused, each with its reason: non-strings; empty or whitespace-only text; text longer than
the limit; U+FFFD (bytes that were not valid UTF-8); C0 / C1 control characters; the bidi
embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069: they reorder how the text is
displayed, a known way to disguise it); surrogates, private-use and unassigned code points;
and text without any letter, digit or pictograph (``#$%``).
"""

from __future__ import annotations

import unicodedata
from typing import Any

#: Bidi embedding / override (U+202A-U+202E) and isolate (U+2066-U+2069) controls.
BIDI_CONTROLS = frozenset(chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)])


class QueryError(ValueError):
    """The query (text or options) is invalid; the message says why."""


def _codes(chars: list[str]) -> str:
    return ", ".join(f"U+{ord(c):04X}" for c in chars[:5])


def validate_text(text: Any, max_chars: int, what: str = "query") -> str:
    """``text`` stripped of surrounding whitespace, or :class:`QueryError` saying what is wrong."""
    if not isinstance(text, str):
        raise QueryError(f"{what} must be text (a string), got {type(text).__name__}")
    if len(text) > max_chars:
        raise QueryError(f"{what} is {len(text)} characters long; at most {max_chars} are accepted")
    stripped = text.strip()
    if not stripped:
        raise QueryError(f"{what} is empty: give a phrase such as 'red mug'")
    if "\ufffd" in stripped:
        raise QueryError(f"{what} contains U+FFFD replacement characters (text that was not valid UTF-8)")
    controls = [c for c in stripped if unicodedata.category(c) == "Cc"]
    if controls:
        raise QueryError(f"{what} contains control characters ({_codes(controls)}); send plain text")
    bidi = [c for c in stripped if c in BIDI_CONTROLS]
    if bidi:
        raise QueryError(f"{what} contains bidi override / isolate characters ({_codes(bidi)}), which "
                         "disguise how text is displayed")  # fmt: skip
    odd = [c for c in stripped if unicodedata.category(c) in ("Cs", "Co", "Cn")]
    if odd:
        raise QueryError(f"{what} contains surrogate, private-use or unassigned code points ({_codes(odd)})")
    if not any(unicodedata.category(c)[0] in "LN" or unicodedata.category(c) == "So" for c in stripped):
        raise QueryError(f"{what} has no letters or digits (or pictographs such as emoji)")
    return stripped


__all__ = ["BIDI_CONTROLS", "QueryError", "validate_text"]
