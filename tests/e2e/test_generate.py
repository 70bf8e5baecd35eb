"""Generation, chat and embeddings through a real daemon and real llama.cpp."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import jsonschema
import ollama
import pytest

from conftest import Daemon, pull_events
from fakehub import FakeHub
from ggufs import write_tiny_llama

GEMMA = "gemma3:270m"
GREEDY = {"temperature": 0, "num_predict": 12}


def post(daemon: Daemon, path: str, body: dict) -> httpx.Response:
    with daemon.client() as client:
        return client.post(path, json=body)


def generate(daemon: Daemon, **body) -> dict:
    response = post(daemon, "/api/generate", {"model": GEMMA, "stream": False, **body})
    assert response.status_code == 200, response.text
    return response.json()


def chat(daemon: Daemon, messages: list[dict], **body) -> dict:
    response = post(daemon, "/api/chat", {"model": GEMMA, "messages": messages, "stream": False, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_generate_returns_ollamas_fields(gemma_daemon: Daemon) -> None:
    result = generate(gemma_daemon, prompt="The capital of France is", options=GREEDY)
    assert result["model"] == GEMMA and result["done"] is True and result["created_at"].endswith("Z")
    assert result["response"].strip()
    assert result["done_reason"] == "length" and result["eval_count"] == 12
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(result[key], int) and result[key] >= 0
    assert result["prompt_eval_count"] > 3 and result["total_duration"] >= result["eval_duration"] > 0
    assert isinstance(result["context"], list) and len(result["context"]) == result["prompt_eval_count"] + 12


def test_streaming_chunks_add_up(gemma_daemon: Daemon) -> None:
    body = {"model": GEMMA, "prompt": "Once upon a time", "options": GREEDY}
    with gemma_daemon.client() as client, client.stream("POST", "/api/generate", json=body) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        chunks = [json.loads(line) for line in response.iter_lines() if line]
    assert all(not c["done"] for c in chunks[:-1]) and chunks[-1]["done"]
    assert len(chunks) > 3
    streamed = "".join(c["response"] for c in chunks)
    assert streamed == generate(gemma_daemon, prompt="Once upon a time", options=GREEDY)["response"]


def test_chat_renders_the_gemma_template(gemma_daemon: Daemon) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    chatted = chat(gemma_daemon, messages, options=GREEDY)
    expected_prompt = (
        "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
    )
    raw = generate(gemma_daemon, prompt=expected_prompt, raw=True, options=GREEDY)
    assert chatted["message"]["role"] == "assistant"
    assert chatted["message"]["content"] == raw["response"]
    assert chatted["prompt_eval_count"] == raw["prompt_eval_count"]
    assert "context" not in raw  # raw mode returns no context


def test_seed_makes_sampling_reproducible(gemma_daemon: Daemon) -> None:
    options = {"temperature": 1.0, "seed": 1234, "num_predict": 20}
    first = generate(gemma_daemon, prompt="Tell me a story", options=options)["response"]
    second = generate(gemma_daemon, prompt="Tell me a story", options=options)["response"]
    other = generate(gemma_daemon, prompt="Tell me a story", options={**options, "seed": 99})["response"]
    assert first == second
    assert first != other


def test_stop_words_end_the_answer(gemma_daemon: Daemon) -> None:
    prompt = "Counting: 1, 2, 3, 4,"
    free = generate(gemma_daemon, prompt=prompt, raw=True, options={"temperature": 0, "num_predict": 12})
    assert " 6" in free["response"]
    stopped = generate(gemma_daemon, prompt=prompt, raw=True,
                       options={"temperature": 0, "num_predict": 12, "stop": [" 6"]})
    assert stopped["done_reason"] == "stop"
    assert stopped["response"] == free["response"].split(" 6")[0]


def test_json_mode_and_schema_output_parse(gemma_daemon: Daemon) -> None:
    as_json = generate(gemma_daemon, prompt="Q: What is 2+2? Answer in JSON.\nA:", raw=True, format="json",
                       options={"temperature": 0, "num_predict": 200})
    assert as_json["done_reason"] == "stop"
    assert isinstance(json.loads(as_json["response"]), dict)
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    answer = chat(gemma_daemon, [{"role": "user", "content": "Largest city in Japan?"}], format=schema,
                  options={"temperature": 0, "num_predict": 100})
    jsonschema.validate(json.loads(answer["message"]["content"]), schema)


def test_context_round_trip(gemma_daemon: Daemon) -> None:
    first = generate(gemma_daemon, prompt="My name is Ada.", options=GREEDY)
    second = generate(gemma_daemon, prompt="What is my name?", context=first["context"], options=GREEDY)
    assert second["context"][: len(first["context"])] == first["context"]
    assert second["prompt_eval_count"] > len(first["context"])


def test_keep_alive_load_and_unload(gemma_daemon: Daemon) -> None:
    client = ollama.Client(host=gemma_daemon.base_url)
    loaded = generate(gemma_daemon, prompt="", keep_alive=-1)
    assert loaded["done_reason"] == "load" and loaded["response"] == ""
    running = client.ps().models
    assert [m.model for m in running] == [GEMMA]
    assert running[0].expires_at.year > 2100 and running[0].context_length == 4096
    unloaded = generate(gemma_daemon, prompt="", keep_alive=0)
    assert unloaded["done_reason"] == "unload"
    assert client.ps().models == []
    generate(gemma_daemon, prompt="Hi", options={"num_predict": 2}, keep_alive="1s")
    assert [m.model for m in client.ps().models] == [GEMMA]
    deadline = time.monotonic() + 10
    while client.ps().models and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.ps().models == []


def test_num_ctx_reloads_only_for_a_larger_context(gemma_daemon: Daemon) -> None:
    def contexts() -> list[int]:
        return [m["context_length"] for m in httpx.get(gemma_daemon.base_url + "/api/ps").json()["models"]]

    generate(gemma_daemon, prompt="Hi", options={"num_predict": 1, "num_ctx": 6144})
    assert contexts() == [6144]
    generate(gemma_daemon, prompt="Hi", options={"num_predict": 1, "num_ctx": 1024})
    assert contexts() == [6144]  # the loaded, larger context serves it
    response = post(gemma_daemon, "/api/generate", {"model": GEMMA, "prompt": "word " * 400, "stream": False,
                                                     "options": {"num_ctx": 256}})
    assert response.status_code == 400 and "context" in response.json()["error"]  # yet the request's limit holds


def _cancelled_counts(daemon: Daemon) -> list[int]:
    return [int(line.rsplit("after ", 1)[1].split()[0])
            for line in daemon.log.read_text().splitlines() if "generation cancelled after" in line]


def _wait_for_cancel(daemon: Daemon, before: int) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        counts = _cancelled_counts(daemon)
        if len(counts) > before:
            return counts[-1]
        time.sleep(0.05)
    raise AssertionError("the generation was not cancelled")


def test_a_disconnect_stops_the_decode(gemma_daemon: Daemon) -> None:
    before = len(_cancelled_counts(gemma_daemon))
    body = {"model": GEMMA, "prompt": "Write a very long story.", "options": {"num_predict": 4000, "temperature": 0.7}}
    with gemma_daemon.client() as client, client.stream("POST", "/api/generate", json=body) as response:
        for n, _ in enumerate(response.iter_lines()):
            if n == 3:
                break
    assert _wait_for_cancel(gemma_daemon, before) < 40  # stopped within a token or so of the disconnect
    assert generate(gemma_daemon, prompt="Hello", options={"num_predict": 3})["eval_count"] == 3


def test_a_disconnect_stops_an_unstreamed_generation_too(gemma_daemon: Daemon) -> None:
    before = len(_cancelled_counts(gemma_daemon))
    body = {"model": GEMMA, "prompt": "Write a very long story.", "stream": False,
            "options": {"num_predict": 4000, "temperature": 0.7}}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=gemma_daemon.base_url, timeout=1.0) as client:
        client.post("/api/generate", json=body)
    assert _wait_for_cancel(gemma_daemon, before) < 4000
    assert generate(gemma_daemon, prompt="Hello", options={"num_predict": 3})["eval_count"] == 3


def test_embeddings(gemma_daemon: Daemon) -> None:
    client = ollama.Client(host=gemma_daemon.base_url)
    result = client.embed(model=GEMMA, input=["The cat sat.", "The cat sat.", "Stock prices fell."])
    first, same, other = result.embeddings
    assert len(first) == 640 and first == same and first != other
    assert abs(sum(v * v for v in first) - 1.0) < 1e-6
    short = client.embed(model=GEMMA, input="The cat sat.", dimensions=64).embeddings[0]
    assert len(short) == 64 and abs(sum(v * v for v in short) - 1.0) < 1e-6
    legacy = client.embeddings(model=GEMMA, prompt="The cat sat.").embedding
    assert len(legacy) == 640
    assert result.prompt_eval_count > 6
    too_long = post(gemma_daemon, "/api/embed", {"model": GEMMA, "input": "word " * 5000, "truncate": False,
                                                  "options": {"num_ctx": 512}})
    assert too_long.status_code == 400 and "truncate" in too_long.json()["error"]


def test_embedding_and_chat_instances_live_side_by_side(gemma_daemon: Daemon) -> None:
    generate(gemma_daemon, prompt="Hi", options={"num_predict": 1})
    post(gemma_daemon, "/api/embed", {"model": GEMMA, "input": "a RAG client embeds"})
    again = generate(gemma_daemon, prompt="Hi", options={"num_predict": 1})
    assert again["load_duration"] == 0  # the chat instance was not unloaded for the embedding one


def test_official_client_generate_and_chat(gemma_daemon: Daemon) -> None:
    client = ollama.Client(host=gemma_daemon.base_url)
    result = client.generate(model=GEMMA, prompt="Hello", options=GREEDY)
    assert result.done and result.response and result.eval_count == 12
    pieces = list(client.generate(model=GEMMA, prompt="Hello", options=GREEDY, stream=True))
    assert "".join(p.response for p in pieces) == result.response
    reply = client.chat(model=GEMMA, messages=[{"role": "user", "content": "Hi"}], options=GREEDY)
    assert reply.message.role == "assistant" and reply.message.content
    streamed = client.chat(model=GEMMA, messages=[{"role": "user", "content": "Hi"}], options=GREEDY, stream=True)
    assert "".join(part.message.content for part in streamed) == reply.message.content


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
        ("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "not found"),
        ("/api/generate", {"model": GEMMA, "prompt": "x", "options": {"num_predict": -5}}, 400, "num_predict"),
        ("/api/generate", {"model": GEMMA, "prompt": "x", "options": {"num_ctx": 10**9}}, 400, "num_ctx"),
        ("/api/generate", {"model": GEMMA, "prompt": "x", "options": {"temperature": "hot"}}, 400, "temperature"),
        ("/api/generate", {"model": GEMMA, "prompt": "x", "options": "fast"}, 400, "options"),
        ("/api/generate", {"model": GEMMA, "prompt": 5}, 400, "prompt"),
        ("/api/generate", {"model": GEMMA, "prompt": "x", "format": "yaml"}, 400, "format"),
        ("/api/generate", {"model": GEMMA, "prompt": "x", "images": ["aGk="]}, 400, "does not support images"),
        ("/api/generate", {"model": GEMMA, "prompt": "x", "keep_alive": "soon"}, 400, "keep_alive"),
        ("/api/chat", {"model": GEMMA, "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
        ("/api/generate", {"model": GEMMA, "prompt": "x", "context": [-6047089]}, 400, "vocabulary"),
        ("/api/generate", {"model": GEMMA, "prompt": "x", "context": [10**9]}, 400, "vocabulary"),
        ("/api/generate", {"model": GEMMA, "prompt": "word " * 400, "options": {"num_ctx": 128}}, 400, "context"),
        ("/api/generate", {"model": GEMMA, "prompt": "x", "suffix": "y"}, 400, "does not support insert"),
        ("/api/chat", {"model": GEMMA, "messages": [{"role": "user", "content": "x"}],
                       "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
         400, "does not support tools"),
    ],
)
def test_bad_input_is_a_clear_error(gemma_daemon: Daemon, path: str, body: dict, status: int, words: str) -> None:
    for stream in (False, True):
        response = post(gemma_daemon, path, {**body, "stream": stream})
        assert response.status_code == status, response.text
        assert words in response.json()["error"]


TOOLS_TEMPLATE = """
{%- if tools %}<|system|>Call a tool by answering {"name": ..., "arguments": {...}}.
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|assistant|>
{%- for call in message.tool_calls %}
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
{%- endfor %}
{% elif message.role == 'tool' %}<|tool|>{{ message.content }}
{% else %}<|{{ message.role }}|>{{ message.content }}
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|assistant|>{% endif %}
"""

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def tool_daemon(daemon: Daemon, hub: FakeHub, tmp_path: Path) -> Daemon:
    path = write_tiny_llama(tmp_path / "tools.gguf", chat_template=TOOLS_TEMPLATE, seed=3, context_length=2048)
    hub.add_file("acme/tiny-tools", "tiny-tools.Q8_0.gguf", path)
    assert pull_events(daemon, "hf.co/acme/tiny-tools")[-1] == {"status": "success"}
    return daemon


def test_tool_calls_come_back_as_objects_and_round_trip(tool_daemon: Daemon) -> None:
    client = ollama.Client(host=tool_daemon.base_url)
    call_schema = {
        "type": "object",
        "properties": {
            "name": {"const": "get_weather"},
            "arguments": {
                "type": "object",
                "properties": {"city": {"type": "string", "pattern": "^[a-z]{1,6}$"}},
                "required": ["city"],
            },
        },
        "required": ["name", "arguments"],
    }
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    reply = client.chat(model="hf.co/acme/tiny-tools", messages=messages, tools=[WEATHER], format=call_schema,
                        options={"temperature": 0, "num_predict": 300, "num_ctx": 2048})
    calls = reply.message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments, dict) and "city" in calls[0].function.arguments
    assert reply.message.content == ""

    messages += [reply.message, {"role": "tool", "content": '{"temp": 21}', "tool_name": "get_weather"}]
    follow_up = client.chat(model="hf.co/acme/tiny-tools", messages=messages, tools=[WEATHER],
                            options={"temperature": 0, "num_predict": 5, "num_ctx": 2048})
    assert follow_up.done and follow_up.prompt_eval_count > reply.prompt_eval_count
