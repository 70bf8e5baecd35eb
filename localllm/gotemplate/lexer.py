"""The lexer: template text to tokens, as Go's ``text/template/parse`` lexer scans it."""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from typing import Any

from .errors import GoTemplateSyntaxError

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
