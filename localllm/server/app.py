"""The FastAPI application and ``localllm serve``."""

from __future__ import annotations

import logging
import logging.handlers
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Response
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..config import Settings, get_settings, is_loopback_host
from ..images import models as image_models
from ..images.pull import ImagePulls
from ..images.service import ImageService
from ..llm.options import parse_keep_alive
from ..llm.scheduler import Scheduler
from ..metrics import Metrics
from ..services.create import ModelCreator, image_parameter_kinds
from ..store.gguf_pull import GGUFPulls
from ..store.models import ModelStore
from ..store.pull import Puller
from . import images_api, ollama_api, ollama_inference, openai_api
from .errors import install_error_handlers
from .middleware import EdgeMiddleware, JsonBodyMiddleware, RequestMetricsMiddleware, origin_regex
from .openapi import install_openapi

log = logging.getLogger("localllm")
API_DESCRIPTION = (
    "localllm serves two faces on one port: the Ollama-compatible native API under /api (NDJSON streams, "
    "errors as {\"error\": message}) and the OpenAI-compatible API under /v1 (SSE streams, errors as "
    "{\"error\": {message, type, param, code}}). Set the context size through the model's params or the "
    "`options` extension field, e.g. {\"options\": {\"num_ctx\": 8192}}."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    store = ModelStore(settings.models_dir)
    metrics = Metrics()
    scheduler = Scheduler(
        store,
        max_loaded=settings.max_loaded_models,
        default_keep_alive=parse_keep_alive(settings.keep_alive),
        max_queue=settings.max_queue,
        num_parallel=settings.num_parallel,
        default_num_ctx=settings.context_length,
        memory_budget=settings.memory_budget,
        metrics=metrics,
    )
    images = ImageService(store, scheduler, default_keep_alive=parse_keep_alive(settings.keep_alive),
                          max_queue=settings.max_queue)
    metrics.watch(scheduler.queued, scheduler.active_sequences, lambda: len(scheduler.running()))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        store.blobs.ensure()
        removed = store.prune()  # blobs left by work that was killed before its manifest
        # nothing else writes this store before we serve: every temp file is a killed write's (partial
        # downloads, which resume, are named sha256-<hex>-partial and stay)
        stale = store.blobs.remove_stale_temps(older_than=0) + image_models.clean(store)  # + image work of killed pulls
        if removed or stale:
            log.info("removed %d unreferenced blob(s) and %d stale temp file(s)", len(removed), stale)
        scheduler.start()
        images.start()
        try:
            yield
        finally:
            await images.stop()
            await scheduler.stop()

    app = FastAPI(
        title="localllm",
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.puller = Puller(store, settings, kinds=[ImagePulls(), GGUFPulls()])  # specific kinds first
    app.state.creator = ModelCreator(store, app.state.puller, parameter_kinds=image_parameter_kinds)
    app.state.scheduler = scheduler
    app.state.metrics = metrics
    app.state.images = images
    app.state.image_files = images_api.ImageFiles(settings.image_url_ttl)
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(ollama_api.router)
    app.include_router(ollama_inference.router)
    app.include_router(openai_api.router)
    app.include_router(images_api.router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_route() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    app.add_middleware(
        CORSMiddleware,
        allow_origin_regex=origin_regex(settings.extra_origins),
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        allow_headers=["*"],
    )
    app.add_middleware(JsonBodyMiddleware)
    host, _ = settings.bind
    app.add_middleware(EdgeMiddleware, settings=settings, check_host=is_loopback_host(host))
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


def configure_logging(settings: Settings) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    try:
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(settings.logs_dir / "server.log", maxBytes=10_000_000, backupCount=3)
        )
    except OSError:
        pass
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers)


def serve(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    configure_logging(settings)
    host, port = settings.bind
    log.info("localllm %s listening on %s:%d, models in %s", __version__, host, port, settings.models_dir)
    if not is_loopback_host(host):  # the Host check (DNS rebinding) is off: anyone who can reach the port may ask
        if settings.api_key:
            log.warning("bound to %s: reachable from the network; requests need the API key", host)
        else:
            log.warning("bound to %s: reachable from the network WITHOUT an API key; anyone who can reach port "
                        "%d can pull, create, delete and generate. Set LOCALLLM_API_KEY.", host, port)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
