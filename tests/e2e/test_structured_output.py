"""Structured output always parses: sampled answers under schemas, on two real models, through a real daemon.

Each answer that ends with ``stop`` parses and validates; one cut short by its token budget (``length``) is
a prefix of some JSON text. Whitespace outside strings never runs past one newline and an indent of 20, and
nothing follows the top-level value, so a model cannot pad until its budget runs out.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import pytest

from conftest import Daemon, daemon_with, pull_events

GEMMA = "gemma3:270m"
SMOLLM2 = "smollm2:135m"
MAX_WHITESPACE = 21  # a newline and an indent of 20, as llama.cpp's json.gbnf allows


# --- a JSON prefix checker ----------------------------------------------------------------------------
class JsonPrefix:
    """A character-level reader of JSON text (RFC 8259) that accepts any prefix of a valid text.

    ``feed`` returns False at the first character no JSON text could have there. It also measures the
    longest run of whitespace outside strings."""

    def __init__(self) -> None:
        self.stack: list[str] = []  # open "{" and "["
        self.state = "value"
        self.in_key = False
        self.rest = ""  # the letters still due in true, false or null
        self.hex_left = 0
        self.whitespace = self.longest_whitespace = 0

    @property
    def complete(self) -> bool:
        return not self.stack and self.state in ("after", "zero", "int", "frac", "exp")

    def feed(self, char: str) -> bool:
        outside_strings = self.state not in ("string", "escape", "hex")
        self.whitespace = self.whitespace + 1 if outside_strings and char in " \t\n\r" else 0
        self.longest_whitespace = max(self.longest_whitespace, self.whitespace)
        return getattr(self, f"_{self.state}")(char)

    def _value(self, char: str) -> bool:
        if char in " \t\n\r":
            return True
        if char in "{[":
            self.stack.append(char)
            self.state = "first_key" if char == "{" else "first_item"
        elif char == '"':
            self.state, self.in_key = "string", False
        elif char == "-":
            self.state = "minus"
        elif char == "0":
            self.state = "zero"
        elif char in "123456789":
            self.state = "int"
        elif char in "tfn":
            self.state, self.rest = "literal", {"t": "rue", "f": "alse", "n": "ull"}[char]
        else:
            return False
        return True

    def _first_item(self, char: str) -> bool:
        return self._close(char) if char == "]" else self._value(char)

    def _first_key(self, char: str) -> bool:
        return self._close(char) if char == "}" else self._key(char)

    def _key(self, char: str) -> bool:
        if char in " \t\n\r":
            return True
        if char == '"':
            self.state, self.in_key = "string", True
            return True
        return False

    def _colon(self, char: str) -> bool:
        if char in " \t\n\r":
            return True
        if char == ":":
            self.state = "value"
            return True
        return False

    def _after(self, char: str) -> bool:
        if char in " \t\n\r":
            return True
        if not self.stack:
            return False
        if char == ",":
            self.state = "key" if self.stack[-1] == "{" else "value"
            return True
        return self._close(char)

    def _close(self, char: str) -> bool:
        if not self.stack or char != {"{": "}", "[": "]"}[self.stack[-1]]:
            return False
        self.stack.pop()
        self.state = "after"
        return True

    def _string(self, char: str) -> bool:
        if char == '"':
            self.state = "colon" if self.in_key else "after"
        elif char == "\\":
            self.state = "escape"
        elif ord(char) < 0x20:
            return False
        return True

    def _escape(self, char: str) -> bool:
        if char in '"\\/bfnrt':
            self.state = "string"
        elif char == "u":
            self.state, self.hex_left = "hex", 4
        else:
            return False
        return True

    def _hex(self, char: str) -> bool:
        if char not in "0123456789abcdefABCDEF":
            return False
        self.hex_left -= 1
        if not self.hex_left:
            self.state = "string"
        return True

    def _literal(self, char: str) -> bool:
        if char != self.rest[0]:
            return False
        self.rest = self.rest[1:]
        if not self.rest:
            self.state = "after"
        return True

    # numbers: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?; where one may end, another character
    # ends it and is read as what follows a value
    def _minus(self, char: str) -> bool:
        if char not in "0123456789":
            return False
        self.state = "zero" if char == "0" else "int"
        return True

    def _zero(self, char: str) -> bool:
        return self._number_goes_on(char, digits=False)

    def _int(self, char: str) -> bool:
        return self._number_goes_on(char, digits=True)

    def _number_goes_on(self, char: str, *, digits: bool) -> bool:
        if digits and char in "0123456789":
            return True
        if char == ".":
            self.state = "dot"
            return True
        if char in "eE":
            self.state = "e"
            return True
        self.state = "after"
        return self._after(char)

    def _dot(self, char: str) -> bool:
        if char not in "0123456789":
            return False
        self.state = "frac"
        return True

    def _frac(self, char: str) -> bool:
        if char in "0123456789":
            return True
        if char in "eE":
            self.state = "e"
            return True
        self.state = "after"
        return self._after(char)

    def _e(self, char: str) -> bool:
        if char in "+-":
            self.state = "e_sign"
            return True
        return self._e_sign(char)

    def _e_sign(self, char: str) -> bool:
        if char not in "0123456789":
            return False
        self.state = "exp"
        return True

    def _exp(self, char: str) -> bool:
        if char in "0123456789":
            return True
        self.state = "after"
        return self._after(char)


def read_json_prefix(text: str) -> JsonPrefix | None:
    """The reader after all of ``text``, or None if no JSON text starts with it."""
    reader = JsonPrefix()
    return reader if all(reader.feed(char) for char in text) else None


def is_json_prefix(text: str) -> bool:
    return read_json_prefix(text) is not None


VALID_DOCUMENTS = [
    {"a": [1, -2.5e-3, True, None, {"b": "x\ny\"z\\"}], "é": "😀\u0001", "": {}},
    [[], [[0]], "", 0, -0.0, 1e10, 12345678901234567890],
    "just a string",
    -12.75e+8,
    None,
]


def test_the_prefix_checker_accepts_every_prefix_of_valid_json() -> None:
    rng = random.Random(1)
    for document in VALID_DOCUMENTS:
        for text in (json.dumps(document), json.dumps(document, indent=2), json.dumps(document, ensure_ascii=False),
                     json.dumps(document, separators=(",", ":")), " \n" + json.dumps(document, indent="\t") + "\n"):
            for end in range(len(text) + 1):
                assert is_json_prefix(text[:end]), repr(text[:end])
            reader = read_json_prefix(text)
            assert reader is not None and reader.complete
        for _ in range(200):  # anything json.loads takes is a (complete) prefix
            text = json.dumps(document)
            cut = text[: rng.randint(0, len(text))]
            try:
                json.loads(cut)
            except ValueError:
                continue
            assert read_json_prefix(cut).complete, cut


@pytest.mark.parametrize("text", [
    "{,", "[1,]", '{"a":1,}', '{"a" 1', '{"a"}', "{1:2}", '"a\nb"', '"\\q"', '"\\u12G4"', "01", "-a", "1.e5",
    "1e+-", "tru e", "nul1", "[1 2", '{"a":1}}', "{} {}", "]", "[}", "+1", ".5", "'a'", "{\"a\":tru}",
])
def test_the_prefix_checker_rejects_what_no_json_text_starts_with(text: str) -> None:
    assert not is_json_prefix(text)
    with pytest.raises(ValueError):
        json.loads(text)


def test_the_prefix_checker_measures_whitespace_outside_strings() -> None:
    assert read_json_prefix('{\n    "a": "      "}').longest_whitespace == 5
    reader = read_json_prefix('{"a": 1}')
    assert reader.complete and reader.longest_whitespace == 1
    assert not read_json_prefix('{"a": 1').complete


# --- the daemon and the models ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module, with the embedded gemma3:270m pulled (smollm2 is pulled by its tests)."""
    yield from daemon_with(tmp_path_factory, GEMMA)


@pytest.fixture
def model(request: pytest.FixtureRequest, served: Daemon) -> str:
    name = request.param
    if name == SMOLLM2:  # the embedded default model: its package is part of every install
        assert pull_events(served, SMOLLM2)[-1] == {"status": "success"}
    return name


# --- sampled answers -------------------------------------------------------------------------------------
SCHEMAS: dict[str, dict[str, Any] | None] = {
    "flat": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "alive": {"type": "boolean"},
                       "mood": {"enum": ["happy", "sad", "calm"]}},
        "required": ["name", "age", "alive", "mood"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "author": {"type": "object",
                       "properties": {"first": {"type": "string"}, "last": {"type": "string"},
                                      "born": {"type": "integer", "minimum": 1000, "maximum": 2025}},
                       "required": ["first", "last", "born"]},
        },
        "required": ["title", "author"],
    },
    "list": {
        "type": "object",
        "properties": {"fruits": {"type": "array", "items": {"type": "string"}, "minItems": 2}},
        "required": ["fruits"],
    },
    "short": {  # maxLength, a negated class (a '"' in it must come escaped), digits in a fixed shape
        "type": "object",
        "properties": {"nickname": {"type": "string", "maxLength": 8},
                       "motto": {"type": "string", "pattern": "^[^0-9]+$"},
                       "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2,4}$"}},
        "required": ["nickname", "motto", "code"],
    },
    "json": None,  # format "json": any object
}
PROMPTS = {
    "flat": "Describe a fictional person as JSON: name, age, alive or not, and mood.",
    "nested": "Give a famous book as JSON: its title and its author (first name, last name, year born).",
    "list": "List some fruits as JSON.",
    "short": "Invent a nickname, a motto and a product code for a shop, as JSON.",
    "json": "Describe today's weather as a JSON object.",
}
BUDGETS = (16, 32, 48, 64)
# Samples per schema (about 100 answers in all, so the suite stays within a few minutes): Gemma's
# 262k-token vocabulary makes its grammar checks the slower part. Set LOCALLLM_STRUCTURED_SAMPLES to
# sample more (a multiplier: 2 gives the ~200 of a thorough run).
SAMPLES = {GEMMA: 7, SMOLLM2: 11}


def ask(client: httpx.Client, model: str, schema_name: str, seed: int, temperature: float,
        budget: int) -> tuple[str, str]:
    """(text, finish reason) of one answer: schemas through /v1 strict json_schema, "json" through /api/chat."""
    messages = [{"role": "user", "content": PROMPTS[schema_name]}]
    schema = SCHEMAS[schema_name]
    if schema is None:
        response = client.post("/api/chat", json={
            "model": model, "messages": messages, "format": "json", "stream": False,
            "options": {"temperature": temperature, "seed": seed, "num_predict": budget}})
        assert response.status_code == 200, response.text
        body = response.json()
        return body["message"]["content"], body["done_reason"]
    response = client.post("/v1/chat/completions", json={
        "model": model, "messages": messages, "temperature": temperature, "seed": seed, "max_tokens": budget,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": schema_name, "schema": schema, "strict": True}}})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return choice["message"]["content"], choice["finish_reason"]


def problem(schema_name: str, text: str, reason: str) -> str | None:
    """What is wrong with one answer, if anything."""
    reader = read_json_prefix(text)
    if reader is None:
        return "not even a prefix of JSON"
    if reader.longest_whitespace > MAX_WHITESPACE:
        return f"a run of {reader.longest_whitespace} whitespace characters"
    if reason == "length":
        return None
    if reason != "stop":
        return f"finished with {reason!r}"
    if text != text.strip():
        return "whitespace around the value"
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"does not parse: {exc}"
    schema = SCHEMAS[schema_name]
    if schema is None:
        return None if isinstance(value, dict) else "not an object"
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    return None if error is None else f"does not validate: {error.message}"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("model", [GEMMA, SMOLLM2], indirect=True)
def test_sampled_structured_answers_parse_and_validate_or_are_cut_short_prefixes(served: Daemon,
                                                                                  model: str) -> None:
    """Seeded samples at temperature 0.8-1.0 (and one greedy answer per schema), four at a time."""
    scale = float(os.environ.get("LOCALLLM_STRUCTURED_SAMPLES", "1"))
    cases = [(name, seed, 0.8 + 0.2 * (seed % 2), BUDGETS[seed % len(BUDGETS)])
             for name in SCHEMAS for seed in range(1, 1 + max(1, round(SAMPLES[model] * scale)))]
    cases += [(name, 0, 0.0, 64) for name in SCHEMAS]
    with served.client(timeout=300) as client, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda case: ask(client, model, *case), cases))
    failures = [(case, text, reason, why) for case, (text, reason) in zip(cases, answers, strict=True)
                if (why := problem(case[0], text, reason))]
    assert not failures, "\n".join(f"{case} {reason}: {why}: {text!r}" for case, text, reason, why in failures[:5])
    reasons = [reason for _text, reason in answers]
    assert reasons.count("stop") >= len(cases) // 4, reasons  # most of them complete
    assert "length" in reasons  # and the cut-short ones were checked too


# --- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "keyword", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "strict": True, "schema": {
        "type": "object", "properties": {"n": {"type": "integer", "multipleOf": 5}}}}}},
     "multipleOf", "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "c", "strict": True, "schema": {
        "type": "string", "pattern": "^[a-z]+$", "maxLength": 3}}}},
     "pattern", "response_format.json_schema.schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {"ids": {"type": "array", "uniqueItems": True}}}}}]},
     "uniqueItems", "tools[0].function.parameters"),
])
def test_a_strict_schema_no_grammar_can_keep_is_a_400_naming_the_keyword(served: Daemon, change: dict,
                                                                        keyword: str, param: str) -> None:
    body = {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **change}
    with served.client() as client:
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert f"'{keyword}'" in error["message"] and error["param"] == param, error
