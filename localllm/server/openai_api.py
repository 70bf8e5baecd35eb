"""The OpenAI-compatible face: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/models``. Responses and SSE chunks are shaped exactly as OpenAI's, so the official client
works unmodified; the generation itself is the same as the native API's (``llm.generation``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..errors import ContextLengthExceeded, InvalidRequest, LocalLLMError, TemplateError, UnsupportedInput
from ..llm.embedding import embed
from ..llm.generation import Outcome, ToolCalls, generate
from ..llm.options import Options, parse_keep_alive, parse_options
from ..llm.prompts import chat_spec
from ..llm.protocol import PromptBuilt, PromptSpec
from ..llm.requests import Piece, TokenLogprob
from ..llm.scheduler import ModelFacts, Scheduler
from ..names import MODEL_NAME_PATTERN, ModelName
from .errors import error_of, openai_error
from .openai_convert import (
    logit_bias_of,
    options_of,
    response_format_grammar,
    template_messages,
    tool_plan,
    with_seed,
)
from .limits import check_size
from .openai_schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from .streaming import ClientGone, ClosingStreamingResponse, first_event, until_disconnected

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])
FINGERPRINT = f"fp_localllm_{__version__}"
Events = AsyncIterator[tuple[int, Piece | ToolCalls | Outcome]]


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


def _finish_reason(outcome: Outcome) -> str:
    if outcome.tool_calls:
        return "tool_calls"
    return "length" if outcome.reason == "length" else "stop"


async def _choices(
    count: int, start: Callable[[int], AsyncIterator[Piece | ToolCalls | Outcome]], *, together: bool
) -> Events:
    """``n`` choices, each event tagged with its index: side by side (the engine batches them), or one after
    another when ``together`` is false. A seeded request takes the latter: what else shares a batch changes
    the logits' last bits, and a seed promises the same answers."""
    if count == 1 or not together:
        for index in range(count):
            async with aclosing(start(index)) as events:
                async for item in events:
                    yield index, item
        return
    queue: asyncio.Queue[tuple[int, Piece | ToolCalls | Outcome | BaseException | None]] = asyncio.Queue()

    async def pump(index: int) -> None:
        try:
            async with aclosing(start(index)) as events:
                async for item in events:
                    await queue.put((index, item))
        except Exception as exc:  # handed to the reader, which raises it
            await queue.put((index, exc))
        finally:
            await queue.put((index, None))

    tasks = [asyncio.create_task(pump(index)) for index in range(count)]
    try:
        running = count
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


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


def _sse(request: Request, chunks: AsyncIterator[dict[str, Any]]) -> Response:
    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        except LocalLLMError as exc:  # the status line is gone: an error event, as OpenAI sends
            yield b"data: " + json.dumps(error_of(request.url.path, exc)).encode() + b"\n\n"
        except Exception as exc:
            log.exception("generation failed mid-stream")
            body = openai_error(500, f"internal error: {type(exc).__name__}")
            yield b"data: " + json.dumps(body).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return ClosingStreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class _Choice:
    index: int
    text: str
    logprobs: list[TokenLogprob]
    outcome: Outcome


async def _gather(events: Events) -> list[_Choice]:
    """Every choice whole, in order, for a response that is not streamed."""
    texts: dict[int, list[str]] = {}
    logprobs: dict[int, list[TokenLogprob]] = {}
    choices = []
    async with aclosing(events):
        async for index, item in events:
            if isinstance(item, Piece):
                texts.setdefault(index, []).append(item.text)
                logprobs.setdefault(index, []).extend(item.logprobs or [])
            elif isinstance(item, Outcome):  # it holds the tool calls too
                choices.append(_Choice(index, "".join(texts.get(index, [])), logprobs.get(index, []), item))
    return sorted(choices, key=lambda choice: choice.index)


class _Counter:
    """Tokens used over all choices (the prompt once per distinct prompt, as OpenAI counts)."""

    def __init__(self) -> None:
        self.prompt: dict[int, int] = {}
        self.completion = 0

    def add(self, prompt_key: int, outcome: Outcome) -> None:
        self.prompt[prompt_key] = outcome.prompt_eval_count
        self.completion += outcome.eval_count

    def usage(self) -> dict[str, int]:
        return _usage(sum(self.prompt.values()), self.completion)


# --- logprobs shapes -------------------------------------------------------------
def _chat_logprob(item: TokenLogprob) -> dict[str, Any]:
    return {
        "token": item.token, "logprob": item.logprob, "bytes": list(item.bytes),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(b)} for t, b, lp in item.top],
    }


def _legacy_logprobs(items: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The completions API's older shape: parallel lists and character offsets into the choice's text."""
    tokens, logprobs, tops, offsets = [], [], [], []
    for item in items:
        tokens.append(item.token)
        logprobs.append(item.logprob)
        tops.append(None if item.logprob is None else {t: lp for t, _b, lp in item.top})
        offsets.append(offset)
        offset += len(item.token)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


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

    def start(index: int) -> AsyncIterator[Piece | ToolCalls | Outcome]:
        return generate(
            _scheduler(request), facts, options=with_seed(options, index), keep_alive=_keep_alive(body.keep_alive),
            prompt=prompt, grammar=grammar, tools=plan.tools, calls_are_json=plan.forced,
            logit_bias=bias, logprobs=logprobs,
        )

    try:
        events = await _primed(request, _choices(body.n, start, together=body.seed is None), "messages")
    except ClientGone:
        return Response(status_code=499)
    reply = _ChatReply(body, logprobs is not None)
    if body.stream:
        return _sse(request, reply.chunks(events))
    return JSONResponse(await until_disconnected(request, reply.whole(events)))


class _ChatReply:
    def __init__(self, body: ChatCompletionRequest, with_logprobs: bool) -> None:
        self.body = body
        self.with_logprobs = with_logprobs
        self.head = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": body.model,
                     "system_fingerprint": FINGERPRINT}

    @staticmethod
    def tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """OpenAI's shape: arguments as a JSON string; the id the native API would give too."""
        return [
            {"id": call["id"], "type": "function",
             "function": {"name": call["function"]["name"],
                          "arguments": json.dumps(call["function"].get("arguments") or {})}}
            for call in calls
        ]

    async def whole(self, events: Events) -> dict[str, Any]:
        choices, counter = [], _Counter()
        for choice in await _gather(events):
            counter.add(0, choice.outcome)
            calls = self.tool_calls(choice.outcome.tool_calls)
            content = choice.text if choice.text or not calls else None  # null beside tool calls, as OpenAI
            message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
            if calls:
                message["tool_calls"] = calls
            logprobs = None
            if self.with_logprobs:
                logprobs = {"content": [_chat_logprob(lp) for lp in choice.logprobs], "refusal": None}
            choices.append({"index": choice.index, "message": message,
                            "finish_reason": _finish_reason(choice.outcome), "logprobs": logprobs})
        return {**self.head, "object": "chat.completion", "choices": choices, "usage": counter.usage()}

    async def chunks(self, events: Events) -> AsyncIterator[dict[str, Any]]:
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        extra = {"usage": None} if include_usage else {}
        counter, started = _Counter(), set()

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict:
            return {**self.head, "object": "chat.completion.chunk",
                    "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
                    **extra}

        async with aclosing(events):
            async for index, item in events:
                if index not in started:
                    started.add(index)
                    yield chunk(index, {"role": "assistant", "content": "", "refusal": None})
                if isinstance(item, Piece):
                    logprobs = None
                    if self.with_logprobs:
                        logprobs = {"content": [_chat_logprob(lp) for lp in item.logprobs or []], "refusal": None}
                    yield chunk(index, {"content": item.text}, logprobs=logprobs)
                elif isinstance(item, ToolCalls):  # as soon as each call is complete
                    calls = self.tool_calls(item.calls)
                    yield chunk(index, {"tool_calls": [
                        {"index": call["function"]["index"], **shaped}
                        for call, shaped in zip(item.calls, calls, strict=True)
                    ]})
                else:
                    counter.add(0, item)
                    yield chunk(index, {}, _finish_reason(item))
        if include_usage:
            yield {**self.head, "object": "chat.completion.chunk", "choices": [], "usage": counter.usage()}


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

    def start(index: int) -> AsyncIterator[Piece | ToolCalls | Outcome]:
        prompt_index, choice = divmod(index, body.n)
        return generate(
            _scheduler(request), facts, options=with_seed(options, choice), keep_alive=_keep_alive(body.keep_alive),
            prompt=spec(prompts[prompt_index]), logit_bias=bias, logprobs=body.logprobs,
            on_prompt=heard(prompt_index),
        )

    scores: dict[int, list[TokenLogprob]] = {}
    if body.echo and body.logprobs is not None:  # score the prompts first (lm-eval-style use)
        merged = facts.params.merged(options)
        async with _scheduler(request).lease(facts, merged, keep_alive=_keep_alive(body.keep_alive)) as (runner, _):
            for index, prompt in enumerate(prompts):
                try:
                    scores[index], echo = await runner.score(spec(prompt), body.logprobs)
                except (ContextLengthExceeded, InvalidRequest) as exc:
                    exc.param = exc.param or "prompt"
                    raise
                if echo is not None:
                    echoes[index] = echo

    try:
        events = await _primed(request, _choices(len(prompts) * body.n, start, together=body.seed is None), "prompt")
    except ClientGone:
        return Response(status_code=499)
    reply = _CompletionReply(body, echoes, scores)
    if body.stream:
        return _sse(request, reply.chunks(events))
    return JSONResponse(await until_disconnected(request, reply.whole(events)))


class _CompletionReply:
    def __init__(self, body: CompletionRequest, echoes: dict[int, str], scores: dict[int, list[TokenLogprob]]) -> None:
        self.body = body
        self.echoes = echoes  # filled in as each prompt is tokenized
        self.scores = scores  # the prompts' own log-probabilities, for echo with logprobs
        self.head = {"id": f"cmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": body.model,
                     "system_fingerprint": FINGERPRINT}

    def echo(self, index: int) -> str:
        return self.echoes.get(index // self.body.n, "") if self.body.echo else ""

    def echo_logprobs(self, index: int) -> list[TokenLogprob]:
        return self.scores.get(index // self.body.n, []) if self.body.echo else []

    async def whole(self, events: Events) -> dict[str, Any]:
        choices, counter = [], _Counter()
        for choice in await _gather(events):
            counter.add(choice.index // self.body.n, choice.outcome)
            logprobs = None
            if self.body.logprobs is not None:
                logprobs = _legacy_logprobs(self.echo_logprobs(choice.index) + choice.logprobs, 0)
            choices.append({"index": choice.index, "text": self.echo(choice.index) + choice.text,
                            "logprobs": logprobs, "finish_reason": _finish_reason(choice.outcome)})
        return {**self.head, "object": "text_completion", "choices": choices, "usage": counter.usage()}

    async def chunks(self, events: Events) -> AsyncIterator[dict[str, Any]]:
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        extra = {"usage": None} if include_usage else {}
        counter, offsets = _Counter(), {}

        def chunk(index: int, text: str, finish: str | None = None, logprobs: Any = None) -> dict:
            return {**self.head, "object": "text_completion",
                    "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}],
                    **extra}

        async with aclosing(events):
            async for index, item in events:
                if index not in offsets:
                    echo = self.echo(index)
                    offsets[index] = len(echo)
                    if echo:
                        echoed = None
                        if self.body.logprobs is not None:
                            echoed = _legacy_logprobs(self.echo_logprobs(index), 0)
                        yield chunk(index, echo, logprobs=echoed)
                if isinstance(item, Piece):
                    logprobs = None
                    if self.body.logprobs is not None:
                        logprobs = _legacy_logprobs(item.logprobs or [], offsets[index])
                    offsets[index] += len(item.text)
                    yield chunk(index, item.text, logprobs=logprobs)
                    continue
                counter.add(index // self.body.n, item)
                yield chunk(index, "", _finish_reason(item))
        if include_usage:
            yield {**self.head, "object": "text_completion", "choices": [], "usage": counter.usage()}


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
    data = []
    for index, vector in enumerate(result.vectors):
        encoded: Any = vector
        if body.encoding_format == "base64":
            encoded = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}}


def _parsed(options: dict[str, Any] | None) -> Options:
    try:
        return parse_options(options)
    except InvalidRequest as exc:
        exc.param = exc.param or "options"
        raise


# --- /v1/models ------------------------------------------------------------------
def _model_object(entry: Any) -> dict[str, Any]:
    name: ModelName = entry.name
    return {"id": name.display, "object": "model", "created": int(entry.modified_at.timestamp()),
            "owned_by": name.namespace or "library"}


@router.get("/models", summary="List models")
async def list_models(request: Request) -> dict[str, Any]:
    entries = await run_in_threadpool(request.app.state.store.list)
    return {"object": "list", "data": [_model_object(entry) for entry in entries]}


@router.get("/models/{model:path}", summary="Retrieve a model")
async def get_model(request: Request, model: str = Path(json_schema_extra={"pattern": MODEL_NAME_PATTERN})) -> dict:
    entry = await run_in_threadpool(request.app.state.store.get, _name(model))
    return _model_object(entry)
