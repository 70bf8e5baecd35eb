"""A schema-driven fuzzer (schemathesis) against a real daemon, from its own ``/openapi.json``.

Every documented operation gets generated requests, valid and invalid; half of the generation requests
name a real (tiny) model so the fuzzer reaches llama.cpp, not only the 404 for unknown names. The
daemon must answer each with a documented status and content type, never a 5xx, and in time.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, status_code_conformance
from test_generate import TOOLS_TEMPLATE

from conftest import Daemon, pull_events
from fakehub import FakeHub
from ggufs import write_tiny_llama

TINY = "hf.co/acme/tiny-fuzz"
KEEP = {"/api/delete", "/api/copy", "/api/pull"}  # store-changing operations keep their random names
BOUNDS = {"n": 2, "max_tokens": 24, "max_completion_tokens": 24, "top_logprobs": 3, "logprobs": 3}


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    with FakeHub() as hub:
        path = write_tiny_llama(root / "tiny.gguf", chat_template=TOOLS_TEMPLATE, seed=9)
        hub.add_file("acme/tiny-fuzz", "tiny-fuzz.Q8_0.gguf", path)
        server = Daemon(root / "home", hub.endpoint, {"HF_HOME": str(root / "hf")}).start()
        try:
            assert pull_events(server, TINY)[-1] == {"status": "success"}
            yield server
        finally:
            server.stop()


def _aim_at_the_model(case: schemathesis.Case) -> None:
    """Point every other request at the real model, with bounded work (the fuzzer's numbers are huge)."""
    body = case.body
    if not isinstance(body, dict) or case.path in KEEP:
        return
    if zlib.crc32(repr(sorted(body, key=str)).encode()) % 2 == 0 and isinstance(body.get("model"), str):
        body["model"] = TINY
    for key, bound in BOUNDS.items():
        if isinstance(body.get(key), int) and not isinstance(body.get(key), bool) and body[key] > bound:
            body[key] = bound
    options = body.get("options")
    if isinstance(options, dict):
        for key in ("num_predict", "num_ctx", "num_batch", "num_thread"):
            if isinstance(options.get(key), int) and options[key] > 256:
                options[key] = 256


def test_every_operation_answers_as_documented(fuzz_daemon: Daemon) -> None:
    """Each operation in turn (schemathesis's pytest plugin does not run under pytest 9 yet)."""
    api = schemathesis.openapi.from_url(f"{fuzz_daemon.base_url}/openapi.json")
    failures: dict[str, str] = {}
    tested = []
    answered: dict[str, set[int]] = {}
    for result in api.get_all_operations():
        operation = result.ok()
        tested.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            _aim_at_the_model(case)
            response = case.call(timeout=60)
            answered.setdefault(case.operation.label, set()).add(response.status_code)
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                     content_type_conformance])

        try:
            run()
        except Exception as exc:  # one operation's failure must not hide the others'
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:2000]
    assert len(tested) >= 17
    inference = ("POST /v1/chat/completions", "POST /v1/completions", "POST /api/generate", "POST /api/chat")
    reached = [label for label in inference if 200 in answered[label]]
    assert len(reached) >= 3, answered  # the fuzzer did reach the model, not only its 404s and 400s
    assert not failures, "\n\n".join(f"{label}: {text}" for label, text in failures.items())
