"""Ollama's Go chat templates: a prompt rendered as Ollama's ``template.Execute`` renders it.

A template that reads ``.Messages`` is executed once, over the whole conversation, with Ollama's data:
``System`` (every system message's text, joined by blank lines), ``Messages`` (consecutive messages of one role
merged, tool results excepted), ``Tools``, ``Response`` (empty), ``Think``, ``ThinkLevel`` and ``IsThinkSet``.
An older template (``{{ .System }}``, ``{{ .Prompt }}``, ``{{ .Response }}``) is executed once per exchange, and
a last time with everything after ``{{ .Response }}`` cut off, so the prompt ends where the model answers.

Messages and tools arrive as our JSON dicts and reach the template as Ollama's Go structs (``.Role``,
``.ToolCalls``, ``.Function.Name``, ``.Function.Parameters.Properties``...): :class:`GoStruct` views whose
printed and ``json`` form is the JSON that Ollama's types marshal to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import TemplateError
from ..gotemplate import GoStruct, GoTemplate, GoTemplateError, GoTemplateSyntaxError, parse
from .templates import ProbedTemplate

__all__ = ["GoChatTemplate", "collate", "message_struct", "tool_struct"]


class GoChatTemplate(ProbedTemplate):
    """A compiled Ollama (Go) chat template, with the interface of the Jinja ``ChatTemplate``; build one
    with :meth:`compile`."""

    def __init__(self, source: str, template: GoTemplate) -> None:
        self.source = source
        self._template = template
        self._messages_mode = template.uses("messages")
        # Ollama's Parse: a template that names neither .Messages nor .Response gets {{ .Response }} appended.
        if not self._messages_mode and not template.uses("response"):
            template = parse(source + "{{ .Response }}")
        self._legacy = template
        self._legacy_cut = template.cut_after("Response")

    @classmethod
    def compile(cls, source: str) -> GoChatTemplate:
        """Parse ``source``; a syntax error raises :class:`TemplateError` naming its line and column."""
        try:
            return cls(source, parse(source))
        except GoTemplateSyntaxError as exc:
            raise TemplateError(f"template error at line {exc.line}, column {exc.column}: {exc.message}") from exc

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """The prompt for ``messages``.

        ``extra`` may carry ``think`` (a bool, or a level such as ``"high"``), which reaches the template as
        ``.Think``, ``.ThinkLevel`` and ``.IsThinkSet``. ``add_generation_prompt=False`` renders a legacy
        template's last exchange in full instead of ending the prompt at ``{{ .Response }}``."""
        think = extra.get("think")
        think_values = {
            "Think": bool(think) if not isinstance(think, str) else think.lower() not in ("", "false", "none"),
            "ThinkLevel": think if isinstance(think, str) and think not in ("true", "false") else "",
            "IsThinkSet": think is not None,
        }
        system, collated = collate(messages)
        try:
            if self._messages_mode:
                data = {
                    "System": system,
                    "Messages": [message_struct(message) for message in collated],
                    "Tools": [tool_struct(tool) for tool in tools] if tools is not None else None,
                    "Response": "",
                    **think_values,
                }
                return self._template.execute(data)
            return self._render_legacy(collated, think_values, add_generation_prompt)
        except GoTemplateError as exc:
            raise TemplateError(f"template error at line {exc.line}, column {exc.column}: {exc.message}") from exc

    def _render_legacy(self, messages: list[dict[str, Any]], think: dict[str, Any], cut: bool) -> str:
        """Ollama's loop: a system, user or assistant message after a finished exchange flushes it."""
        out: list[str] = []
        system = prompt = response = ""

        def execute(template: GoTemplate) -> None:
            out.append(template.execute({"System": system, "Prompt": prompt, "Response": response, **think}))

        for message in messages:
            role, content = message.get("role"), message.get("content") or ""
            if role == "system":
                if prompt or response:
                    execute(self._legacy)
                    system = prompt = response = ""
                system = content
            elif role == "user":
                if response:
                    execute(self._legacy)
                    system = prompt = response = ""
                prompt = content
            elif role == "assistant":
                response = content
        execute(self._legacy_cut if cut else self._legacy)
        return "".join(out)

    def _reads_tools(self) -> bool:
        return self._template.uses("tools")


# --- Ollama's data ----------------------------------------------------------------------------------------------


def collate(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's ``collate``: the system messages' text joined by blank lines, and the messages with consecutive
    ones of the same role merged (their contents joined by a blank line), except tool results. System messages
    stay in the list too."""
    system: list[str] = []
    collated: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        content = message.get("content") or ""
        if role == "system":
            system.append(content)
        if collated and collated[-1].get("role") == role and role != "tool":
            previous = collated[-1]
            previous["content"] = (previous.get("content") or "") + "\n\n" + content
        else:
            collated.append({**message, "content": content})
    return "\n\n".join(system), collated


def _go_map(value: Any) -> Any:
    """A JSON value as Go holds it in an ``any``: objects become maps, which marshal with sorted keys."""
    if isinstance(value, Mapping):
        return {str(key): _go_map(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_go_map(item) for item in value]
    return value


def _arguments(value: Any) -> dict[str, Any]:
    if isinstance(value, str):  # OpenAI clients send arguments as a JSON string
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return _go_map(value) if isinstance(value, Mapping) else {}


def message_struct(message: Mapping[str, Any]) -> GoStruct:
    """A message as Ollama's template sees it (``templateMessage``): ``.Role``, ``.Content``, ``.Thinking``,
    ``.Images``, ``.ToolCalls`` (each ``.ID`` and ``.Function`` with ``.Index``, ``.Name``, ``.Arguments``),
    ``.ToolName``, ``.ToolCallID``. Printed, a message or tool call is its JSON as the API writes it."""
    calls = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        arguments = _arguments(function.get("arguments"))
        index = function.get("index", 0)
        json_function: dict[str, Any] = {"name": function.get("name") or "", "arguments": arguments}
        if index:
            json_function = {"index": index, **json_function}
        json_call = {"id": call["id"], "function": json_function} if call.get("id") else {"function": json_function}
        calls.append(
            GoStruct(
                "template.templateToolCall",
                {
                    "ID": call.get("id") or "",
                    "Function": GoStruct(
                        "template.templateToolCallFunction",
                        {"Index": index, "Name": function.get("name") or "", "Arguments": arguments},
                        json_function,
                    ),
                },
                json_call,
            )
        )
    fields = {
        "Role": message.get("role") or "",
        "Content": message.get("content") or "",
        "Thinking": message.get("thinking") or "",
        "Images": list(message.get("images") or ()) or None,
        "ToolCalls": calls or None,
        "ToolName": message.get("tool_name") or "",
        "ToolCallID": message.get("tool_call_id") or "",
    }
    json_message: dict[str, Any] = {"role": fields["Role"], "content": fields["Content"]}
    for key, name in (("thinking", "Thinking"), ("images", "Images"), ("tool_name", "ToolName")):
        if fields[name]:
            json_message[key] = fields[name]
    if calls:
        json_message["tool_calls"] = [call.json_value for call in calls]
    if fields["ToolCallID"]:
        json_message["tool_call_id"] = fields["ToolCallID"]
    return GoStruct("*template.templateMessage", fields, json_message)


def _property_struct(schema: Any) -> GoStruct:
    """A tool parameter (``api.ToolProperty``); its JSON keeps the keys Ollama's struct has, in its order."""
    schema = schema if isinstance(schema, Mapping) else {}
    any_of = [_property_struct(item) for item in schema.get("anyOf") or () if isinstance(item, Mapping)]
    properties = schema.get("properties")
    nested = (
        {str(key): _property_struct(properties[key]) for key in sorted(properties, key=str)}
        if isinstance(properties, Mapping)
        else None
    )
    kind = schema.get("type")
    types = [kind] if isinstance(kind, str) else [str(t) for t in kind] if isinstance(kind, list) else []
    fields = {
        "AnyOf": any_of or None,
        # api.PropertyType prints through its String(): "string", or "[string null]" for several types
        "Type": "" if not types else types[0] if len(types) == 1 else "[" + " ".join(types) + "]",
        "Items": _go_map(schema.get("items")),
        "Description": schema.get("description") or "",
        "Enum": _go_map(schema.get("enum")) or None,
        "Properties": nested,
        "Required": list(schema.get("required") or ()) or None,
    }
    # the struct's JSON: its keys in its order, all omitempty; a single type marshals as a string
    json_value: dict[str, Any] = {}
    if any_of:
        json_value["anyOf"] = [item.json_value for item in any_of]
    if types:
        json_value["type"] = types[0] if len(types) == 1 else types
    for key, name in (("items", "Items"), ("description", "Description"), ("enum", "Enum")):
        if fields[name]:
            json_value[key] = fields[name]
    for key, name in (("properties", "Properties"), ("required", "Required")):
        if fields[name]:
            json_value[key] = fields[name]
    return GoStruct("api.ToolProperty", fields, json_value)


def tool_struct(tool: Mapping[str, Any]) -> GoStruct:
    """A tool as Ollama's template sees it (``templateTool``): ``.Type``, ``.Items``, ``.Function`` with
    ``.Name``, ``.Description`` and ``.Parameters`` (``.Type``, ``.Defs``, ``.Items``, ``.Required``,
    ``.Properties``: a map of name to parameter, each ``.Type``, ``.Description``, ``.Enum``...). Printed or
    given to ``json``, it is the JSON Ollama marshals: its struct's keys in their order, maps sorted."""
    function = tool.get("function") or {}
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties")
    property_map = (
        {str(key): _property_struct(properties[key]) for key in sorted(properties, key=str)}
        if isinstance(properties, Mapping)
        else None
    )
    param_fields = {
        "Type": parameters.get("type") or "",
        "Defs": _go_map(parameters.get("$defs")),
        "Items": _go_map(parameters.get("items")),
        "Required": list(parameters.get("required") or ()) or None,
        "Properties": property_map,
    }
    param_json: dict[str, Any] = {"type": param_fields["Type"]}
    for key, name in (("$defs", "Defs"), ("items", "Items"), ("required", "Required")):
        if param_fields[name]:
            param_json[key] = param_fields[name]
    param_json["properties"] = property_map
    function_fields = {
        "Name": function.get("name") or "",
        "Description": function.get("description") or "",
        "Parameters": GoStruct("template.templateToolFunctionParameters", param_fields, param_json),
    }
    function_json = {
        "name": function_fields["Name"],
        "description": function_fields["Description"],
        "parameters": param_json,
    }
    tool_fields = {
        "Type": tool.get("type") or "",
        "Items": _go_map(tool.get("items")),
        "Function": GoStruct("template.templateToolFunction", function_fields, function_json),
    }
    tool_json: dict[str, Any] = {"type": tool_fields["Type"]}
    if tool_fields["Items"]:
        tool_json["items"] = tool_fields["Items"]
    tool_json["function"] = function_json
    return GoStruct("template.templateTool", tool_fields, tool_json)
