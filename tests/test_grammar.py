"""Grammars for structured output: integer ranges are exact, strict schemas refuse what no grammar keeps."""

from __future__ import annotations

import random
import re

import pytest

from localllm.errors import InvalidRequest
from localllm.llm.grammar import integer_range, schema_grammar


def _as_regex(alternatives: list[str]) -> re.Pattern[str]:
    """The GBNF alternatives use only literals and digit classes, so they read as a regex once unquoted."""
    parts = [a.replace('"', "").replace(" ", "") for a in alternatives]
    return re.compile("^(" + "|".join(p.replace("-", r"\-", 1) if p.startswith("-") else p for p in parts) + ")$")


@pytest.mark.parametrize(
    ("low", "high"),
    [(0, 8), (5, 5), (-20, 13), (3, 1003), (17, 4321), (-999, -7), (0, 0), (100, 199), (9, 10), (-5, None),
     (None, 42), (7, None)],
)
def test_integer_ranges_match_exactly_their_integers(low: int | None, high: int | None) -> None:
    pattern = _as_regex(integer_range(low, high))
    for x in range(-1500, 5000):
        inside = (low is None or x >= low) and (high is None or x <= high)
        assert bool(pattern.match(str(x))) == inside, x
    assert not pattern.match("007") and not pattern.match("-0")


def test_random_wide_ranges() -> None:
    rng = random.Random(5)
    for _ in range(200):
        low = rng.randint(-10**7, 10**7)
        high = low + rng.randint(0, 10**7)
        pattern = _as_regex(integer_range(low, high))
        for x in [low - 1, low, high, high + 1, *(rng.randint(low - 99, high + 99) for _ in range(40))]:
            assert bool(pattern.match(str(x))) == (low <= x <= high), (low, high, x)


def test_bounded_integers_in_a_schema_become_range_rules() -> None:
    grammar = schema_grammar({"type": "object", "properties": {"legs": {"type": "integer", "minimum": 0,
                                                                        "exclusiveMaximum": 9}}})
    assert "[0-8]" in grammar
    with pytest.raises(InvalidRequest, match="no integer"):
        schema_grammar({"type": "integer", "minimum": 5, "maximum": 4})


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    {"type": "object", "properties": {"x": {"type": "number", "maximum": 3}}},
    {"type": "object", "properties": {"x": {"anyOf": [{"type": "integer", "multipleOf": 2}]}}},
])
def test_strict_refuses_unenforceable_keywords_and_loose_allows_them(schema: dict) -> None:
    with pytest.raises(InvalidRequest, match="strict"):
        schema_grammar(schema, strict=True)
    assert "root ::=" in schema_grammar(schema)
