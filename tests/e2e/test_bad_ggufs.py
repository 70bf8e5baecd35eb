"""Bad GGUFs refused by a real daemon at create (every way a client asks) and at pull, nothing kept.

The checks themselves are tested without a daemon in tests/test_gguf_limits.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from conftest import Daemon, pull_events, tags
from ggufs import write_tiny_llama


def _upload(daemon: Daemon, path: Path) -> str:
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    with daemon.client() as client:
        assert client.post(f"/api/blobs/{digest}", content=path.read_bytes()).status_code in (200, 201)
    return digest


def _create(daemon: Daemon, body: dict) -> tuple[int, list[dict]]:
    with daemon.client() as client, client.stream("POST", "/api/create", json=body) as response:
        response.read()
        if response.status_code != 200:
            return response.status_code, [response.json()]
        return 200, [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_the_daemon_refuses_bad_ggufs_at_create_and_at_pull(daemon: Daemon, hub, tmp_path: Path) -> None:
    bad = _upload(daemon, write_tiny_llama(tmp_path / "bad.gguf", metadata={"llama.block_count": 1000}))
    for body in ({"model": "x", "files": {"bad.gguf": bad}},  # streamed, as Ollama's clients ask
                 {"model": "x", "files": {"bad.gguf": bad}, "stream": False},
                 {"model": "x", "modelfile": f"FROM @{bad}\n"}):
        status, events = _create(daemon, body)
        assert status == 422, (body, events)
        assert ".gguf is not a usable model: llama.block_count is 1000, more than llama.cpp's limit of 512 " \
               "layers (LLAMA_MAX_LAYERS)" in events[0]["error"]  # bad.gguf, or model.gguf for FROM @sha256:
    template = _upload(daemon, write_tiny_llama(tmp_path / "t.gguf", chat_template="{% for %}", seed=2))
    status, events = _create(daemon, {"model": "x", "files": {"t.gguf": template}})
    assert status == 422 and "the chat template inside t.gguf (tokenizer.chat_template)" in events[0]["error"]
    status, events = _create(daemon, {"model": "x", "files": {"t.gguf": template}, "template": "{{ .Prompt }}"})
    assert status == 200 and events[-1] == {"status": "success"}  # a TEMPLATE of its own replaces it

    # a pulled GGUF is checked before its manifest is written, and its bytes are not kept
    hub.add_file("acme/broken-GGUF", "broken.Q4_K_M.gguf",
                 write_tiny_llama(tmp_path / "pub.gguf", metadata={"llama.attention.head_count_kv": 3}, seed=4))
    events = pull_events(daemon, "hf.co/acme/broken-GGUF")
    assert "llama.attention.head_count_kv is 3, which does not divide" in events[-1]["error"], events
    assert set(tags(daemon)) == {"x:latest"}
    with daemon.client() as client:
        assert client.get("/api/version").status_code == 200
