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

from ..errors import ContextLengthExceeded, InvalidModelFile, InvalidRequest, ServerBusy

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
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit; -100 bans
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and the k likeliest


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
    """One llama.cpp model instance; one completion at a time, up to ``max_queue`` more waiting."""

    def __init__(self, config: LoadConfig, *, max_queue: int = 512) -> None:
        self.config = config
        self.max_queue = max_queue
        self._waiting = 0
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
    def n_vocab(self) -> int:
        return self.llama.n_vocab()

    def check_tokens(self, tokens: list[int], param: str) -> None:
        """Token ids from a client must exist in the vocabulary before llama.cpp indexes with them."""
        n_vocab = self.n_vocab
        bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise InvalidRequest(f"token id {bad} is not in this model's vocabulary (0 to {n_vocab - 1})",
                                 param=param)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self._piece(t, special=True) for t in tokens).decode("utf-8", errors="replace")

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

    # --- turns ---------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """Wait for this instance in arrival order; refuse when ``max_queue`` requests already wait."""
        if self._lock.locked() and self._waiting >= self.max_queue:
            raise ServerBusy(
                f"this model is busy and {self._waiting} request(s) are already waiting for it; try again shortly"
            )
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    # --- completion ----------------------------------------------------------
    async def complete(self, request: CompletionRequest) -> AsyncIterator[Piece | Finished]:
        """Stream a completion. Closing the iterator early cancels the decode within one token."""
        if len(request.prompt_tokens) >= self.n_ctx:
            raise ContextLengthExceeded(
                f"the prompt is {len(request.prompt_tokens)} tokens, more than this model's context of "
                f"{self.n_ctx} tokens holds; shorten it or raise the num_ctx option"
            )
        self.check_tokens(list(request.logit_bias), "logit_bias")
        grammar = _compiled_grammar(request.grammar)
        async with self._turn():
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[Piece | Finished | BaseException] = asyncio.Queue()
            cancel = threading.Event()

            def emit(item: Piece | Finished | BaseException) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            worker = threading.Thread(
                target=self._run, args=(request, grammar, cancel, emit), name="llama-decode", daemon=True
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

    def _run(
        self, request: CompletionRequest, grammar: llama_cpp.LlamaGrammar | None, cancel: threading.Event,
        emit: Callable,
    ) -> None:
        try:
            with self._busy:
                emit(self._decode(request, grammar, cancel, emit))
        except BaseException as exc:  # delivered to the awaiting side
            log.exception("decode failed")
            emit(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))

    def _decode(
        self, request: CompletionRequest, grammar: llama_cpp.LlamaGrammar | None, cancel: threading.Event,
        emit: Callable,
    ) -> Finished:
        llama, s = self.llama, request.sampling
        llama.set_seed(s.seed % 2**32 if s.seed >= 0 else random.randrange(2**31))  # llama.cpp seeds are 32-bit
        processors = llama_cpp.LogitsProcessorList([_biaser(request.logit_bias)]) if request.logit_bias else None
        pending_logprobs: list[TokenLogprob] | None = [] if request.logprobs is not None else None
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
            logits_processor=processors,
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
                raw = self._piece(token, special=True)
                if pending_logprobs is not None:
                    pending_logprobs.append(self._logprob_of(token, raw, request.logprobs or 0))
                safe, stopped = stopper.feed(decoder.decode(raw))
                if safe:
                    emit(Piece(safe, pending_logprobs))
                    pending_logprobs = [] if pending_logprobs is not None else None
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
            emit(Piece(tail, pending_logprobs))
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

    def _logprob_of(self, token: int, raw: bytes, top: int, row: int = -1) -> TokenLogprob:
        """The token's log-probability from the logits it was sampled from (by default the last decoded row)."""
        pointer = llama_cpp.llama_get_logits_ith(self.llama._ctx.ctx, row)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)
        peak = logits.max()
        log_total = peak + np.log(np.exp(logits - peak).sum())
        best: list[tuple[str, bytes, float]] = []
        if top > 0:
            ids = np.argpartition(-logits, top)[:top]
            for other in ids[np.argsort(-logits[ids])]:
                piece = self._piece(int(other), special=True)
                best.append((piece.decode("utf-8", errors="replace"), piece, float(logits[other] - log_total)))
        return TokenLogprob(raw.decode("utf-8", errors="replace"), raw, float(logits[token] - log_total), best)

    # --- scoring -------------------------------------------------------------
    async def score(self, tokens: list[int], top: int) -> list[TokenLogprob]:
        """Each prompt token's log-probability given the tokens before it (the completions API's
        ``echo`` with ``logprobs``, used to score text); the first token's is None."""
        if len(tokens) > self.n_ctx:
            raise ContextLengthExceeded(
                f"the prompt is {len(tokens)} tokens, more than this model's context of {self.n_ctx} tokens holds"
            )
        async with self._turn():
            return await asyncio.to_thread(self._score, tokens, top)

    def _score(self, tokens: list[int], top: int) -> list[TokenLogprob]:
        with self._busy:
            llama = self.llama
            self._clear_cache()
            first = self._piece(tokens[0], special=True) if tokens else b""
            scored = [TokenLogprob(first.decode("utf-8", errors="replace"), first, None)] if tokens else []
            step = llama.n_batch  # the capacity of its batch
            for start in range(0, len(tokens), step):
                chunk = tokens[start:start + step]
                llama._batch.set_batch(chunk, n_past=start, logits_all=True)
                llama._ctx.decode(llama._batch)
                for row in range(len(chunk)):
                    following = start + row + 1
                    if following < len(tokens):
                        raw = self._piece(tokens[following], special=True)
                        scored.append(self._logprob_of(tokens[following], raw, top, row))
            self._clear_cache()
            return scored

    # --- embeddings ----------------------------------------------------------
    async def embed(self, inputs: list[str | list[int]], *, truncate: bool) -> tuple[list[list[float]], int]:
        """Pooled, L2-normalized embeddings of texts (or token lists) and the number of input tokens."""
        for item in inputs:
            if not isinstance(item, str):
                self.check_tokens(item, "input")
        async with self._turn():
            return await asyncio.to_thread(self._embed, inputs, truncate)

    def _embed(self, inputs: list[str | list[int]], truncate: bool) -> tuple[list[list[float]], int]:
        with self._busy:
            return self._embed_all(inputs, truncate)

    def _embed_all(self, inputs: list[str | list[int]], truncate: bool) -> tuple[list[list[float]], int]:
        vectors, count = [], 0
        limit = self.n_ctx
        for item in inputs:
            tokens = self.tokenize(item, add_bos=True) if isinstance(item, str) else list(item)
            if not tokens:
                raise InvalidRequest("an input to embed is empty", param="input")
            if len(tokens) > limit:
                if not truncate:
                    raise ContextLengthExceeded(
                        f"the input is {len(tokens)} tokens, more than the context of {limit}; "
                        "set truncate to true or raise num_ctx", param="input"
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


def _compiled_grammar(source: str | None) -> llama_cpp.LlamaGrammar | None:
    """Compile before the turn starts, so a grammar llama.cpp rejects is a 400, not a failed decode."""
    if not source:
        return None
    try:
        return llama_cpp.LlamaGrammar.from_string(source, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise InvalidRequest(f"the output grammar could not be compiled: {exc}", param="response_format") from exc


def _biaser(bias: dict[int, float]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A logits processor adding OpenAI's ``logit_bias`` (-100 bans a token outright)."""
    ids = np.fromiter(bias, dtype=np.intp, count=len(bias))
    values = np.array([-np.inf if v <= -100 else v for v in bias.values()], dtype=np.float32)

    def apply(_input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        scores[ids] += values
        return scores

    return apply


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
