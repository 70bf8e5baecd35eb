"""Reading Modelfiles as Ollama reads them, the errors that name the line, and show --modelfile round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from localllm.errors import InvalidRequest
from localllm.modelfile import render_modelfile
from localllm.modelfile.parameters import typed_parameters
from localllm.modelfile.parser import Modelfile, ModelfileError, parse_modelfile, read_value
from localllm.modelfile.render import ollama_quote, quote_value, reads_back

FULL = '''# A persona, written the way Ollama's docs show it
FROM gemma3:270m
parameter temperature 0.4
PARAMETER num_ctx 2048
PARAMETER stop "<end_of_turn>"
PARAMETER stop <start_of_turn>
PARAMETER   seed   42
Template """{{ if .System }}<start_of_turn>user
{{ .System }}{{ end }}{{ .Prompt }}<end_of_turn>
<start_of_turn>model
{{ .Response }}<end_of_turn>
"""
SYSTEM You are Mario from Super Mario Bros, acting as an assistant.
ADAPTER ./lora.gguf
LICENSE """MIT License

Copyright (c) someone"""
license "Apache-2.0"
MESSAGE user Is Toronto in Canada?
MESSAGE assistant "yes, \\"it\\" is"
message SYSTEM """be brief"""
REQUIRES 0.6.0
'''


def test_every_instruction_in_any_case_and_order() -> None:
    modelfile = parse_modelfile(FULL)
    assert modelfile.model_from == "gemma3:270m"
    assert [(p.name, p.value, p.line) for p in modelfile.parameters] == [
        ("temperature", "0.4", 3), ("num_ctx", "2048", 4), ("stop", "<end_of_turn>", 5),
        ("stop", "<start_of_turn>", 6), ("seed", "42", 7),
    ]
    assert modelfile.template == (
        "{{ if .System }}<start_of_turn>user\n{{ .System }}{{ end }}{{ .Prompt }}<end_of_turn>\n"
        "<start_of_turn>model\n{{ .Response }}<end_of_turn>\n"
    )
    assert modelfile.system == "You are Mario from Super Mario Bros, acting as an assistant."
    assert modelfile.adapters == ["./lora.gguf"] and modelfile.adapter_lines == [14]
    assert modelfile.licenses == ["MIT License\n\nCopyright (c) someone", "Apache-2.0"]
    assert modelfile.messages == [
        {"role": "user", "content": "Is Toronto in Canada?"},
        {"role": "assistant", "content": 'yes, \\"it\\" is'},  # no escapes, as in Ollama: the text as written
        {"role": "system", "content": "be brief"},
    ]
    assert modelfile.requires == "0.6.0"
    assert typed_parameters(modelfile.parameters) == {
        "temperature": 0.4, "num_ctx": 2048, "stop": ["<end_of_turn>", "<start_of_turn>"], "seed": 42,
    }


def test_windows_line_endings_and_a_value_block_on_one_line() -> None:
    modelfile = parse_modelfile("\ufeffFROM x\r\nSYSTEM \"\"\"one line\"\"\"\r\n# done\r\n")
    assert modelfile.system == "one line"
    modelfile = parse_modelfile('FROM x\r\nSYSTEM "two\r\nlines"\r\nPARAMETER seed 1\r\n')
    assert modelfile.system == "two\nlines" and modelfile.parameters[0].line == 4
    assert parse_modelfile("FROM x\rSYSTEM hi\r").system == "hi"  # a lone carriage return ends a line too


def test_a_double_quoted_value_may_span_lines_for_every_instruction() -> None:
    modelfile = parse_modelfile(
        'FROM x\n'
        'TEMPLATE "{{ .System }}\n'
        '{{ .Prompt }}"\n'
        'SYSTEM "You are terse.\n'
        '\n'
        'You answer in one line."\n'
        'LICENSE "MIT\n'
        'Copyright (c) someone"\n'
        'MESSAGE user "two\n'
        'lines"\n'
        'PARAMETER stop "\n'
        '\n'
        '"\n'
        'PARAMETER seed 7\n'
    )
    assert modelfile.template == "{{ .System }}\n{{ .Prompt }}"
    assert modelfile.system == "You are terse.\n\nYou answer in one line."
    assert modelfile.licenses == ["MIT\nCopyright (c) someone"]
    assert modelfile.messages == [{"role": "user", "content": "two\nlines"}]
    assert [(p.name, p.value, p.line) for p in modelfile.parameters] == [("stop", "\n\n", 11), ("seed", "7", 14)]


def test_triple_quoted_blocks_bare_values_and_comments() -> None:
    modelfile = parse_modelfile(
        "  # an indented comment\n"
        "FROM   x  \n"
        'SYSTEM """one "line" block"""\n'
        '# a comment between\n'
        'TEMPLATE """\n'
        '{{ .Prompt }}\n'
        '# not a comment: inside the block\n'
        '"""   \n'
        "MESSAGE user  a bare value,\tinner spaces kept   \n"
        "MESSAGE assistant ends # with a hash, not a comment\n"
        'LICENSE """  spaces inside the quotes are kept  """\n'
    )
    assert modelfile.model_from == "x"
    assert modelfile.system == 'one "line" block'
    assert modelfile.template == "\n{{ .Prompt }}\n# not a comment: inside the block\n"
    assert modelfile.messages == [{"role": "user", "content": "a bare value,\tinner spaces kept"},
                                  {"role": "assistant", "content": "ends # with a hash, not a comment"}]
    assert modelfile.licenses == ["  spaces inside the quotes are kept  "]


def test_text_after_a_closing_quote_continues_the_value_as_in_ollama() -> None:
    modelfile = parse_modelfile('FROM x\nSYSTEM "a" b\nc"\nTEMPLATE """x""" y\nz"""\nPARAMETER seed 1\n')
    assert modelfile.system == 'a" b\nc'
    assert modelfile.template == 'x""" y\nz'
    assert modelfile.parameters[0].line == 6
    # a line of the value that ends with the quote ends the value there
    modelfile = parse_modelfile('FROM x\nSYSTEM "say "hi"\nMESSAGE user ok"\n')
    assert modelfile.system == 'say "hi' and modelfile.messages == [{"role": "user", "content": 'ok"'}]


def test_explicitly_quoted_empty_values() -> None:
    modelfile = parse_modelfile('FROM x\nSYSTEM ""\nTEMPLATE """"""\nLICENSE ""\nMESSAGE user ""\n'
                                'PARAMETER stop ""\n')
    assert modelfile.system == "" and modelfile.template == "" and modelfile.licenses == [""]
    assert modelfile.messages == [{"role": "user", "content": ""}]
    assert modelfile.parameters[0].value == ""


OLLAMA_SHOW = '''# Modelfile generated by "ollama show"
# To build a new Modelfile based on this, replace FROM with:
# FROM llama3:latest

FROM /root/.ollama/models/blobs/sha256-00e1317cbf74d901080d7100f57580ba8dd8de57203072dc6f668324ba545f29
TEMPLATE "{{ if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>

{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

{{ .Response }}<|eot_id|>"
PARAMETER num_keep 24
PARAMETER stop <|start_header_id|>
PARAMETER stop <|end_header_id|>
PARAMETER stop <|eot_id|>
LICENSE "META LLAMA 3 COMMUNITY LICENSE AGREEMENT
Meta Llama 3 Version Release Date: April 18, 2024
..."
'''


def test_what_ollama_show_modelfile_writes_parses() -> None:
    modelfile = parse_modelfile(OLLAMA_SHOW)
    assert modelfile.model_from.startswith("/root/.ollama/models/blobs/sha256-00e1317c")
    assert modelfile.from_line == 5
    assert modelfile.template == (
        "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
        "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>"
    )
    assert [(p.name, p.value, p.line) for p in modelfile.parameters] == [
        ("num_keep", "24", 13), ("stop", "<|start_header_id|>", 14), ("stop", "<|end_header_id|>", 15),
        ("stop", "<|eot_id|>", 16)]
    assert modelfile.licenses == ["META LLAMA 3 COMMUNITY LICENSE AGREEMENT\n"
                                  "Meta Llama 3 Version Release Date: April 18, 2024\n..."]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("PARAMETER temperature 1\n", None, "no FROM"),
        ("FROM x\nFORM y\n", 2, "unknown instruction 'FORM'"),
        ("FROM x\nSYSTEM: hi\n", 2, "unknown instruction 'SYSTEM:'"),
        ("FROM x\nRENDERER qwen3\n", 2, "unknown instruction 'RENDERER' (localllm does not support Ollama's"),
        ("FROM x\n\nSYSTEM \"\"\"never\nclosed\n", 3, "the quoted value of SYSTEM opened here is never closed"),
        ('FROM x\nSYSTEM "half\n', 2, "the quoted value of SYSTEM opened here is never closed"),
        ('FROM x\n# c\nTEMPLATE "a\n\nb\n', 3, "the quoted value of TEMPLATE opened here is never closed"),
        ('FROM x\nPARAMETER stop "a\nb\n', 2, "the quoted value of PARAMETER stop opened here is never closed"),
        ('FROM x\nMESSAGE user """a\n', 2, "the quoted value of MESSAGE user opened here is never closed"),
        ('FROM x\nSYSTEM """a""" trailing\n', 2, "'trailing' after its closing \"\"\" continues the value"),
        ('FROM x\nSYSTEM ""x\n', 2, "never closed"),
        ("FROM x\nMESSAGE tool hi\n", 2, "MESSAGE role must be one of system, user, assistant (got 'tool')"),
        ("FROM x\nMESSAGE user:hi\n", 2, "MESSAGE role must be one of system, user, assistant (got 'user:hi')"),
        ("FROM x\nMESSAGE\n", 2, "(got 'nothing')"),
        ("FROM x\nMESSAGE user\n", 2, "MESSAGE user needs a value"),
        ("FROM x\nPARAMETER\n", 2, "PARAMETER needs a name and a value"),
        ("FROM x\nPARAMETER temperature\n", 2, "PARAMETER needs a name and a value"),
        ("FROM x\nPARAMETER temp-x 1\n", 2, "PARAMETER needs a name and a value"),
        ("FROM x\nSYSTEM\n", 2, "SYSTEM needs a value"),
        ("FROM x\nSYSTEM   \t\nTEMPLATE t\n", 2, "SYSTEM needs a value"),
        ('FROM ""\n', 1, "FROM needs a value"),
        ('FROM x\nADAPTER """"""\n', 2, "ADAPTER needs a value"),
        ("FROM x\nFROM y\n", 2, "a second FROM"),
        # line numbers stay right after values over several lines
        ('FROM x\nTEMPLATE """a\nb\nc"""\nFORM y\n', 5, "unknown instruction 'FORM'"),
        ('FROM x\nSYSTEM "a\n\nb"\nFROM y\n', 5, "a second FROM (the first is on line 1)"),
        ('FROM x\nTEMPLATE """a"""\nb"""\n', 3, "unknown instruction 'b\"\"\"'"),  # the block ended on line 2
    ],
)
def test_errors_name_the_line_and_what_was_expected(text: str, line: int | None, words: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse_modelfile(text)
    assert isinstance(caught.value, InvalidRequest)  # a 400 from /api/create
    assert caught.value.line == line
    assert words in caught.value.message, caught.value.message
    if line:
        assert caught.value.message.startswith(f"Modelfile line {line}:")


def test_parameters_are_checked_against_the_known_options() -> None:
    with pytest.raises(ModelfileError) as caught:
        typed_parameters(parse_modelfile("FROM x\nPARAMETER temprature 0.5\n").parameters)
    assert caught.value.line == 2
    assert "unknown parameter 'temprature' (did you mean 'temperature'?)" in caught.value.message
    assert "temperature" in caught.value.message and "num_ctx" in caught.value.message  # the valid list
    for bad, words in (("num_ctx lots", "whole number"), ("temperature warm", "a number"),
                       ("use_mmap maybe", "true or false"), ("top_p 7", "less than or equal to 1")):
        with pytest.raises(ModelfileError) as caught:
            typed_parameters(parse_modelfile(f"FROM x\n\nPARAMETER {bad}\n").parameters)
        assert caught.value.line == 3 and words in caught.value.message, caught.value.message
    assert typed_parameters({"stop": ["a", "b"], "num_predict": 5, "temperature": 1, "use_mmap": "false"}) == {
        "stop": ["a", "b"], "num_predict": 5, "temperature": 1.0, "use_mmap": False}
    assert typed_parameters({"steps": "4"}, extra={"steps": int}) == {"steps": 4}
    # what 2023's Modelfiles set and llama.cpp now reads from the GGUF: accepted, dropped
    assert typed_parameters(parse_modelfile("FROM x\nPARAMETER num_gqa 8\nPARAMETER rope_frequency_base 1e6\n"
                                            "PARAMETER top_k 20\n").parameters) == {"top_k": 20}


# --- writing values back: Ollama's quote(), and another form where it would not read back -----------------
# Go's unicode.IsSpace, which Ollama's strings.TrimSpace trims: Python's isspace() less \x1c-\x1f
GO_SPACE = "".join(char for char in map(chr, range(0x3001)) if char.isspace() and char not in "\x1c\x1d\x1e\x1f")


def carriable(value: str) -> bool:
    """Whether some Modelfile holds ``value``, stated apart from the renderer: no ``\\r\\n`` (read as an end
    of line), and no end of line after text that ends (spaces aside) with \"\"\" (every quote closes there)."""
    if "\r\n" in value:
        return False
    return not any(char in "\r\n" and value[:index].rstrip(GO_SPACE).endswith('"""')
                   for index, char in enumerate(value))


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain words", "plain words"),
        ("two\nlines", '"two\nlines"'),
        (' say "hi"', '""" say "hi""""'),
        ('two\nlines with a "quote"', '"""two\nlines with a "quote""""'),
        ('line "one"\nline two', '"""line "one"\nline two"""'),
        ('a """ b\nc', '"""a """ b\nc"""'),
        (' spaced """ ', '""" spaced """ """'),
        ("<end_of_turn>", "<end_of_turn>"),
        # where Ollama's quote() would not read back
        ('"x"', '""x""'),  # bare, "x" would lose its quotes
        ('"', '"""""""'),
        ('""starts with two', '"""""starts with two"""'),
        ("", '""'),
        ("\ttabbed", '"\ttabbed"'),  # bare, the tab would be trimmed
        ("carriage return\r", '"carriage return\r"'),  # bare, \r would end the line
    ],
)
def test_values_are_written_as_ollama_does_or_in_a_form_that_reads_back(value: str, written: str) -> None:
    assert quote_value(value) == written
    assert read_value(written) == value


def test_a_value_no_modelfile_can_hold_is_written_as_ollama_writes_it() -> None:
    value = 'a line that ends in """\nand more'
    assert not carriable(value)
    assert quote_value(value) == ollama_quote(value) == f'"""{value}"""'
    assert not reads_back(quote_value(value), value)


VALUE_PARTS = ['"', '"""', "\n", "\r", "\r\n", " ", "\t", "#", "\\", "\\n", "a", "Word", "é", "日本", "🦙",
               "\xa0", "\x0b", "\x1c", "{{ .Prompt }}", "MESSAGE user x", "FROM y", "SYSTEM "]
values = st.one_of(st.lists(st.sampled_from(VALUE_PARTS), max_size=12).map("".join), st.text(max_size=30))


@settings(max_examples=400, deadline=None)
@given(values)
def test_every_value_that_can_be_held_is_written_so_it_reads_back(value: str) -> None:
    written = quote_value(value)
    assert reads_back(written, value) == carriable(value)
    if reads_back(ollama_quote(value), value):
        assert written == ollama_quote(value)  # Ollama's own output whenever it is right


def reread(**fields: object) -> Modelfile:
    return parse_modelfile(render_modelfile(display_name="a:latest", **fields))


@settings(max_examples=150, deadline=None)
@given(template=values, system=values, stops=st.lists(values, max_size=3), content=st.lists(values, max_size=3),
       licenses=st.lists(values, max_size=2), model_from=values, adapter=values)
def test_a_rendered_modelfile_parses_back_to_the_same_model(
    template: str, system: str, stops: list[str], content: list[str], licenses: list[str], model_from: str,
    adapter: str,
) -> None:
    assume(all(map(carriable, [template, system, *stops, *content, *licenses, model_from, adapter])))
    assume(model_from and adapter)  # FROM and ADAPTER need a value
    messages = [{"role": ("user", "assistant")[index % 2], "content": text} for index, text in enumerate(content)]
    params = {"stop": stops, "temperature": 0.25, "num_ctx": 4096, "use_mmap": True}
    modelfile = reread(model_from=model_from, template=template or None, system=system or None, params=params,
                       licenses=licenses, adapters=[adapter], messages=messages)
    assert modelfile.model_from == model_from and modelfile.adapters == [adapter]
    assert modelfile.template == (template or None) and modelfile.system == (system or None)
    assert [(p.name, p.value) for p in modelfile.parameters] == [
        *(("stop", stop) for stop in stops), ("temperature", "0.25"), ("num_ctx", "4096"), ("use_mmap", "true")]
    assert modelfile.messages == messages and modelfile.licenses == licenses


CATALOG = sorted((ROOT / "localllm" / "store" / "catalog_data").glob("*.*"))


@pytest.mark.parametrize("path", CATALOG, ids=lambda path: path.name)
def test_the_catalog_templates_and_licenses_round_trip(path: Path) -> None:
    text = path.read_text()
    if path.suffix == ".jinja":
        modelfile = reread(model_from="m", template=text, system=None, params={}, licenses=[])
        assert modelfile.template == text
    else:
        assert reread(model_from="m", template=None, system=None, params={}, licenses=[text]).licenses == [text]


@pytest.mark.parametrize("path", sorted((ROOT / "modelfiles").glob("*.Modelfile")), ids=lambda path: path.stem)
def test_the_example_modelfiles_round_trip(path: Path) -> None:
    first = parse_modelfile(path.read_text())
    params: dict[str, list[str]] = {}
    for parameter in first.parameters:
        params.setdefault(parameter.name, []).append(parameter.value)
    again = reread(model_from=first.model_from, template=first.template, system=first.system, params=params,
                   licenses=first.licenses, messages=first.messages)
    assert (again.template, again.system, again.messages, again.licenses) == (
        first.template, first.system, first.messages, first.licenses)
    assert [(p.name, p.value) for p in again.parameters] == [(p.name, p.value) for p in first.parameters]


@pytest.mark.parametrize(
    "template",
    [
        '{{ raise_exception("no way") }}',
        '{%- set sep = "\n" -%}\n{{ sep.join(["a", "b"]) }}',
        '{{ if eq .Role "user" }}\nUSER: "{{ .Content }}"\n{{ end }}',  # an inner line ends with a quote
        '"quoted at both ends"',
        '   leading and trailing spaces with "quotes"   ',
        '{{ .Prompt }} """ {{ .Response }}\n',
    ],
)
def test_templates_with_quotes_round_trip(template: str) -> None:
    assert reread(model_from="m", template=template, system=None, params={}, licenses=[]).template == template
