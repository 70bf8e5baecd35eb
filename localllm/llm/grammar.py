"""Structured output: ``format`` ("json" or a JSON schema) as a llama.cpp grammar.

The grammar constrains sampling token by token, so the answer parses (and matches the schema) unless a
token budget cuts it short. llama-cpp-python's schema converter is used with these changes:

* a string character is what JSON allows unescaped, or an escape: the converter's own rule takes any
  character but ``"`` and ``\\``, so a model could write a raw newline inside a string, which no JSON
  parser accepts;
* whitespace is bounded as in llama.cpp's ``grammars/json.gbnf`` (a space, or a newline and an indent of
  at most 20), and the top-level value ends at its last character: a model that never samples
  end-of-text cannot pad with whitespace until the token limit;
* literals (property names, ``const``, ``enum``) are escaped for GBNF, backslashes included;
* ``pattern`` is translated from Python's own parse of the regular expression, to the JSON text of the
  strings it matches (a ``"`` in a match is written ``\\"``);
* integer ``minimum``/``maximum`` (and their exclusive forms) become digit-range rules.

Keywords no grammar can enforce (``multipleOf``, ``uniqueItems``, number ranges, ...) are refused when
the caller asks for strictness and left to best effort otherwise.
"""

from __future__ import annotations

import json
import math
import re
from re import _constants as sre
from re import _parser as sre_parser
from typing import Any

from llama_cpp.llama_grammar import PRIMITIVE_RULES, BuiltinRule, SchemaConverter

from ..errors import InvalidRequest

# Whitespace as llama.cpp's grammars/json.gbnf bounds it: none, a space, or a newline and an indent.
WS_RULE = r'| " " | "\n" [ \t]{0,20}'
# One character of a JSON string, as JSON text: any character JSON allows unescaped (not '"', '\' or a
# control character; DEL is left out too, as json.gbnf does), or an escape. A \u escape of a UTF-16
# surrogate comes only as a proper pair, so strict parsers accept the string and each match of this rule
# is one character of the decoded string (minLength and maxLength count those).
STRING_CHAR_RULE = (
    r'[^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" ( [0-9a-cA-CefEF] [0-9a-fA-F]{3} '
    r'| [dD] [0-7] [0-9a-fA-F]{2} | [dD] [89abAB] [0-9a-fA-F]{2} "\\u" [dD] [c-fC-F] [0-9a-fA-F]{2} ) )'
)

# JSON as llama.cpp's json.gbnf writes it, except that the top-level object ends at its "}":
# trailing whitespace would let a model that never samples end-of-text pad to the token limit.
JSON_GBNF = r"""
root   ::= "{" ws ( string ":" ws value ( "," ws string ":" ws value )* )? "}"
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ( "," ws string ":" ws value )* )? "}" ws
array  ::= "[" ws ( value ( "," ws value )* )? "]" ws
string ::= "\"" char* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
""" + f"char   ::= {STRING_CHAR_RULE}\nws     ::= {WS_RULE}\n"

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
        converter = _Converter(strict=strict)
        resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "request")
        converter.visit(resolved, "")
        converter.end_root_at_its_last_character()
        return converter.format_grammar()
    except InvalidRequest:
        raise
    except (ValueError, KeyError, TypeError, AssertionError, NotImplementedError, RecursionError) as exc:
        raise InvalidRequest(f"the JSON schema cannot be enforced: {exc}") from exc


class _Converter(SchemaConverter):
    """llama-cpp-python's converter, with JSON-safe strings, bounded whitespace and integer ranges."""

    def __init__(self, *, strict: bool) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self.strict = strict
        self._rules["space"] = WS_RULE

    def visit(self, schema: Any, name: str) -> str:
        if isinstance(schema, dict) and schema.get("type") == "integer" and any(k in schema for k in _BOUNDS):
            low, high = integer_bounds(schema)
            rule = f"( {' | '.join(integer_range(low, high))} ) space"
            return self._add_rule(name or "root", rule)
        return super().visit(schema, name)

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        if rule is PRIMITIVE_RULES["char"]:
            rule = BuiltinRule(STRING_CHAR_RULE, [])
        return super()._add_primitive(name, rule)

    def _format_literal(self, literal: str) -> str:
        """A GBNF literal for JSON text (the converter passes json.dumps output): its backslashes stay
        backslashes (the converter's own escaping turned ``"a\\nb"`` into a raw newline)."""
        return gbnf_literal(literal)

    def _visit_pattern(self, pattern: str, name: str) -> str:
        try:
            body = pattern_rule(pattern, self._add_primitive("char", PRIMITIVE_RULES["char"]))
        except InvalidRequest:
            if self.strict:
                raise
            return self._add_rule(name, self._add_primitive("string", PRIMITIVE_RULES["string"]))  # best effort
        return self._add_rule(name, f'"\\"" {body} "\\"" space')

    def end_root_at_its_last_character(self) -> None:
        """Drop the whitespace the converter allows after the top-level value (each value rule ends with
        ``space``); rules shared with inner values get a copy without it."""
        self._rules["root"] = self._without_trailing_space(self._rules["root"], {})

    def _without_trailing_space(self, body: str, copies: dict[str, str]) -> str:
        tokens = _gbnf_tokens(body)
        if tokens is None:
            return body  # not the converter's usual text: left as it is (its whitespace is bounded anyway)
        return " | ".join(self._strip_alternative(alternative, copies) for alternative in _alternatives(tokens))

    def _strip_alternative(self, tokens: list[str], copies: dict[str, str]) -> str:
        """One alternative of a rule, without the whitespace its last element allows after it."""
        if tokens and tokens[-1] == "space":
            tokens = tokens[:-1]
        elif tokens and tokens[-1] in self._rules:
            tokens = [*tokens[:-1], self._copy_without_trailing_space(tokens[-1], copies)]
        elif tokens and tokens[0] == "(" and _closing(tokens) == len(tokens) - 1:
            tokens = ["(", self._without_trailing_space(_joined(tokens[1:-1]), copies), ")"]
        return _joined(tokens)

    def _copy_without_trailing_space(self, name: str, copies: dict[str, str]) -> str:
        if name not in copies:
            key = f"{name}-end"
            while key in self._rules:
                key += "-"
            copies[name] = key
            self._rules[key] = ""  # reserved before recursing, for a rule that ends in itself
            self._rules[key] = self._without_trailing_space(self._rules[name], copies)
        return copies[name]


# --- GBNF text -------------------------------------------------------------------------------------
_GBNF_TOKEN = re.compile(r'\s*("(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[A-Za-z0-9_-]+|\{[0-9, ]*\}|[()|?*+])\s*')
_QUANTIFIERS = ("*", "+", "?")


def _gbnf_tokens(body: str) -> list[str] | None:
    """The tokens of a rule's body (literals, classes, names, operators); None if it holds anything else."""
    tokens, position = [], 0
    while position < len(body):
        match = _GBNF_TOKEN.match(body, position)
        if match is None:
            return None
        tokens.append(match.group(1))
        position = match.end()
    return tokens


def _joined(tokens: list[str]) -> str:
    """Tokens back into GBNF text, each quantifier right after what it repeats."""
    text = ""
    for token in tokens:
        glued = token in _QUANTIFIERS or token.startswith("{")
        text += token if glued or not text else f" {token}"
    return text


def _alternatives(tokens: list[str]) -> list[list[str]]:
    """The top-level alternatives of a rule's tokens."""
    parts: list[list[str]] = [[]]
    depth = 0
    for token in tokens:
        depth += (token == "(") - (token == ")")
        if token == "|" and depth == 0:
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def _closing(tokens: list[str]) -> int:
    """Where the group opened by the first token closes (-1: never)."""
    depth = 0
    for index, token in enumerate(tokens):
        depth += (token == "(") - (token == ")")
        if depth == 0:
            return index
    return -1


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal (which reads ``\\`` and ``"`` as escapes, newlines as line ends)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


# --- integer ranges --------------------------------------------------------------------------------
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


# --- patterns --------------------------------------------------------------------------------------
# A JSON Schema pattern is a regular expression over the decoded string; the grammar writes its JSON
# text. Python's own parser reads the expression (jsonschema validates with Python's re as well), and
# each set of characters becomes the ones JSON writes as they are, plus the escapes of those it cannot.
_UNICODE_END = 0x10FFFF
_RAW_IN_JSON = [(0x20, 0x21), (0x23, 0x5B), (0x5D, 0x7E), (0x80, 0xD7FF), (0xE000, _UNICODE_END)]
_SHORT_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
# Python's \d, \w and \s take in more of Unicode than ECMA-262's; a set is kept to ASCII where that
# matters, so what the grammar writes matches under either reading.
_ASCII = [(0, 0x7F)]
_CATEGORIES = {
    sre.CATEGORY_DIGIT: [(0x30, 0x39)],
    sre.CATEGORY_WORD: [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    sre.CATEGORY_SPACE: [(0x09, 0x0D), (0x20, 0x20)],
}
_NEGATED_CATEGORIES = {sre.CATEGORY_NOT_DIGIT: sre.CATEGORY_DIGIT, sre.CATEGORY_NOT_WORD: sre.CATEGORY_WORD,
                       sre.CATEGORY_NOT_SPACE: sre.CATEGORY_SPACE}
_STARTS = (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING)
_ENDS = (sre.AT_END, sre.AT_END_STRING)

Intervals = list[tuple[int, int]]


def pattern_rule(pattern: str, char_rule: str) -> str:
    """GBNF for the JSON text (quotes aside) of the strings in which ``pattern`` finds a match.

    A pattern is searched, as JSON Schema says: without ``^`` and ``$`` any text may come before and
    after the match (``char_rule`` is one JSON string character)."""
    if not isinstance(pattern, str):
        raise InvalidRequest("'pattern' must be a string")
    try:
        parsed = sre_parser.parse(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        raise InvalidRequest(f"'pattern' {pattern!r} is not a regular expression: {exc}") from exc
    if parsed.state.flags & ~sre.SRE_FLAG_UNICODE:
        raise _unsupported(pattern, "inline flags")
    items = list(parsed)
    starts = bool(items) and items[0][0] is sre.AT and items[0][1] in _STARTS
    ends = len(items) > starts and items[-1][0] is sre.AT and items[-1][1] in _ENDS
    body = _sequence(items[starts:len(items) - ends], pattern)
    return " ".join([f"{char_rule}*"] * (not starts) + [body] + [f"{char_rule}*"] * (not ends))


def _unsupported(pattern: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"'pattern' {pattern!r} uses {what}, which a grammar cannot enforce")


def _sequence(items: list[tuple[Any, Any]], pattern: str) -> str:
    parts: list[str] = []
    literal: list[int] = []
    for op, argument in items:
        if op is sre.LITERAL:
            literal.append(argument)
            continue
        if literal:
            parts.append(_json_literal(literal, pattern))
            literal = []
        parts.append(_element(op, argument, pattern))
    if literal:
        parts.append(_json_literal(literal, pattern))
    return " ".join(parts) or '""'


def _element(op: Any, argument: Any, pattern: str) -> str:
    if op is sre.NOT_LITERAL:
        return _set_rule(_complement([(argument, argument)]), pattern)
    if op is sre.ANY:
        return _set_rule(_complement([(0x0A, 0x0A)]), pattern)
    if op is sre.IN:
        return _set_rule(_in_set(argument, pattern), pattern)
    if op is sre.BRANCH:
        return "( " + " | ".join(_sequence(list(branch), pattern) for branch in argument[1]) + " )"
    if op is sre.SUBPATTERN:
        _group, add_flags, del_flags, sub = argument
        if add_flags or del_flags:
            raise _unsupported(pattern, "inline flags")
        return f"( {_sequence(list(sub), pattern)} )"
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):  # lazy or greedy: the same strings match
        low, high, sub = argument
        return f"( {_sequence(list(sub), pattern)} ){_quantifier(low, high)}"
    raise _unsupported(pattern, str(op).lower().replace("_", " ") + (f" ({argument})" if op is sre.AT else ""))


def _quantifier(low: int, high: int) -> str:
    unbounded = high is sre.MAXREPEAT or high == sre.MAXREPEAT
    if (low, unbounded) == (0, True):
        return "*"
    if (low, unbounded) == (1, True):
        return "+"
    if (low, high) == (0, 1):
        return "?"
    if unbounded:
        return f"{{{low},}}"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def _in_set(items: list[tuple[Any, Any]], pattern: str) -> Intervals:
    """The code points of a character set ``[...]`` (a \\D-like set, or a negated one naming \\d and the
    like, only within ASCII)."""
    negated, ascii_only, ranges = False, False, []
    for op, argument in items:
        if op is sre.NEGATE:
            negated = True
        elif op is sre.LITERAL:
            ranges.append((argument, argument))
        elif op is sre.RANGE:
            ranges.append(tuple(argument))
        elif op is sre.CATEGORY and argument in _CATEGORIES:
            ranges += _CATEGORIES[argument]
            ascii_only = True
        elif op is sre.CATEGORY and argument in _NEGATED_CATEGORIES:
            ranges += _complement(_CATEGORIES[_NEGATED_CATEGORIES[argument]], _ASCII)
        else:
            raise _unsupported(pattern, str(argument or op).lower().replace("_", " "))
    if negated:
        return _complement(ranges, _ASCII if ascii_only else [(0, _UNICODE_END)])
    return _normalized(ranges)


def _set_rule(chars: Intervals, pattern: str) -> str:
    """GBNF for one character of the set, as JSON writes it: a class of the characters JSON writes as
    they are, and the short escapes of the others the set holds (other control characters are left out)."""
    raw = _intersection(chars, _RAW_IN_JSON)
    options = [_char_class(raw)] if raw else []
    options += [gbnf_literal(escape) for code, escape in _SHORT_ESCAPES.items() if _contains(chars, code)]
    if not options:
        raise _unsupported(pattern, "a set of only control characters")
    return options[0] if len(options) == 1 else "( " + " | ".join(options) + " )"


def _json_literal(codes: list[int], pattern: str) -> str:
    text = ""
    for code in codes:
        if 0xD800 <= code <= 0xDFFF:
            raise _unsupported(pattern, "a lone surrogate")
        text += json.dumps(chr(code), ensure_ascii=False)[1:-1]
    return gbnf_literal(text)


def _char_class(chars: Intervals) -> str:
    """The shorter of ``[...]`` and ``[^...]`` for these code points."""
    outside = _complement(chars)
    negate = len(outside) < len(chars)
    body = "".join(_class_item(low, high) for low, high in (outside if negate else chars))
    return f"[^{body}]" if negate else f"[{body}]"


def _class_item(low: int, high: int) -> str:
    return _class_char(low) if low == high else f"{_class_char(low)}-{_class_char(high)}"


def _class_char(code: int) -> str:
    if chr(code).isascii() and chr(code).isalnum():
        return chr(code)
    return f"\\x{code:02X}" if code < 0x100 else f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"


def _normalized(ranges: Intervals) -> Intervals:
    merged: Intervals = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _complement(ranges: Intervals, within: Intervals | None = None) -> Intervals:
    result, start = [], 0
    for low, high in _normalized(ranges):
        if low > start:
            result.append((start, low - 1))
        start = max(start, high + 1)
    if start <= _UNICODE_END:
        result.append((start, _UNICODE_END))
    return _intersection(result, within) if within is not None else result


def _intersection(a: Intervals, b: Intervals) -> Intervals:
    return _normalized([(max(x, y), min(x2, y2)) for x, x2 in _normalized(a) for y, y2 in _normalized(b)
                        if max(x, y) <= min(x2, y2)])


def _contains(ranges: Intervals, code: int) -> bool:
    return any(low <= code <= high for low, high in ranges)


# --- strictness --------------------------------------------------------------------------------------
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
    if "pattern" in schema and ("minLength" in schema or "maxLength" in schema):
        raise InvalidRequest(f"strict schemas cannot bound the length of a string with a 'pattern' (at {where}); "
                             "put the length into the pattern or set strict to false")
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    missing = [name for name in required if name not in properties]
    if missing:
        raise InvalidRequest(f"strict schemas can only require properties they define: 'required' names "
                             f"{missing[0]!r} (at {where}), which 'properties' lacks")
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items() if isinstance(schema.get(key), dict) else ():
            _refuse_unenforceable(sub, f"{where}.{key}.{name}")
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for index, sub in enumerate(schema.get(key) or []) if isinstance(schema.get(key), list) else ():
            _refuse_unenforceable(sub, f"{where}.{key}[{index}]")
    for key in ("items", "additionalProperties"):
        _refuse_unenforceable(schema.get(key), f"{where}.{key}")
