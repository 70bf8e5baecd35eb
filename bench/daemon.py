"""A real ``localllm serve`` process for the benchmarks, on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_daemon(home: Path, code: Path | None = None, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start a daemon with its state in ``home``; returns the process and its base URL once it answers.

    ``code``: another checkout of localllm to run (an older commit, to compare with), put first on the path."""
    port = free_port()
    extra = {"PYTHONPATH": str(code)} if code is not None else {}
    process = subprocess.Popen(
        [sys.executable, "-m", "localllm.cli.main", "serve"],
        env={**os.environ, "LOCALLLM_HOME": str(home), "LOCALLLM_HOST": f"127.0.0.1:{port}", **extra, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=code,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(base_url + "/api/version", timeout=1)
            return process, base_url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the daemon did not start")


def stop(*processes: subprocess.Popen | None) -> None:
    for process in processes:
        if process is not None:
            process.terminate()
            process.wait(10)
