"""Embeddings for any API face: lease an embedding instance, embed, shorten to ``dimensions``."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .facts import ModelFacts
from .options import Options
from .scheduler import Scheduler


@dataclass
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int
    load_ns: int
    total_ns: int


async def embed(
    scheduler: Scheduler,
    facts: ModelFacts,
    inputs: list[str | list[int]],
    *,
    options: Options,
    keep_alive: float | None,
    truncate: bool,
    dimensions: int | None = None,
) -> Embeddings:
    """L2-normalized vectors, one per input (a text or a list of token ids)."""
    started = time.perf_counter_ns()
    merged = facts.params.merged(options)
    async with scheduler.lease(facts, merged, keep_alive=keep_alive, embedding=True) as (runner, load_seconds):
        vectors, count = await runner.embed(inputs, truncate=truncate) if inputs else ([], 0)
    return Embeddings(
        vectors=[shorten(v, dimensions) for v in vectors],
        prompt_tokens=count,
        load_ns=int(load_seconds * 1e9),
        total_ns=time.perf_counter_ns() - started,
    )


def shorten(vector: list[float], dimensions: int | None) -> list[float]:
    """Keep the first ``dimensions`` values and renormalize (Matryoshka-style, as Ollama does)."""
    if not dimensions or dimensions >= len(vector):
        return vector
    head = vector[:dimensions]
    norm = sum(v * v for v in head) ** 0.5
    return [v / norm for v in head] if norm else head
