"""The OpenAI-compatible API through the official ``openai`` client, against a real daemon and llama.cpp."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator

import jsonschema
import numpy as np
import openai
import pytest
from test_generate import TOOLS_TEMPLATE, WEATHER

from conftest import Daemon, pull_events
from fakehub import FakeHub
from ggufs import write_tiny_llama

GEMMA = "gemma3:270m"
TINY = "hf.co/acme/tiny-tools"
GREEDY = {"temperature": 0, "seed": 7}
HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "pattern": "^[a-z]{1,6}$"}},
    "required": ["city"],
    "additionalProperties": False,
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"]},
    },
}
WEATHER_STRICT = {**WEATHER, "function": {**WEATHER["function"], "parameters": CITY}}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon with the embedded gemma3:270m and a tiny tool-calling llama from a local Hub."""
    root = tmp_path_factory.mktemp("openai")
    with FakeHub() as hub:
        path = write_tiny_llama(root / "tools.gguf", chat_template=TOOLS_TEMPLATE, seed=3, context_length=2048)
        hub.add_file("acme/tiny-tools", "tiny-tools.Q8_0.gguf", path)
        server = Daemon(root / "home", hub.endpoint, {"HF_HOME": str(root / "hf")}).start()
        try:
            assert pull_events(server, GEMMA)[-1] == {"status": "success"}
            assert pull_events(server, TINY)[-1] == {"status": "success"}
            yield server
        finally:
            server.stop()


@pytest.fixture
def client(served: Daemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="unused", max_retries=0, timeout=120) as c:
        yield c


# --- chat --------------------------------------------------------------------------
def test_chat_completion_has_openais_shape(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=6, **GREEDY)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == GEMMA
    assert reply.created > time.time() - 60 and reply.system_fingerprint
    (choice,) = reply.choices
    assert choice.index == 0 and choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length" and choice.logprobs is None
    assert reply.usage.completion_tokens == 6 and reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 6
    big_seed = client.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=2, seed=2**62, user="u1")
    assert big_seed.choices[0].message.content  # llama.cpp's 32-bit seeds: the server folds larger ones


def test_streamed_chat_adds_up_to_the_whole_answer_and_ends_with_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=GEMMA, messages=HELLO, max_completion_tokens=10, **GREEDY)
    stream = client.chat.completions.create(model=GEMMA, messages=HELLO, max_completion_tokens=10, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert text == whole.choices[0].message.content


def test_stream_without_usage_asked_has_no_usage_chunk(served: Daemon) -> None:
    body = {"model": GEMMA, "messages": HELLO, "max_tokens": 3, "stream": True, **GREEDY}
    with served.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(e["choices"] and "usage" not in e for e in events)


def test_async_client_streams_and_answers(served: Daemon) -> None:
    async def main() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=f"{served.base_url}/v1", api_key="x", max_retries=0) as aclient:
            whole = await aclient.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=8, **GREEDY)
            stream = await aclient.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=8, stream=True,
                                                           **GREEDY)
            parts = [chunk.choices[0].delta.content or "" async for chunk in stream]
            return whole.choices[0].message.content, "".join(parts)

    whole, streamed = asyncio.run(main())
    assert whole and whole == streamed


def test_content_parts_and_developer_role_read_as_plain_messages(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model=GEMMA, max_tokens=6, **GREEDY,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"}],
    )
    parts = client.chat.completions.create(
        model=GEMMA, max_tokens=6, **GREEDY,
        messages=[{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                  {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}],
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens


def test_several_choices_are_reproducible_by_seed_and_differ(client: openai.OpenAI) -> None:
    def ask() -> list[str]:
        reply = client.chat.completions.create(model=GEMMA, messages=HELLO, n=3, max_tokens=12, seed=11,
                                               temperature=1.2)
        assert [c.index for c in reply.choices] == [0, 1, 2]
        assert reply.usage.completion_tokens == sum(1 for _ in reply.choices) * 12
        return [c.message.content for c in reply.choices]

    first = ask()
    assert ask() == first
    assert len(set(first)) > 1
    unseeded = client.chat.completions.create(model=GEMMA, messages=HELLO, n=3, max_tokens=6, temperature=1.2)
    assert [c.index for c in unseeded.choices] == [0, 1, 2]  # decoded side by side, answered in order
    assert 3 <= unseeded.usage.completion_tokens <= 18


def test_stop_sequences_cut_the_answer(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=16, **GREEDY)
    text = full.choices[0].message.content
    word = text.split()[2]
    for stop in (word, [word, "\u2603"]):
        cut = client.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=16, stop=stop, **GREEDY)
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].message.content == text[: text.index(word)]


def test_logprobs_and_top_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=5, logprobs=True,
                                           top_logprobs=3, **GREEDY)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == 5
    assert "".join(e.token for e in entries) == reply.choices[0].message.content
    for entry in entries:
        assert entry.logprob <= 0 and bytes(entry.bytes).decode() == entry.token
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.top_logprobs[0].token == entry.token and entry.logprob == pytest.approx(tops[0])
    bare = client.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=2, logprobs=True, **GREEDY)
    assert all(e.top_logprobs == [] for e in bare.choices[0].logprobs.content)


def test_logit_bias_forces_and_bans_tokens(client: openai.OpenAI, served: Daemon) -> None:
    forced = client.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=3, logprobs=True,
                                            logit_bias={"1000": 100}, **GREEDY)
    tokens = [e.token for e in forced.choices[0].logprobs.content]
    assert len(set(tokens)) == 1
    plain = client.chat.completions.create(model=GEMMA, messages=HELLO, max_tokens=3, logprobs=True, **GREEDY)
    assert [e.token for e in plain.choices[0].logprobs.content] != tokens

    prompt, greedy_id, greedy_text = _greedy_step(served, "Once upon a time")
    unbanned = client.completions.create(model=GEMMA, prompt=prompt, max_tokens=1, **GREEDY)
    banned = client.completions.create(model=GEMMA, prompt=prompt, max_tokens=1, logit_bias={str(greedy_id): -100},
                                       **GREEDY)
    assert unbanned.choices[0].text == greedy_text != banned.choices[0].text


def _greedy_step(served: Daemon, text: str) -> tuple[list[int], int, str]:
    """A prompt as token ids, the id of its greedy next token and that token's text (from the native API)."""
    with served.client() as http:
        native = http.post("/api/generate", json={"model": GEMMA, "prompt": text, "stream": False,
                                                  "options": {"num_predict": 1, "temperature": 0}}).json()
    return native["context"][:-1], native["context"][-1], native["response"]


def test_presence_and_frequency_penalties_change_a_repetitive_answer(client: openai.OpenAI) -> None:
    prompt = [{"role": "user", "content": "Repeat the word sea twenty times."}]
    plain = client.chat.completions.create(model=GEMMA, messages=prompt, max_tokens=40, **GREEDY)
    penalized = client.chat.completions.create(model=GEMMA, messages=prompt, max_tokens=40, frequency_penalty=2,
                                               presence_penalty=2, user="someone", **GREEDY)
    assert penalized.choices[0].message.content != plain.choices[0].message.content


def test_json_object_and_strict_schema_outputs_validate(client: openai.OpenAI) -> None:
    few_shot = [{"role": "user", "content": "Is water wet? Answer in JSON."},
                {"role": "assistant", "content": '{"answer": "yes"}'},
                {"role": "user", "content": "Is fire cold? Answer in JSON."}]
    reply = client.chat.completions.create(model=GEMMA, max_tokens=40, response_format={"type": "json_object"},
                                           messages=few_shot, **GREEDY)
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "legs": {"type": "integer", "minimum": 0, "maximum": 8},
            "color": {"enum": ["black", "white", "orange"]},
        },
        "required": ["name", "legs", "color"],
        "additionalProperties": False,
    }
    for seed in (1,):
        reply = client.chat.completions.create(
            model=GEMMA, max_tokens=80, temperature=1, seed=seed,
            messages=[{"role": "user", "content": "Describe a cat."}],
            response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": schema, "strict": True}},
        )
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


# --- tools -------------------------------------------------------------------------
def test_required_tool_call_round_trips_with_its_result(client: openai.OpenAI) -> None:
    messages: list = [{"role": "user", "content": "Weather in Paris?"}]
    reply = client.chat.completions.create(model=TINY, messages=messages, tools=[WEATHER_STRICT, TIME],
                                           tool_choice="required", parallel_tool_calls=False, max_tokens=200,
                                           **GREEDY)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    schema = {"get_weather": CITY, "get_time": TIME["function"]["parameters"]}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), schema)

    messages += [choice.message, {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    follow_up = client.chat.completions.create(model=TINY, messages=messages, tools=[WEATHER_STRICT, TIME],
                                               max_tokens=5, **GREEDY)
    assert follow_up.usage.prompt_tokens > reply.usage.prompt_tokens + 10  # the call and its result
    silent = client.chat.completions.create(model=TINY, messages=messages, tools=[WEATHER_STRICT, TIME],
                                            tool_choice="none", max_tokens=5, **GREEDY)
    assert silent.choices[0].message.tool_calls is None and silent.choices[0].finish_reason == "length"
    assert silent.usage.prompt_tokens < follow_up.usage.prompt_tokens  # "none" does not show the tools


def test_named_tool_choice_calls_that_tool_also_when_streamed(client: openai.OpenAI) -> None:
    args = {"model": TINY, "messages": [{"role": "user", "content": "What time is it?"}],
            "tools": [WEATHER_STRICT, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}},
            "max_tokens": 100, **GREEDY}
    reply = client.chat.completions.create(**args)
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_time" and json.loads(call.function.arguments)["zone"] in ("utc", "cet")
    chunks = list(client.chat.completions.create(**args, stream=True))
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    (streamed,) = deltas[0]
    assert streamed.index == 0 and streamed.function.name == "get_time"
    assert streamed.function.arguments == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_parallel_tool_calls_may_return_several(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "Weather and time?"}],
                                           tools=[WEATHER_STRICT, TIME], tool_choice="required", max_tokens=300,
                                           **GREEDY)
    calls = reply.choices[0].message.tool_calls
    assert calls and {c.function.name for c in calls} <= {"get_weather", "get_time"}
    assert len({c.id for c in calls}) == len(calls)


# --- completions -------------------------------------------------------------------
def test_completions_for_several_prompts_and_choices(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=GEMMA, prompt=["Once upon a time", "The sky is"], n=2, max_tokens=4,
                                      seed=3, temperature=1)
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason == "length" and c.text for c in reply.choices)
    assert reply.usage.completion_tokens == 16
    default = client.completions.create(model=GEMMA, prompt="Once upon a time", **GREEDY)
    assert default.usage.completion_tokens == 16  # OpenAI's default max_tokens


def test_completions_echo_logprobs_and_token_prompts(client: openai.OpenAI, served: Daemon) -> None:
    plain = client.completions.create(model=GEMMA, prompt="Once upon a time", max_tokens=5, logprobs=2, **GREEDY)
    choice = plain.choices[0]
    assert len(choice.logprobs.tokens) == 5 and "".join(choice.logprobs.tokens) == choice.text
    assert choice.logprobs.text_offset[0] == 0 and all(len(t) <= 2 for t in choice.logprobs.top_logprobs)
    echoed = client.completions.create(model=GEMMA, prompt="Once upon a time", max_tokens=5, echo=True, **GREEDY)
    assert echoed.choices[0].text == "Once upon a time" + choice.text
    tokens, _, first = _greedy_step(served, "Once upon a time")
    by_tokens = client.completions.create(model=GEMMA, prompt=tokens, max_tokens=5, **GREEDY)
    assert by_tokens.choices[0].text.startswith(first)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=GEMMA, prompt=[5, 10**8], max_tokens=1)
    assert caught.value.body["param"] == "prompt"


def test_echo_with_logprobs_scores_the_prompt(client: openai.OpenAI, served: Daemon) -> None:
    tokens, greedy_id, greedy_text = _greedy_step(served, "The capital of France is")
    generated = client.completions.create(model=GEMMA, prompt=tokens, max_tokens=1, logprobs=1, **GREEDY)
    scored = client.completions.create(model=GEMMA, prompt=[*tokens, greedy_id], max_tokens=0, echo=True,
                                       logprobs=2)
    choice = scored.choices[0]
    assert choice.finish_reason == "length" and choice.text.endswith(greedy_text)
    logprobs = choice.logprobs
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert len(logprobs.tokens) == len(tokens)  # every token but the BOS, plus the appended one
    assert all(lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert logprobs.tokens[-1] == greedy_text
    assert logprobs.token_logprobs[-1] == pytest.approx(generated.choices[0].logprobs.token_logprobs[0], abs=0.05)
    assert max(logprobs.top_logprobs[-1].values()) == pytest.approx(logprobs.token_logprobs[-1], abs=1e-6)


def test_streamed_completion_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model=GEMMA, prompt="The sea", max_tokens=6, stream=True, echo=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].text == "The sea"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert chunks[-2].choices[0].finish_reason == "length"
    whole = client.completions.create(model=GEMMA, prompt="The sea", max_tokens=6, **GREEDY)
    assert "".join(c.choices[0].text for c in chunks[1:-1]) == whole.choices[0].text


# --- embeddings --------------------------------------------------------------------
def test_embeddings_equal_in_float_and_base64(client: openai.OpenAI, served: Daemon) -> None:
    texts = ["the cat sat", "a dog ran", "stock prices fell"]
    as_base64 = client.embeddings.create(model=GEMMA, input=texts)  # the client asks for base64 by default
    as_float = client.embeddings.create(model=GEMMA, input=texts, encoding_format="float")
    assert [d.index for d in as_float.data] == [0, 1, 2] and as_float.usage.prompt_tokens > 6
    for a, b in zip(as_base64.data, as_float.data, strict=True):
        assert np.allclose(a.embedding, b.embedding, atol=1e-6)
        assert np.linalg.norm(b.embedding) == pytest.approx(1, abs=1e-4)
    with served.client() as http:
        raw = http.post("/v1/embeddings", json={"model": GEMMA, "input": "the cat sat", "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, as_float.data[0].embedding, atol=1e-6)


def test_embeddings_of_tokens_and_shortened(client: openai.OpenAI) -> None:
    short = client.embeddings.create(model=GEMMA, input="the cat sat", dimensions=32, encoding_format="float")
    assert len(short.data[0].embedding) == 32
    assert np.linalg.norm(short.data[0].embedding) == pytest.approx(1, abs=1e-4)
    tokens = client.embeddings.create(model=GEMMA, input=[[2, 818, 5866], [2, 818]], encoding_format="float")
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 5
    single = client.embeddings.create(model=GEMMA, input=[2, 818, 5866], encoding_format="float")
    assert np.allclose(single.data[0].embedding, tokens.data[0].embedding, atol=1e-6)


# --- models ------------------------------------------------------------------------
def test_models_lists_and_retrieves_every_stored_model(client: openai.OpenAI) -> None:
    ids = {m.id: m for m in client.models.list()}
    assert {GEMMA, f"{TINY}:latest"} <= set(ids)
    assert ids[GEMMA].object == "model" and ids[GEMMA].owned_by == "library" and ids[GEMMA].created > 0
    assert client.models.retrieve(f"{TINY}:latest").id == f"{TINY}:latest"
    assert client.models.retrieve(GEMMA).id == GEMMA
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


# --- errors ------------------------------------------------------------------------
BAD_CHATS = [
    ({"n": 0}, "n"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 3}, "temperature"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages[0].content[0].type"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"999999999": 1}}, "logit_bias"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "banana"}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "strict": True, "schema": {"type": "array", "uniqueItems": True}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}]},
     "tools[0].function.parameters"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
     "messages[0].content[0]"),
    ({"options": {"num_ctx": -5}}, "options"),
]


@pytest.mark.parametrize(("change", "param"), BAD_CHATS)
def test_bad_chat_requests_are_400_naming_the_parameter(client: openai.OpenAI, change: dict, param: str) -> None:
    body = {"model": GEMMA, "messages": HELLO, "max_tokens": 2, **change}
    extra = {"options": body.pop("options")} if "options" in body else None
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**body, extra_body=extra)
    assert caught.value.status_code == 400
    error = caught.value.body
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param, error


def test_tools_for_a_model_whose_template_has_none_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=GEMMA, messages=HELLO, tools=[WEATHER], max_tokens=2)
    assert caught.value.body["param"] == "tools" and "tools" in caught.value.body["message"]


def test_unknown_model_is_404_and_never_a_fallback(client: openai.OpenAI) -> None:
    for call in (
        lambda: client.chat.completions.create(model="llama9", messages=HELLO),
        lambda: client.completions.create(model="llama9", prompt="x"),
        lambda: client.embeddings.create(model="llama9", input="x"),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.code == "model_not_found" and caught.value.body["param"] == "model"
        assert "llama9" in caught.value.message


def test_context_length_exceeded_and_the_options_extension_sets_the_context(client: openai.OpenAI,
                                                                             served: Daemon) -> None:
    long = [{"role": "user", "content": "word " * 300}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=GEMMA, messages=long, max_tokens=2,
                                       extra_body={"options": {"num_ctx": 128}})
    assert caught.value.code == "context_length_exceeded" and caught.value.body["param"] == "messages"
    reply = client.chat.completions.create(model=GEMMA, messages=long, max_tokens=2,
                                           extra_body={"options": {"num_ctx": 8192}})
    assert reply.usage.prompt_tokens > 300
    with served.client() as http:
        loaded = http.get("/api/ps").json()["models"]
    assert 8192 in [m["context_length"] for m in loaded if m["name"] == GEMMA]

    client.chat.completions.create(model=TINY, messages=HELLO, max_tokens=1, extra_body={"options": {"num_ctx": 10**6}})
    with served.client() as http:
        loaded = http.get("/api/ps").json()["models"]
    assert [m["context_length"] for m in loaded if m["name"] == f"{TINY}:latest"] == [2048]  # its trained size


def test_errors_on_v1_are_openai_shaped_on_api_native(served: Daemon) -> None:
    with served.client() as http:
        v1 = http.post("/v1/chat/completions", content=b"{not json")
        native = http.post("/api/chat", content=b"{not json")
        missing = http.get("/v1/nothing-here")
    assert v1.status_code == 400 and set(v1.json()["error"]) == {"message", "type", "param", "code"}
    assert native.status_code == 400 and isinstance(native.json()["error"], str)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "invalid_request_error"


# --- auth, saturation, disconnects (their own daemons) -----------------------------
def test_api_key_when_configured(make_daemon, hermetic_env) -> None:
    server = make_daemon(LOCALLLM_API_KEY="s3cret").start()
    wrong = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    right = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="s3cret", max_retries=0)
    assert right.models.list().data == []
    with server.client() as http:
        assert http.get("/api/tags").status_code == 401
        assert http.get("/api/tags").json() == {"error": "this server needs an API key: send "
                                                          "'Authorization: Bearer <key>'"}
        assert http.get("/").status_code == 200  # the health check stays open
    assert server.cli("list").returncode == 0  # the CLI sends LOCALLLM_API_KEY from its environment


def test_a_saturated_server_answers_503_with_retry_after(make_daemon, gemma_path, hermetic_env) -> None:
    server = make_daemon(LOCALLLM_MAX_QUEUE="0", LOCALLLM_NUM_PARALLEL="1").start()
    assert pull_events(server, GEMMA)[-1] == {"status": "success"}
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    started, done = threading.Event(), threading.Event()

    def long_answer() -> None:
        stream = client.completions.create(model=GEMMA, prompt="Once upon a time", max_tokens=1000, stream=True,
                                           **GREEDY)
        for _ in stream:
            started.set()
            if done.is_set():
                break  # closing the stream cancels the rest
        stream.close()

    worker = threading.Thread(target=long_answer)
    worker.start()
    assert started.wait(60)
    with server.client() as http:
        busy = http.post("/v1/completions", json={"model": GEMMA, "prompt": "Hi", "max_tokens": 2})
        native = http.post("/api/generate", json={"model": GEMMA, "prompt": "Hi", "stream": False})
    try:
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["type"] == "server_error"
        assert native.status_code == 503 and "busy" in native.json()["error"]
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model=GEMMA, prompt="Hi", max_tokens=2)
    finally:
        done.set()
        worker.join(60)
    assert client.completions.create(model=GEMMA, prompt="Hi", max_tokens=2).choices[0].text


def test_a_disconnected_stream_stops_generating(served: Daemon) -> None:
    body = {"model": GEMMA, "prompt": "Once upon a time", "max_tokens": 2000, "stream": True, **GREEDY}
    with served.client() as http, http.stream("POST", "/v1/completions", json=body) as response:
        for index, _line in enumerate(response.iter_lines()):
            if index > 4:
                break
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "generation cancelled" not in served.log.read_text():
        time.sleep(0.2)
    assert "generation cancelled" in served.log.read_text()
