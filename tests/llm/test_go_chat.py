"""Ollama's Go chat templates render the prompts Ollama renders.

The templates are those of Ollama's model library; each expected prompt was written by hand from Go's
template semantics (trim markers, ``{{ else if }}``, ``$last``...) and Ollama's ``template.Execute``."""

from __future__ import annotations

from typing import Any

import pytest

from localllm.errors import TemplateError
from localllm.llm.go_chat import GoChatTemplate, collate

LLAMA31 = """\
{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

Cutting Knowledge Date: December 2023

When you receive a tool call response, use the output to format an answer to the orginal user question.

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.

{{ range $.Tools }}
{{- . }}
{{ end }}
Question: {{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""  # noqa: E501 (the library's template, verbatim)

MISTRAL = """\
{{- if .Messages }}
{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}
{{- if and (eq (len (slice $.Messages $index)) 1) $.Tools }}[AVAILABLE_TOOLS] {{ $.Tools }}[/AVAILABLE_TOOLS]
{{- end }}[INST] {{ if and $.System (eq (len (slice $.Messages $index)) 1) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }}
{{- if .Content }} {{ .Content }}
{{- else if .ToolCalls }}[TOOL_CALLS] [
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- end }}]
{{- end }}</s>
{{- else if eq .Role "tool" }}[TOOL_RESULTS] {"content": {{ .Content }}} [/TOOL_RESULTS]
{{- end }}
{{- end }}
{{- else }}[INST] {{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}[/INST]
{{- end }} {{ .Response }}
{{- if .Response }}</s>
{{- end }}"""

QWEN25 = """\
{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""

GEMMA3 = """\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

GEMMA2 = """\
<start_of_turn>user
{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}<end_of_turn>
<start_of_turn>model
{{ .Response }}<end_of_turn>
"""

PHI3 = """\
{{ if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}{{ if .Prompt }}<|user|>
{{ .Prompt }}<|end|>
{{ end }}<|assistant|>
{{ .Response }}<|end|>
"""

LLAMA2 = """[INST] <<SYS>>{{ .System }}<</SYS>>

{{ .Prompt }} [/INST]"""

VICUNA = """{{ .System }}
USER: {{ .Prompt }}
ASSISTANT:"""

ALPACA = """\
{{ if .System }}{{ .System }}

{{ end }}### Instruction:
{{ .Prompt }}

### Response:
{{ .Response }}</s>
"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
# Ollama's struct order (type, required, properties) and json.Marshal's escaping
WEATHER_FUNCTION_JSON = (
    '{"name":"get_weather","description":"Get the weather","parameters":{"type":"object","required":["city"],'
    '"properties":{"city":{"type":"string","description":"City name"}}}}'
)
WEATHER_TOOL_JSON = '{"type":"function","function":' + WEATHER_FUNCTION_JSON + "}"

CHAT = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]


def tool_exchange(arguments: dict[str, Any], result: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": arguments}}],
        },
        {"role": "tool", "content": result, "tool_name": "get_weather"},
    ]


def render(source: str, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    return GoChatTemplate.compile(source).render(messages, **kwargs)


# --- Llama 3.1 --------------------------------------------------------------------------------------------------


def test_llama31_conversation_with_a_tool_result() -> None:
    messages = [
        {"role": "system", "content": "You are helpful."},
        *tool_exchange({"unit": "celsius", "city": "Paris"}, "22 degrees"),
    ]
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.\n\n"
        "Cutting Knowledge Date: December 2023\n\n"
        "When you receive a tool call response, use the output to format an answer to the orginal user question.\n\n"
        "You are a helpful assistant with tool calling capabilities.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWeather in Paris?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city":"Paris","unit":"celsius"}}<|eot_id|>'  # a Go map: keys sorted
        "<|start_header_id|>ipython<|end_header_id|>\n\n22 degrees<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render(LLAMA31, messages, tools=[WEATHER_TOOL]) == expected


def test_llama31_tools_go_into_the_last_user_message() -> None:
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\n\n"
        "When you receive a tool call response, use the output to format an answer to the orginal user question.\n\n"
        "You are a helpful assistant with tool calling capabilities.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call with its proper arguments "
        "that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. '
        "Do not use variables.\n\n" + WEATHER_TOOL_JSON + "\n\nQuestion: Hi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render(LLAMA31, [{"role": "user", "content": "Hi"}], tools=[WEATHER_TOOL]) == expected


def test_llama31_plain_chat() -> None:
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    template = GoChatTemplate.compile(LLAMA31)
    assert template.render(CHAT) == expected
    assert template.supports_tools
    assert template.supports_system
    assert template.stop_words() == ["<|eot_id|>"]


# --- Mistral ----------------------------------------------------------------------------------------------------


def test_mistral_available_tools_and_system_on_the_last_user_turn() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    expected = (
        "[INST] Hi[/INST] Hello!</s>"
        "[AVAILABLE_TOOLS] [" + WEATHER_TOOL_JSON + "][/AVAILABLE_TOOLS]"
        "[INST] Be brief.\n\nWeather in Paris?[/INST] "
    )
    assert render(MISTRAL, messages, tools=[WEATHER_TOOL]) == expected


def test_mistral_tool_calls_and_results() -> None:
    messages = [{"role": "system", "content": "Be brief."}, *tool_exchange({"city": "Paris"}, '{"temp": 22}')]
    expected = (
        "[INST] Weather in Paris?[/INST]"
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city":"Paris"}}]</s>'
        '[TOOL_RESULTS] {"content": {"temp": 22}} [/TOOL_RESULTS] '
    )
    assert render(MISTRAL, messages, tools=[WEATHER_TOOL]) == expected
    template = GoChatTemplate.compile(MISTRAL)
    assert template.supports_tools
    assert template.stop_words() == ["[INST]", "</s>"]


# --- ChatML: Qwen 2.5 -------------------------------------------------------------------------------------------


def test_qwen25_chat() -> None:
    expected = (
        "<|im_start|>system\nS<|im_end|>\n"
        "<|im_start|>user\nU1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nU2<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render(QWEN25, CHAT) == expected
    assert GoChatTemplate.compile(QWEN25).stop_words() == ["<|im_end|>"]


def test_qwen25_tools() -> None:
    expected = (
        "<|im_start|>system\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": ' + WEATHER_FUNCTION_JSON + "}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n22\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render(QWEN25, tool_exchange({"city": "Paris"}, "22"), tools=[WEATHER_TOOL]) == expected


def test_qwen25_ends_inside_a_last_assistant_message() -> None:
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "The answer is"}]
    assert render(QWEN25, messages) == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nThe answer is"


# --- Gemma ------------------------------------------------------------------------------------------------------


def test_gemma3_system_as_user_turn() -> None:
    expected = (
        "<start_of_turn>user\nS<end_of_turn>\n"
        "<start_of_turn>user\nU1<end_of_turn>\n"
        "<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nU2<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    template = GoChatTemplate.compile(GEMMA3)
    assert template.render(CHAT) == expected
    assert template.supports_system
    assert not template.supports_tools
    assert template.stop_words() == ["<end_of_turn>"]


def test_consecutive_messages_of_a_role_are_merged() -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert render(GEMMA3, messages) == "<start_of_turn>user\na\n\nb<end_of_turn>\n<start_of_turn>model\n"


def test_gemma2_legacy_template() -> None:
    expected = (
        "<start_of_turn>user\nS U1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nU2<end_of_turn>\n<start_of_turn>model\n"
    )
    assert render(GEMMA2, CHAT) == expected


# --- legacy .System/.Prompt/.Response templates -----------------------------------------------------------------


def test_phi3_legacy_turns() -> None:
    expected = (
        "<|system|>\nS<|end|>\n<|user|>\nU1<|end|>\n<|assistant|>\nA1<|end|>\n<|user|>\nU2<|end|>\n<|assistant|>\n"
    )
    template = GoChatTemplate.compile(PHI3)
    assert template.render(CHAT) == expected
    assert not template.supports_tools
    assert template.supports_system
    assert template.stop_words() == ["<|end|>", "<|user|>", "<|assistant|>"]


def test_llama2_gets_response_appended() -> None:
    # no {{ .Response }} in the template: Ollama appends one, so past answers follow their [/INST]
    expected = "[INST] <<SYS>>S<</SYS>>\n\nU1 [/INST]A1[INST] <<SYS>><</SYS>>\n\nU2 [/INST]"
    assert render(LLAMA2, CHAT) == expected


def test_vicuna_without_system() -> None:
    messages = CHAT[1:]
    assert render(VICUNA, messages) == "\nUSER: U1\nASSISTANT:A1\nUSER: U2\nASSISTANT:"


def test_alpaca_cut_after_response() -> None:
    expected = "S\n\n### Instruction:\nU1\n\n### Response:\nA1</s>\n### Instruction:\nU2\n\n### Response:\n"
    assert render(ALPACA, CHAT) == expected


def test_alpaca_without_generation_prompt_renders_the_whole_turn() -> None:
    messages = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    assert render(ALPACA, messages, add_generation_prompt=False) == "### Instruction:\nU\n\n### Response:\nA</s>\n"
    assert render(ALPACA, messages) == "### Instruction:\nU\n\n### Response:\nA"


def test_legacy_system_in_the_middle_flushes_the_turn() -> None:
    messages = [
        {"role": "user", "content": "U1"},
        {"role": "system", "content": "S2"},
        {"role": "user", "content": "U2"},
        {"role": "tool", "content": "ignored"},
    ]
    expected = (
        "<|user|>\nU1<|end|>\n<|assistant|>\n<|end|>\n<|system|>\nS2<|end|>\n<|user|>\nU2<|end|>\n<|assistant|>\n"
    )
    assert render(PHI3, messages) == expected


# --- data, think, errors ----------------------------------------------------------------------------------------


def test_message_and_tool_fields() -> None:
    source = (
        "{{ range .Messages }}{{ .Role }}|{{ .ToolName }}|{{ .Thinking }}|"
        "{{ range .ToolCalls }}{{ .Function.Name }}{{ .Function.Arguments }}{{ .Function.Index }}{{ end }};{{ end }}"
        "{{ range .Tools }}{{ .Type }} {{ .Function.Name }} {{ .Function.Parameters.Type }} "
        "{{ range $name, $p := .Function.Parameters.Properties }}{{ $name }}:{{ $p.Type }}:{{ $p.Description }}:"
        "{{ toTypeScriptType $p }} {{ end }}{{ json .Function.Parameters.Required }}{{ end }}"
    )
    messages = [
        {
            "role": "assistant",
            "content": "",
            "thinking": "hmm",
            "tool_calls": [{"function": {"name": "f", "arguments": {"b": [1.0], "a": {"y": 1, "x": 2}}}}],
        },
        {"role": "tool", "content": "r", "tool_name": "f"},
    ]
    tool = {
        "type": "function",
        "function": {
            "name": "t",
            "parameters": {
                "type": "object",
                "properties": {"n": {"type": "integer", "description": "N"}, "m": {"type": ["string", "null"]}},
                "required": ["n"],
            },
        },
    }
    assert render(source, messages, tools=[tool]) == (
        'assistant||hmm|f{"a":{"x":2,"y":1},"b":[1]}0;tool|f||;'
        'function t object m:[string null]::string | null n:integer:N:number ["n"]'
    )


def test_think_values() -> None:
    source = "{{ .Think }} {{ .ThinkLevel }} {{ .IsThinkSet }}{{ range .Messages }}{{ end }}"
    assert render(source, []) == "false  false"
    assert render(source, [], think=True) == "true  true"
    assert render(source, [], think="high") == "true high true"


def test_collate_joins_system_messages() -> None:
    system, messages = collate(
        [
            {"role": "system", "content": "a"},
            {"role": "system", "content": "b"},
            {"role": "tool", "content": "1"},
            {"role": "tool", "content": "2"},
        ]
    )
    assert system == "a\n\nb"
    assert [m["content"] for m in messages] == ["a\n\nb", "1", "2"]


def test_messages_mode_system_field() -> None:
    source = "{{ .System }}|{{ range .Messages }}{{ .Role }},{{ end }}"
    messages = [
        {"role": "system", "content": "a"},
        {"role": "user", "content": "u"},
        {"role": "system", "content": "b"},
    ]
    assert render(source, messages) == "a\n\nb|system,user,system,"


def test_compile_error_names_line_and_column() -> None:
    with pytest.raises(TemplateError, match=r"line 2, column 9: function \"nope\" not defined"):
        GoChatTemplate.compile("hello\n{{ .A | nope }}")
    with pytest.raises(TemplateError, match=r"line 1, column 1: unclosed action"):
        GoChatTemplate.compile("{{ .Messages")


def test_render_error_becomes_template_error() -> None:
    template = GoChatTemplate.compile("x\n{{ range .Messages }}{{ index .ToolCalls 3 }}{{ end }}")
    with pytest.raises(TemplateError, match=r"line 2, column 25: .*index out of range: 3"):
        template.render(
            [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}]
        )
    assert not template.supports_system  # the probe render fails: no system support claimed


def test_supports_system_false_when_dropped() -> None:
    template = GoChatTemplate.compile('{{ range .Messages }}{{ if eq .Role "user" }}{{ .Content }}{{ end }}{{ end }}')
    assert not template.supports_system
    assert not template.supports_tools


@pytest.mark.parametrize("source", [LLAMA31, MISTRAL, QWEN25, GEMMA3, GEMMA2, PHI3, LLAMA2, VICUNA, ALPACA])
def test_library_templates_render_empty_and_single_turns(source: str) -> None:
    template = GoChatTemplate.compile(source)
    assert isinstance(template.render([]), str)
    assert "hello" in template.render([{"role": "user", "content": "hello"}])
