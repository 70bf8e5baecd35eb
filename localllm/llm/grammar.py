"""Structured output: ``format`` ("json" or a JSON schema) as a llama.cpp grammar.

The grammar constrains sampling token by token, so the answer parses (and
matches the schema) unless a token budget cuts it short.
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

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
