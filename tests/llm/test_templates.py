"""Chat templates: our catalog's Jinja templates, a Qwen2.5-style ChatML one with tools, errors, the sandbox,
the plain-text fallback and the simple Go templates."""

from __future__ import annotations

from pathlib import Path

import pytest

import localllm
from localllm.errors import TemplateError
from localllm.llm.templates import (
    ChatTemplate,
    fallback_template,
    looks_like_go_template,
)

CATALOG = Path(localllm.__file__).parent / "store" / "catalog_data"


def catalog(name: str, **tokens: str) -> ChatTemplate:
    return ChatTemplate.compile((CATALOG / f"{name}.jinja").read_text(), **tokens)


# Qwen2.5's template (ChatML, with Hermes-style tools), as its tokenizer_config.json has it.
QWEN = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501 (verbatim)

LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
    "{{ m.content | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
ZEPHYR = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}<|user|><|assistant|>"
)
GEMMA1 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}"
)
CHATML_GENERIC = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Température <°C> & more",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "how are you?"},
]


# --- our catalog's templates ------------------------------------------------------------------------------------


def test_gemma_folds_the_system_prompt_into_the_first_user_turn() -> None:
    template = catalog("gemma", bos_token="<bos>", eos_token="<eos>")
    assert template.render(CONVERSATION[:2]) == (
        "<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\n"
    )
    assert template.render(CONVERSATION) == (
        "<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n"
        "<start_of_turn>model\nhello<end_of_turn>\n"
        "<start_of_turn>user\nhow are you?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert template.render(CONVERSATION[1:2], add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nhi<end_of_turn>\n"
    )


def test_llama2() -> None:
    template = catalog("llama2", bos_token="<s>", eos_token="</s>")
    assert template.render(CONVERSATION[:2]) == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhi [/INST]"
    assert template.render(CONVERSATION) == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhi [/INST] hello </s><s>[INST] how are you? [/INST]"
    )
    assert template.render(CONVERSATION[1:2]) == "<s>[INST] hi [/INST]"


def test_mistral() -> None:
    template = catalog("mistral", bos_token="<s>", eos_token="</s>")
    assert template.render(CONVERSATION[:2]) == "<s>[INST] Be brief.\n\nhi [/INST]"
    assert template.render(CONVERSATION) == "<s>[INST] Be brief.\n\nhi [/INST] hello</s>[INST] how are you? [/INST]"


def test_smollm2_is_chatml_with_its_default_system_prompt() -> None:
    template = catalog("smollm2")
    assert template.render(CONVERSATION[1:2]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert template.render(CONVERSATION, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nhow are you?<|im_end|>\n"
    )


def test_smollm2_shows_tools_calls_and_results_as_hermes_does() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    messages = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        ]},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "rain"},
    ]
    text = catalog("smollm2").render(messages, tools=[tool])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert '<tools>\n{"name": "get_weather", "parameters": {"type": "object"}}\n</tools>' in text
    assert text.endswith(
        "<|im_start|>user\nWeather in Paris and Oslo?<|im_end|>\n<|im_start|>assistant\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert catalog("smollm2").supports_tools and catalog("smollm2").supports_system


@pytest.mark.parametrize(
    ("source", "stops"),
    [
        ((CATALOG / "gemma.jinja").read_text(), ["<end_of_turn>"]),
        ((CATALOG / "llama2.jinja").read_text(), ["[INST]"]),  # "</s>" comes from eos_token: not listed
        ((CATALOG / "mistral.jinja").read_text(), ["[INST]"]),
        (QWEN, ["<|im_end|>"]),
        (LLAMA3, ["<|eot_id|>"]),
        (ZEPHYR, ["</s>", "<|user|>", "<|assistant|>"]),
        ("{{ messages[0].content }}", []),
    ],
)
def test_stop_words(source: str, stops: list[str]) -> None:
    assert ChatTemplate.compile(source).stop_words() == stops


# --- ChatML with tools ------------------------------------------------------------------------------------------


def test_chatml_without_tools() -> None:
    template = ChatTemplate.compile(QWEN)
    assert template.render(CONVERSATION[:2]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert template.render([{"role": "user", "content": "hi"}], tools=[]) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chatml_lists_tools_as_json_as_transformers_does() -> None:
    template = ChatTemplate.compile(QWEN)
    tool_json = (
        '{"type": "function", "function": {"name": "get_weather", "description": "Température <°C> & more", '
        '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}'
    )
    assert template.render(CONVERSATION[:2], tools=[WEATHER]) == (
        "<|im_start|>system\nBe brief.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{tool_json}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chatml_renders_tool_calls_and_results() -> None:
    template = ChatTemplate.compile(QWEN)
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "22°C", "tool_name": "get_weather"},
    ]
    rendered = template.render(messages, tools=[WEATHER])
    assert rendered.endswith(
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n22°C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert messages[1]["content"] == "" and "name" not in messages[2]  # the caller's dicts are not changed


def test_messages_work_with_item_and_attribute_access() -> None:
    source = (
        "{% for m in messages %}{% for c in m.tool_calls %}"
        "{{ c.function.name }}={{ c['function']['arguments'] | tojson }};{% endfor %}"
        "{{ m.name }}|{{ m.content }}{% endfor %}"
    )
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "ok", "tool_name": "f"},
    ]
    assert ChatTemplate.compile(source).render(messages) == 'f={"a": 1};|f|ok'


def test_supports_tools() -> None:
    assert ChatTemplate.compile(QWEN).supports_tools
    for name in ("gemma", "llama2", "mistral"):
        assert not catalog(name).supports_tools
    refuses = "{% if tools %}{{ raise_exception('no tools, sorry') }}{% endif %}{{ messages[0].content }}"
    assert not ChatTemplate.compile(refuses).supports_tools
    assert not fallback_template().supports_tools


def test_supports_system() -> None:
    for name in ("gemma", "llama2", "mistral"):
        assert catalog(name).supports_system
    assert ChatTemplate.compile(QWEN).supports_system
    assert ChatTemplate.compile(CHATML_GENERIC).supports_system  # never says 'system', handles it all the same
    assert not ChatTemplate.compile(GEMMA1).supports_system  # says 'system' only to refuse it
    drops = "{% for m in messages if m.role != 'system' %}{{ m.content }}{% endfor %}"
    assert not ChatTemplate.compile(drops).supports_system


def test_environment_matches_transformers() -> None:
    source = (
        "{{ strftime_now('%Y') | length }} {{ date_string }} {{ tools is none }} "
        "{{ {'b': 1, 'a': 'é'} | tojson(sort_keys=True) }} {{ [1, 2] | tojson(indent=1) }} "
        "{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %} "
        "{% generation %}kept{% endgeneration %}"
    )
    rendered = ChatTemplate.compile(source).render([], date_string="26 Jul 2024")
    assert rendered == '4 26 Jul 2024 True {"a": "é", "b": 1} [\n 1,\n 2\n] 01 kept'


# --- errors and the sandbox -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ bos_token }}\n{% for m in messages %}\n{% endfr %}", "template error at line 3, column 4: "),
        ("x {{ a b }}", "template error at line 1, column 8: expected token 'end of print statement', got 'b'"),
        ("ab\n  {{ a $ }}", "template error at line 2, column 8: unexpected char '$'"),
        ("{% for m in messages %}\n{{ m }}\n", "template error at line "),
        ("\n\n{{ x | nosuchfilter }}", "template error at line 3: No filter named 'nosuchfilter'"),
    ],
)
def test_syntax_errors_say_where(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        ChatTemplate.compile(source)
    assert caught.value.message.startswith(message)
    assert caught.value.status_code == 400


def test_raise_exception_carries_the_templates_message() -> None:
    template = ChatTemplate.compile(GEMMA1)
    with pytest.raises(TemplateError, match="^the chat template rejected the messages: System role not supported$"):
        template.render(CONVERSATION)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{% set x = none %}\n{{ x.a.b }}", "template error at line 2: 'None' has no attribute 'a'"),
        ("{{ messages[0].content + 1 }}", "template error at line 1: TypeError: can only concatenate str"),
        ("{{ messages[0].nothing.deeper }}", "template error at line 1: 'dict object' has no attribute 'nothing'"),
    ],
)
def test_render_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        ChatTemplate.compile(source).render([{"role": "user", "content": "hi"}])
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ raise_exception.__globals__.keys() }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ messages.append({'role': 'user'}) }}",
        "{% set _ = messages[0].update({'content': 'changed'}) %}",
    ],
)
def test_sandbox_blocks_escapes_and_mutation(source: str) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(TemplateError, match="unsafe"):
        ChatTemplate.compile(source).render(messages)
    assert messages == [{"role": "user", "content": "hi"}]


def test_sandbox_renders_nothing_for_a_private_attribute() -> None:
    assert ChatTemplate.compile("[{{ ''.__class__ }}]").render([]) == "[]"


# --- the fallback -----------------------------------------------------------------------------------------------


def test_fallback_is_plain_text() -> None:
    template = fallback_template()
    assert template.render(CONVERSATION) == "Be brief.\n\nhi\n\nhello\n\nhow are you?"
    assert template.render(CONVERSATION[1:2]) == "hi"
    assert template.render(CONVERSATION[1:2], add_generation_prompt=False) == "hi"
    late_system = [{"role": "user", "content": "hi"}, {"role": "system", "content": "S"}]
    assert template.render(late_system) == "S\n\nhi"
    assert template.stop_words() == []
    assert template.supports_system


# --- Go templates -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ .Prompt }}",
        "[INST] {{ .System }} {{ .Prompt }} [/INST]",
        "{{- if .System }}<|system|>{{ .System }}{{ end }}{{ .Prompt }}",
        "{{ range .Messages }}{{ .Content }}{{ end }}",
        '{{ if eq .Role "user" }}U{{ end }}',
        "{{/* a comment */}}{{ $.Prompt }}",
    ],
)
def test_go_templates_are_recognised(source: str) -> None:
    assert looks_like_go_template(source)


@pytest.mark.parametrize(
    "source",
    [
        (CATALOG / "gemma.jinja").read_text(),
        (CATALOG / "llama2.jinja").read_text(),
        (CATALOG / "mistral.jinja").read_text(),
        QWEN,
        "plain text",
        "{{ messages[0]['content'] }}",
        "{{ '{{ .Prompt }}' }}",  # Jinja that writes a Go template out
    ],
)
def test_jinja_templates_are_not_go(source: str) -> None:
    assert not looks_like_go_template(source)


def test_jinja_loops_and_sequences_are_bounded() -> None:
    """A template is code from whoever published the model: one that would spin or fill the memory fails."""
    for source, words in (
        ("{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}", "loop steps"),
        ("{{ 'x' * 100000000 }}", "longer than"),
        ("{{ [1] * 100000000 }}", "longer than"),
        ("{{ 2 ** 100000 }}", "power"),
    ):
        with pytest.raises(TemplateError, match=words):
            ChatTemplate.compile(source).render([{"role": "user", "content": "hi"}])
    assert ChatTemplate.compile("{% for m in messages %}{{ m.content * 2 }}{% endfor %}").render(
        [{"role": "user", "content": "ab"}]) == "abab"
