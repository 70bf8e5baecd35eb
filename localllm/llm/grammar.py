"""Structured output: ``format`` ("json" or a JSON schema) as a llama.cpp grammar.

The grammar constrains sampling token by token, so the answer parses (and
matches the schema) unless a token budget cuts it short.
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from ..errors import InvalidRequest


def grammar_for(format: Any) -> str | None:
    if format is None or format == "":
        return None
    if format == "json":
        return JSON_GBNF
    if isinstance(format, dict):
        return schema_grammar(format)
    raise InvalidRequest(f"invalid format {format!r}: use \"json\" or a JSON schema object")


def schema_grammar(schema: dict[str, Any]) -> str:
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except (ValueError, KeyError, TypeError, NotImplementedError, RecursionError) as exc:
        raise InvalidRequest(f"the JSON schema in format cannot be enforced: {exc}") from exc
