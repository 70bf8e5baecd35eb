"""``/api/ps`` shows one entry per model, its embedding and generation instances merged, as Ollama."""

from __future__ import annotations

from datetime import datetime, timedelta

import ollama

from conftest import Daemon

GEMMA = "gemma3:270m"
FIELDS = {"name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"}


def ps(daemon: Daemon) -> list[dict]:
    with daemon.client() as client:
        response = client.get("/api/ps")
    assert response.status_code == 200, response.text
    return response.json()["models"]


def only(daemon: Daemon) -> dict:
    models = ps(daemon)
    assert [m["name"] for m in models] == [GEMMA], models
    assert set(models[0]) == FIELDS
    return models[0]


def expires(model: dict) -> datetime:
    return datetime.fromisoformat(model["expires_at"])


def embed(daemon: Daemon, keep_alive: str | int) -> None:
    with daemon.client() as client:
        response = client.post("/api/embed", json={"model": GEMMA, "input": "hello", "keep_alive": keep_alive})
    assert response.status_code == 200, response.text


def test_ps_merges_a_models_embedding_and_generation_instances(gemma_daemon: Daemon) -> None:
    assert ps(gemma_daemon) == []
    embed(gemma_daemon, "2h")  # the embedding instance alone
    embedding = only(gemma_daemon)

    with gemma_daemon.client() as client:  # a generation instance beside it, kept for less time
        response = client.post("/api/generate", json={"model": GEMMA, "prompt": "Hi", "stream": False,
                                                      "keep_alive": "1h", "options": {"num_predict": 1}})
    assert response.status_code == 200, response.text
    both = only(gemma_daemon)  # one entry, not two

    embed(gemma_daemon, 0)  # unloads the embedding instance only: the generation instance remains
    generation = only(gemma_daemon)

    assert embedding["size"] > 0 and generation["size"] > 0
    assert both["size"] == embedding["size"] + generation["size"]
    assert both["size_vram"] == embedding["size_vram"] + generation["size_vram"] == 0
    assert abs(expires(both) - expires(embedding)) < timedelta(minutes=1)  # the later of the two
    assert expires(both) - expires(generation) > timedelta(minutes=50)
    assert both["context_length"] == max(embedding["context_length"], generation["context_length"])
    assert both["digest"] == generation["digest"] and both["details"] == generation["details"]

    # the official client parses the merged answer
    embed(gemma_daemon, "2h")
    running = ollama.Client(host=gemma_daemon.base_url).ps().models
    assert [m.model for m in running] == [GEMMA]
    assert running[0].size == both["size"] and running[0].size_vram == 0
    assert running[0].expires_at is not None and running[0].expires_at.year >= datetime.now().year
    assert running[0].details is not None and running[0].details.family == both["details"]["family"]
    assert running[0].context_length == both["context_length"]

    # and `localllm ps` shows it in one row
    listed = gemma_daemon.cli("ps")
    assert listed.returncode == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if GEMMA in line]
    assert len(rows) == 1 and "hour" in rows[0], listed.stdout
