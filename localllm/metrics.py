"""Prometheus metrics of one daemon (``GET /metrics``), in a registry of its own.

Counters and histograms are fed where things happen (HTTP middleware, the generation path, the
batching engine's thread); the gauges of queue depth, active sequences and loaded models are read
from the scheduler when scraped, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_GAP_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("localllm_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter("localllm_prompt_tokens", "Prompt tokens of finished generations", ["model"],
                                     registry=r)
        self.generated_tokens = Counter("localllm_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.queue_depth = Gauge("localllm_queue_depth", "Requests waiting for a free sequence slot", registry=r)
        self.active_sequences = Gauge("localllm_active_sequences", "Sequences being generated", registry=r)
        self.loaded_models = Gauge("localllm_loaded_models", "Model instances loaded", registry=r)
        self.time_to_first_token = Histogram(
            "localllm_time_to_first_token_seconds", "From a request's arrival at the engine to its first token",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inter_token_latency = Histogram(
            "localllm_inter_token_latency_seconds", "Gap between consecutive tokens of one sequence",
            buckets=TOKEN_GAP_BUCKETS, registry=r,
        )

    def observe_token(self, first: bool, seconds: float) -> None:
        """Called from the engine's thread for every sampled token."""
        (self.time_to_first_token if first else self.inter_token_latency).observe(seconds)

    def count_generation(self, model: str, prompt_tokens: int, generated: int) -> None:
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generated_tokens.labels(model).inc(generated)

    def watch(self, queued: Callable[[], float], active: Callable[[], float], loaded: Callable[[], float]) -> None:
        self.queue_depth.set_function(queued)
        self.active_sequences.set_function(active)
        self.loaded_models.set_function(loaded)

    def render(self) -> bytes:
        return generate_latest(self.registry)
