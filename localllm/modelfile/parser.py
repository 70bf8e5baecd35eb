"""Reading a Modelfile, as Ollama writes them.

One instruction per line (``FROM``, ``PARAMETER``, ``TEMPLATE``, ``SYSTEM``, ``ADAPTER``, ``LICENSE``,
``MESSAGE``, ``REQUIRES``), case-insensitive and in any order; ``#`` starts a comment line. A value is
the rest of the line, a ``"quoted string"`` (with backslash escapes), or a ``\"\"\"multi-line block\"\"\"``
kept verbatim. Errors name the line and what was expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequest

__all__ = ["INSTRUCTIONS", "MESSAGE_ROLES", "Modelfile", "ModelfileError", "Parameter", "parse_modelfile"]

INSTRUCTIONS = ("from", "parameter", "template", "system", "adapter", "license", "message", "requires")
MESSAGE_ROLES = ("system", "user", "assistant")
_INSTRUCTION = re.compile(r"[ \t]*(?P<word>[A-Za-z_]+)(?P<gap>[ \t]+|$)")
_PARAMETER_NAME = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:[ \t]+|$)")


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
    reader = _Reader(text.removeprefix("\ufeff").replace("\r\n", "\n"))
    while not reader.done():
        line_number = reader.line
        raw_line = reader.peek_line()
        stripped = raw_line.strip()
        if not stripped or stripped.startswith("#"):
            reader.skip_line()
            continue
        match = _INSTRUCTION.match(raw_line)
        word = match["word"].lower() if match else stripped.split()[0]
        if not match or word not in INSTRUCTIONS:
            raise ModelfileError(
                f"unknown instruction {stripped.split()[0]!r}; expected one of "
                + ", ".join(name.upper() for name in INSTRUCTIONS),
                line_number,
            )
        reader.advance(match.end())
        if word == "parameter":
            name_match = _PARAMETER_NAME.match(reader.rest_of_line())
            if not name_match:
                raise ModelfileError("PARAMETER needs a name and a value, e.g. PARAMETER temperature 0.7",
                                     line_number)
            reader.advance(name_match.end())
            value = reader.value(line_number, "PARAMETER " + name_match["name"])
            result.parameters.append(Parameter(name_match["name"], value, line_number))
        elif word == "message":
            role_match = re.match(r"(?P<role>\S+)(?:[ \t]+|$)", reader.rest_of_line())
            role = role_match["role"].lower() if role_match else ""
            if role not in MESSAGE_ROLES:
                raise ModelfileError(
                    f"MESSAGE role must be one of {', '.join(MESSAGE_ROLES)} (got {role or 'nothing'!r})",
                    line_number,
                )
            reader.advance(role_match.end())
            result.messages.append({"role": role, "content": reader.value(line_number, "MESSAGE " + role)})
        else:
            value = reader.value(line_number, word.upper())
            if word == "from":
                if result.model_from is not None:
                    raise ModelfileError(f"a second FROM (the first is on line {result.from_line})", line_number)
                result.model_from, result.from_line = value, line_number
            elif word == "template":
                result.template = value
            elif word == "system":
                result.system = value
            elif word == "adapter":
                result.adapters.append(value)
                result.adapter_lines.append(line_number)
            elif word == "license":
                result.licenses.append(value)
            else:
                result.requires = value
    if result.model_from is None:
        raise ModelfileError("no FROM instruction: a Modelfile starts from a model, e.g. FROM gemma3:270m")
    return result


class _Reader:
    """A cursor over the text that knows its line number."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def peek_line(self) -> str:
        end = self.text.find("\n", self.pos)
        return self.text[self.pos : end if end >= 0 else len(self.text)]

    def rest_of_line(self) -> str:
        return self.peek_line()

    def skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.advance((end if end >= 0 else len(self.text)) - self.pos + (1 if end >= 0 else 0))

    def advance(self, count: int) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + count)
        self.pos += count

    def value(self, line_number: int, what: str) -> str:
        """The instruction's value: a \"\"\" block, a quoted string, or the rest of the line."""
        rest = self.rest_of_line()
        if rest.startswith('"""'):
            end = self.text.find('"""', self.pos + 3)
            if end < 0:
                raise ModelfileError(f'{what}: the """ block opened here is never closed', line_number)
            value = self.text[self.pos + 3 : end]
            self.advance(end + 3 - self.pos)
            self._expect_end_of_line(line_number, what)
            return value
        if rest.startswith('"'):
            value, length = _quoted(rest, line_number, what)
            self.advance(length)
            self._expect_end_of_line(line_number, what)
            return value
        value = rest.strip()
        if not value:
            raise ModelfileError(f"{what} needs a value", line_number)
        self.skip_line()
        return value

    def _expect_end_of_line(self, line_number: int, what: str) -> None:
        trailing = self.rest_of_line()
        if trailing.strip():
            raise ModelfileError(f"{what}: unexpected text after the closing quotes: {trailing.strip()!r}",
                                 self.line if self.line != line_number else line_number)
        self.skip_line()


_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


def _quoted(rest: str, line_number: int, what: str) -> tuple[str, int]:
    """A double-quoted value on one line: its text and how many characters it took."""
    out: list[str] = []
    index = 1
    while index < len(rest):
        char = rest[index]
        if char == "\\" and index + 1 < len(rest):
            following = rest[index + 1]
            out.append(_ESCAPES.get(following, "\\" + following))
            index += 2
            continue
        if char == '"':
            return "".join(out), index + 1
        out.append(char)
        index += 1
    raise ModelfileError(f"{what}: the quoted value is never closed (a value over several lines "
                         'goes between """ and """)', line_number)
