"""Grammars for structured output: integer ranges are exact, strict schemas refuse what no grammar keeps."""

from __future__ import annotations

import json
import random
import re

import pytest

from localllm.errors import InvalidRequest
from localllm.llm.grammar import integer_range, schema_grammar


def _as_regex(alternatives: list[str]) -> re.Pattern[str]:
    """The GBNF alternatives use only literals and digit classes, so they read as a regex once unquoted."""
    parts = [a.replace('"', "").replace(" ", "") for a in alternatives]
    return re.compile("^(" + "|".join(p.replace("-", r"\-", 1) if p.startswith("-") else p for p in parts) + ")$")


@pytest.mark.parametrize(
    ("low", "high"),
    [(0, 8), (5, 5), (-20, 13), (3, 1003), (17, 4321), (-999, -7), (0, 0), (100, 199), (9, 10), (-5, None),
     (None, 42), (7, None)],
)
def test_integer_ranges_match_exactly_their_integers(low: int | None, high: int | None) -> None:
    pattern = _as_regex(integer_range(low, high))
    for x in range(-1500, 5000):
        inside = (low is None or x >= low) and (high is None or x <= high)
        assert bool(pattern.match(str(x))) == inside, x
    assert not pattern.match("007") and not pattern.match("-0")


def test_random_wide_ranges() -> None:
    rng = random.Random(5)
    for _ in range(200):
        low = rng.randint(-10**7, 10**7)
        high = low + rng.randint(0, 10**7)
        pattern = _as_regex(integer_range(low, high))
        for x in [low - 1, low, high, high + 1, *(rng.randint(low - 99, high + 99) for _ in range(40))]:
            assert bool(pattern.match(str(x))) == (low <= x <= high), (low, high, x)


def test_bounded_integers_in_a_schema_become_range_rules() -> None:
    grammar = schema_grammar({"type": "object", "properties": {"legs": {"type": "integer", "minimum": 0,
                                                                        "exclusiveMaximum": 9}}})
    assert "[0-8]" in grammar
    with pytest.raises(InvalidRequest, match="no integer"):
        schema_grammar({"type": "integer", "minimum": 5, "maximum": 4})


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    {"type": "object", "properties": {"x": {"type": "number", "maximum": 3}}},
    {"type": "object", "properties": {"x": {"anyOf": [{"type": "integer", "multipleOf": 2}]}}},
])
def test_strict_refuses_unenforceable_keywords_and_loose_allows_them(schema: dict) -> None:
    with pytest.raises(InvalidRequest, match="strict"):
        schema_grammar(schema, strict=True)
    assert "root ::=" in schema_grammar(schema)


# --- what llama.cpp's grammar engine accepts, byte by byte ---------------------------------------------
# Gemma's vocabulary has a token for every byte (<0x00>..<0xFF>): fed one by one, they let llama.cpp's own
# grammar sampler say exactly which texts a grammar accepts.


@pytest.fixture(scope="module")
def byte_vocab(gemma_path):
    """Gemma's vocabulary (no weights) and its byte token ids, by byte value."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gemma_path).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    byte_ids = {}
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        text = llama_cpp.llama_vocab_get_text(vocab, token) or b""
        if len(text) == 6 and text.startswith(b"<0x") and text.endswith(b">"):
            byte_ids[int(text[3:5], 16)] = token
            if len(byte_ids) == 256:
                break
    yield vocab, byte_ids
    llama_cpp.llama_model_free(model)


def accepts(byte_vocab, grammar: str, text: str) -> bool:
    """Whether the grammar matches all of ``text`` (end of generation allowed right after it)."""
    import llama_cpp
    import numpy as np

    from localllm.llm.sampling import _grammar_logits

    vocab, byte_ids = byte_vocab
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    assert sampler, "the grammar does not compile"
    eos = llama_cpp.llama_vocab_eos(vocab)
    logits = np.zeros(max(byte_ids.values()) + 1 + eos, dtype=np.float32)

    def allowed(token: int) -> bool:
        return bool(np.isfinite(_grammar_logits(sampler, np.array([token]), logits))[0])

    try:
        for byte in text.encode():
            if not allowed(byte_ids[byte]):
                return False
            llama_cpp.llama_sampler_accept(sampler, byte_ids[byte])
        return allowed(eos)
    finally:
        llama_cpp.llama_sampler_free(sampler)


NAME = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@pytest.mark.parametrize("grammar", ["json", "schema"])
def test_strings_hold_only_what_json_allows_and_whitespace_is_bounded(byte_vocab, grammar: str) -> None:
    """The converter's own string rule took any character but '"' and '\\': gemma3:270m wrote raw newlines
    into strings. Now strings take JSON's characters and escapes, whitespace is a space or a newline and an
    indent of at most 20, and nothing follows the top-level value."""
    from localllm.llm.grammar import JSON_GBNF

    source = JSON_GBNF if grammar == "json" else schema_grammar(NAME, strict=True)
    good = ['{"name": "a\\nb"}', '{"name":"tab\\there \\"quoted\\" back\\\\slash \\/"}', '{"name": "é😀"}',
            '{"name": "\\ud83d\\ude00 \\u00e9"}', '{\n  "name": "x"\n}', '{\n\t\t"name" : "x"}',
            '{"name": "' + " " * 30 + '"}', '{ "name": "x"\n' + " " * 20 + "}"]
    bad = ['{"name": "a\nb"}', '{"name": "a\tb"}', '{"name": "a\x01b"}', '{"name": "a\x7fb"}',
           '{"name": "\\ud83d"}', '{"name": "\\ude00"}', '{"name": "\\x41"}', '{"name": "\\q"}',
           '{\n\n"name": "x"}', '{\n' + " " * 21 + '"name": "x"}', '{"name": "x"} ', '{"name": "x"}\n']
    for text in good:
        assert accepts(byte_vocab, source, text), text
        json.loads(text)
    for text in bad:
        assert not accepts(byte_vocab, source, text), text


@pytest.mark.parametrize("schema", [
    {"type": "array", "items": {"type": "integer"}},
    {"anyOf": [{"type": "string"}, {"type": "boolean"}]},
    {"type": ["integer", "null"]},
    {"type": "integer", "minimum": 3, "maximum": 40},
    {"type": "object"},
], ids=["array", "anyOf", "type list", "integer range", "any object"])
def test_no_schema_allows_whitespace_after_its_top_level_value(byte_vocab, schema: dict) -> None:
    grammar = schema_grammar(schema)
    value = {"array": "[1, 2]", "anyOf": '"x"', "type list": "null", "integer range": "17",
             "any object": '{"a": [true]}'}
    text = next(text for text in value.values() if _valid(text, schema))
    assert accepts(byte_vocab, grammar, text)
    for tail in (" ", "\n", "\n  "):
        assert not accepts(byte_vocab, grammar, text + tail)
    if "," in text:  # inside the value, a newline and an indent are fine
        assert accepts(byte_vocab, grammar, text.replace(",", ",\n   "))


def _valid(text: str, schema: dict) -> bool:
    import jsonschema

    return jsonschema.Draft202012Validator(schema).is_valid(json.loads(text))


def test_literals_are_written_as_json_writes_them(byte_vocab) -> None:
    """Property names, const and enum values with newlines, quotes and backslashes: the converter's
    escaping made "a\\nb" a raw newline (and a quote broke the grammar)."""
    values = ["a\nb", 'say "hi"', "back\\slash", "é", "tab\t"]
    grammar = schema_grammar({"type": "object", "properties": {'we"ird\\key': {"enum": values}},
                              "required": ['we"ird\\key']})
    for value in values:
        text = json.dumps({'we"ird\\key': value})
        assert accepts(byte_vocab, grammar, text), text
    assert not accepts(byte_vocab, grammar, '{"we\\"ird\\\\key": "a\nb"}')


PATTERNS = ["^[a-c\"\\\\]{1,3}x?$", "ab|c\"", "^(ab)*c?$", "^[^b]+$", "^.b\\.$", "^a[\\\\-\\]]*$"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_pattern_matches_exactly_the_json_text_of_its_strings(byte_vocab, pattern: str) -> None:
    """Each string (JSON-encoded as json.dumps writes it) is accepted exactly when Python's re finds the
    pattern in it, quotes and backslashes included (a pattern is searched: unanchored, text may surround
    the match)."""
    grammar = schema_grammar({"type": "string", "pattern": pattern}, strict=True)
    rng = random.Random(pattern)
    alphabet = ["a", "b", "c", "x", '"', "\\", " ", "é", ".", "-", "]"]
    samples = {"", "ab", 'c"', "abab", "abc", "aaa", 'a"\\', "xb.", "é"}
    samples |= {"".join(rng.choices(alphabet, k=rng.randint(0, 5))) for _ in range(150)}
    for sample in sorted(samples):
        expected = re.search(pattern, sample) is not None
        assert accepts(byte_vocab, grammar, json.dumps(sample, ensure_ascii=False)) == expected, sample


def test_patterns_a_grammar_cannot_keep_are_refused_when_strict_and_loosened_otherwise() -> None:
    for pattern in ("\\bword", "^(?=a)a$", "^(a)\\1$", "^a$|^b$"):
        with pytest.raises(InvalidRequest, match="'pattern'"):
            schema_grammar({"type": "string", "pattern": pattern}, strict=True)
        assert "string ::=" in schema_grammar({"type": "string", "pattern": pattern})  # any string
    with pytest.raises(InvalidRequest, match="not a regular expression"):
        schema_grammar({"type": "string", "pattern": "(unclosed"}, strict=True)


@pytest.mark.parametrize(("schema", "keyword"), [
    ({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 5}}}, "multipleOf"),
    ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 4}, "pattern"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]}, "required"),
])
def test_strict_refusals_name_the_keyword(schema: dict, keyword: str) -> None:
    with pytest.raises(InvalidRequest, match=f"'{keyword}'"):
        schema_grammar(schema, strict=True)
    assert "root ::=" in schema_grammar(schema)


def test_a_forced_tool_call_grammar_is_bounded_as_well() -> None:
    """tool_choice "required" builds its grammar through schema_grammar: one call or a list of them, each
    ending at its last character, with the same whitespace and string rules."""
    from localllm.llm.grammar import STRING_CHAR_RULE, WS_RULE
    from localllm.server.openai_convert import tool_plan
    from localllm.server.openai_schemas import ChatCompletionRequest

    tool = {"type": "function", "function": {"name": "f", "parameters": NAME}}
    plan = tool_plan(ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], tools=[tool],
                                           tool_choice="required"))
    rules = dict(line.split(" ::= ", 1) for line in plan.grammar.splitlines())
    assert rules["space"] == WS_RULE and rules["char"] == STRING_CHAR_RULE
    assert all(rules[name.strip()].endswith(('"}"', '"]"')) for name in rules["root"].split("|"))
