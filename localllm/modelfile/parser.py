"""Reading a Modelfile, as Ollama reads them (its ``parser/parser.go``).

An instruction (``FROM``, ``PARAMETER``, ``TEMPLATE``, ``SYSTEM``, ``ADAPTER``, ``LICENSE``, ``MESSAGE``,
``REQUIRES``, any case, any order) starts a line; ``#`` at the start of a line starts a comment. Its value
runs to the end of the line, or over several lines when quoted, by Ollama's one rule: the value ends at the
first end of line where the text so far, trimmed, is a bare value (it does not start with ``"``), a
``"quoted"`` value (it starts and ends with ``"``) or a ``\"\"\"block\"\"\"`` (starts and ends with
``\"\"\"``); the quotes are then dropped. There are no backslash escapes: ``"a \\"b\\""`` is the text
``a \\"b\\"``. So text after a closing quote on the same line continues the value. Errors name the line
of the instruction and what was expected.

Where Ollama is stricter this reads more (several spaces after ``PARAMETER`` or ``MESSAGE``, a role in
any case); where it takes a missing value as empty this asks for one (an explicit ``""`` is an empty
TEMPLATE, SYSTEM, LICENSE, MESSAGE or PARAMETER value); characters Go does not print are kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequest

__all__ = ["INSTRUCTIONS", "MESSAGE_ROLES", "Modelfile", "ModelfileError", "Parameter", "parse_modelfile",
           "read_value"]

INSTRUCTIONS = ("from", "parameter", "template", "system", "adapter", "license", "message", "requires")
MESSAGE_ROLES = ("system", "user", "assistant")
_OLLAMA_ONLY = ("draft", "renderer", "parser")  # Ollama's, not ours: named in the error
_EMPTY_ALLOWED = ("parameter", "template", "system", "license", "message")  # may be "" or """"""
_SPACES = " \t"
_NEWLINE = re.compile(r"[\r\n]")
_TOKEN = re.compile(r"[^ \t\r\n]*")
# what Go's strings.TrimSpace trims (unicode.IsSpace); str.strip() would also trim \x1c-\x1f
_TRIMMED = ("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
            "\u2028\u2029\u202f\u205f\u3000")


class ModelfileError(InvalidRequest):
    """A Modelfile that cannot be read; the message names the line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"Modelfile line {line}: {message}" if line else f"Modelfile: {message}",
                         param="modelfile")


@dataclass(frozen=True)
class Parameter:
    name: str
    value: str
    line: int


@dataclass
class Modelfile:
    """What a Modelfile says; instructions that may appear once keep the last value written."""

    model_from: str | None = None
    from_line: int = 0
    template: str | None = None
    system: str | None = None
    adapters: list[str] = field(default_factory=list)
    adapter_lines: list[int] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    parameters: list[Parameter] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    requires: str | None = None


def parse_modelfile(text: str) -> Modelfile:
    """Parse ``text``; raises :class:`ModelfileError` naming the line of the first problem."""
    result = Modelfile()
    cursor = _Cursor(text.removeprefix("\ufeff").replace("\r\n", "\n"))
    while cursor.next_instruction():
        _read_instruction(cursor, result)
    if result.model_from is None:
        raise ModelfileError("no FROM instruction: a Modelfile starts from a model, e.g. FROM gemma3:270m")
    return result


def read_value(text: str) -> str | None:
    """The value an instruction followed by ``text`` gets, if it takes all of ``text`` (else None).

    ``text`` is what follows the instruction's name (and a PARAMETER's name or a MESSAGE's role); a
    final end of line is implied. None when the value would end earlier, never end, or be missing.
    """
    text = (text + "\n").replace("\r\n", "\n")  # as parse_modelfile reads line endings
    scanned = _scan_value(text, 0)
    if scanned.text is None or scanned.end != len(text) - 1 or (scanned.text == "" and not scanned.quoted):
        return None
    return scanned.text


def _read_instruction(cursor: _Cursor, result: Modelfile) -> None:
    """Read the instruction at the cursor into ``result``."""
    line, token = cursor.line, cursor.token()
    word = cursor.take(_is_letter).lower()
    if word not in INSTRUCTIONS or not cursor.at_separator():
        unsupported = f" (localllm does not support Ollama's {word.upper()})" if word in _OLLAMA_ONLY else ""
        raise ModelfileError(f"unknown instruction {token!r}{unsupported}; expected one of "
                             + ", ".join(name.upper() for name in INSTRUCTIONS), line)
    cursor.skip_spaces()
    if word == "parameter":
        name = cursor.take(_is_name_char)
        if not name or not cursor.skip_spaces():
            raise ModelfileError("PARAMETER needs a name and a value, e.g. PARAMETER temperature 0.7", line)
        result.parameters.append(Parameter(name, cursor.value(f"PARAMETER {name}", line, empty_ok=True), line))
    elif word == "message":
        role_token = cursor.token()
        role = cursor.take(_is_letter).lower()
        if role not in MESSAGE_ROLES or not cursor.at_separator():
            raise ModelfileError(f"MESSAGE role must be one of {', '.join(MESSAGE_ROLES)} "
                                 f"(got {role_token or 'nothing'!r})", line)
        cursor.skip_spaces()
        result.messages.append({"role": role, "content": cursor.value(f"MESSAGE {role}", line, empty_ok=True)})
    else:
        _store(result, word, cursor.value(word.upper(), line, empty_ok=word in _EMPTY_ALLOWED), line)


def _store(result: Modelfile, word: str, value: str, line: int) -> None:
    """Record the value of a FROM, TEMPLATE, SYSTEM, ADAPTER, LICENSE or REQUIRES instruction."""
    if word == "from":
        if result.model_from is not None:
            raise ModelfileError(f"a second FROM (the first is on line {result.from_line})", line)
        result.model_from, result.from_line = value, line
    elif word == "template":
        result.template = value
    elif word == "system":
        result.system = value
    elif word == "adapter":
        result.adapters.append(value)
        result.adapter_lines.append(line)
    elif word == "license":
        result.licenses.append(value)
    else:
        result.requires = value


def _is_letter(char: str) -> bool:
    return char.isascii() and char.isalpha()


def _is_name_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char == "_")


class _Cursor:
    """A position in the text that knows its line number."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def next_instruction(self) -> bool:
        """Skip blank space and comments to the next instruction; False at the end of the text."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "#":
                self.move_to(_line_end(self.text, self.pos))
            elif char in _SPACES or char in "\r\n":
                self.move_to(self.pos + 1)
            else:
                return True
        return False

    def token(self) -> str:
        """The text from here to the next space or end of line (for messages)."""
        return _TOKEN.match(self.text, self.pos)[0]

    def take(self, accept: Callable[[str], bool]) -> str:
        """Move past the characters that ``accept`` and return them."""
        end = self.pos
        while end < len(self.text) and accept(self.text[end]):
            end += 1
        taken = self.text[self.pos : end]
        self.move_to(end)
        return taken

    def skip_spaces(self) -> str:
        return self.take(lambda char: char in _SPACES)

    def at_separator(self) -> bool:
        """At a space, the end of a line or the end of the text: where a word may end."""
        return self.pos >= len(self.text) or self.text[self.pos] in " \t\r\n"

    def value(self, what: str, line: int, *, empty_ok: bool) -> str:
        """The value that starts here; ``what`` names the instruction in errors."""
        scanned = _scan_value(self.text, self.pos)
        if scanned.text is None:
            raise ModelfileError(f"the quoted value of {what} opened here is never closed"
                                 + _unclosed_hint(self.text, scanned.start), line)
        if not scanned.text and not (scanned.quoted and empty_ok):
            raise ModelfileError(f"{what} needs a value", line)
        self.move_to(scanned.end)
        return scanned.text

    def move_to(self, pos: int) -> None:
        self.line += self.text.count("\n", self.pos, pos) + self.text.count("\r", self.pos, pos)
        self.pos = pos


@dataclass(frozen=True)
class _Scanned:
    text: str | None  # None: a quote never closed
    quoted: bool
    start: int  # where the value's first character is
    end: int  # the end of line (or of the text) that ends it


def _scan_value(text: str, pos: int) -> _Scanned:
    """Read a value from ``pos`` by Ollama's rule (see the module's docstring)."""
    end = _line_end(text, pos)
    start = pos
    while start < len(text) and text[start] in _TRIMMED:
        start += 1
    if start >= end:
        return _Scanned("", False, end, end)
    while True:
        inner = _unquote(text, start, _trimmed_end(text, start, end))
        if inner is not None:
            return _Scanned(text[inner[0] : inner[1]], text[start] == '"', start, end)
        if end >= len(text):
            return _Scanned(None, True, start, end)
        end = _line_end(text, end + 1)


def _unquote(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Where ``text[start:end]`` lies without its quotes, as Ollama's unquote(); None if not closed."""
    if text.startswith('"""', start, end):
        return (start + 3, end - 3) if end - start >= 6 and text.startswith('"""', end - 3, end) else None
    if text.startswith('"', start, end):
        return (start + 1, end - 1) if end - start >= 2 and text[end - 1] == '"' else None
    return start, end


def _trimmed_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1] in _TRIMMED:
        end -= 1
    return end


def _line_end(text: str, pos: int) -> int:
    found = _NEWLINE.search(text, pos)
    return found.start() if found else len(text)


def _unclosed_hint(text: str, start: int) -> str:
    """Why a quote never closed, when text after a closing quote on the first line is the reason."""
    quote = '"""' if text.startswith('"""', start) else '"'
    first_line_end = _line_end(text, start)
    closing = text.find(quote, start + len(quote), first_line_end)
    after = text[closing + len(quote) : first_line_end].strip() if closing >= 0 else ""
    if after:
        return f" (the text {after!r} after its closing {quote} continues the value)"
    return f" (a quoted value ends at the end of a line that ends with {quote})"
