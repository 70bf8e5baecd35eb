"""The runner protocol: what the daemon and a model's runner process say to each other.

JSON lines over the runner's stdin (requests) and a private copy of its stdout (events); its stderr
is the runner's log. JSON and not pickle: the runner holds llama.cpp and a file from the internet, so
nothing it sends may be able to run code in the daemon. Every request carries an ``id``; the events
for it carry the same ``id``::

    in:  {"op": "load", "config": LoadConfig}                                  (the first line, once)
         {"op": "complete", "id", "prompt": PromptSpec, "request": CompletionRequest without tokens}
         {"op": "score", "id", "prompt": PromptSpec, "top"}
         {"op": "embed", "id", "inputs", "truncate"}
         {"op": "cancel", "id"}
    out: {"event": "ready", "pid", "load_seconds", "n_ctx", "n_vocab", "rss"}  | {"event": "load_failed", "error"}
         {"event": "stats", "queued", "active", "rss", "timings"}              (every second, and as tokens flow)
         {"id", "event": "prompt", "tokens", "echo"}                           (a completion's prompt is built)
         {"id", "event": "piece", "text", "logprobs"}
         {"id", "event": "finished", "reason", "prompt_tokens", "prompt_eval_ns", "eval_count", "eval_ns",
                                     "output_tokens", "context"}
         {"id", "event": "scores", "logprobs"} | {"id", "event": "embeddings", "vectors", "count"}
         {"id", "event": "error", "error": {"kind", "message", "param"}}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import errors
from ..errors import LocalLLMError
from .requests import CompletionRequest, Finished, Piece, Sampling, TokenLogprob


@dataclass(frozen=True)
class LoadConfig:
    """What identifies one loaded instance of a model."""

    model_path: Path
    n_ctx: int  # per sequence
    n_batch: int
    n_threads: int
    use_mmap: bool = True
    use_mlock: bool = False
    embedding: bool = False
    mean_pooling: bool = False  # for models that declare no pooling of their own
    n_parallel: int = 4  # sequences decoded together (LOCALLLM_NUM_PARALLEL)
    adapters: tuple[Path, ...] = ()  # GGUF LoRA files applied at full strength

    def to_wire(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model_path"] = str(self.model_path)
        data["adapters"] = [str(path) for path in self.adapters]
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> LoadConfig:
        return cls(**{**data, "model_path": Path(data["model_path"]),
                      "adapters": tuple(Path(p) for p in data.get("adapters", ()))})


@dataclass
class PromptSpec:
    """What a runner needs to build one request's prompt tokens; built in the runner, off the daemon's loop.

    ``kind`` says how: ``chat`` renders ``messages`` (and ``tools``) with ``template`` (None: the plain-text
    fallback) and reads the messages' text as text, never as control tokens; ``text`` tokenizes ``prompt``
    as it is, control tokens included (raw prompts, the completions API); ``fim`` builds a fill-in-middle
    prompt of ``prompt`` and ``suffix``; ``tokens`` takes the client's token ids. ``context`` (token ids of
    an earlier answer) goes in front; ``echo`` asks for the prompt's text back (for token prompts)."""

    kind: str
    model: str  # the display name, for messages
    template: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    prompt: str = ""
    suffix: str | None = None
    context: list[int] | None = None
    tokens: list[int] | None = None
    echo: bool = False

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> PromptSpec:
        return cls(**data)


def dumps(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


# --- completions -----------------------------------------------------------------------------------------
def request_to_wire(request: CompletionRequest) -> dict[str, Any]:
    data = dataclasses.asdict(request)
    del data["prompt_tokens"]
    data["logit_bias"] = [[token, bias] for token, bias in request.logit_bias.items()]
    return data


def request_from_wire(data: dict[str, Any], prompt_tokens: list[int]) -> CompletionRequest:
    return CompletionRequest(
        prompt_tokens=prompt_tokens,
        sampling=Sampling(**data.get("sampling", {})),
        num_predict=int(data.get("num_predict", -1)),
        stop=list(data.get("stop", [])),
        grammar=data.get("grammar"),
        logit_bias={int(token): float(bias) for token, bias in data.get("logit_bias", [])},
        logprobs=data.get("logprobs"),
        context_limit=data.get("context_limit"),
    )


def _raw(value: bytes) -> str:
    return value.decode("latin-1")  # lossless: one character per byte


def logprobs_to_wire(items: list[TokenLogprob] | None) -> list[Any] | None:
    if items is None:
        return None
    return [[item.token, _raw(item.bytes), item.logprob, [[t, _raw(b), lp] for t, b, lp in item.top]]
            for item in items]


def logprobs_from_wire(data: list[Any] | None) -> list[TokenLogprob] | None:
    if data is None:
        return None
    return [TokenLogprob(token, raw.encode("latin-1"), logprob, [(t, b.encode("latin-1"), lp) for t, b, lp in top])
            for token, raw, logprob, top in data]


def piece_to_wire(job_id: int, piece: Piece) -> dict[str, Any]:
    return {"id": job_id, "event": "piece", "text": piece.text, "logprobs": logprobs_to_wire(piece.logprobs)}


def piece_from_wire(data: dict[str, Any]) -> Piece:
    return Piece(data["text"], logprobs_from_wire(data.get("logprobs")))


def finished_to_wire(job_id: int, finished: Finished) -> dict[str, Any]:
    return {"id": job_id, "event": "finished", **dataclasses.asdict(finished)}


def finished_from_wire(data: dict[str, Any]) -> Finished:
    names = {f.name for f in dataclasses.fields(Finished)}
    return Finished(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class PromptBuilt:
    """The first event of a completion: its prompt is built (``echo``: its text, when asked for)."""

    tokens: int
    echo: str | None = None


# --- errors ----------------------------------------------------------------------------------------------
def error_to_wire(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, LocalLLMError):
        return {"kind": type(exc).__name__, "message": exc.message, "param": exc.param}
    return {"kind": "InternalError", "message": f"internal error in the model runner: {type(exc).__name__}: {exc}",
            "param": None}


def error_from_wire(data: dict[str, Any]) -> LocalLLMError:
    """The daemon's own exception for an error a runner reported (only our error classes, by name)."""
    kind = getattr(errors, str(data.get("kind")), None)
    message = str(data.get("message") or "the model runner failed")
    if isinstance(kind, type) and issubclass(kind, LocalLLMError) and kind is not errors.ServerBusy:
        try:
            return kind(message, param=data.get("param"))
        except TypeError:
            pass
    if kind is errors.ServerBusy:
        return errors.ServerBusy(message)
    return LocalLLMError(message, param=data.get("param"))
