"""Tool calls in a model's output, in the formats models are trained to write them.

Each model family writes calls its own way: Hermes/Qwen wrap JSON in ``<tool_call>`` tags, Mistral puts them
after ``[TOOL_CALLS]``, Llama 3.1+ writes ``<|python_tag|>`` or simply answers with a JSON object. The chat
template tells which format the model was taught, so that one is tried first; the others follow because
fine-tunes do not always keep to their template.

Strictness: a call needs its marker, or — unmarked — must be the whole output; JSON that does not parse, and
calls of tools the request did not offer, stay in the content for the user to see. No input raises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

_Found = tuple[str, list[dict[str, Any]]]
_Parser = Callable[[str, set[str]], _Found | None]

_DECODER = json.JSONDecoder()
_CALL_KEYS = {"name", "arguments", "parameters", "type", "id"}
_WRAPPER_KEYS = {"function", "type", "id"}


def parse_tool_calls(text: str, *, template_source: str | None, tool_names: set[str]) -> tuple[str, list[dict]]:
    """Split a model's output into (content left for the user, tool calls).

    Each tool call: {"function": {"name": str, "arguments": dict}} (arguments always a dict: parse a JSON string
    if the model wrote one). Only names in tool_names count (when tool_names is non-empty); text that is not a tool
    call stays content. No tool call found: (text, [])."""
    for parser in _parsers(template_source or ""):
        found = parser(text, tool_names)
        if found is not None:
            return found
    return text, []


def _parsers(template_source: str) -> list[_Parser]:
    preferred: list[_Parser] = []
    if "<tool_call>" in template_source:
        preferred.append(_hermes)
    if "[TOOL_CALLS]" in template_source:
        preferred.append(_mistral)
    if "<|python_tag|>" in template_source or "<|start_header_id|>" in template_source:
        preferred.append(_python_tag)
    return preferred + [parser for parser in (_hermes, _mistral, _python_tag, _bare_json) if parser not in preferred]


# --- the formats ------------------------------------------------------------------------------------------------

# Closed, or left open at the very end (the model stopped on its end-of-turn token before writing </tool_call>).
_HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)


def _hermes(text: str, names: set[str]) -> _Found | None:
    """``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, once per call (Hermes, Qwen)."""
    calls: list[dict[str, Any]] = []
    content: list[str] = []
    pos = 0
    for match in _HERMES_BLOCK.finditer(text):
        found = _calls_in(match.group(1), names, strict=False)
        if not found:
            continue  # not a call: the block stays in the content
        content.append(text[pos : match.start()])
        calls.extend(found)
        pos = match.end()
    if not calls:
        return None
    content.append(text[pos:])
    return "".join(content).strip(), calls


_MISTRAL_MARK = "[TOOL_CALLS]"
# Newer Mistral templates: [TOOL_CALLS]name[ARGS]{...}, some with [CALL_ID]id before [ARGS].
_MISTRAL_NAMED = re.compile(r"\s*(?P<name>[A-Za-z_][\w.\-]*)\s*(?:\[CALL_ID\]\s*[\w\-]+\s*)?\[ARGS\]\s*")


def _mistral(text: str, names: set[str]) -> _Found | None:
    """``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`` or ``[TOOL_CALLS]name[ARGS]{...}``."""
    head, *segments = text.split(_MISTRAL_MARK)
    calls: list[dict[str, Any]] = []
    content = [head]
    for segment in segments:
        found = _mistral_segment(segment, names)
        if found:
            calls.extend(found)
        else:
            content.append(_MISTRAL_MARK + segment)
    if not calls:
        return None
    return "".join(content).strip(), calls


def _mistral_segment(segment: str, names: set[str]) -> list[dict[str, Any]] | None:
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


_PYTHON_TAG = "<|python_tag|>"
_LLAMA_END = re.compile(r"(?:\s*(?:<\|eom_id\|>|<\|eot_id\|>))+\s*\Z")


def _python_tag(text: str, names: set[str]) -> _Found | None:
    """``<|python_tag|>{"name": ..., "parameters": {...}}`` (Llama 3.1+); what precedes the tag is content.

    Built-in tools written as Python (``brave_search.call(query=...)``) are not JSON and stay content."""
    head, tag, tail = text.partition(_PYTHON_TAG)
    if not tag:
        return None
    calls = _calls_in(_LLAMA_END.sub("", tail), names, strict=False)
    return (head.strip(), calls) if calls else None


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
