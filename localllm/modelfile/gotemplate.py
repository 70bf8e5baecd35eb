"""A faithful subset of Go's ``text/template``, as Ollama's Modelfile templates use it.

Parsing follows Go's lexer and parser (trim markers, comments, pipelines, variables and their scopes, the
``if``/``range``/``with``/``define``/``template``/``block`` actions, ``break``/``continue``), so a template that
Go rejects is rejected here, at the same line and column, with a message worded like Go's. Execution follows
Go's rules for truth, comparison, printing and the builtin functions, plus the functions Ollama registers
(``json``, ``currentDate``, ``yesterdayDate``, ``toTypeScriptType``).

Data is plain Python: ``dict`` is a Go map (``.Key`` looks a key up; a missing key is Go's zero interface,
printed ``<no value>``, false in ``if``), ``list``/``tuple`` a slice, ``str``/``int``/``float``/``bool``/``None``
the basic kinds. :class:`GoStruct` is a Go struct: fixed field names, an error on any other, and a JSON form
used when it is printed or passed to ``json`` (as Ollama's types print themselves through ``String()``).
Maps and slices print as JSON too.

A template is someone else's code: execution is bounded by ``max_output`` characters and ``max_steps`` nodes,
and nesting by :data:`MAX_DEPTH`, so no template can hang, exhaust memory or overflow the Python stack.
"""

from __future__ import annotations

import bisect
import datetime
import math
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_MAX_STEPS",
    "MAX_DEPTH",
    "GoStruct",
    "GoTemplate",
    "GoTemplateError",
    "GoTemplateExecError",
    "GoTemplateSyntaxError",
    "go_json",
    "looks_like_go_template",
    "parse",
]

DEFAULT_MAX_OUTPUT = 1_000_000
DEFAULT_MAX_STEPS = 1_000_000
MAX_DEPTH = 100  # nesting of actions and parentheses; Go allows more, no real template comes close


# --- errors -----------------------------------------------------------------------------------------------------


class GoTemplateError(Exception):
    """A template that cannot be parsed or executed; ``line`` and ``column`` (1-based) say where."""

    def __init__(self, message: str, line: int, column: int) -> None:
        self.message = message
        self.line = line
        self.column = column
        super().__init__(f"template: {line}:{column}: {message}")


class GoTemplateSyntaxError(GoTemplateError):
    """The template does not parse (Go's ``template.Parse`` would fail)."""


class GoTemplateExecError(GoTemplateError):
    """Executing the template failed: a bad operation on the data, or a budget exceeded."""


class _Fail(Exception):
    """An execution error without a position yet; the node being executed adds it."""


# --- values -----------------------------------------------------------------------------------------------------


class GoStruct:
    """A Go struct over data: ``.Field`` reads ``fields[Field]``; any other name is an error, as in Go.

    ``json_value`` is what ``json`` marshals and what printing shows (as JSON): the struct's JSON form."""

    __slots__ = ("type_name", "fields", "json_value")

    def __init__(self, type_name: str, fields: Mapping[str, Any], json_value: Any) -> None:
        self.type_name = type_name
        self.fields = dict(fields)
        self.json_value = json_value

    def __repr__(self) -> str:
        return f"GoStruct({self.type_name}, {self.fields!r})"


def _type_name(value: Any) -> str:
    if value is None:
        return "<nil>"
    if isinstance(value, GoStruct):
        return value.type_name
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    if isinstance(value, list | tuple):
        return "[]interface {}"
    return type(value).__name__


def _truth(value: Any) -> bool:
    """Go's truth: false, 0, nil, and empty strings, slices and maps are false; structs are true."""
    if value is None:
        return False
    if isinstance(value, GoStruct):
        return True
    if isinstance(value, bool | int | float | str | list | tuple | Mapping):
        return bool(value)
    return True


def _go_float(value: float) -> str:
    """A float as Go's ``%v`` prints it (``strconv.FormatFloat(f, 'g', -1, 64)``): 1 → "1", 1e6 → "1e+06"."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    point = len(text) + int(exponent)  # the decimal point's position in the digits
    exp = point - 1
    prefix = "-" if sign else ""
    if exp < -4 or exp >= 6:  # %v uses the shortest digits, and %e from an exponent of 6 (Go's eprec)
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{text}"
    if point >= len(text):
        return prefix + text + "0" * (point - len(text))
    return f"{prefix}{text[:point]}.{text[point:]}"


def _json_float(value: float) -> str:
    """A float as Go's ``encoding/json`` writes it: no exponent between 1e-6 and 1e21."""
    if math.isnan(value) or math.isinf(value):
        raise _Fail(f"json: unsupported value: {_go_float(value)}")
    if value == 0:
        return "0" if math.copysign(1, value) > 0 else "-0"
    magnitude = abs(value)
    if 1e-6 <= magnitude < 1e21:
        sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
        text = "".join(map(str, digits))
        point = len(text) + int(exponent)
        prefix = "-" if sign else ""
        if point <= 0:
            return f"{prefix}0.{'0' * -point}{text}"
        if point >= len(text):
            return prefix + text + "0" * (point - len(text))
        return f"{prefix}{text[:point]}.{text[point:]}"
    text = repr(value)  # e.g. 1e+21, 1e-07
    mantissa, _, exp = text.partition("e")
    if mantissa.endswith(".0"):
        mantissa = mantissa[:-2]
    number = int(exp)
    return f"{mantissa}e{'-' if number < 0 else '+'}{abs(number)}"


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "<": "\\u003c", ">": "\\u003e"}
_JSON_ESCAPES.update({"&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})
_JSON_SPECIAL = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029]')


def _json_string(text: str) -> str:
    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return _JSON_ESCAPES.get(char) or f"\\u{ord(char):04x}"

    return '"' + _JSON_SPECIAL.sub(escape, text) + '"'


def go_json(value: Any) -> str:
    """``json.Marshal`` as Go writes it: compact, ``<``, ``>``, ``&`` escaped, map keys in the given order."""
    parts: list[str] = []
    stack: list[Any] = [value]
    while stack:  # iterative: deeply nested data cannot overflow the Python stack
        item = stack.pop()
        if isinstance(item, _Raw):
            parts.append(item.text)
        elif isinstance(item, GoStruct):
            stack.append(item.json_value)
        elif item is None:
            parts.append("null")
        elif item is True:
            parts.append("true")
        elif item is False:
            parts.append("false")
        elif isinstance(item, int):
            parts.append(str(item))
        elif isinstance(item, float):
            parts.append(_json_float(item))
        elif isinstance(item, str):
            parts.append(_json_string(item))
        elif isinstance(item, Mapping):
            pending: list[Any] = [_Raw("{")]
            for index, (key, val) in enumerate(item.items()):
                pending += [_Raw(("," if index else "") + _json_string(str(key)) + ":"), val]
            pending.append(_Raw("}"))
            stack.extend(reversed(pending))
        elif isinstance(item, list | tuple):
            pending = [_Raw("[")]
            for index, val in enumerate(item):
                pending += [_Raw(","), val] if index else [val]
            pending.append(_Raw("]"))
            stack.extend(reversed(pending))
        else:
            raise _Fail(f"json: unsupported type: {_type_name(item)}")
    return "".join(parts)


class _Raw:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _print(value: Any) -> str:
    """A value as ``{{ . }}`` (Go's ``fmt.Fprint``) writes it; maps, slices and structs as their JSON."""
    if value is None:
        return "<no value>"
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, GoStruct | Mapping | list | tuple):
        return go_json(value)
    return str(value)


def _sprint(value: Any) -> str:
    """A value inside ``print``/``printf``: nil is ``<nil>`` there, as in Go's fmt."""
    return "<nil>" if value is None else _print(value)


# --- lexer ------------------------------------------------------------------------------------------------------

_SPACE = " \t\r\n"
_KEYWORDS = {"block", "break", "continue", "define", "else", "end", "if", "range", "nil", "template", "with"}
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]*(?:\.[0-9a-fA-F_]*)?(?:[pP][+-]?\d+)?|0[bB][01_]+|0[oO][0-7_]+"
    r"|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?[\d_]+)?)i?"
)
_ALNUM = re.compile(r"[\w]*")

# token kinds
TEXT, LEFT, RIGHT, SPACE, IDENT, KEYWORD, FIELD, DOT, VAR, STRING, CHAR, NUMBER, BOOL = range(13)
LPAREN, RPAREN, PIPE, DECLARE, ASSIGN, COMMA, EOF, PUNCT, ERROR = range(13, 22)
_NAMES = {RIGHT: "}}", LPAREN: "(", RPAREN: ")", PIPE: "|", DECLARE: ":=", ASSIGN: "=", COMMA: ","}


class _Token:
    __slots__ = ("kind", "value", "pos", "text")

    def __init__(self, kind: int, value: Any, pos: int, text: str) -> None:
        self.kind = kind
        self.value = value
        self.pos = pos
        self.text = text

    def describe(self) -> str:
        if self.kind == EOF:
            return "EOF"
        if self.kind == SPACE:
            return "space"
        if self.kind == RIGHT:
            return '"}}"'
        return repr_go(self.text)


def repr_go(text: str) -> str:
    """Go's ``%q`` of a string."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


class _Source:
    """The template text with line/column lookup."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]

    def where(self, pos: int) -> tuple[int, int]:
        line = bisect.bisect_left(self._newlines, pos)
        start = self._newlines[line - 1] + 1 if line else 0
        return line + 1, pos - start + 1


def _lex(src: _Source) -> list[_Token]:
    """The tokens of the whole source. A lexical error becomes a final ERROR token: like Go, whose parser pulls
    tokens one by one, a parse error met before it is the one reported."""
    tokens: list[_Token] = []
    try:
        _lex_into(src, tokens)
    except GoTemplateSyntaxError as exc:
        tokens.append(_Token(ERROR, exc, len(src.text), ""))
    return tokens


def _lex_into(src: _Source, tokens: list[_Token]) -> None:
    text = src.text
    pos = 0
    n = len(text)

    def fail(message: str, at: int) -> GoTemplateSyntaxError:
        return GoTemplateSyntaxError(message, *src.where(at))

    trim_next = False
    while True:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        if trim_next:
            stripped = chunk.lstrip(_SPACE)
            pos += len(chunk) - len(stripped)
            chunk = stripped
        if start < 0:
            if chunk:
                tokens.append(_Token(TEXT, chunk, pos, chunk))
            tokens.append(_Token(EOF, None, n, ""))
            return
        left_trim = text.startswith("-", start + 2) and start + 3 < n and text[start + 3] in _SPACE
        if left_trim:
            chunk = chunk.rstrip(_SPACE)
        if chunk:
            tokens.append(_Token(TEXT, chunk, pos, chunk))
        pos = start + 2 + (2 if left_trim else 0)
        if text.startswith("/*", pos):  # a comment: {{/* ... */}}
            end = text.find("*/", pos + 2)
            if end < 0:
                raise fail("unclosed comment", start)
            pos = end + 2
            if text.startswith("}}", pos):
                trim_next = False
                pos += 2
            elif pos + 1 < n and text[pos] in _SPACE and text[pos + 1] == "-" and text.startswith("}}", pos + 2):
                trim_next = True
                pos += 4
            else:
                raise fail("comment ends before closing delimiter", start)
            continue
        tokens.append(_Token(LEFT, None, start, "{{"))
        pos, trim_next = _lex_action(text, pos, tokens, fail, start)


def _lex_action(
    text: str, pos: int, tokens: list[_Token], fail: Callable[[str, int], GoTemplateSyntaxError], start: int
) -> tuple[int, bool]:
    n = len(text)
    depth = 0
    while True:
        if pos + 1 < n and text[pos] in _SPACE and text[pos + 1] == "-" and text.startswith("}}", pos + 2):
            if depth:
                raise fail("unclosed left paren", pos)
            tokens.append(_Token(RIGHT, None, pos, "}}"))
            return pos + 4, True
        if text.startswith("}}", pos):
            if depth:
                raise fail("unclosed left paren", pos)
            tokens.append(_Token(RIGHT, None, pos, "}}"))
            return pos + 2, False
        if pos >= n:
            raise fail("unclosed action", start)
        char = text[pos]
        if char in _SPACE:
            end = pos
            while end < n and text[end] in _SPACE:
                if end + 1 < n and text[end + 1] == "-" and text.startswith("}}", end + 2):
                    break
                end += 1
            tokens.append(_Token(SPACE, None, pos, text[pos:end]))
            pos = end
        elif char == "=":
            tokens.append(_Token(ASSIGN, None, pos, "="))
            pos += 1
        elif char == ":":
            if not text.startswith(":=", pos):
                raise fail("expected :=", pos)
            tokens.append(_Token(DECLARE, None, pos, ":="))
            pos += 2
        elif char == "|":
            tokens.append(_Token(PIPE, None, pos, "|"))
            pos += 1
        elif char == ",":
            tokens.append(_Token(COMMA, None, pos, ","))
            pos += 1
        elif char == "(":
            depth += 1
            tokens.append(_Token(LPAREN, None, pos, "("))
            pos += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise fail("unexpected right paren", pos)
            tokens.append(_Token(RPAREN, None, pos, ")"))
            pos += 1
        elif char == '"':
            end = pos + 1
            while True:
                if end >= n or text[end] == "\n":
                    raise fail("unterminated quoted string", pos)
                if text[end] == "\\":
                    end += 2
                    continue
                if text[end] == '"':
                    break
                end += 1
            raw = text[pos : end + 1]
            tokens.append(_Token(STRING, _unquote(raw, fail, pos), pos, raw))
            pos = end + 1
        elif char == "`":
            end = text.find("`", pos + 1)
            if end < 0:
                raise fail("unterminated raw quoted string", pos)
            raw = text[pos : end + 1]
            tokens.append(_Token(STRING, raw[1:-1], pos, raw))
            pos = end + 1
        elif char == "'":
            end = pos + 1
            while True:
                if end >= n or text[end] == "\n":
                    raise fail("unterminated character constant", pos)
                if text[end] == "\\":
                    end += 2
                    continue
                if text[end] == "'":
                    break
                end += 1
            raw = text[pos : end + 1]
            value = _unquote('"' + raw[1:-1].replace('"', '\\"').replace("\\'", "'") + '"', fail, pos)
            if len(value) != 1:
                raise fail(f"malformed character constant: {raw}", pos)
            tokens.append(_Token(CHAR, ord(value), pos, raw))
            pos = end + 1
        elif char == "$":
            match = _ALNUM.match(text, pos + 1)
            name = "$" + match.group()
            tokens.append(_Token(VAR, name, pos, name))
            pos = match.end()
        elif char == "." and not (pos + 1 < n and text[pos + 1].isdigit()):
            match = _ALNUM.match(text, pos + 1)
            if match.group():
                tokens.append(_Token(FIELD, match.group(), pos, "." + match.group()))
            else:
                tokens.append(_Token(DOT, None, pos, "."))
            pos = match.end()
        elif char in "+-." or char.isdigit():
            match = _NUMBER.match(text, pos)
            if not match or not match.group() or match.group() in "+-":
                raise fail(f"bad number syntax: {repr_go(text[pos : pos + 1])}", pos)
            end = match.end()
            if end < n and (text[end].isalnum() or text[end] == "_" or text[end] == "."):
                word = _ALNUM.match(text, end).end()
                raise fail(f"bad number syntax: {repr_go(text[pos : max(word, end + 1)])}", pos)
            tokens.append(_Token(NUMBER, match.group(), pos, match.group()))
            pos = end
        elif char.isalpha() or char == "_":
            match = _ALNUM.match(text, pos)
            word = match.group()
            if word in ("true", "false"):
                tokens.append(_Token(BOOL, word == "true", pos, word))
            elif word in _KEYWORDS:
                tokens.append(_Token(KEYWORD, word, pos, word))
            else:
                tokens.append(_Token(IDENT, word, pos, word))
            pos = match.end()
        elif char.isascii() and char.isprintable():  # Go's itemChar: the parser says what is wrong with it
            tokens.append(_Token(PUNCT, char, pos, char))
            pos += 1
        else:
            raise fail(f"unrecognized character in action: {_go_rune(char)}", pos)


def _go_rune(char: str) -> str:
    """Go's ``%#U``: U+0040 '@'."""
    return f"U+{ord(char):04X} '{char}'" if char.isprintable() else f"U+{ord(char):04X}"


_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "\\": "\\", '"': '"'}
_SIMPLE_ESCAPES["'"] = "'"


def _unquote(raw: str, fail: Callable[[str, int], GoTemplateSyntaxError], pos: int) -> str:
    """A Go interpreted string literal's value (``strconv.Unquote``)."""
    body = raw[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        kind = body[i + 1] if i + 1 < len(body) else ""
        if kind in _SIMPLE_ESCAPES and kind != "'":
            out.append(_SIMPLE_ESCAPES[kind])
            i += 2
            continue
        width = {"x": 2, "u": 4, "U": 8}.get(kind)
        try:
            if width:
                digits = body[i + 2 : i + 2 + width]
                if len(digits) != width:
                    raise ValueError
                code = int(digits, 16)
                out.append(chr(code))  # Go's \xHH is a raw byte: here, that code point
                i += 2 + width
                continue
            if kind in "01234567" and kind:
                digits = body[i + 1 : i + 4]
                if len(digits) != 3:
                    raise ValueError
                out.append(chr(int(digits, 8)))
                i += 4
                continue
        except ValueError:
            pass
        raise fail(f"invalid syntax: {raw}", pos)
    return "".join(out)


# --- syntax tree ------------------------------------------------------------------------------------------------


class _Node:
    __slots__ = ("pos",)


class _Text(_Node):
    __slots__ = ("text",)

    def __init__(self, pos: int, text: str) -> None:
        self.pos, self.text = pos, text


class _Field(_Node):
    __slots__ = ("idents",)

    def __init__(self, pos: int, idents: list[str]) -> None:
        self.pos, self.idents = pos, idents


class _Variable(_Node):
    __slots__ = ("idents",)  # idents[0] is the variable's name, with its $

    def __init__(self, pos: int, idents: list[str]) -> None:
        self.pos, self.idents = pos, idents


class _Dot(_Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos


class _Nil(_Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos


class _Identifier(_Node):
    __slots__ = ("name",)

    def __init__(self, pos: int, name: str) -> None:
        self.pos, self.name = pos, name


class _Const(_Node):
    __slots__ = ("value", "text")

    def __init__(self, pos: int, value: Any, text: str) -> None:
        self.pos, self.value, self.text = pos, value, text


class _Chain(_Node):
    __slots__ = ("node", "fields")

    def __init__(self, pos: int, node: _Node, fields: list[str]) -> None:
        self.pos, self.node, self.fields = pos, node, fields


class _Command(_Node):
    __slots__ = ("args",)

    def __init__(self, pos: int, args: list[_Node]) -> None:
        self.pos, self.args = pos, args


class _Pipe(_Node):
    __slots__ = ("decl", "is_assign", "cmds")

    def __init__(self, pos: int, decl: list[str], is_assign: bool, cmds: list[_Command]) -> None:
        self.pos, self.decl, self.is_assign, self.cmds = pos, decl, is_assign, cmds


class _Action(_Node):
    __slots__ = ("pipe",)

    def __init__(self, pos: int, pipe: _Pipe) -> None:
        self.pos, self.pipe = pos, pipe


class _Branch(_Node):
    __slots__ = ("kind", "pipe", "body", "else_body")

    def __init__(self, pos: int, kind: str, pipe: _Pipe, body: list[_Node], else_body: list[_Node] | None) -> None:
        self.pos, self.kind, self.pipe, self.body, self.else_body = pos, kind, pipe, body, else_body


class _Loop(_Node):  # break / continue
    __slots__ = ("kind",)

    def __init__(self, pos: int, kind: str) -> None:
        self.pos, self.kind = pos, kind


class _Call(_Node):  # {{ template "name" pipeline }}
    __slots__ = ("name", "pipe")

    def __init__(self, pos: int, name: str, pipe: _Pipe | None) -> None:
        self.pos, self.name, self.pipe = pos, name, pipe


# --- parser -----------------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, src: _Source, tokens: list[_Token], funcs: Mapping[str, Any]) -> None:
        self.src = src
        self.tokens = tokens
        self.index = 0
        self.funcs = funcs
        self.templates: dict[str, list[_Node]] = {}
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.depth = 0

    # token helpers
    def next(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind == ERROR:
            raise token.value
        if token.kind != EOF:
            self.index += 1
        return token

    def peek(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind == ERROR:
            raise token.value
        return token

    def next_non_space(self) -> _Token:
        token = self.next()
        while token.kind == SPACE:
            token = self.next()
        return token

    def peek_non_space(self) -> _Token:
        index = self.index
        while self.tokens[index].kind == SPACE:
            index += 1
        if self.tokens[index].kind == ERROR:
            raise self.tokens[index].value
        return self.tokens[index]

    def fail(self, message: str, token: _Token | int) -> GoTemplateSyntaxError:
        pos = token if isinstance(token, int) else token.pos
        return GoTemplateSyntaxError(message, *self.src.where(pos))

    def expect(self, kind: int, context: str) -> _Token:
        token = self.next_non_space()
        if token.kind != kind:
            raise self.fail(f"unexpected {token.describe()} in {context}", token)
        return token

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"template nested too deeply (more than {MAX_DEPTH} levels)", token)

    # structure
    def parse(self) -> list[_Node]:
        root: list[_Node] = []
        while self.peek().kind != EOF:
            token = self.peek()
            if token.kind == LEFT and self._peek_keyword_after_left() == "define":
                self.next()  # {{
                self.next_non_space()  # define
                self.parse_define(token)
                continue
            node, stop = self.parse_item()
            if stop is not None:
                raise self.fail(f"unexpected {{{{{stop[0]}}}}}", stop[1])
            if node is not None:
                root.append(node)
        return root

    def _peek_keyword_after_left(self) -> str | None:
        index = self.index + 1
        while self.tokens[index].kind == SPACE:
            index += 1
        token = self.tokens[index]
        return token.value if token.kind == KEYWORD else None

    def parse_define(self, start: _Token) -> None:
        name_token = self.next_non_space()
        if name_token.kind != STRING:
            raise self.fail(f"unexpected {name_token.describe()} in define clause", name_token)
        self.expect(RIGHT, "define clause")
        saved_vars, self.vars = self.vars, ["$"]
        body, stop = self.parse_list()
        self.vars = saved_vars
        if stop[0] != "end":
            raise self.fail(f"unexpected {{{{{stop[0]}}}}} in define clause", stop[1])
        self.add_template(name_token.value, body, name_token)

    def add_template(self, name: str, body: list[_Node], token: _Token) -> None:
        existing = self.templates.get(name)
        if existing is not None and _non_empty(existing) and _non_empty(body):
            raise self.fail(f"template: multiple definition of template {repr_go(name)}", token)
        if existing is None or _non_empty(body):
            self.templates[name] = body

    def parse_list(self) -> tuple[list[_Node], tuple[str, _Token]]:
        """Nodes up to an {{end}} or {{else}}, which is consumed up to (not including) its pipeline/}}."""
        nodes: list[_Node] = []
        while True:
            token = self.peek()
            if token.kind == EOF:
                raise self.fail("unexpected EOF", token)
            node, stop = self.parse_item()
            if stop is not None:
                return nodes, stop
            if node is not None:
                nodes.append(node)

    def parse_item(self) -> tuple[_Node | None, tuple[str, _Token] | None]:
        token = self.next()
        if token.kind == TEXT:
            return _Text(token.pos, token.value), None
        if token.kind != LEFT:
            raise self.fail(f"unexpected {token.describe()} in input", token)
        inner = self.peek_non_space()
        if inner.kind == KEYWORD and inner.value != "nil":
            self.next_non_space()
            word = inner.value
            if word in ("end", "else"):
                if word == "end":
                    self.expect(RIGHT, "end")
                return None, (word, inner)
            if word in ("if", "with", "range"):
                return self.parse_control(word, token), None
            if word in ("break", "continue"):
                if not self.range_depth:
                    raise self.fail(f"{{{{{word}}}}} outside {{{{range}}}}", inner)
                self.expect(RIGHT, word)
                return _Loop(inner.pos, word), None
            if word == "template":
                return self.parse_template(inner), None
            if word == "block":
                return self.parse_block(inner), None
            if word == "define":
                raise self.fail("unexpected define", inner)  # only at the top level
        pipe = self.parse_pipeline("command", RIGHT, allow_decl=True)
        return _Action(token.pos, pipe), None

    def parse_control(self, kind: str, start: _Token) -> _Branch:
        self.enter(start)
        mark = len(self.vars)
        pipe = self.parse_pipeline(kind, RIGHT, allow_decl=True)
        if kind == "range":
            self.range_depth += 1
        body, stop = self.parse_list()
        if kind == "range":
            self.range_depth -= 1
        else_body: list[_Node] | None = None
        if stop[0] == "else":
            after = self.peek_non_space()
            if (kind == "if" and after.kind == KEYWORD and after.value == "if") or (
                kind == "with" and after.kind == KEYWORD and after.value == "with"
            ):
                self.next_non_space()
                # {{else if}}: a nested if sharing this one's {{end}}
                else_body = [self.parse_control(kind, after)]
            else:
                self.expect(RIGHT, "else")
                else_body, stop = self.parse_list()
                if stop[0] != "end":
                    raise self.fail("expected end; found {{else}}", stop[1])
        del self.vars[mark:]
        self.depth -= 1
        return _Branch(start.pos, kind, pipe, body, else_body)

    def parse_template(self, start: _Token) -> _Call:
        name_token = self.next_non_space()
        if name_token.kind != STRING:
            raise self.fail(f"unexpected {name_token.describe()} in template clause", name_token)
        pipe = None
        if self.peek_non_space().kind != RIGHT:
            pipe = self.parse_pipeline("template clause", RIGHT, allow_decl=False)
        else:
            self.next_non_space()
        return _Call(start.pos, name_token.value, pipe)

    def parse_block(self, start: _Token) -> _Call:
        name_token = self.next_non_space()
        if name_token.kind != STRING:
            raise self.fail(f"unexpected {name_token.describe()} in block clause", name_token)
        pipe = None
        if self.peek_non_space().kind != RIGHT:
            pipe = self.parse_pipeline("block clause", RIGHT, allow_decl=False)
        else:
            self.next_non_space()
        self.enter(start)
        saved_vars, self.vars = self.vars, ["$"]
        saved_range, self.range_depth = self.range_depth, 0
        body, stop = self.parse_list()
        self.vars, self.range_depth = saved_vars, saved_range
        self.depth -= 1
        if stop[0] != "end":
            raise self.fail(f"unexpected {{{{{stop[0]}}}}} in block clause", stop[1])
        self.add_template(name_token.value, body, name_token)
        return _Call(start.pos, name_token.value, pipe)

    def parse_pipeline(self, context: str, end: int, *, allow_decl: bool) -> _Pipe:
        start = self.peek_non_space()
        decl: list[str] = []
        is_assign = False
        if allow_decl and start.kind == VAR:
            # $x := ..., $x = ..., and in range: $i, $e := ...
            save = self.index
            self.next_non_space()
            after = self.peek_non_space()
            if after.kind in (DECLARE, ASSIGN):
                self.next_non_space()
                decl, is_assign = [start.value], after.kind == ASSIGN
            elif after.kind == COMMA and context == "range":
                self.next_non_space()
                second = self.next_non_space()
                if second.kind != VAR:
                    raise self.fail(f"range can only initialize variables; found {second.describe()}", second)
                op = self.next_non_space()
                if op.kind not in (DECLARE, ASSIGN):
                    raise self.fail(f"unexpected {op.describe()} in range", op)
                decl, is_assign = [start.value, second.value], op.kind == ASSIGN
            else:
                self.index = save
        if is_assign:
            for name in decl:
                if name not in self.vars:
                    raise self.fail(f"undefined variable {repr_go(name)}", start)
        cmds: list[_Command] = []
        while True:
            token = self.peek_non_space()
            if token.kind == end:
                closing = self.next_non_space()
                if not cmds:
                    raise self.fail(f"missing value for {context}", closing)
                break
            cmds.append(self.parse_command(context, end))
            token = self.peek_non_space()
            if token.kind == PIPE:
                self.next_non_space()
                if self.peek_non_space().kind == end:
                    raise self.fail("missing command", self.peek_non_space())
                continue
            if token.kind != end:
                raise self.fail(f"unexpected {token.describe()} in {context}", token)
        if not is_assign:
            self.vars.extend(decl)
        for stage, cmd in enumerate(cmds[1:], start=2):
            first = cmd.args[0]
            if isinstance(first, _Const | _Nil | _Dot):
                raise self.fail(f"non executable command in pipeline stage {stage}", first.pos)
        return _Pipe(start.pos, decl, is_assign, cmds)

    def parse_command(self, context: str, end: int) -> _Command:
        args: list[_Node] = []
        start = self.peek_non_space()
        while True:
            token = self.peek_non_space()
            if token.kind in (end, PIPE) or (token.kind == RPAREN and end != RPAREN):
                break
            if token.kind == RPAREN:
                break
            if args and self.peek().kind != SPACE:
                raise self.fail(f"unexpected {token.describe()} in operand", token)
            args.append(self.parse_operand(context))
        if not args:
            raise self.fail("empty command", start)
        return _Command(start.pos, args)

    def parse_operand(self, context: str) -> _Node:
        token = self.next_non_space()
        kind = token.kind
        node: _Node
        if kind == FIELD:
            idents = [token.value]
            while self.peek().kind == FIELD:
                idents.append(self.next().value)
            return _Field(token.pos, idents)
        if kind == VAR:
            if token.value not in self.vars:
                raise self.fail(f"undefined variable {repr_go(token.value)}", token)
            idents = [token.value]
            while self.peek().kind == FIELD:
                idents.append(self.next().value)
            return _Variable(token.pos, idents)
        if kind == DOT:
            node = _Dot(token.pos)
        elif kind == KEYWORD and token.value == "nil":
            node = _Nil(token.pos)
        elif kind == IDENT:
            if token.value not in self.funcs:
                raise self.fail(f"function {repr_go(token.value)} not defined", token)
            node = _Identifier(token.pos, token.value)
        elif kind == STRING:
            node = _Const(token.pos, token.value, token.text)
        elif kind == BOOL:
            node = _Const(token.pos, token.value, token.text)
        elif kind == CHAR:
            node = _Const(token.pos, token.value, token.text)
        elif kind == NUMBER:
            node = _Const(token.pos, self.number(token), token.text)
        elif kind == LPAREN:
            self.enter(token)
            node = self.parse_pipeline("parenthesized pipeline", RPAREN, allow_decl=False)
            self.depth -= 1
        else:
            raise self.fail(f"unexpected {token.describe()} in operand", token)
        if self.peek().kind == FIELD:
            fields = []
            while self.peek().kind == FIELD:
                fields.append(self.next().value)
            if isinstance(node, _Const | _Nil | _Dot):
                raise self.fail(f"unexpected . after term {repr_go(token.text)}", token)
            node = _Chain(token.pos, node, fields)
        return node

    def number(self, token: _Token) -> int | float:
        text = token.text.replace("_", "")
        if text.endswith("i"):
            raise self.fail(f"complex numbers are not supported: {token.text}", token)
        try:
            lower = text.lower().lstrip("+-")
            negative = text.startswith("-")
            if lower.startswith("0x") and ("p" in lower or "." in lower):
                value: int | float = float.fromhex(text)
            elif lower.startswith(("0x", "0b", "0o")):
                value = int(lower, 0)
                value = -value if negative else value
            elif "." in lower or "e" in lower:
                value = float(text)
            elif len(lower) > 1 and lower.startswith("0"):
                value = int(lower, 8)
                value = -value if negative else value
            else:
                value = int(text)
        except ValueError:
            raise self.fail(f"illegal number syntax: {repr_go(token.text)}", token) from None
        return value


def _non_empty(nodes: list[_Node]) -> bool:
    return any(not (isinstance(node, _Text) and not node.text.strip()) for node in nodes)


# --- execution --------------------------------------------------------------------------------------------------


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _State:
    def __init__(self, template: GoTemplate, max_output: int, max_steps: int) -> None:
        self.template = template
        self.out: list[str] = []
        self.size = 0
        self.steps = 0
        self.max_output = max_output
        self.max_steps = max_steps
        self.vars: list[list[Any]] = []  # [name, value] pairs, innermost last
        self.depth = 0
        self.node: _Node | None = None

    def fail(self, message: str, node: _Node | None = None) -> GoTemplateExecError:
        node = node or self.node
        line, column = self.template._src.where(node.pos) if node is not None else (1, 1)
        return GoTemplateExecError(message, line, column)

    def step(self, node: _Node) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise self.fail(f"execution exceeds the budget of {self.max_steps} steps", node)

    def write(self, text: str, node: _Node) -> None:
        self.size += len(text)
        if self.size > self.max_output:
            raise self.fail(f"output exceeds the limit of {self.max_output} characters", node)
        self.out.append(text)

    def check_size(self, value: Any, node: _Node) -> Any:
        if isinstance(value, str) and len(value) > self.max_output:
            raise self.fail(f"a value exceeds the limit of {self.max_output} characters", node)
        return value

    # variables
    def var(self, name: str) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise _Fail(f"undefined variable: {name}")

    def set_var(self, name: str, value: Any) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        raise _Fail(f"undefined variable: {name}")

    # walking
    def walk(self, dot: Any, nodes: list[_Node]) -> None:
        for node in nodes:
            self.step(node)
            self.node = node
            if isinstance(node, _Text):
                self.write(node.text, node)
            elif isinstance(node, _Action):
                value = self.pipeline(dot, node.pipe)
                if not node.pipe.decl:
                    self.write(_print(value), node)
            elif isinstance(node, _Branch):
                self.branch(dot, node)
            elif isinstance(node, _Loop):
                raise _Break() if node.kind == "break" else _Continue()
            elif isinstance(node, _Call):
                self.call_template(dot, node)

    def branch(self, dot: Any, node: _Branch) -> None:
        mark = len(self.vars)
        try:
            value = self.pipeline(dot, node.pipe)
            if node.kind == "range":
                self.range(dot, node, value)
            elif _truth(value):
                self.walk(value if node.kind == "with" else dot, node.body)
            elif node.else_body is not None:
                self.walk(dot, node.else_body)
        finally:
            del self.vars[mark:]

    def range(self, dot: Any, node: _Branch, value: Any) -> None:
        items: Iterator[tuple[Any, Any]]
        if value is None:
            items = iter(())
        elif isinstance(value, bool):
            raise self.fail(f"range can't iterate over {_print(value)}", node)
        elif isinstance(value, int):
            if len(node.pipe.decl) > 1:
                raise self.fail(f"can't use {value} to iterate over more than one variable", node)
            items = ((i, i) for i in range(value))
        elif isinstance(value, list | tuple):
            items = enumerate(value)
        elif isinstance(value, Mapping):
            try:
                keys = sorted(value)
            except TypeError:
                keys = list(value)
            items = ((key, value[key]) for key in keys)
        else:
            raise self.fail(f"range can't iterate over {_print(value)}", node)
        mark = len(self.vars)
        ran = False
        for key, element in items:
            ran = True
            self.step(node)
            decl = node.pipe.decl
            if len(decl) == 1:
                self.assign(decl[0], element, node.pipe.is_assign)
            elif len(decl) == 2:
                self.assign(decl[0], key, node.pipe.is_assign)
                self.assign(decl[1], element, node.pipe.is_assign)
            try:
                self.walk(element, node.body)
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del self.vars[mark:]
        if not ran and node.else_body is not None:
            self.walk(dot, node.else_body)

    def assign(self, name: str, value: Any, is_assign: bool) -> None:
        if is_assign:
            self.set_var(name, value)
        else:
            self.vars.append([name, value])

    def call_template(self, dot: Any, node: _Call) -> None:
        body = self.template._templates.get(node.name)
        if body is None:
            raise self.fail(f'template: no template {repr_go(node.name)} associated with template ""', node)
        value = self.pipeline(dot, node.pipe) if node.pipe is not None else None
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"exceeded maximum template depth ({MAX_DEPTH})", node)
        saved, self.vars = self.vars, [["$", value]]
        try:
            self.walk(value, body)
        finally:
            self.vars = saved
            self.depth -= 1

    def pipeline(self, dot: Any, pipe: _Pipe) -> Any:
        value: Any = _NO_FINAL
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
        if value is _NO_FINAL:
            value = None
        for name in pipe.decl:
            if len(pipe.decl) == 1:  # in range, the variables are set per element instead
                self.assign(name, value, pipe.is_assign)
        return value

    def command(self, dot: Any, cmd: _Command, final: Any) -> Any:
        self.step(cmd)
        first = cmd.args[0]
        if isinstance(first, _Nil):
            raise self.fail("nil is not a command", first)
        try:
            if isinstance(first, _Identifier):
                return self.check_size(self.function(dot, first, cmd.args[1:], final), first)
            if len(cmd.args) > 1 or final is not _NO_FINAL:
                raise self.fail(f"can't give argument to non-function {_describe(first)}", first)
            return self.arg(dot, first)
        except _Fail as exc:
            raise self.fail(f"executing at <{_describe(first)}>: {exc}", first) from None

    def arg(self, dot: Any, node: _Node) -> Any:
        try:
            return self._arg(dot, node)
        except _Fail as exc:
            raise self.fail(f"executing at <{_describe(node)}>: {exc}", node) from None

    def _arg(self, dot: Any, node: _Node) -> Any:
        if isinstance(node, _Field):
            return self.fields(dot, node.idents, node)
        if isinstance(node, _Variable):
            value = self.var(node.idents[0])
            return self.fields(value, node.idents[1:], node)
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Nil):
            return None  # an argument; as a command it is refused in command()
        if isinstance(node, _Const):
            return node.value
        if isinstance(node, _Pipe):
            mark = len(self.vars)
            try:
                return self.pipeline(dot, node)
            finally:
                del self.vars[mark:]
        if isinstance(node, _Chain):
            return self.fields(self.arg(dot, node.node), node.fields, node)
        if isinstance(node, _Identifier):
            return self.check_size(self.function(dot, node, [], _NO_FINAL), node)
        raise self.fail("unexpected node", node)

    def fields(self, value: Any, idents: list[str], node: _Node) -> Any:
        for name in idents:
            if isinstance(value, GoStruct):
                if name not in value.fields:
                    raise _Fail(f"can't evaluate field {name} in type {value.type_name}")
                value = value.fields[name]
            elif isinstance(value, Mapping):
                value = value.get(name)
            elif value is None:
                raise _Fail(f"nil pointer evaluating interface {{}}.{name}")
            else:
                raise _Fail(f"can't evaluate field {name} in type {_type_name(value)}")
        return value

    def function(self, dot: Any, ident: _Identifier, args: list[_Node], final: Any) -> Any:
        name = ident.name
        if name in ("and", "or"):
            nodes: list[Any] = list(args)
            if final is not _NO_FINAL:
                nodes.append(_Value(final))
            if not nodes:
                raise _Fail(f"wrong number of args for {name}: want at least 1 got 0")
            value: Any = None
            for item in nodes:
                value = item.value if isinstance(item, _Value) else self.arg(dot, item)
                if _truth(value) == (name == "or"):
                    return value
            return value
        values = [self.arg(dot, arg) for arg in args]
        if final is not _NO_FINAL:
            values.append(final)
        func = self.template._funcs[name]
        try:
            return func(*values) if not getattr(func, "_needs_state", False) else func(self, *values)
        except _Fail as exc:
            raise _Fail(f"error calling {name}: {exc}") from None
        except GoTemplateError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise _Fail(f"error calling {name}: {exc}") from None


class _Value:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_NO_FINAL = object()


def _describe(node: _Node) -> str:
    if isinstance(node, _Field):
        return "." + ".".join(node.idents)
    if isinstance(node, _Variable):
        return ".".join(node.idents)
    if isinstance(node, _Dot):
        return "."
    if isinstance(node, _Nil):
        return "nil"
    if isinstance(node, _Identifier):
        return node.name
    if isinstance(node, _Const):
        return node.text
    if isinstance(node, _Chain):
        return "(" + _describe(node.node) + ")." + ".".join(node.fields)
    if isinstance(node, _Pipe):
        return "(...)"
    return "?"


# --- builtin functions ------------------------------------------------------------------------------------------


def _arity(name: str, values: tuple[Any, ...], count: int) -> None:
    if len(values) != count:
        raise _Fail(f"wrong number of args for {name}: want {count} got {len(values)}")


def _kind(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def _eq(*values: Any) -> bool:
    if not values:
        raise _Fail("wrong number of args for eq: want at least 1 got 0")
    if len(values) == 1:
        raise _Fail("missing argument for comparison")
    first, others = values[0], values[1:]
    k1 = _kind(first)
    for other in others:
        k2 = _kind(other)
        if k1 != k2:
            if first is not None and other is not None:
                raise _Fail("incompatible types for comparison")
            continue
        if k1 == "other":
            if isinstance(first, GoStruct) and isinstance(other, GoStruct):
                if first is other or first.json_value == other.json_value:
                    return True
                continue
            raise _Fail(f"non-comparable types {_type_name(first)}: {_type_name(other)}")
        if first == other:
            return True
    return False


def _ne(*values: Any) -> bool:
    if len(values) != 2:
        raise _Fail(f"wrong number of args for ne: want 2 got {len(values)}")
    return not _eq(*values)


def _ordered(name: str, test: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def compare(*values: Any) -> bool:
        _arity(name, values, 2)
        a, b = values
        ka, kb = _kind(a), _kind(b)
        if ka in ("bool", "other", "nil") or kb in ("bool", "other", "nil"):
            raise _Fail("invalid type for comparison")
        if ka != kb:
            raise _Fail("incompatible types for comparison")
        return test(a, b)

    return compare


def _not(*values: Any) -> bool:
    _arity("not", values, 1)
    return not _truth(values[0])


def _len(*values: Any) -> int:
    _arity("len", values, 1)
    value = values[0]
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, list | tuple | Mapping):
        return len(value)
    if value is None:
        raise _Fail("len of nil pointer")
    raise _Fail(f"len of type {_type_name(value)}")


def _int_arg(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Fail(f"cannot index slice/array with type {_type_name(value)}")
    return value


def _index(*values: Any) -> Any:
    if not values:
        raise _Fail("wrong number of args for index: want at least 1 got 0")
    item = values[0]
    if item is None:
        raise _Fail("index of untyped nil")
    for key in values[1:]:
        if isinstance(item, str):
            data = item.encode("utf-8")
            position = _int_arg(key)
            if not 0 <= position < len(data):
                raise _Fail(f"index out of range: {position}")
            item = data[position]
        elif isinstance(item, list | tuple):
            position = _int_arg(key)
            if not 0 <= position < len(item):
                raise _Fail(f"index out of range: {position}")
            item = item[position]
        elif isinstance(item, Mapping):
            item = item.get(key)
        elif item is None:
            raise _Fail("index of nil pointer")
        else:
            raise _Fail(f"can't index item of type {_type_name(item)}")
    return item


def _slice(*values: Any) -> Any:
    if not values:
        raise _Fail("wrong number of args for slice: want at least 1 got 0")
    item, indexes = values[0], [_int_arg(v) for v in values[1:]]
    if item is None:
        raise _Fail("slice of untyped nil")
    if len(indexes) > 3:
        raise _Fail(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise _Fail("cannot 3-index slice a string")
        data = item.encode("utf-8")
    elif isinstance(item, list | tuple):
        data = item
    else:
        raise _Fail(f"can't slice item of type {_type_name(item)}")
    size = len(data)
    bounds = [0, size]
    for position, index in enumerate(indexes[:2]):
        if not 0 <= index <= size:
            raise _Fail(f"index out of range: {index}")
        bounds[position] = index
    if len(indexes) == 3:
        if not 0 <= indexes[2] <= size:
            raise _Fail(f"index out of range: {indexes[2]}")
        if bounds[1] > indexes[2]:
            raise _Fail(f"invalid slice index: {bounds[1]} > {indexes[2]}")
    if bounds[0] > bounds[1]:
        raise _Fail(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    result = data[bounds[0] : bounds[1]]
    if isinstance(result, bytes):
        return result.decode("utf-8", errors="replace")
    return list(result)


def _sprint_args(values: tuple[Any, ...]) -> str:
    """Go's ``fmt.Sprint``: a space between operands when neither is a string."""
    out: list[str] = []
    for index, value in enumerate(values):
        if index and not isinstance(value, str) and not isinstance(values[index - 1], str):
            out.append(" ")
        out.append(_sprint(value))
    return "".join(out)


def _print_fn(*values: Any) -> str:
    return _sprint_args(values)


def _println_fn(*values: Any) -> str:
    return " ".join(_sprint(value) for value in values) + "\n"


_VERB = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d*))?([a-zA-Z%])?")


def _printf(*values: Any) -> str:
    """Go's ``fmt.Sprintf`` for the common verbs: %s %d %v %q %t %f %g %e %x %X %c %%, flags, width, precision."""
    if not values:
        raise _Fail("wrong number of args for printf: want at least 1 got 0")
    fmt, args = values[0], list(values[1:])
    if not isinstance(fmt, str):
        raise _Fail(f"wrong type for value; expected string; got {_type_name(fmt)}")
    out: list[str] = []
    used = 0
    pos = 0
    while pos < len(fmt):
        percent = fmt.find("%", pos)
        if percent < 0:
            out.append(fmt[pos:])
            break
        out.append(fmt[pos:percent])
        match = _VERB.match(fmt, percent)
        assert match is not None
        flags, width_text, precision_text, verb = match.groups()
        pos = match.end()
        if verb is None:
            out.append("%!(NOVERB)")
            continue
        if verb == "%":
            out.append("%")
            continue

        def star(text: str | None) -> int | None:
            nonlocal used
            if text is None:
                return None
            if text != "*":
                return int(text) if text else 0
            used += 1
            value = args[used - 1] if used <= len(args) else None
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        width = star(width_text)
        precision = star(precision_text)
        if width is not None and abs(width) > 1_000_000:  # Go's fmt refuses these too
            out.append("%!(BADWIDTH)")
            width = None
        if precision is not None and abs(precision) > 1_000_000:
            out.append("%!(BADPREC)")
            precision = None
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        value = args[used]
        used += 1
        out.append(_pad(_format_verb(verb, value, flags, precision), width, flags))
    if used < len(args):
        extra = ", ".join(f"{_type_name(v)}={_sprint(v)}" for v in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _pad(text: str, width: int | None, flags: str) -> str:
    if width is None or len(text) >= width:
        return text
    if "-" in flags:
        return text + " " * (width - len(text))
    if "0" in flags and text[:1] in "+-" and text[1:].replace(".", "").isdigit():
        return text[0] + "0" * (width - len(text)) + text[1:]
    if "0" in flags and text.replace(".", "").isdigit():
        return "0" * (width - len(text)) + text
    return " " * (width - len(text)) + text


def _format_verb(verb: str, value: Any, flags: str, precision: int | None) -> str:
    kind = _kind(value)
    bad = f"%!{verb}({_type_name(value)}={_sprint(value)})"
    if verb == "v":
        text = _sprint(value)
        if "+" in flags and kind in ("int", "float") and not text.startswith("-"):
            text = "+" + text
        return text
    if verb == "s":
        if kind in ("int", "float", "bool"):
            return bad
        text = _sprint(value)
        return text[:precision] if precision is not None else text
    if verb == "q":
        if kind == "string":
            return repr_go(value)
        if kind == "int":
            return "'" + repr_go(chr(value))[1:-1].replace("'", "\\'") + "'"
        return bad
    if verb == "t":
        return ("true" if value else "false") if kind == "bool" else bad
    if verb == "d":
        if kind != "int":
            return bad
        text = str(value)
        return "+" + text if "+" in flags and value >= 0 else text
    if verb in "xX":
        if kind == "int":
            text = format(value, "x")
        elif kind == "string":
            text = value.encode("utf-8").hex()
        else:
            return bad
        return text.upper() if verb == "X" else text
    if verb == "c":
        return chr(value) if kind == "int" else bad
    if verb in "feEgG":
        if kind != "float":
            return bad
        if verb == "g" and precision is None:
            return _go_float(value)
        text = format(value, f".{6 if precision is None else precision}{verb}")
        return "+" + text if "+" in flags and value >= 0 else text
    return bad


def _html(*values: Any) -> str:
    text = _sprint_args(values)
    for old, new in (("&", "&amp;"), ("'", "&#39;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;"), ("\0", "\ufffd")):
        text = text.replace(old, new)
    return text


def _js(*values: Any) -> str:
    out = []
    for char in _sprint_args(values):
        if char in "\\'\"":
            out.append("\\" + char)
        elif char in "<>&=":
            out.append(f"\\u{ord(char):04X}")
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return "".join(out)


def _urlquery(*values: Any) -> str:
    return urllib.parse.quote_plus(_sprint_args(values), safe="-_.~")


def _json_fn(*values: Any) -> str:
    _arity("json", values, 1)
    return go_json(values[0])


def _current_date(*values: Any) -> str:
    for value in values:
        if not isinstance(value, str):
            raise _Fail(f"wrong type for value; expected string; got {_type_name(value)}")
    return datetime.date.today().strftime("%Y-%m-%d")


def _yesterday_date(*values: Any) -> str:
    _current_date(*values)
    return (datetime.date.today() - datetime.timedelta(days=1)).strftime("%Y-%m-%d")


_TS_TYPES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean", "array": "any[]"}
_TS_TYPES.update({"object": "Record<string, any>", "null": "null"})


def _ts_type(schema: Any) -> str:
    if not isinstance(schema, Mapping):
        return "any"
    any_of = schema.get("anyOf")
    if isinstance(any_of, list) and any_of:
        return " | ".join(_ts_type(item) for item in any_of)
    types = schema.get("type")
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, list) or not types:
        return "any"
    return " | ".join(_TS_TYPES.get(t, "any") if isinstance(t, str) else "any" for t in types)


def _to_typescript_type(*values: Any) -> str:
    """Ollama's ``toTypeScriptType``: the TypeScript type of a tool parameter (an ``api.ToolProperty``)."""
    _arity("toTypeScriptType", values, 1)
    value = values[0]
    if isinstance(value, GoStruct) and value.type_name.endswith("ToolProperty"):
        return _ts_type(value.json_value)
    return "any"


def _stub(name: str) -> Callable[..., Any]:
    def function(*values: Any) -> Any:  # only for and/or, which the executor handles itself
        raise _Fail(f"{name} evaluated out of order")

    return function


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "and": _stub("and"),
    "or": _stub("or"),
    "not": _not,
    "eq": _eq,
    "ne": _ne,
    "lt": _ordered("lt", lambda a, b: a < b),
    "le": _ordered("le", lambda a, b: a <= b),
    "gt": _ordered("gt", lambda a, b: a > b),
    "ge": _ordered("ge", lambda a, b: a >= b),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _print_fn,
    "printf": _printf,
    "println": _println_fn,
    "html": _html,
    "js": _js,
    "urlquery": _urlquery,
    # Ollama's own (template/template.go)
    "json": _json_fn,
    "currentDate": _current_date,
    "yesterdayDate": _yesterday_date,
    "toTypeScriptType": _to_typescript_type,
}


# --- the template -----------------------------------------------------------------------------------------------


class GoTemplate:
    """A parsed Go template; build one with :func:`parse`."""

    def __init__(self, source: str, src: _Source, root: list[_Node], templates: dict[str, list[_Node]]) -> None:
        self.source = source
        self._src = src
        self._root = root
        self._templates = templates
        self._funcs = FUNCTIONS

    def execute(self, data: Any, *, max_output: int = DEFAULT_MAX_OUTPUT, max_steps: int = DEFAULT_MAX_STEPS) -> str:
        """The template's output for ``data`` (``.`` and ``$``).

        Raises :class:`GoTemplateExecError` on an execution error, when the output would exceed ``max_output``
        characters, or when more than ``max_steps`` nodes (and range iterations) run."""
        state = _State(self, max_output, max_steps)
        state.vars.append(["$", data])
        try:
            state.walk(data, self._root)
        except _Fail as exc:  # an error outside any command: place it at the node being run
            raise state.fail(str(exc)) from None
        except RecursionError:
            raise state.fail("template nested too deeply") from None
        return "".join(state.out)

    def uses(self, name: str) -> bool:
        """Whether a field or variable named ``name`` appears anywhere (case-insensitive), in any defined
        template too: Ollama's ``Template.Vars()``, which decides how a template gets its data."""
        wanted = name.lower()
        trees = [self._root, *self._templates.values()]
        return any(ident.lower() == wanted for tree in trees for ident in _identifiers(tree))

    def cut_after(self, field: str) -> GoTemplate:
        """A copy without everything after the first ``.field`` in tree order, keeping the control structure
        around it: Ollama's ``deleteNode``, which ends a legacy prompt where the model starts answering.

        Conditions are kept (they are not walked), an action in which the field appears keeps the arguments
        before it and the field; any node visited after it is dropped."""
        cut = [False]
        root = _cut_list(self._root, field, cut)
        return GoTemplate(self.source, self._src, root, self._templates)


def _identifiers(nodes: list[_Node]) -> Iterator[str]:
    """Ollama's ``Identifiers``: the names in fields and variables of actions, branches and template calls
    (it does not look inside chained terms like ``(x).Field``)."""
    stack: list[Any] = list(reversed(nodes))
    while stack:
        node = stack.pop()
        if isinstance(node, _Action):
            stack.append(node.pipe)
        elif isinstance(node, _Call):
            if node.pipe is not None:
                stack.append(node.pipe)
        elif isinstance(node, _Branch):
            stack.append(node.pipe)
            stack.extend(node.body)
            stack.extend(node.else_body or ())
        elif isinstance(node, _Pipe):
            for cmd in node.cmds:
                stack.extend(cmd.args)
        elif isinstance(node, _Field | _Variable):
            yield from node.idents


def _cut_list(nodes: list[_Node], field: str, cut: list[bool]) -> list[_Node]:
    kept: list[_Node] = []
    for node in nodes:
        if cut[0]:
            continue  # visited after the cut: deleted
        if isinstance(node, _Action):
            pipe = _cut_pipe(node.pipe, field, cut)
            if pipe is not None:
                kept.append(_Action(node.pos, pipe))
        elif isinstance(node, _Branch):
            body = _cut_list(node.body, field, cut)
            else_body = None
            if node.else_body is not None:
                # Go's deleteNode would panic on an else list visited after the cut; it is left empty here
                else_body = [] if cut[0] else _cut_list(node.else_body, field, cut)
            kept.append(_Branch(node.pos, node.kind, node.pipe, body, else_body))
        else:
            kept.append(node)
    return kept


def _cut_pipe(pipe: _Pipe, field: str, cut: list[bool]) -> _Pipe | None:
    if cut[0]:
        return None
    cmds: list[_Command] = []
    for cmd in pipe.cmds:
        args: list[_Node] = []
        for arg in cmd.args:
            if isinstance(arg, _Field) and field in arg.idents:
                cut[0] = True
                args.append(arg)
            elif cut[0]:
                continue
            elif isinstance(arg, _Pipe):
                inner = _cut_pipe(arg, field, cut)
                if inner is not None:
                    args.append(inner)
            else:
                args.append(arg)
        if not args:
            return None
        cmds.append(_Command(cmd.pos, args))
    if not cmds:
        return None
    return _Pipe(pipe.pos, pipe.decl, pipe.is_assign, cmds)


def parse(source: str) -> GoTemplate:
    """Parse ``source`` as Go's ``template.New("").Funcs(ollamaFuncs).Parse(source)`` would.

    Raises :class:`GoTemplateSyntaxError` with Go's message and the line and column."""
    src = _Source(source)
    tokens = _lex(src)
    parser = _Parser(src, tokens, FUNCTIONS)
    try:
        root = parser.parse()
    except RecursionError:
        token = parser.tokens[min(parser.index, len(parser.tokens) - 1)]
        raise parser.fail("template nested too deeply", token) from None
    return GoTemplate(source, src, root, parser.templates)


def looks_like_go_template(source: str) -> bool:
    """Whether ``source`` is a Go template rather than Jinja (a template that parses as Jinja is Jinja)."""
    from localllm.llm.templates import looks_like_go_template as detect

    return detect(source)
