"""``localllm run`` for one answer, ``ps`` and ``stop``, as a person (or a script) runs them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from conftest import ROOT, Daemon, free_port
from fakehub import FakeHub
from localllm.cli.main import human_until
from localllm.cli.render import human_duration

MODEL = "gemma3:270m"  # embedded: pullable with no network
SHORT = "Answer in one short sentence: what colour is the sky?"
TIMING_LABELS = [
    "total duration:",
    "load duration:",
    "prompt eval count:",
    "prompt eval duration:",
    "prompt eval rate:",
    "eval count:",
    "eval duration:",
    "eval rate:",
]


@pytest.fixture
def pulled(daemon: Daemon) -> Daemon:
    result = daemon.cli("pull", MODEL)
    assert result.returncode == 0, result.stderr
    return daemon


def prompt_eval_count(stderr: str) -> int:
    match = re.search(r"^prompt eval count:\s+(\d+) token\(s\)$", stderr, re.MULTILINE)
    assert match, stderr
    return int(match.group(1))


# The bundled gemma3:270m is the pretrained model, not the chat one: it seldom ends a turn by itself, and
# `run` has no option to cap an answer (Ollama's neither). A long piped document caps it: the context
# holds CONTEXT tokens (the daemon's default, set small so the document is read quickly), so the answer
# has room for ~100 (each "word " is one token).
CONTEXT = 512
DOCUMENT = "word " * (CONTEXT - 150)


@pytest.fixture
def daemon(hermetic_env, hub: FakeHub) -> Iterator[Daemon]:
    server = Daemon(hermetic_env, hub.endpoint, {"LOCALLLM_CONTEXT_LENGTH": str(CONTEXT)}).start()
    try:
        yield server
    finally:
        server.stop()


def start_answer(daemon: Daemon, *args: str) -> str:
    """``run`` with a prompt, interrupted (Ctrl+C) once its answer has begun to stream; returns that beginning."""
    process = subprocess.Popen(
        [sys.executable, "-m", "localllm.cli.main", "run", *args],
        env=daemon.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        first = os.read(process.stdout.fileno(), 4096).decode(errors="replace")  # blocks until text arrives (or exit)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr.decode()
    return first


def test_run_pulls_a_missing_model_then_answers_a_piped_document(daemon: Daemon) -> None:
    assert MODEL not in daemon.cli("ls").stdout
    result = daemon.cli("run", MODEL, "--verbose", SHORT, stdin=DOCUMENT)  # flags may come first
    assert result.returncode == 0, result.stderr
    assert "pulling manifest" in result.stderr and "success" in result.stderr
    assert MODEL in daemon.cli("ls").stdout

    assert result.stdout.strip() and result.stdout.endswith("\n")
    assert prompt_eval_count(result.stderr) > CONTEXT - 150  # the document went before the prompt
    labels = [line.split(":")[0] + ":" for line in result.stderr.splitlines() if ":" in line]
    assert labels[-len(TIMING_LABELS) :] == TIMING_LABELS
    assert re.search(r"^total duration:\s+\d+(\.\d+)?(s|ms|µs)$", result.stderr, re.MULTILINE)
    assert re.search(r"^eval count:\s+\d+ token\(s\)$", result.stderr, re.MULTILINE)
    assert re.search(r"^eval rate:\s+\d+\.\d\d tokens/s$", result.stderr, re.MULTILINE)
    assert "duration" not in result.stdout


def test_piped_stdin_alone_is_answered_once(pulled: Daemon) -> None:
    result = pulled.cli("run", MODEL, stdin=f"{DOCUMENT}\n\nWhat is this document about?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and ">>>" not in result.stdout


def test_a_prompt_streams_and_ctrl_c_stops_it(pulled: Daemon) -> None:
    assert start_answer(pulled, MODEL, "Tell me a long story about a lighthouse.").strip()


def test_format_json_asks_for_json(pulled: Daemon) -> None:
    assert start_answer(pulled, MODEL, "List three colours as JSON.", "--format", "json").lstrip().startswith("{")


def test_bad_names_are_one_line_errors(daemon: Daemon) -> None:
    for name in ("../../x", "hf.co/nobody/nothing-GGUF"):
        result = daemon.cli("run", name, "hi")
        assert result.returncode == 1, result.stdout
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert daemon.cli("run", "../../x", "hi").stderr.strip().startswith("Error: invalid model name")


def test_run_without_a_daemon_says_how_to_start_one() -> None:
    env = {**os.environ, "LOCALLLM_HOST": f"127.0.0.1:{free_port()}"}
    result = subprocess.run(
        [sys.executable, "-m", "localllm.cli.main", "run", MODEL, "hi"],
        env=env,
        input="",
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not connect to localllm" in lines[0]


def ps_rows(daemon: Daemon) -> list[list[str]]:
    result = daemon.cli("ps")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
    return [re.split(r"\s{2,}", row.strip()) for row in rows]


def test_ps_lists_a_model_after_a_run_and_stop_unloads_it(pulled: Daemon) -> None:
    assert ps_rows(pulled) == []
    start_answer(pulled, MODEL, SHORT)
    (row,) = ps_rows(pulled)
    name, digest, size, processor, until = row
    assert name == MODEL and re.fullmatch(r"[0-9a-f]{12}", digest)
    assert size.endswith("MB") and processor == "100% CPU"
    assert re.fullmatch(r"[45] minutes from now", until), until  # the default keep-alive: 5 minutes

    stopped = pulled.cli("stop", MODEL)
    assert stopped.returncode == 0 and stopped.stdout == stopped.stderr == "", stopped.stderr
    assert ps_rows(pulled) == []


def test_keepalive_is_sent_and_shows_in_ps(pulled: Daemon) -> None:
    start_answer(pulled, MODEL, SHORT, "--keepalive", "10m")
    assert re.fullmatch(r"(9|10) minutes from now", ps_rows(pulled)[0][4])
    start_answer(pulled, MODEL, SHORT, "--keepalive", "-1")
    assert ps_rows(pulled)[0][4] == "Forever"
    bad = pulled.cli("run", MODEL, SHORT, "--keepalive", "soon")
    assert bad.returncode == 1 and bad.stderr.startswith("Error: ") and "Traceback" not in bad.stderr


def test_stop_of_a_missing_model_is_an_error(pulled: Daemon) -> None:
    result = pulled.cli("stop", "ghost")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1


def test_human_times_as_ollama_says_them() -> None:
    now = datetime.now(UTC)
    assert human_until((now + timedelta(minutes=4, seconds=59)).isoformat()) == "4 minutes from now"
    assert human_until((now + timedelta(hours=3, seconds=5)).isoformat()) == "3 hours from now"
    assert human_until("2318-01-01T00:00:00.123456789Z") == "Forever"
    assert human_until(None) == "Forever"
    assert human_until((now - timedelta(seconds=2)).isoformat()) == "Stopping..."
    assert [human_duration(ns) for ns in (1_234_000_000, 56_700_000, 812_000)] == ["1.234s", "56.7ms", "812µs"]
