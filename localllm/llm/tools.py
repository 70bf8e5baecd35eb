"""Tool calls in a model's output, in the formats models are trained to write them.

Each model family writes calls its own way: Hermes/Qwen wrap JSON in ``<tool_call>`` tags, Mistral puts them
after ``[TOOL_CALLS]``, Llama 3.1+ writes ``<|python_tag|>`` or simply answers with a JSON object. Every
format is recognised whatever the chat template teaches, because fine-tunes do not always keep to it.
:class:`ToolCallStream` reads them as the output streams; :func:`parse_tool_calls` reads a whole output.

Strictness: a call needs its marker, or — unmarked — must be the whole output; JSON that does not parse, and
calls of tools the request did not offer, stay in the content for the user to see. No input raises.
"""

from __future__ import annotations

import json
import re
from typing import Any

_Found = tuple[str, list[dict[str, Any]]]

_DECODER = json.JSONDecoder()
_CALL_KEYS = {"name", "arguments", "parameters", "type", "id"}
_WRAPPER_KEYS = {"function", "type", "id"}


def parse_tool_calls(text: str, *, tool_names: set[str]) -> tuple[str, list[dict]]:
    """Split a whole model output into (content left for the user, tool calls).

    Each tool call: {"function": {"name": str, "arguments": dict}} (arguments always a dict: parse a JSON string
    if the model wrote one). Only names in tool_names count (when tool_names is non-empty); text that is not a tool
    call stays content. No tool call found: (text, [])."""
    stream = ToolCallStream(tool_names)
    events = stream.feed(text) + stream.finish()
    calls = [event for event in events if isinstance(event, dict)]
    if not calls:
        return text, []
    return "".join(event for event in events if isinstance(event, str)), calls


Event = str | dict[str, Any]  # content to show, or one tool call

_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_MISTRAL_MARK = "[TOOL_CALLS]"
_PYTHON_TAG = "<|python_tag|>"
_MARKERS = (_HERMES_OPEN, _MISTRAL_MARK, _PYTHON_TAG)


class ToolCallStream:
    """Reads a model's output as it streams and splits it into content and tool calls.

    Content flows on at once, except text that may be the start of a call marker (``<tool_c`` ...), held
    until the next piece tells. A ``<tool_call>`` block is decided at its closing tag, or at the end of
    the output (a model that stops at its end-of-turn token may never write it, or stop inside it:
    ``...}}</tool``). ``[TOOL_CALLS]`` and ``<|python_tag|>`` calls run to the next marker or the end, and
    an unmarked call must be the whole output, so those are decided at the end. Whitespace at the edges of
    the content is dropped, and between content pieces kept, as the model wrote it."""

    def __init__(self, tool_names: set[str]) -> None:
        self.names = tool_names
        self._buffer = ""
        self._state = "start"  # start | text | bare | block
        self._marker = ""  # the marker of the open block
        self._space = ""  # whitespace held back: it is content only if more content follows
        self._shown = False  # whether any content went out (leading whitespace is dropped until then)

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        return self._advance(final=False)

    def finish(self) -> list[Event]:
        return self._advance(final=True)

    # --- the states -----------------------------------------------------------------------------------------
    def _advance(self, *, final: bool) -> list[Event]:
        out: list[Event] = []
        while True:
            before = (self._state, len(self._buffer))
            getattr(self, f"_{self._state}")(out, final)
            if (self._state, len(self._buffer)) == before or not self._buffer:
                if final and self._buffer:  # a state that could not decide gives its text back
                    self._content(out, self._buffer)
                    self._buffer = ""
                return out

    def _start(self, out: list[Event], final: bool) -> None:
        """At the beginning: an unmarked JSON call, or anything else."""
        head = self._buffer.lstrip()
        if not head:
            return
        if not final and any(marker.startswith(head) for marker in _MARKERS):
            return  # "[" or "<": a marker, or JSON?
        if head.startswith(_MARKERS):
            self._state = "text"
        elif head[0] in "{[" or head.startswith("```"):
            self._state = "bare"
        elif head.startswith("`") and len(head) < 3 and not final:
            return
        else:
            self._state = "text"

    def _text(self, out: list[Event], final: bool) -> None:
        found = [(index, marker) for marker in _MARKERS if (index := self._buffer.find(marker)) >= 0]
        if found:
            index, marker = min(found)
            self._content(out, self._buffer[:index])
            self._buffer = self._buffer[index + len(marker):]
            self._state, self._marker = "block", marker
            return
        keep = 0 if final else _marker_prefix_length(self._buffer)
        self._content(out, self._buffer[: len(self._buffer) - keep])
        self._buffer = self._buffer[len(self._buffer) - keep:]

    def _bare(self, out: list[Event], final: bool) -> None:
        """Output that starts like JSON: a call only if it is the whole output. JSON that is complete and
        no call lets the content flow at once."""
        if final:
            found = _bare_json(self._buffer, self.names)
            if found:
                out.extend(found[1])
                self._buffer = ""
            else:
                self._state = "text"
            return
        body = self._buffer.strip()
        if body.startswith("```"):
            return
        try:
            value, _ = _DECODER.raw_decode(body)
        except (json.JSONDecodeError, RecursionError):
            return  # not complete yet (or never: decided at the end)
        items = value if isinstance(value, list) else [value]
        if not items or any(_call(item, self.names, strict=True) is None for item in items):
            self._state = "text"

    def _block(self, out: list[Event], final: bool) -> None:
        if self._marker == _HERMES_OPEN:
            end = self._buffer.find(_HERMES_CLOSE)
            if end < 0 and not final:
                return
            body = self._buffer[:end] if end >= 0 else _without_partial(self._buffer, _HERMES_CLOSE)
            rest = self._buffer[end + len(_HERMES_CLOSE):] if end >= 0 else ""
            raw = self._marker + self._buffer[: len(self._buffer) - len(rest)]
            self._resolve(out, _calls_in(body, self.names, strict=False), raw)
            self._buffer = rest
            return
        if self._marker == _MISTRAL_MARK:
            end = self._buffer.find(_MISTRAL_MARK)
            if end < 0 and not final:
                return
            segment = self._buffer[:end] if end >= 0 else self._buffer
            self._resolve(out, _mistral_segment(segment, self.names), self._marker + segment)
            self._buffer = self._buffer[len(segment):]
            return
        if final:  # <|python_tag|>: Llama's calls run to the end of the output
            calls = _calls_in(_LLAMA_END.sub("", self._buffer), self.names, strict=False)
            self._resolve(out, calls, self._marker + self._buffer)
            self._buffer = ""

    def _resolve(self, out: list[Event], calls: list[dict[str, Any]] | None, raw: str) -> None:
        """A block read whole: its calls, or (not a call after all) its text as content."""
        if calls:
            out.extend(calls)
        else:
            self._content(out, raw)
        self._state = "text"

    def _content(self, out: list[Event], text: str) -> None:
        if not self._shown:
            text = text.lstrip()
        body = text.rstrip()
        if body:
            out.append(self._space + body)
            self._space, self._shown = "", True
        self._space += text[len(body):]


def _marker_prefix_length(text: str) -> int:
    """How many characters at the end of ``text`` could begin a call marker."""
    for length in range(min(len(text), max(map(len, _MARKERS)) - 1), 0, -1):
        if any(marker.startswith(text[-length:]) for marker in _MARKERS):
            return length
    return 0


def _without_partial(text: str, tag: str) -> str:
    """``text`` without a beginning of ``tag`` at its very end (output that stopped inside the tag)."""
    for length in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-length:]):
            return text[:-length]
    return text


# --- the formats ------------------------------------------------------------------------------------------------

# Newer Mistral templates: [TOOL_CALLS]name[ARGS]{...}, some with [CALL_ID]id before [ARGS].
_MISTRAL_NAMED = re.compile(r"\s*(?P<name>[A-Za-z_][\w.\-]*)\s*(?:\[CALL_ID\]\s*[\w\-]+\s*)?\[ARGS\]\s*")


def _mistral_segment(segment: str, names: set[str]) -> list[dict[str, Any]] | None:
    """What follows ``[TOOL_CALLS]``: a JSON list of calls, or ``name[ARGS]{...}``."""
    match = _MISTRAL_NAMED.match(segment)
    if match is None:
        return _calls_in(segment, names, strict=False)
    try:
        arguments, end = _DECODER.raw_decode(segment, match.end())
    except json.JSONDecodeError:
        return None
    if segment[end:].strip():
        return None
    call = _call({"name": match["name"], "arguments": arguments}, names, strict=False)
    return [call] if call else None


# Llama 3.1+ ends a call turn with <|eom_id|> (or <|eot_id|>) when the text keeps them.
_LLAMA_END = re.compile(r"(?:\s*(?:<\|eom_id\|>|<\|eot_id\|>))+\s*\Z")


_FENCE = re.compile(r"```(?:json)?[ \t]*\n?(?P<body>.*?)\n?[ \t]*```", re.DOTALL | re.IGNORECASE)


def _bare_json(text: str, names: set[str]) -> _Found | None:
    """An unmarked call, as Llama 3.x answers when tools are offered in the user turn: the whole output is a call
    object (or a list of them), perhaps in a ```json fence. Strict: the object may hold only a call's keys,
    ``arguments`` or ``parameters`` included, so a JSON answer that merely has a "name" is not taken for one."""
    body = text.strip()
    if (fence := _FENCE.fullmatch(body)) is not None:
        body = fence["body"].strip()
    if not body.startswith(("{", "[")):
        return None
    calls = _calls_in(body, names, strict=True)
    return ("", calls) if calls else None


# --- JSON to calls ----------------------------------------------------------------------------------------------


def _calls_in(text: str, names: set[str], *, strict: bool) -> list[dict[str, Any]] | None:
    """The calls ``text`` consists of: JSON objects or lists of them, separated by whitespace or ``;``.

    All or nothing: one value that is not a valid call (or anything else in the text) leaves the whole text as
    content, as a JSON list cannot be split into calls and content."""
    calls: list[dict[str, Any]] = []
    pos, end = 0, len(text)
    while True:
        while pos < end and (text[pos].isspace() or text[pos] == ";"):
            pos += 1
        if pos == end:
            break
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError):
            return None
        for item in value if isinstance(value, list) else [value]:
            call = _call(item, names, strict=strict)
            if call is None:
                return None
            calls.append(call)
    return calls or None


def _call(obj: Any, names: set[str], *, strict: bool) -> dict[str, Any] | None:
    """One call in our shape, from {"name", "arguments"|"parameters"} or the OpenAI/Functionary wrapping
    {"type": "function", "function": {...}}. ``strict`` (for unmarked output) allows a call's keys only and
    requires the arguments key; after an explicit marker a missing one means no arguments."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        if strict and not obj.keys() <= _WRAPPER_KEYS:
            return None
        obj = obj["function"]
    if strict and not obj.keys() <= _CALL_KEYS:
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name or (names and name not in names):
        return None
    if "arguments" in obj:
        raw = obj["arguments"]
    elif "parameters" in obj:
        raw = obj["parameters"]
    elif strict:
        return None
    else:
        raw = None
    arguments = _arguments(raw)
    if arguments is None:
        return None
    return {"function": {"name": name, "arguments": arguments}}


def _arguments(raw: Any) -> dict[str, Any] | None:
    """Arguments as a dict: models (and OpenAI-style training data) often write them as a JSON string."""
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        if not raw.strip():
            return {}
        try:
            parsed = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            return None
        return parsed if isinstance(parsed, dict) else None
    return None
