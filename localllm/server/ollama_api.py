"""The Ollama-style native API: ``/api/...``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..errors import InvalidRequest
from ..images import models as image_models
from ..names import ModelName
from ..services.create import CreateSpec, ModelCreator, spec_from_modelfile
from ..services.show import list_entry, show
from ..store.blobs import DIGEST_PATTERN, parse_digest
from ..store.models import ModelStore
from ..store.pull import Puller
from .schemas import CopyRequest, CreateRequest, DeleteRequest, PullRequest, ShowRequest
from .streaming import Event, events_from_thread, ndjson_response

router = APIRouter()
DIGEST = Path(description="sha256:<64 hex digits>", json_schema_extra={"pattern": f"^{DIGEST_PATTERN.pattern}$"})


def _store(request: Request) -> ModelStore:
    return request.app.state.store


def _puller(request: Request) -> Puller:
    return request.app.state.puller


@router.get("/", response_class=PlainTextResponse, include_in_schema=False)
@router.head("/", response_class=PlainTextResponse, include_in_schema=False)
async def root() -> str:
    # The exact words Ollama's clients and tools probe for.
    return "Ollama is running"


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, list[dict]]:
    store = _store(request)

    def collect() -> list[dict]:
        return [list_entry(store, entry) for entry in store.list()]

    return {"models": await run_in_threadpool(collect)}


@router.post("/api/show")
async def show_model(body: ShowRequest, request: Request) -> dict:
    name = ModelName.parse(body.model)
    store = _store(request)

    def describe() -> dict:
        entry = store.get(name)
        result = show(store, entry, verbose=body.verbose)
        broken = request.app.state.scheduler.broken(entry.digest)
        if broken:  # its runner failed to load it twice in a row: say so until it is created again
            result.update(status="broken", error=broken)
        return result

    return await run_in_threadpool(describe)


@router.post("/api/pull")
async def pull(body: PullRequest, request: Request) -> Response:
    name = ModelName.parse(body.model)
    puller = _puller(request)
    plan = await run_in_threadpool(puller.plan, name)  # unknown repo/tag: a proper 4xx, before any stream

    if not body.stream:
        await run_in_threadpool(puller.execute, plan, lambda _event: None)
        return JSONResponse({"status": "success"})

    async def events() -> AsyncIterator[Event]:
        yield {"status": "pulling manifest"}
        async for event in events_from_thread(lambda emit: puller.execute(plan, emit)):
            yield event

    return ndjson_response(request, events())


@router.post("/api/create")
async def create(body: CreateRequest, request: Request) -> Response:
    name = ModelName.parse(body.model)
    if body.quantize:
        raise InvalidRequest("quantizing is not supported: quantize the GGUF with llama.cpp's llama-quantize, "
                             "then create from the result", param="quantize")
    if body.modelfile is not None:
        spec = spec_from_modelfile(name, body.modelfile)
    else:
        licenses = [body.license] if isinstance(body.license, str) else body.license
        spec = CreateSpec(name=name, model_from=body.from_, files=body.files or {}, adapters=body.adapters or {},
                          template=body.template, system=body.system, licenses=licenses,
                          parameters=body.parameters or {}, messages=body.messages)
    creator: ModelCreator = request.app.state.creator
    prepared = await run_in_threadpool(creator.prepare, spec)  # a bad request is a 4xx, not a line in a stream
    if not body.stream:
        await run_in_threadpool(creator.create, prepared, lambda _event: None)
        return JSONResponse({"status": "success"})
    return ndjson_response(request, events_from_thread(lambda emit: creator.create(prepared, emit)))


@router.delete("/api/delete")
async def delete(body: DeleteRequest, request: Request) -> Response:
    name = ModelName.parse(body.model)
    await run_in_threadpool(_store(request).delete, name)
    await run_in_threadpool(image_models.remove_orphan_folders, _store(request))  # an image model's conversions
    return Response(status_code=200)


@router.post("/api/copy")
async def copy(body: CopyRequest, request: Request) -> Response:
    source = ModelName.parse(body.source)
    destination = ModelName.parse(body.destination)
    await run_in_threadpool(_store(request).copy, source, destination)
    return Response(status_code=200)


@router.head("/api/blobs/{digest}")
async def blob_exists(request: Request, digest: str = DIGEST) -> Response:
    canonical = parse_digest(digest)
    return Response(status_code=200 if _store(request).blobs.exists(canonical) else 404)


@router.post("/api/blobs/{digest}", status_code=201)
async def blob_upload(request: Request, digest: str = DIGEST) -> Response:
    canonical = parse_digest(digest)
    store = _store(request)
    blobs = store.blobs
    if blobs.exists(canonical):
        async for _ in request.stream():  # drain what the client sends
            pass
        return Response(status_code=200)
    writer = await run_in_threadpool(blobs.writer)
    try:
        async for chunk in request.stream():
            if chunk:
                writer.write(chunk)
        await run_in_threadpool(store.finish_upload, writer, canonical)
    finally:
        writer.abort()
    return Response(status_code=201)
