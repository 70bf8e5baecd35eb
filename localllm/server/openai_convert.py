"""From an OpenAI request to what the generation layer takes: options, messages, grammars, tool plans.

Every check here names the parameter at fault, so the client's ``BadRequestError`` says what to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from ..errors import InvalidRequest, UnsupportedInput
from ..llm.grammar import JSON_GBNF, schema_grammar
from ..llm.options import Options, parse_options
from .openai_schemas import (
    ChatCompletionRequest,
    ChatMessage,
    NamedToolChoice,
    ResponseFormat,
    _Sampled,
)


def options_of(body: _Sampled, max_tokens: int | None) -> Options:
    """The ``options`` extension first, the standard OpenAI fields on top of it."""
    raw: dict[str, Any] = dict(body.options or {})
    standard = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "seed": body.seed,
        "stop": body.stop,
        "num_predict": max_tokens,
    }
    raw.update({key: value for key, value in standard.items() if value is not None})
    try:
        return parse_options(raw)
    except InvalidRequest as exc:
        exc.param = exc.param or "options"
        raise


def with_seed(options: Options, choice: int) -> Options:
    """Choice ``i`` of ``n`` samples with seed + i, so a seeded request is reproducible yet its choices differ."""
    if choice == 0 or options.seed is None or options.seed < 0:
        return options
    return options.model_copy(update={"seed": options.seed + choice})


def logit_bias_of(raw: dict[str, float] | None) -> dict[int, float]:
    return {int(token): bias for token, bias in (raw or {}).items()}


# --- messages ------------------------------------------------------------------
def _text_of(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part_index, part in enumerate(content):
        if part.type == "text":
            texts.append(part.text or "")
        elif part.type == "refusal" and message.role == "assistant":
            texts.append(part.refusal or "")
        else:
            raise UnsupportedInput(
                f"content parts of type {part.type!r} are not supported by this model; send text",
                param=f"messages[{index}].content[{part_index}]",
            )
    return "\n".join(texts)


def _arguments(text: str, param: str) -> dict[str, Any] | str:
    """Tool-call arguments arrive as a JSON string; templates expect the object."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return text  # shown to the model as written
    if not isinstance(value, dict):
        raise InvalidRequest("tool call arguments must be a JSON object", param=param)
    return value


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """OpenAI messages as chat templates see them (Hugging Face's conventions)."""
    call_names: dict[str, str] = {}
    result: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        text = _text_of(message, index)
        if message.role in ("system", "developer"):
            result.append({"role": "system", "content": text})
        elif message.role == "user":
            result.append({"role": "user", "content": text})
        elif message.role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": text}
            if message.tool_calls:  # on other roles they mean nothing and are not shown
                entry["tool_calls"] = []
                for call_index, call in enumerate(message.tool_calls):
                    param = f"messages[{index}].tool_calls[{call_index}].function.arguments"
                    call_names[call.id] = call.function.name
                    arguments = _arguments(call.function.arguments, param)
                    function = {"name": call.function.name, "arguments": arguments}
                    entry["tool_calls"].append({"id": call.id, "type": "function", "function": function})
            result.append(entry)
        else:  # tool, or the deprecated function role
            name = message.name or call_names.get(message.tool_call_id or "", "")
            entry = {"role": "tool", "content": text, "name": name, "tool_name": name}
            if message.tool_call_id:
                entry["tool_call_id"] = message.tool_call_id
            result.append(entry)
    return result


# --- structured output ---------------------------------------------------------
def checked_schema(schema: Any, param: str) -> dict[str, Any]:
    """A JSON schema that is valid (by its own metaschema) and that a grammar can enforce."""
    if not isinstance(schema, dict):
        raise InvalidRequest("a JSON schema must be an object", param=param)
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise InvalidRequest(f"invalid JSON schema: {exc.message}", param=param) from exc
    return schema


def response_format_grammar(response_format: ResponseFormat | None) -> str | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return JSON_GBNF
    schema = response_format.json_schema.schema_ if response_format.json_schema else None
    if schema is None:
        return JSON_GBNF
    param = "response_format.json_schema.schema"
    strict = bool(response_format.json_schema and response_format.json_schema.strict)
    return _enforceable(checked_schema(schema, param), param, strict=strict)


def _enforceable(schema: dict[str, Any], param: str, *, strict: bool = False) -> str:
    try:
        return schema_grammar(schema, strict=strict)
    except InvalidRequest as exc:
        exc.param = param
        raise


# --- tools -----------------------------------------------------------------------
@dataclass
class ToolPlan:
    tools: list[dict[str, Any]] | None  # what the template shows the model; None: no tools this turn
    grammar: str | None  # set when the call is forced
    forced: bool


def tool_plan(body: ChatCompletionRequest) -> ToolPlan:
    """``tool_choice``: none hides the tools, auto lets the model choose, required or a named function
    force a call with a grammar (so even a model that would rather talk answers with a valid call)."""
    choice = body.tool_choice
    forcing = choice == "required" or isinstance(choice, NamedToolChoice)
    if forcing and not body.tools:
        raise InvalidRequest("tool_choice needs tools to choose from", param="tool_choice")
    if not body.tools or choice == "none":
        return ToolPlan(None, None, False)
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools]
    schemas: dict[str, dict[str, Any]] = {}
    for index, tool in enumerate(body.tools):
        name = tool.function.name
        if name in schemas:
            raise InvalidRequest(f"two tools are named {name!r}", param=f"tools[{index}].function.name")
        parameters = tool.function.parameters
        param = f"tools[{index}].function.parameters"
        schemas[name] = checked_schema(parameters, param) if parameters is not None else {"type": "object"}
        if tool.function.strict:
            _enforceable(schemas[name], param, strict=True)
    if not forcing:
        return ToolPlan(tools, None, False)
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in schemas:
            raise InvalidRequest(f"tool_choice names {choice.function.name!r}, which is not among the tools",
                                 param="tool_choice")
        schema = _call_schema(choice.function.name, schemas[choice.function.name])
    else:
        calls = [_call_schema(name, parameters) for name, parameters in schemas.items()]
        one = calls[0] if len(calls) == 1 else {"anyOf": calls}
        parallel = body.parallel_tool_calls is not False
        schema = {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]} if parallel else one
    return ToolPlan(tools, _enforceable(schema, "tools"), True)


def _call_schema(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": parameters},
        "required": ["name", "arguments"],
    }
