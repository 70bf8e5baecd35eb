"""Structured output: ``format`` ("json" or a JSON schema) as a llama.cpp grammar.

The grammar constrains sampling token by token, so the answer parses (and
matches the schema) unless a token budget cuts it short. llama-cpp-python's
schema converter is used with one addition: integer ``minimum``/``maximum``
(and their exclusive forms) become digit-range rules. Keywords no grammar can
enforce (``multipleOf``, ``uniqueItems``, number ranges, ...) are refused when
the caller asks for strictness and left to best effort otherwise.
"""

from __future__ import annotations

import json
import math
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

from ..errors import InvalidRequest

# JSON as llama.cpp's json.gbnf writes it, except that the top-level object ends at its "}":
# trailing whitespace would let a model that never samples end-of-text pad to the token limit.
JSON_GBNF = r"""
root   ::= "{" ws ( string ":" ws value ( "," ws string ":" ws value )* )? "}"
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ( "," ws string ":" ws value )* )? "}" ws
array  ::= "[" ws ( value ( "," ws value )* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
"""

MAX_DIGITS = 16  # as the converter's own integer rule: [1-9][0-9]{0,15}
UNENFORCEABLE = ("multipleOf", "uniqueItems", "minProperties", "maxProperties", "not", "if", "then", "else",
                 "patternProperties", "dependentRequired", "dependentSchemas", "contains", "propertyNames")
_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def grammar_for(format: Any) -> str | None:
    if format is None or format == "":
        return None
    if format == "json":
        return JSON_GBNF
    if isinstance(format, dict):
        return schema_grammar(format)
    raise InvalidRequest(f"invalid format {format!r}: use \"json\" or a JSON schema object")


def schema_grammar(schema: dict[str, Any], *, strict: bool = False) -> str:
    if strict:
        _refuse_unenforceable(schema, "schema")
    try:
        converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "request")
        converter.visit(resolved, "")
        return converter.format_grammar()
    except InvalidRequest:
        raise
    except (ValueError, KeyError, TypeError, AssertionError, NotImplementedError, RecursionError) as exc:
        raise InvalidRequest(f"the JSON schema cannot be enforced: {exc}") from exc


class _Converter(SchemaConverter):
    """llama-cpp-python's converter, plus integer ranges."""

    def visit(self, schema: Any, name: str) -> str:
        if isinstance(schema, dict) and schema.get("type") == "integer" and any(k in schema for k in _BOUNDS):
            low, high = integer_bounds(schema)
            rule = f"( {' | '.join(integer_range(low, high))} ) space"
            return self._add_rule(name or "root", rule)
        return super().visit(schema, name)


def integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    low = high = None
    try:
        if "minimum" in schema:
            low = math.ceil(schema["minimum"])
        if "exclusiveMinimum" in schema:
            low = max(low if low is not None else -math.inf, math.floor(schema["exclusiveMinimum"]) + 1)
        if "maximum" in schema:
            high = math.floor(schema["maximum"])
        if "exclusiveMaximum" in schema:
            high = min(high if high is not None else math.inf, math.ceil(schema["exclusiveMaximum"]) - 1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequest(f"integer bounds must be numbers: {exc}") from exc
    if low is not None and high is not None and low > high:
        raise InvalidRequest(f"no integer lies between the schema's bounds ({low} > {high})")
    limit = 10**MAX_DIGITS - 1
    clamp = lambda v: None if v is None else max(-limit, min(limit, int(v)))  # noqa: E731
    return clamp(low), clamp(high)


def integer_range(low: int | None, high: int | None) -> list[str]:
    """GBNF alternatives matching exactly the integers in [low, high] (None: unbounded), no leading zeros."""
    limit = 10**MAX_DIGITS - 1
    low = -limit if low is None else low
    high = limit if high is None else high
    alternatives: list[str] = []
    if low < 0:  # negatives: "-" and a magnitude in [max(1, -high), -low]
        alternatives += [f'"-" {a}' for a in _natural_range(max(1, -high), -low)]
    if high >= 0:
        alternatives += _natural_range(max(0, low), high)
    return alternatives


def _natural_range(low: int, high: int) -> list[str]:
    """Alternatives for the non-negative integers in [low, high], split by number of digits."""
    result: list[str] = []
    while low <= high:
        top = min(high, 10 ** len(str(low)) - 1)
        result += [" ".join(part) for part in _same_length(str(low), str(top))]
        low = top + 1
    return result


def _same_length(low: str, high: str) -> list[list[str]]:
    """Digit-by-digit sequences matching every string of this length from ``low`` to ``high``."""
    if low == high:
        return [[f'"{d}"' for d in low]]
    if len(low) == 1:
        return [[f"[{low}-{high}]"]]
    rest = len(low) - 1
    if low[0] == high[0]:
        return [[f'"{low[0]}"', *part] for part in _same_length(low[1:], high[1:])]
    parts: list[list[str]] = []
    first, last = int(low[0]), int(high[0])
    if low[1:] != "0" * rest:
        parts += [[f'"{low[0]}"', *part] for part in _same_length(low[1:], "9" * rest)]
        first += 1
    whole_last = high[1:] == "9" * rest
    middle_end = last if whole_last else last - 1
    if first <= middle_end:
        head = f'"{first}"' if first == middle_end else f"[{first}-{middle_end}]"
        parts.append([head, *(["[0-9]"] * rest)])
    if not whole_last:
        parts += [[f'"{high[0]}"', *part] for part in _same_length("0" * rest, high[1:])]
    return parts


def _refuse_unenforceable(schema: Any, where: str) -> None:
    """Strict schemas must be enforceable in full: name the first keyword a grammar cannot keep."""
    if not isinstance(schema, dict):
        return
    for keyword in UNENFORCEABLE:
        if keyword in schema:
            raise InvalidRequest(f"strict schemas cannot use '{keyword}' (at {where}); drop it or set strict to false")
    if schema.get("type") == "number" and any(k in schema for k in _BOUNDS):
        raise InvalidRequest(f"strict schemas can bound integers but not numbers (at {where}); use type integer "
                             "or set strict to false")
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items() if isinstance(schema.get(key), dict) else ():
            _refuse_unenforceable(sub, f"{where}.{key}.{name}")
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for index, sub in enumerate(schema.get(key) or []) if isinstance(schema.get(key), list) else ():
            _refuse_unenforceable(sub, f"{where}.{key}[{index}]")
    for key in ("items", "additionalProperties"):
        _refuse_unenforceable(schema.get(key), f"{where}.{key}")
