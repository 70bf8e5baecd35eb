"""One generation from start to end, for any API face: lease a runner, build the
prompt, stream the answer, gather Ollama's timings, parse tool calls; ``n`` choices
side by side; prompts scored without generating.

The native and the OpenAI-compatible APIs both shape what this yields; they
do not talk to the runner or the scheduler themselves.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from .facts import ModelFacts
from .grammar import grammar_for
from .options import Options
from .protocol import PromptBuilt, PromptSpec
from .requests import CompletionRequest, Finished, Piece, Sampling, TokenLogprob
from .scheduler import Scheduler
from .tools import ToolCallStream


@dataclass
class Outcome:
    """How a generation ended, with Ollama's counters (durations in nanoseconds)."""

    reason: str  # "stop" | "length"
    text: str
    prompt_eval_count: int
    prompt_eval_ns: int
    eval_count: int
    eval_ns: int
    load_ns: int
    total_ns: int
    context: list[int]
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def timings(self) -> dict[str, int]:
        return {
            "total_duration": self.total_ns,
            "load_duration": self.load_ns,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_ns,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_ns,
        }


@dataclass
class ToolCalls:
    """Tool calls the model finished writing, yielded as soon as each is complete (before the Outcome)."""

    calls: list[dict[str, Any]]


def with_ids(calls: list[dict[str, Any]], first_index: int = 0) -> list[dict[str, Any]]:
    """Calls as both APIs send them: an ``id`` a ``tool`` message can name, and the call's ``index``."""
    return [
        {"id": f"call_{secrets.token_hex(12)}",
         "function": {"index": first_index + offset, **call["function"]}}
        for offset, call in enumerate(calls)
    ]


def forced_calls(text: str, names: set[str]) -> tuple[str, list[dict[str, Any]]]:
    """Tool calls from output a grammar forced into ``{"name", "arguments"}`` objects (or a list of them).

    A cut-short output (the token limit) does not parse; it stays content, as any other non-call."""
    try:
        data = json.loads(text)
    except ValueError:
        return text, []
    items = data if isinstance(data, list) else [data]
    calls = [
        {"function": {"name": item["name"], "arguments": item.get("arguments") or {}}}
        for item in items
        if isinstance(item, dict) and item.get("name") in names
    ]
    return ("", calls) if calls else (text, [])


def sampling_of(options: Options) -> Sampling:
    """The sampling settings the options set (``Sampling`` names its fields after Ollama's options)."""
    return Sampling(**options.model_dump(include=set(Sampling.__dataclass_fields__), exclude_none=True))


async def load_only(scheduler: Scheduler, facts: ModelFacts, options: Options, keep_alive: float | None) -> int:
    """Load (or keep) the model without generating; returns the load time in ns. ``keep_alive`` 0 unloads."""
    if keep_alive == 0:
        await scheduler.unload(facts)
        return 0
    async with scheduler.lease(facts, options, keep_alive=keep_alive) as (_runner, load_seconds):
        return int(load_seconds * 1e9)


async def generate(
    scheduler: Scheduler,
    facts: ModelFacts,
    *,
    options: Options,
    keep_alive: float | None,
    prompt: PromptSpec,
    format: Any = None,
    grammar: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    calls_are_json: bool = False,
    logit_bias: dict[int, float] | None = None,
    logprobs: int | None = None,
    on_prompt: Callable[[PromptBuilt], None] | None = None,
) -> AsyncIterator[Piece | ToolCalls | Outcome]:
    """Yield text pieces and, with tools, :class:`ToolCalls` as each call is complete; then one
    :class:`Outcome`, which holds every call again (for answers that are not streamed).

    ``grammar`` (GBNF) takes the place of ``format``; ``calls_are_json`` says the grammar forced the
    whole output to be tool calls as JSON (OpenAI's ``tool_choice: required``), so it is read whole, at the end.
    ``on_prompt`` hears when the runner has built the prompt (with its text, when ``prompt.echo`` asks).
    """
    started = time.perf_counter_ns()
    options = facts.params.merged(options)
    grammar = grammar or grammar_for(format)
    names = {t.get("function", {}).get("name") for t in tools or [] if isinstance(t, dict)} - {None}
    calls_stream = ToolCallStream(names) if tools and not calls_are_json else None
    shown: list[str] = []
    calls: list[dict[str, Any]] = []
    held_logprobs: list[Any] = []

    def shaped(events: list[str | dict[str, Any]]) -> list[Piece | ToolCalls]:
        """The stream's content and calls as events (content takes the log-probabilities read so far)."""
        result: list[Piece | ToolCalls] = []
        for item in events:
            if isinstance(item, str):
                shown.append(item)
                result.append(Piece(item, None if logprobs is None else list(held_logprobs)))
                held_logprobs.clear()
            else:
                new = with_ids([item], len(calls))
                calls.extend(new)
                result.append(ToolCalls(new))
        return result

    async with scheduler.lease(facts, options, keep_alive=keep_alive) as (runner, load_seconds):
        request = CompletionRequest(
            prompt_tokens=[],  # built by the runner, from ``prompt``
            sampling=sampling_of(options),
            num_predict=options.get("num_predict", -1),
            # a request's stop words replace the params layer's; with none, the runner stops at the template's
            # end-of-turn markers (and llama.cpp at the vocabulary's end-of-generation tokens)
            stop=list(options.stop or []),
            grammar=grammar,
            logit_bias=logit_bias or {},
            logprobs=logprobs,
            context_limit=options.num_ctx,
        )
        pieces: list[Piece] = []
        finished: Finished | None = None
        async with aclosing(runner.complete(prompt, request)) as events:
            async for event in events:
                if isinstance(event, PromptBuilt):
                    if on_prompt is not None:
                        on_prompt(event)
                elif isinstance(event, Finished):
                    finished = event
                elif calls_stream is not None:
                    held_logprobs.extend(event.logprobs or [])
                    for item in shaped(calls_stream.feed(event.text)):
                        yield item
                elif tools:
                    pieces.append(event)  # forced calls: read whole at the end
                else:
                    shown.append(event.text)
                    yield event
    assert finished is not None
    if scheduler.metrics is not None:
        scheduler.metrics.count_generation(facts.name.display, finished.prompt_tokens, finished.eval_count)
    if calls_stream is not None:
        for item in shaped(calls_stream.finish()):
            yield item
    elif tools:
        text, forced = forced_calls("".join(piece.text for piece in pieces), names)
        calls.extend(with_ids(forced))
        if text:
            shown.append(text)
            yield Piece(text, None if logprobs is None else [lp for piece in pieces for lp in piece.logprobs or []])
        if calls:
            yield ToolCalls(list(calls))
    yield Outcome(
        reason=finished.reason,
        text="".join(shown),
        prompt_eval_count=finished.prompt_tokens,
        prompt_eval_ns=finished.prompt_eval_ns,
        eval_count=finished.eval_count,
        eval_ns=finished.eval_ns,
        load_ns=int(load_seconds * 1e9),
        total_ns=time.perf_counter_ns() - started,
        context=finished.context + finished.output_tokens,
        tool_calls=calls,
    )


Event = Piece | ToolCalls | Outcome


async def choices(count: int, start: Callable[[int], AsyncIterator[Event]], *, together: bool,
                  ) -> AsyncIterator[tuple[int, Event]]:
    """``count`` generations (``start(index)`` begins one), each event tagged with its index: side by side
    (the engine batches them), or one after another when ``together`` is false. A seeded request asks for
    the latter: what else shares a batch changes the logits' last bits, and a seed promises the same answers."""
    if count == 1 or not together:
        for index in range(count):
            async with aclosing(start(index)) as events:
                async for item in events:
                    yield index, item
        return
    queue: asyncio.Queue[tuple[int, Event | BaseException | None]] = asyncio.Queue()

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


async def score(
    scheduler: Scheduler,
    facts: ModelFacts,
    prompts: list[PromptSpec],
    *,
    options: Options,
    keep_alive: float | None,
    logprobs: int,
) -> list[tuple[list[TokenLogprob], str | None]]:
    """Each prompt's own tokens with their log-probabilities (``logprobs`` alternatives each) and, when the
    spec asks for its echo, the prompt's text; nothing is generated (lm-eval-style scoring)."""
    async with scheduler.lease(facts, facts.params.merged(options), keep_alive=keep_alive) as (runner, _):
        return [await runner.score(prompt, logprobs) for prompt in prompts]
