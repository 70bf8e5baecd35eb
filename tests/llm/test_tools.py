"""Tool calls out of model output: Hermes/Qwen, Mistral (both styles), Llama 3.x, and what is left alone."""

from __future__ import annotations

import pytest

from localllm.llm.tools import ToolCallStream, parse_tool_calls

NAMES = {"get_weather", "get_time"}
QWEN_TEMPLATE = "... <tools></tools> ... <tool_call>\n{...}\n</tool_call><|im_end|>"
MISTRAL_TEMPLATE = "[AVAILABLE_TOOLS] ... [TOOL_CALLS] ... [INST]"
LLAMA_TEMPLATE = "<|start_header_id|>ipython<|end_header_id|> ... <|python_tag|>"


def weather(city: str = "Paris") -> dict:
    return {"function": {"name": "get_weather", "arguments": {"city": city}}}


def time_in(tz: str = "CET") -> dict:
    return {"function": {"name": "get_time", "arguments": {"tz": tz}}}


def parse(text: str, template: str | None = None, names: set[str] = NAMES) -> tuple[str, list[dict]]:
    """The whole output at once (``template``: what the model was taught, which must not matter)."""
    return parse_tool_calls(text, tool_names=names)


# --- Hermes / Qwen ----------------------------------------------------------------------------------------------


def test_hermes_single_call() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert parse(text, QWEN_TEMPLATE) == ("", [weather()])


def test_hermes_several_calls_with_text_around() -> None:
    text = (
        "Let me look that up.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>'
    )
    assert parse(text, QWEN_TEMPLATE) == ("Let me look that up.", [weather(), time_in()])


def test_hermes_block_left_open_at_the_end() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
    assert parse(text, QWEN_TEMPLATE) == ("", [weather("Oslo")])


def test_hermes_bad_blocks_stay_content_next_to_good_ones() -> None:
    bad = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>'  # a brace short
    unknown = '<tool_call>\n{"name": "rm_rf", "arguments": {"path": "/"}}\n</tool_call>'
    good = '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>'
    assert parse(f"{bad}\n{unknown}\n{good}", QWEN_TEMPLATE) == (f"{bad}\n{unknown}", [time_in()])


# --- Mistral ----------------------------------------------------------------------------------------------------


def test_mistral_list() -> None:
    text = (
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {"tz": "CET"}}]'
    )
    assert parse(text, MISTRAL_TEMPLATE) == ("", [weather(), time_in()])


def test_mistral_name_args_style() -> None:
    text = '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"tz": "CET"}'
    assert parse(text, MISTRAL_TEMPLATE) == ("", [weather(), time_in()])
    with_id = '[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}'
    assert parse(with_id, MISTRAL_TEMPLATE) == ("", [weather()])


def test_mistral_list_with_an_unknown_tool_stays_content() -> None:
    text = '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "rm_rf", "arguments": {}}]'
    assert parse(text, MISTRAL_TEMPLATE) == (text, [])


# --- Llama 3.x --------------------------------------------------------------------------------------------------


def test_llama_python_tag() -> None:
    text = 'Checking.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>'
    assert parse(text, LLAMA_TEMPLATE) == ("Checking.", [weather()])


def test_llama_builtin_python_call_is_not_json() -> None:
    text = '<|python_tag|>brave_search.call(query="weather in Paris")'
    assert parse(text, LLAMA_TEMPLATE, set()) == (text, [])


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '  {"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}\n',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '```\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
    ],
)
def test_bare_json_that_is_the_whole_output(text: str) -> None:
    assert parse(text, LLAMA_TEMPLATE) == ("", [weather()])


def test_bare_json_list_and_semicolons() -> None:
    listed = (
        '[{"name": "get_weather", "parameters": {"city": "Paris"}}, '
        '{"function": {"name": "get_time", "arguments": {"tz": "CET"}}}]'
    )
    assert parse(listed, LLAMA_TEMPLATE) == ("", [weather(), time_in()])
    separated = (
        '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {"tz": "CET"}}'
    )
    assert parse(separated, LLAMA_TEMPLATE) == ("", [weather(), time_in()])


# --- across formats ---------------------------------------------------------------------------------------------


def test_arguments_written_as_a_json_string() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n</tool_call>'
    assert parse(text, QWEN_TEMPLATE) == ("", [weather()])
    functionary = (
        '[{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}]'
    )
    assert parse(functionary) == ("", [weather()])
    assert parse('[TOOL_CALLS] [{"name": "get_time", "arguments": ""}]') == (
        "",
        [{"function": {"name": "get_time", "arguments": {}}}],
    )
    not_an_object = '<tool_call>\n{"name": "get_weather", "arguments": "[1, 2]"}\n</tool_call>'
    assert parse(not_an_object) == (not_an_object, [])


def test_the_template_is_a_preference_not_a_requirement() -> None:
    hermes = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert parse(hermes, MISTRAL_TEMPLATE) == ("", [weather()])
    assert parse(hermes, None) == ("", [weather()])
    assert parse('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', QWEN_TEMPLATE) == (
        "",
        [weather()],
    )


def test_unknown_tool_names_are_ignored_and_no_names_means_any() -> None:
    text = '{"name": "launch_rockets", "arguments": {"count": 3}}'
    assert parse(text) == (text, [])
    assert parse(text, names=set()) == ("", [{"function": {"name": "launch_rockets", "arguments": {"count": 3}}}])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Paris is sunny today.",
        "In JavaScript, write `if (x) { return {a: 1}; }` to return an object.",
        'You can call it like {"name": "get_weather", "arguments": {"city": "Paris"}} in your code.',
        '{"name": "get_weather", "city": "Paris"}',  # no arguments key: an answer that has a "name"
        '{"name": "get_weather", "arguments": {"city": "Paris"}, "confidence": 0.9}',  # keys a call does not have
        '{"name": "Alice", "age": 31}',
        '[{"name": "Alice"}, {"name": "Bob"}]',
        "[1, 2, 3]",
        "The <tool_call> tag is how Qwen marks calls.",
        "[TOOL_CALLS] I would call a tool here.",
    ],
)
def test_prose_and_ordinary_json_are_untouched(text: str) -> None:
    assert parse(text) == (text, [])
    assert parse(text, names=set()) == (text, [])  # not even when any tool name would do


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}} trailing\n</tool_call>',
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}',
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Par',
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"',
        '{"name": "get_weather", "parameters": {"city": "Paris"}',
        '```json\n{"name": "get_weather", "parameters": {"city": "Paris"}\n```',
        '{"name": "get_weather", "arguments": "{not json"}',
        "[" * 100_000,
    ],
)
def test_malformed_json_is_returned_as_content(text: str) -> None:
    assert parse(text) == (text, [])


# --- as the output streams ----------------------------------------------------------------------------------------


def streamed(text: str, size: int, names: set[str] = NAMES) -> list[str | dict]:
    """The stream's events for ``text`` arriving ``size`` characters at a time, with finish()'s at the end
    (marked by the string "<finish>")."""
    stream = ToolCallStream(names)
    events: list[str | dict] = []
    for start in range(0, len(text), size):
        events += stream.feed(text[start:start + size])
    return [*events, "<finish>", *stream.finish()]


WHOLE_OUTPUTS = [
    "Paris is sunny today.",
    "Let me look that up.\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>\nthen <tool_call>\n'
    '{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call> done',
    '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"tz": "CET"}',
    'Checking.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>',
    '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
    '[{"name": "get_weather", "parameters": {"city": "Paris"}}]',
    '{"name": "Alice", "age": 31} is a person.',
    "In JavaScript, write `if (x) { return {a: 1}; }` to return an object.",
    "The <tool_call> tag is how Qwen marks calls.",
    "a < b and [x] < [TOOL",
]


@pytest.mark.parametrize("text", WHOLE_OUTPUTS)
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_any_chunking_gives_what_the_whole_output_gives(text: str, size: int) -> None:
    content, calls = parse(text)
    events = [event for event in streamed(text, size) if event != "<finish>"]
    assert [e for e in events if isinstance(e, dict)] == calls
    assert "".join(e for e in events if isinstance(e, str)) == (content if calls else text.strip())


def test_content_streams_before_the_call_and_the_call_comes_at_its_closing_tag() -> None:
    text = ('Let me check the weather for you.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
            '\n</tool_call>\n')
    events = streamed(text, 3)
    first_call = next(i for i, e in enumerate(events) if isinstance(e, dict))
    assert events.index("<finish>") > first_call  # the call went out before the output ended
    assert "".join(e for e in events[:first_call] if isinstance(e, str)) == "Let me check the weather for you."
    assert events[first_call] == weather()


def test_text_that_may_start_a_marker_is_held_only_until_it_cannot() -> None:
    stream = ToolCallStream(NAMES)
    assert stream.feed("Use <") == ["Use"]  # " <" could begin <tool_call>
    assert stream.feed("b> here") == [" <b> here"]
    assert stream.feed(" [TOOL") == []
    assert stream.feed("S] and more") == [" [TOOLS] and more"]


@pytest.mark.parametrize("cut", ["", "<", "</tool", "</tool_call"])
def test_a_call_cut_inside_its_closing_tag_is_still_a_call(cut: str) -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' + cut
    assert parse(text) == ("", [weather()])
    assert [e for e in streamed(text, 4) if e != "<finish>"] == [weather()]


def test_an_unmarked_call_is_only_known_at_the_end() -> None:
    events = streamed('{"name": "get_weather", "arguments": {"city": "Paris"}}', 5)
    assert events == ["<finish>", weather()]
    answer = streamed('{"name": "Alice", "age": 31} and more text', 5)
    assert answer.index("<finish>") > 0 and "".join(e for e in answer if e != "<finish>") == (
        '{"name": "Alice", "age": 31} and more text'
    )
