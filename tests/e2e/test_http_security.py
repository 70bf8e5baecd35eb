"""The daemon's edge, against a real daemon: what is refused before a byte of the body is read.

A web page may send "simple" cross-origin requests (text/plain bodies, no preflight): CORS only hides
the answer, so a request from an origin that is not allowed is a 403 before it runs. Hosts that only
look local are refused; the API key is checked before the body is read; bodies have a size limit.
"""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import httpx

from conftest import Daemon, tags


def raw_request(daemon: Daemon, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request written by hand (headers exactly as given), and the status of its answer."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return int(data.split(b" ", 2)[1]), data


def test_a_cross_site_simple_request_is_refused_before_it_runs(daemon: Daemon, tmp_path: Path) -> None:
    evil = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    with daemon.client() as client:
        for method, path, body in [
            ("POST", "/api/create", '{"model": "planted", "from": "x"}'),
            ("POST", "/api/copy", '{"source": "a", "destination": "b"}'),
            ("POST", "/api/pull", '{"model": "hf.co/evil/model"}'),
            ("DELETE", "/api/delete", '{"model": "a"}'),
            ("POST", "/v1/chat/completions", '{"model": "a", "messages": []}'),
            ("GET", "/api/tags", None),
        ]:
            response = client.request(method, path, content=body, headers=evil)
            assert response.status_code == 403, (path, response.text)
            assert "evil.example" in (response.json()["error"] if path.startswith("/api") else
                                      response.json()["error"]["message"])
        assert client.options("/api/chat", headers={**evil, "Access-Control-Request-Method": "POST"}).status_code == 403
        preflight = client.options("/api/chat", headers={"Origin": "http://localhost:3000",
                                                         "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        local = client.get("/api/tags", headers={"Origin": "http://127.0.0.1:8080"})
        assert local.status_code == 200  # local pages, and requests with no Origin (curl, SDKs), are served
    assert tags(daemon) == {}


def test_hosts_that_only_look_local_are_refused(daemon: Daemon) -> None:
    for host in (f"127.0.0.1:{daemon.port}@evil.com", "[::1]evil.com", "localhost.evil.com", "127.0.0.1:80:80",
                 "evil.com#127.0.0.1"):
        status, _ = raw_request(daemon, f"GET /api/version HTTP/1.1\nHost: {host}\nConnection: close\n")
        assert status == 403, host
    for host in (f"127.0.0.1:{daemon.port}", f"localhost:{daemon.port}", "[::1]", "app.localhost"):
        status, _ = raw_request(daemon, f"GET /api/version HTTP/1.1\nHost: {host}\nConnection: close\n")
        assert status == 200, host


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError


def test_the_key_is_checked_and_the_body_limited_before_the_body_is_read(make_daemon, tmp_path: Path) -> None:
    daemon: Daemon = make_daemon(LOCALLLM_API_KEY="s3cret", LOCALLLM_MAX_BODY="1MiB").start()
    junk = b"x" * (512 * 2**20)
    started = time.perf_counter()
    status, _ = raw_request(daemon, f"POST /api/chat HTTP/1.1\nHost: 127.0.0.1\nContent-Length: {len(junk)}\n"
                                    "Connection: close\n", junk[:65536])
    assert status == 401 and time.perf_counter() - started < 5
    assert vm_hwm(daemon.process.pid) < 300 * 2**20
    key = {"Authorization": "Bearer s3cret"}
    with daemon.client(headers=key) as client:
        big = client.post("/api/chat", content=b"{" + b" " * (2 * 2**20) + b"}")
        assert big.status_code == 413 and "LOCALLLM_MAX_BODY" in big.json()["error"]

        def chunks():
            for _ in range(40):
                yield b" " * 65536

        chunked = client.post("/v1/chat/completions", content=chunks())
        assert chunked.status_code == 413 and "LOCALLLM_MAX_BODY" in chunked.json()["error"]["message"]
        blob = b"\0" * (3 * 2**20)  # blob uploads stream to disk: no limit
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        assert client.post(f"/api/blobs/{digest}", content=blob).status_code in (200, 201)
        assert client.get("/openapi.json").status_code == 200
    for path in ("/openapi.json", "/docs", "/redoc", "/api/tags", "/v1/models"):
        assert httpx.get(daemon.base_url + path).status_code == 401, path
    assert httpx.get(daemon.base_url + "/").status_code == 200  # the health check


def test_too_many_messages_are_refused_before_the_model_loads(daemon: Daemon, tmp_path: Path) -> None:
    from ggufs import write_tiny_llama

    path = write_tiny_llama(tmp_path / "tiny.gguf", seed=5)
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    messages = [{"role": "user", "content": "hi"}] * 5000
    with daemon.client() as client:
        assert client.post(f"/api/blobs/{digest}", content=path.read_bytes()).status_code in (200, 201)
        assert client.post("/api/create", json={"model": "tiny", "files": {"tiny.gguf": digest},
                                                "stream": False}).status_code == 200
        native = client.post("/api/chat", json={"model": "tiny", "messages": messages})
        openai = client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages})
        long = client.post("/api/generate", json={"model": "tiny", "prompt": "x" * 8_000_001})
        inputs = client.post("/api/embed", json={"model": "tiny", "input": ["a"] * 5000})
        assert client.get("/api/ps").json()["models"] == []  # nothing was loaded for them
    assert native.status_code == 400 and "4,096" in native.json()["error"]
    assert openai.status_code == 400 and openai.json()["error"]["param"] == "messages"
    assert long.status_code == 400 and "LOCALLLM_MAX_PROMPT" in long.json()["error"]
    assert inputs.status_code == 400 and "LOCALLLM_MAX_MESSAGES" in inputs.json()["error"]


def test_a_killed_writes_temp_files_are_removed_at_start(make_daemon, hermetic_env: Path) -> None:
    blobs = hermetic_env / "models" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / ".tmp-killed-upload").write_bytes(b"x" * 1000)  # fresh: a pull killed a moment ago
    partial = blobs / ("sha256-" + "a" * 64 + "-partial")
    partial.write_bytes(b"resumable")
    make_daemon().start()
    assert not (blobs / ".tmp-killed-upload").exists()
    assert partial.exists()  # a partial download resumes with the next pull
