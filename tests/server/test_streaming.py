"""Streams on both faces, in process: the events, then one error tail in the face's shape when the work
fails after the status line, never a traceback or an internal detail; work in a thread fails the same way."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from localllm.errors import ModelNotFound
from localllm.server.errors import install_error_handlers
from localllm.server.streaming import NDJSON, Event, events_from_thread, ndjson_response, sse_response

SECRET = "/home/someone/.localllm/models/blobs/sha256-abc"  # an internal detail that must not be sent


def failure(kind: str) -> Exception | None:
    return {"ours": ModelNotFound("model 'ghost' not found"), "bug": KeyError(SECRET), "none": None}[kind]


async def two_events_then(kind: str) -> AsyncIterator[Event]:
    yield {"status": "one"}
    yield {"status": "two"}
    if (error := failure(kind)) is not None:
        raise error


def threaded(kind: str) -> Callable[[Callable[[Event], None]], None]:
    def work(emit: Callable[[Event], None]) -> None:
        emit({"status": "one"})
        emit({"status": "two"})
        if (error := failure(kind)) is not None:
            raise error
    return work


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    def events(request: Request, kind: str, source: str) -> AsyncIterator[Event]:
        return two_events_then(kind) if source == "async" else events_from_thread(threaded(kind))

    @app.get("/api/stream/{source}/{kind}")
    async def native(request: Request, source: str, kind: str):  # noqa: ANN202
        return ndjson_response(request, events(request, kind, source))

    @app.get("/v1/stream/{source}/{kind}")
    async def openai(request: Request, source: str, kind: str):  # noqa: ANN202
        return sse_response(request, events(request, kind, source))

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(make_app(), raise_server_exceptions=False)


def ndjson(client: TestClient, path: str) -> list[dict]:
    response = client.get(path)
    assert response.status_code == 200 and response.headers["content-type"] == NDJSON
    return [json.loads(line) for line in response.text.splitlines()]


def sse(client: TestClient, path: str) -> list[object]:
    response = client.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    frames = response.text.split("\n\n")
    assert frames[-1] == "" and all(frame.startswith("data: ") for frame in frames[:-1])
    return [frame.removeprefix("data: ") for frame in frames[:-1]]


@pytest.mark.parametrize("source", ["async", "thread"])
def test_a_stream_that_ends_well_has_no_tail(client: TestClient, source: str) -> None:
    assert ndjson(client, f"/api/stream/{source}/none") == [{"status": "one"}, {"status": "two"}]
    assert sse(client, f"/v1/stream/{source}/none") == ['{"status": "one"}', '{"status": "two"}', "[DONE]"]


@pytest.mark.parametrize("source", ["async", "thread"])
def test_our_error_mid_stream_is_one_line_in_each_faces_shape(client: TestClient, source: str) -> None:
    assert ndjson(client, f"/api/stream/{source}/ours")[2:] == [{"error": "model 'ghost' not found"}]
    *_, tail, done = sse(client, f"/v1/stream/{source}/ours")
    assert done == "[DONE]"  # the OpenAI client reads to the end marker, then raises on the error event
    assert json.loads(tail) == {"error": {"message": "model 'ghost' not found", "type": "invalid_request_error",
                                          "param": "model", "code": "model_not_found"}}


@pytest.mark.parametrize("source", ["async", "thread"])
def test_a_bug_mid_stream_names_its_kind_only(client: TestClient, source: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("ERROR"):
        native = ndjson(client, f"/api/stream/{source}/bug")
        *_, tail, _done = sse(client, f"/v1/stream/{source}/bug")
    assert native[2:] == [{"error": "internal error: KeyError"}]
    assert json.loads(tail)["error"] == {"message": "internal error: KeyError", "type": "server_error",
                                         "param": None, "code": None}
    # the detail stays in the daemon's log, once per failure, with its traceback
    logged = [record for record in caplog.records if record.exc_info]
    assert len(logged) == 2 and all(SECRET in str(record.exc_info[1]) for record in logged)


@pytest.mark.parametrize("face", ["api", "v1"])
def test_an_error_before_the_first_event_is_a_status_not_a_stream(face: str) -> None:
    app = make_app()

    @app.get(f"/{face}/refused")
    async def refused() -> None:
        raise ModelNotFound("model 'ghost' not found")

    response = TestClient(app, raise_server_exceptions=False).get(f"/{face}/refused")
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error if face == "api" else error["message"]) == "model 'ghost' not found"
