"""The runner: one loaded llama.cpp model behind a small interface.

A :class:`CompletionRequest` goes in, an async stream of :class:`Piece` events
and one final :class:`Finished` comes out; closing the stream cancels the
work within one token. Nothing above this module knows how decoding happens,
so its insides can become a continuous-batching engine without changing the
callers.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from ..errors import InvalidModelFile, InvalidRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadConfig:
    """What identifies one loaded instance of a model."""

    model_path: Path
    n_ctx: int
    n_batch: int
    n_threads: int
    use_mmap: bool = True
    use_mlock: bool = False
    embedding: bool = False
    mean_pooling: bool = False  # for models that declare no pooling of their own
    last_n_tokens: int = 64


@dataclass
class Sampling:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
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


@dataclass(frozen=True)
class Piece:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" | "length"
    prompt_tokens: int
    prompt_eval_ns: int
    eval_count: int
    eval_ns: int
    output_tokens: list[int]


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


class LlamaRunner:
    """One llama.cpp model instance; one completion at a time."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        started = time.perf_counter()
        try:
            self.llama = llama_cpp.Llama(
                model_path=str(config.model_path),
                n_ctx=config.n_ctx,
                n_batch=min(config.n_batch, config.n_ctx),
                n_ubatch=min(config.n_batch, config.n_ctx),
                n_threads=config.n_threads,
                n_threads_batch=config.n_threads,
                use_mmap=config.use_mmap,
                use_mlock=config.use_mlock,
                embedding=config.embedding,
                pooling_type=_pooling_for(config),
                last_n_tokens_size=max(config.last_n_tokens, 0),
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise InvalidModelFile(f"llama.cpp could not load the model: {exc}") from exc
        self.load_seconds = time.perf_counter() - started
        self._model = self.llama._model
        self._lock = asyncio.Lock()
        # The llama context is used by one thread at a time, even when a cancelled request's
        # worker is still finishing its last token while the next request starts.
        self._busy = threading.Lock()
        self._piece_buffer = ctypes.create_string_buffer(256)

    # --- facts ---------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self.llama.n_ctx()

    @property
    def bos_text(self) -> str:
        bos = self._model.token_bos()
        return self._model.token_get_text(bos) if bos >= 0 else ""

    @property
    def eos_text(self) -> str:
        eos = self._model.token_eos()
        return self._model.token_get_text(eos) if eos >= 0 else ""

    @property
    def bos_token(self) -> int:
        return self._model.token_bos()

    @property
    def adds_bos(self) -> bool:
        return bool(self._model.add_bos_token()) and self._model.token_bos() >= 0

    def fim_tokens(self) -> tuple[int, int, int] | None:
        pre, suf, mid = self._model.token_prefix(), self._model.token_suffix(), self._model.token_middle()
        return (pre, suf, mid) if min(pre, suf, mid) >= 0 else None

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]:
        if not text:
            return [self.bos_token] if add_bos and self.adds_bos else []
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos and self.adds_bos, special=special)

    def _piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (llama-cpp-python's own helper caps pieces at 32 bytes)."""
        n = llama_cpp.llama_token_to_piece(self._model.vocab, token, self._piece_buffer, 256, 0, special)
        if n >= 0:
            return self._piece_buffer.raw[:n]
        buffer = ctypes.create_string_buffer(-n)  # a rare piece longer than 256 bytes
        n = llama_cpp.llama_token_to_piece(self._model.vocab, token, buffer, len(buffer), 0, special)
        return buffer.raw[:n]

    def close(self) -> None:
        with self._busy:
            self.llama.close()

    # --- completion ----------------------------------------------------------
    async def complete(self, request: CompletionRequest) -> AsyncIterator[Piece | Finished]:
        """Stream a completion. Closing the iterator early cancels the decode within one token."""
        if len(request.prompt_tokens) >= self.n_ctx:
            raise InvalidRequest(
                f"the prompt is {len(request.prompt_tokens)} tokens, more than this model's context of "
                f"{self.n_ctx} tokens holds; shorten it or raise the num_ctx option"
            )
        async with self._lock:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[Piece | Finished | BaseException] = asyncio.Queue()
            cancel = threading.Event()

            def emit(item: Piece | Finished | BaseException) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            worker = threading.Thread(
                target=self._run, args=(request, cancel, emit), name="llama-decode", daemon=True
            )
            worker.start()
            try:
                while True:
                    item = await queue.get()
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    if isinstance(item, Finished):
                        return
            finally:
                cancel.set()
                await asyncio.to_thread(worker.join)

    def _run(self, request: CompletionRequest, cancel: threading.Event, emit: Callable) -> None:
        try:
            with self._busy:
                emit(self._decode(request, cancel, emit))
        except BaseException as exc:  # delivered to the awaiting side
            log.exception("decode failed")
            emit(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))

    def _decode(self, request: CompletionRequest, cancel: threading.Event, emit: Callable) -> Finished:
        llama, s = self.llama, request.sampling
        llama.set_seed(s.seed if s.seed >= 0 else random.randrange(2**31))
        grammar = llama_cpp.LlamaGrammar.from_string(request.grammar, verbose=False) if request.grammar else None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stopper = StopMatcher(request.stop)
        vocab = self._model.vocab
        started = time.perf_counter_ns()
        first_token_at = 0
        output: list[int] = []
        reason = "stop"
        budget = request.num_predict if request.num_predict >= 0 else None
        room = self.n_ctx - len(request.prompt_tokens)
        if budget == 0:
            return Finished("length", len(request.prompt_tokens), 0, 0, 0, [])
        # Start from an empty cache: llama-cpp-python's prefix reuse trims the KV cache in place,
        # which corrupts models with sliding-window attention (Gemma 3). Prefix reuse belongs to
        # the batching engine, which manages cache cells itself.
        self._clear_cache()
        tokens = llama.generate(
            request.prompt_tokens,
            top_k=s.top_k,
            top_p=s.top_p,
            min_p=s.min_p,
            typical_p=s.typical_p,
            temp=s.temperature,
            repeat_penalty=s.repeat_penalty,
            frequency_penalty=s.frequency_penalty,
            presence_penalty=s.presence_penalty,
            mirostat_mode=s.mirostat,
            mirostat_tau=s.mirostat_tau,
            mirostat_eta=s.mirostat_eta,
            penalize_nl=s.penalize_newline,
            grammar=grammar,
        )
        try:
            for token in tokens:
                if not first_token_at:
                    first_token_at = time.perf_counter_ns()
                if cancel.is_set():
                    reason = "cancelled"
                    log.info("generation cancelled after %d tokens", len(output))
                    break
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    break
                output.append(token)
                # Control tokens are rendered as text, so stop words such as <start_of_turn> or
                # <|im_end|> and tool-call markers such as [TOOL_CALLS] can be seen at all.
                text = decoder.decode(self._piece(token, special=True))
                safe, stopped = stopper.feed(text)
                if safe:
                    emit(Piece(safe))
                if stopped:
                    break
                if (budget is not None and len(output) >= budget) or len(output) >= room:
                    reason = "length"
                    break
        finally:
            tokens.close()
        tail = stopper.flush() if reason != "stop" or not stopper.stops else ""
        tail += decoder.decode(b"", final=True)
        if tail and reason != "cancelled":
            emit(Piece(tail))
        ended = time.perf_counter_ns()
        first_token_at = first_token_at or ended
        return Finished(
            reason=reason,
            prompt_tokens=len(request.prompt_tokens),
            prompt_eval_ns=first_token_at - started,
            eval_count=len(output),
            eval_ns=ended - first_token_at,
            output_tokens=output,
        )

    # --- embeddings ----------------------------------------------------------
    async def embed(self, texts: list[str], *, truncate: bool) -> tuple[list[list[float]], int]:
        """Pooled, L2-normalized embeddings and the number of input tokens."""
        async with self._lock:
            return await asyncio.to_thread(self._embed, texts, truncate)

    def _embed(self, texts: list[str], truncate: bool) -> tuple[list[list[float]], int]:
        with self._busy:
            return self._embed_all(texts, truncate)

    def _embed_all(self, texts: list[str], truncate: bool) -> tuple[list[list[float]], int]:
        vectors, count = [], 0
        limit = self.n_ctx
        for text in texts:
            tokens = self.tokenize(text, add_bos=True)
            if len(tokens) > limit:
                if not truncate:
                    raise InvalidRequest(
                        f"the input is {len(tokens)} tokens, more than the context of {limit}; "
                        "set truncate to true or raise num_ctx"
                    )
                tokens = tokens[:limit]
            count += len(tokens)
            vectors.append(self._embed_tokens(tokens))
        return vectors, count

    def _clear_cache(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llama._ctx.ctx), True)
        self.llama.reset()

    def _embed_tokens(self, tokens: list[int]) -> list[float]:
        llama = self.llama
        self._clear_cache()
        llama._batch.reset()
        llama._batch.add_sequence(tokens, 0, False)
        llama._ctx.decode(llama._batch)
        pointer = llama_cpp.llama_get_embeddings_seq(llama._ctx.ctx, 0)
        if not pointer:
            raise InvalidModelFile("llama.cpp returned no pooled embedding for this model")
        vector = np.ctypeslib.as_array(pointer, shape=(llama.n_embd(),)).astype(np.float64)
        norm = float(np.linalg.norm(vector))
        return (vector / norm if norm > 0 else vector).tolist()


def _pooling_for(config: LoadConfig) -> int:
    # Causal LMs declare no pooling; their token vectors are averaged for /api/embed.
    if config.embedding and config.mean_pooling:
        return llama_cpp.LLAMA_POOLING_TYPE_MEAN
    return llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@llama_cpp.llama_log_callback
def _quiet_llama_log(_level: int, _text: bytes, _data: ctypes.c_void_p) -> None:
    """llama.cpp's own log lines would flood the daemon's stderr; the daemon logs what matters."""


with contextlib.suppress(Exception):
    llama_cpp.llama_log_set(_quiet_llama_log, ctypes.c_void_p())
