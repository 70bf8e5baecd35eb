"""How answers and model details look in a terminal: word wrap, timing stats, ``show`` sections."""

from __future__ import annotations

import shutil
from typing import Any, TextIO

from rich.console import Console


class WordWrap:
    """Write streamed text, breaking lines at word boundaries before they pass ``width``.

    A word is held back until it ends (a space or a newline arrives) so that it can be
    moved to the next line whole; :meth:`finish` writes what is still held.
    """

    def __init__(self, stream: TextIO, width: int | None) -> None:
        self.stream = stream
        self.width = width  # None: no wrapping, text goes straight through
        self.column = 0
        self.word = ""

    @classmethod
    def for_terminal(cls, stream: TextIO, enabled: bool = True) -> WordWrap:
        """Wrap at the terminal's width, when ``stream`` is a terminal and wrapping is wanted."""
        wrap = enabled and stream.isatty()
        return cls(stream, shutil.get_terminal_size().columns if wrap else None)

    def write(self, text: str) -> None:
        if self.width is None:
            self._out(text)
            if text:  # finish() still ends the line
                self.column = 0 if text.endswith("\n") else self.column + len(text)
        else:
            for char in text:
                self._wrap_char(char)
        self.stream.flush()

    def finish(self) -> None:
        """Write the held-back word and end the line if anything is on it."""
        self._flush_word()
        if self.column:
            self._out("\n")
        self.stream.flush()

    def _wrap_char(self, char: str) -> None:
        if char == "\n":
            self._flush_word()
            self._out("\n")
        elif char == " ":
            self._flush_word()
            if self.column < self.width:
                self._out(" ")
        else:
            self.word += char

    def _flush_word(self) -> None:
        if not self.word:
            return
        if self.column and self.column + len(self.word) > self.width:
            self.stream.write("\n")
            self.column = 0
        self._out(self.word)
        self.word = ""

    def _out(self, text: str) -> None:
        self.stream.write(text)
        newline = text.rfind("\n")
        self.column = len(text) - newline - 1 if newline >= 0 else self.column + len(text)
        if self.width and self.column > self.width:  # a word longer than a line: the terminal wrapped it
            self.column %= self.width


def human_duration(ns: int | float) -> str:
    """Nanoseconds → ``1.234s``, ``56.7ms``, ``812µs``."""
    seconds = ns / 1e9
    if seconds >= 1:
        return f"{seconds:.3f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds * 1e6:.0f}µs"


def _rate(count: int, ns: int) -> str:
    return f"{count / (ns / 1e9):.2f} tokens/s" if ns else "n/a"


def print_stats(final: dict[str, Any], stream: TextIO) -> None:
    """Ollama's ``--verbose`` block, from the last chunk of an answer."""
    prompt_count, prompt_ns = final.get("prompt_eval_count", 0), final.get("prompt_eval_duration", 0)
    count, eval_ns = final.get("eval_count", 0), final.get("eval_duration", 0)
    rows = [
        ("total duration", human_duration(final.get("total_duration", 0))),
        ("load duration", human_duration(final.get("load_duration", 0))),
        ("prompt eval count", f"{prompt_count} token(s)"),
        ("prompt eval duration", human_duration(prompt_ns)),
        ("prompt eval rate", _rate(prompt_count, prompt_ns)),
        ("eval count", f"{count} token(s)"),
        ("eval duration", human_duration(eval_ns)),
        ("eval rate", _rate(count, eval_ns)),
    ]
    for label, value in rows:
        stream.write(f"{label + ':':<22}{value}\n")
    stream.flush()


# --- model details, for `localllm show` and the REPL's `/show info` ---------
def _section(console: Console, title: str, rows: list[tuple[str, Any]] | list[str]) -> None:
    console.print(f"  {title}", markup=False)
    for row in rows:
        text = f"    {row[0]:<20}{row[1]}" if isinstance(row, tuple) else f"    {row}"
        console.print(text, markup=False)
    console.print()


def print_model_info(info: dict[str, Any], console: Console) -> None:
    """The sections ``localllm show MODEL`` prints from an ``/api/show`` document."""
    model_info = info.get("model_info") or {}
    details = info.get("details") or {}
    arch = model_info.get("general.architecture", details.get("family", ""))
    rows: list[tuple[str, Any]] = [
        ("architecture", arch),
        ("parameters", details.get("parameter_size", "")),
    ]
    for label, key in (("context length", "context_length"), ("embedding length", "embedding_length")):
        if f"{arch}.{key}" in model_info:
            rows.append((label, model_info[f"{arch}.{key}"]))
    rows.append(("quantization", details.get("quantization_level", "")))
    console.print()
    _section(console, "Model", rows)
    _section(console, "Capabilities", list(info.get("capabilities") or []))
    if info.get("parameters"):
        _section(console, "Parameters", info["parameters"].splitlines())
    if info.get("system"):
        _section(console, "System", info["system"].splitlines()[:4])
    if info.get("license"):
        _section(console, "License", [line for line in info["license"].splitlines() if line.strip()][:2])
