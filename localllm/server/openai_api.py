"""The OpenAI-compatible face's routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/models``. Each route translates: the request in (``openai_convert``), the generation
(``llm.generation``, the same as the native API's), the response out (``openai_shape``), so the official
client works unmodified.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import ContextLengthExceeded, InvalidRequest, TemplateError, UnsupportedInput
from ..llm.embedding import embed
from ..llm.facts import ModelFacts
from ..llm.generation import Event, choices, generate, score
from ..llm.options import Options, parse_keep_alive, parse_options
from ..llm.prompts import chat_spec
from ..llm.protocol import PromptBuilt, PromptSpec
from ..llm.requests import TokenLogprob
from ..llm.scheduler import Scheduler
from ..names import MODEL_NAME_PATTERN, ModelName
from .limits import check_size
from .openai_convert import (
    logit_bias_of,
    options_of,
    response_format_grammar,
    template_messages,
    tool_plan,
    with_seed,
)
from .openai_schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from .openai_shape import ChatReply, CompletionReply, Events, embedding_list, model_object
from .streaming import ClientGone, first_event, sse_response, until_disconnected

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])


def _scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler


def _name(model: str) -> ModelName:
    try:
        return ModelName.parse(model)
    except InvalidRequest as exc:
        exc.param = "model"
        raise


async def _facts(request: Request, model: str) -> ModelFacts:
    return await run_in_threadpool(_scheduler(request).facts, _name(model))


def _keep_alive(value: Any) -> float | None:
    try:
        return None if value is None else parse_keep_alive(value)
    except InvalidRequest as exc:
        exc.param = "keep_alive"
        raise


async def _primed(request: Request, events: Events, prompt_param: str) -> Events:
    """Start the generation before the response: loading and prompt errors keep their HTTP status.
    Raises ClientGone if the client leaves first."""
    try:
        first = await first_event(request, events)
    except (ContextLengthExceeded, TemplateError, UnsupportedInput) as exc:  # the prompt could not be built
        exc.param = exc.param or ("tools" if prompt_param == "messages" and "tools" in exc.message else prompt_param)
        raise

    async def rest() -> Events:
        try:
            yield first
            async for item in events:
                yield item
        finally:
            await events.aclose()

    return rest()


# --- /v1/chat/completions --------------------------------------------------------
@router.post("/chat/completions", summary="Create a chat completion")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    facts = await _facts(request, body.model)  # an unknown model is a 404 whatever else is wrong
    check_size(request, items=body.messages, texts=[body.tools or []])
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs set to true", param="top_logprobs")
    plan = tool_plan(body)
    grammar = plan.grammar or response_format_grammar(body.response_format)
    messages = template_messages(body.messages)
    max_tokens = body.max_completion_tokens or body.max_tokens
    options = options_of(body, max_tokens)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    bias = logit_bias_of(body.logit_bias)

    prompt = chat_spec(facts, messages, plan.tools)

    def start(index: int) -> AsyncIterator[Event]:
        return generate(
            _scheduler(request), facts, options=with_seed(options, index), keep_alive=_keep_alive(body.keep_alive),
            prompt=prompt, grammar=grammar, tools=plan.tools, calls_are_json=plan.forced,
            logit_bias=bias, logprobs=logprobs,
        )

    try:
        events = await _primed(request, choices(body.n, start, together=body.seed is None), "messages")
    except ClientGone:
        return Response(status_code=499)
    reply = ChatReply(body, logprobs is not None)
    if body.stream:
        return sse_response(request, reply.chunks(events))
    return JSONResponse(await until_disconnected(request, reply.whole(events)))


# --- /v1/completions -------------------------------------------------------------
def _prompts(body: CompletionRequest) -> list[str | list[int]]:
    prompt = body.prompt
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(item, int) for item in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return list(prompt)  # type: ignore[arg-type]


@router.post("/completions", summary="Create a completion")
async def completions(body: CompletionRequest, request: Request) -> Response:
    facts = await _facts(request, body.model)
    check_size(request, items=_prompts(body), texts=[body.suffix], param="prompt")
    if body.suffix and any(not isinstance(p, str) for p in _prompts(body)):
        raise InvalidRequest("suffix needs a text prompt", param="suffix")
    prompts = _prompts(body)
    options = options_of(body, body.max_tokens)
    bias = logit_bias_of(body.logit_bias)
    echoes: dict[int, str] = {}

    def spec(prompt: str | list[int]) -> PromptSpec:
        if isinstance(prompt, list):
            return PromptSpec("tokens", facts.name.display, tokens=list(prompt), echo=body.echo)
        if body.suffix:
            return PromptSpec("fim", facts.name.display, prompt=prompt, suffix=body.suffix)
        return PromptSpec("text", facts.name.display, prompt=prompt)

    def heard(prompt_index: int) -> Callable[[PromptBuilt], None]:
        def remember(built: PromptBuilt) -> None:
            if built.echo is not None:
                echoes[prompt_index] = built.echo

        return remember

    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            echoes[index] = prompt

    def start(index: int) -> AsyncIterator[Event]:
        prompt_index, choice = divmod(index, body.n)
        return generate(
            _scheduler(request), facts, options=with_seed(options, choice), keep_alive=_keep_alive(body.keep_alive),
            prompt=spec(prompts[prompt_index]), logit_bias=bias, logprobs=body.logprobs,
            on_prompt=heard(prompt_index),
        )

    scores: dict[int, list[TokenLogprob]] = {}
    if body.echo and body.logprobs is not None:  # score the prompts first (lm-eval-style use)
        try:
            scored = await score(_scheduler(request), facts, [spec(prompt) for prompt in prompts], options=options,
                                 keep_alive=_keep_alive(body.keep_alive), logprobs=body.logprobs)
        except (ContextLengthExceeded, InvalidRequest) as exc:
            exc.param = exc.param or "prompt"
            raise
        for index, (logprobs, echo) in enumerate(scored):
            scores[index] = logprobs
            if echo is not None:
                echoes[index] = echo

    try:
        events = await _primed(request, choices(len(prompts) * body.n, start, together=body.seed is None), "prompt")
    except ClientGone:
        return Response(status_code=499)
    reply = CompletionReply(body, echoes, scores)
    if body.stream:
        return sse_response(request, reply.chunks(events))
    return JSONResponse(await until_disconnected(request, reply.whole(events)))


# --- /v1/embeddings --------------------------------------------------------------
@router.post("/embeddings", summary="Create embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    value = body.input
    if isinstance(value, str):
        inputs: list[str | list[int]] = [value]
    elif all(isinstance(item, int) for item in value):
        inputs = [list(value)]  # type: ignore[arg-type]
    else:
        inputs = list(value)  # type: ignore[arg-type]
    facts = await _facts(request, body.model)
    check_size(request, items=inputs, param="input")
    options = _parsed(body.options)
    result = await embed(_scheduler(request), facts, inputs, options=options, keep_alive=_keep_alive(body.keep_alive),
                         truncate=False, dimensions=body.dimensions)
    return embedding_list(body.model, result.vectors, result.prompt_tokens, body.encoding_format)


def _parsed(options: dict[str, Any] | None) -> Options:
    try:
        return parse_options(options)
    except InvalidRequest as exc:
        exc.param = exc.param or "options"
        raise


# --- /v1/models ------------------------------------------------------------------
@router.get("/models", summary="List models")
async def list_models(request: Request) -> dict[str, Any]:
    entries = await run_in_threadpool(request.app.state.store.list)
    return {"object": "list", "data": [model_object(entry) for entry in entries]}


@router.get("/models/{model:path}", summary="Retrieve a model")
async def get_model(request: Request, model: str = Path(json_schema_extra={"pattern": MODEL_NAME_PATTERN})) -> dict:
    entry = await run_in_threadpool(request.app.state.store.get, _name(model))
    return model_object(entry)
