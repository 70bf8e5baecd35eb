"""Every Modelfile in ``modelfiles/`` creates a model that answers."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from conftest import ROOT, Daemon, publish
from fakehub import FakeHub

MODELFILES = ROOT / "modelfiles"
ON_GEMMA = ["gemma3", "mario", "json-assistant"]
Q = gguf.LlamaFileType


def test_every_modelfile_here_is_tested() -> None:
    assert {path.stem for path in MODELFILES.glob("*.Modelfile")} == {*ON_GEMMA, "mistral", "llama2"}


def chat(daemon: Daemon, model: str, question: str, **fields: object) -> dict:
    with daemon.client() as client:
        response = client.post("/api/chat", json={
            "model": model, "messages": [{"role": "user", "content": question}], "stream": False,
            "options": {"num_predict": 40, "seed": 1}, **fields,
        })
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("name", ON_GEMMA)
def test_the_gemma_modelfiles_create_and_answer(gemma_daemon: Daemon, name: str) -> None:
    result = gemma_daemon.cli("create", name, "-f", str(MODELFILES / f"{name}.Modelfile"))
    assert result.returncode == 0, result.stderr
    fields = {"format": "json"} if name == "json-assistant" else {}
    reply = chat(gemma_daemon, name, "What is the tallest mountain on Earth?", **fields)
    assert reply["done"] and reply["message"]["role"] == "assistant"
    assert reply["message"]["content"].strip()
    if name == "json-assistant":
        assert isinstance(json.loads(reply["message"]["content"]), dict)
    if name == "gemma3":  # the chat template now frames the question as a turn
        with gemma_daemon.client() as client:
            shown = client.post("/api/show", json={"model": name}).json()
        assert "<start_of_turn>" in shown["template"] and "completion" in shown["capabilities"]


@pytest.mark.parametrize(("name", "repo", "filename"), [
    ("mistral", "TheBloke/Mistral-7B-Instruct-v0.2-GGUF", "mistral-7b-instruct-v0.2.Q4_K_M.gguf"),
    ("llama2", "TheBloke/Llama-2-7B-Chat-GGUF", "llama-2-7b-chat.Q4_K_M.gguf"),
])
def test_the_hub_modelfiles_pull_their_base_create_and_answer(daemon: Daemon, hub: FakeHub, tmp_path: Path,
                                                              name: str, repo: str, filename: str) -> None:
    publish(hub, tmp_path, repo, {filename: Q.MOSTLY_Q4_K_M})  # a tiny llama where the real one would be
    result = daemon.cli("create", f"my-{name}", "-f", str(MODELFILES / f"{name}.Modelfile"), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "success" in result.stderr
    reply = chat(daemon, f"my-{name}", "hello world", system="You are a test.")
    assert reply["done"] and reply["eval_count"] > 0
    with daemon.client() as client:
        shown = client.post("/api/show", json={"model": f"my-{name}"}).json()
    assert "[INST]" in shown["template"]
    if name == "mistral":  # its Go template shows tools: a chat may offer them
        assert "tools" in shown["capabilities"]
        tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
        assert chat(daemon, "my-mistral", "Weather in Paris?", tools=[tool])["done"]
