"""What goes into a completion and what comes out, shared by the runner and the batching engine."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sampling:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    penalize_newline: bool = True
    seed: int = -1


@dataclass
class CompletionRequest:
    prompt_tokens: list[int]
    sampling: Sampling = field(default_factory=Sampling)
    num_predict: int = -1  # -1: until a stop or a full context
    stop: list[str] = field(default_factory=list)
    grammar: str | None = None  # GBNF
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit; -100 bans
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and the k likeliest
    context_limit: int | None = None  # the num_ctx the request asked for, when an instance with more serves it


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability under the model (before sampling settings)."""

    token: str
    bytes: bytes
    logprob: float | None  # None: the first token of a scored prompt, which nothing predicts
    top: list[tuple[str, bytes, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Piece:
    text: str
    logprobs: list[TokenLogprob] | None = None  # the tokens this text came from, when asked for


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    prompt_eval_ns: int
    eval_count: int
    eval_ns: int
    output_tokens: list[int]
    context: list[int] = field(default_factory=list)  # the prompt's tokens (Ollama's ``context``), set by the runner


class StopMatcher:
    """Holds back text that may be the start of a stop sequence; cuts at a full one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop sequence was hit)."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [(self.pending.find(s), s) for s in self.stops if s in self.pending]
        if hits:
            index = min(i for i, _ in hits)
            out, self.pending = self.pending[:index], ""
            return out, True
        keep = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:length]):
                    keep = max(keep, length)
                    break
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
