"""OpenAI's response shapes, out: what the generation yields becomes chat completions, text completions,
their SSE chunks, usage, log-probabilities and model objects, field for field as OpenAI sends them."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import __version__
from ..llm.generation import Event, Outcome, ToolCalls
from ..llm.requests import Piece, TokenLogprob
from ..names import ModelName
from .openai_schemas import ChatCompletionRequest, CompletionRequest

FINGERPRINT = f"fp_localllm_{__version__}"
Events = AsyncIterator[tuple[int, Event]]


def _finish_reason(outcome: Outcome) -> str:
    if outcome.tool_calls:
        return "tool_calls"
    return "length" if outcome.reason == "length" else "stop"


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


class ChatReply:
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


class CompletionReply:
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


def embedding_list(model: str, vectors: list[list[float]], prompt_tokens: int, encoding: str | None) -> dict[str, Any]:
    data = []
    for index, vector in enumerate(vectors):
        encoded: Any = vector
        if encoding == "base64":
            encoded = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def model_object(entry: Any) -> dict[str, Any]:
    name: ModelName = entry.name
    return {"id": name.display, "object": "model", "created": int(entry.modified_at.timestamp()),
            "owned_by": name.namespace or "library"}
