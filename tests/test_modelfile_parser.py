"""Reading Modelfiles as Ollama users write them, and the errors that name the line."""

from __future__ import annotations

import pytest

from localllm.modelfile.parameters import typed_parameters
from localllm.modelfile.parser import ModelfileError, parse_modelfile

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
        {"role": "assistant", "content": 'yes, "it" is'},
        {"role": "system", "content": "be brief"},
    ]
    assert modelfile.requires == "0.6.0"
    assert typed_parameters(modelfile.parameters) == {
        "temperature": 0.4, "num_ctx": 2048, "stop": ["<end_of_turn>", "<start_of_turn>"], "seed": 42,
    }


def test_windows_line_endings_and_a_value_block_on_one_line() -> None:
    modelfile = parse_modelfile("\ufeffFROM x\r\nSYSTEM \"\"\"one line\"\"\"\r\n# done\r\n")
    assert modelfile.system == "one line"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("PARAMETER temperature 1\n", None, "no FROM"),
        ("FROM x\nFORM y\n", 2, "unknown instruction 'FORM'"),
        ("FROM x\n\nSYSTEM \"\"\"never\nclosed\n", 3, "never closed"),
        ('FROM x\nSYSTEM "half\n', 2, "never closed"),
        ("FROM x\nMESSAGE tool hi\n", 2, "MESSAGE role must be one of system, user, assistant"),
        ("FROM x\nPARAMETER\n", 2, "PARAMETER needs a name and a value"),
        ("FROM x\nSYSTEM\n", 2, "SYSTEM needs a value"),
        ("FROM x\nFROM y\n", 2, "a second FROM"),
        ('FROM x\nSYSTEM """a""" trailing\n', 2, "unexpected text after the closing quotes"),
    ],
)
def test_errors_name_the_line_and_what_was_expected(text: str, line: int | None, words: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse_modelfile(text)
    assert caught.value.line == line
    assert words in caught.value.message
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
