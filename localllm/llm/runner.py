"""One loaded llama.cpp model, in the runner process (``runner_process.py``), behind a synchronous interface.

Completions run in a continuous-batching engine (``engine.py``) with ``n_parallel`` sequences: a
:class:`~localllm.llm.engine.Job` goes in, its ``emit`` gets Pieces and one Finished (or an exception)
from the engine's thread. An instance loaded for embeddings has a context of its own for pooled vectors
instead. The daemon never holds one of these: it talks to the runner process (``runner_client.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import numpy as np

from ..errors import ContextLengthExceeded, InvalidModelFile, InvalidRequest
from .engine import BatchEngine, Emit, Job
from .literal import ControlStrings
from .protocol import LoadConfig
from .requests import CompletionRequest, Finished

log = logging.getLogger(__name__)

__all__ = ["LlamaRunner", "LoadConfig"]


class LlamaRunner:
    """One llama.cpp model instance: batched completions, or embeddings."""

    def __init__(self, config: LoadConfig, *, max_queue: int = 512,
                 on_token: Callable[[bool, float], None] | None = None) -> None:
        self.config = config
        started = time.perf_counter()
        params = llama_cpp.llama_model_default_params()
        params.load_mode = (1 if config.use_mmap else 0) | (2 if config.use_mlock else 0)  # llama_load_mode
        # Weights stay in their file layout: repacked weights are multiplied 4 rows at a time and a
        # remainder row by another kernel, so a sequence's numbers would depend on its batch. (It also
        # measured no faster for batched decoding on this kind of machine.)
        params.use_extra_bufts = False
        try:
            self._model = llama_cpp._internals.LlamaModel(path_model=str(config.model_path), params=params,
                                                          verbose=False)
        except (ValueError, RuntimeError) as exc:  # its message names the file's path: not for a client
            raise InvalidModelFile("llama.cpp could not load the model file (its tensors or metadata do not "
                                   "make a model it knows)") from exc
        self.engine: BatchEngine | None = None
        self.embedder: _Embedder | None = None
        try:
            adapters = [self._load_adapter(path) for path in config.adapters]
            if config.embedding:
                self.embedder = _Embedder(self._model, config)
            else:
                self.engine = BatchEngine(
                    self._model, n_ctx=config.n_ctx, n_parallel=config.n_parallel, n_batch=config.n_batch,
                    n_threads=config.n_threads, max_queue=max_queue, on_token=on_token,
                )
            if adapters:
                context = self.engine.ctx if self.engine is not None else self.embedder.context.ctx
                _apply_adapters(context, adapters)
        except InvalidModelFile:
            self.close()
            raise
        except (ValueError, RuntimeError) as exc:
            self.close()
            raise InvalidModelFile(f"llama.cpp could not create a context for the model: {exc}") from exc
        self.load_seconds = time.perf_counter() - started
        self.max_queue = max_queue
        self._piece_buffer = ctypes.create_string_buffer(256)
        self._vocabulary: tuple[ControlStrings, int] | None = None
        self._vocabulary_lock = threading.Lock()

    # --- facts ---------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        """The context of one sequence (a request's prompt and answer together)."""
        return self.config.n_ctx

    @property
    def n_vocab(self) -> int:
        return self._model.n_vocab()

    @property
    def queued(self) -> int:
        return self.engine.queued if self.engine else 0

    @property
    def active(self) -> int:
        return self.engine.active if self.engine else 0

    def check_tokens(self, tokens: list[int], param: str) -> None:
        """Token ids from a client must exist in the vocabulary before llama.cpp indexes with them."""
        n_vocab = self.n_vocab
        bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise InvalidRequest(f"token id {bad} is not in this model's vocabulary (0 to {n_vocab - 1})",
                                 param=param)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self._piece(t) for t in tokens).decode("utf-8", errors="replace")

    @property
    def bos_text(self) -> str:
        bos = self._model.token_bos()
        return self._model.token_get_text(bos) if bos >= 0 else ""

    @property
    def eos_text(self) -> str:
        eos = self._model.token_eos()
        return self._model.token_get_text(eos) if eos >= 0 else ""

    def _load_adapter(self, path: Path) -> object:
        adapter = llama_cpp.llama_adapter_lora_init(self._model.model, str(path).encode())
        if not adapter:
            raise InvalidModelFile("llama.cpp could not load the LoRA adapter (is it for this model?)")
        return adapter

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
        return self._model.tokenize(text.encode("utf-8"), add_bos=add_bos and self.adds_bos, special=special)

    def _piece(self, token: int) -> bytes:
        """The bytes of one token (llama-cpp-python's own helper caps pieces at 32 bytes)."""
        n = llama_cpp.llama_token_to_piece(self._model.vocab, token, self._piece_buffer, 256, 0, True)
        if n >= 0:
            return self._piece_buffer.raw[:n]
        buffer = ctypes.create_string_buffer(-n)  # a rare piece longer than 256 bytes
        n = llama_cpp.llama_token_to_piece(self._model.vocab, token, buffer, len(buffer), 0, True)
        return buffer.raw[:n]

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        if self.embedder is not None:
            self.embedder.close()
        self._model.close()

    @property
    def controls(self) -> ControlStrings:
        """The texts of the vocabulary's control tokens (a client's text must not become one)."""
        return self._vocabulary_facts()[0]

    @property
    def max_piece(self) -> int:
        """The most bytes one token stands for: a text of n characters is at least n / max_piece tokens."""
        return self._vocabulary_facts()[1]

    def _vocabulary_facts(self) -> tuple[ControlStrings, int]:
        """One pass over the vocabulary (about a second for 262k tokens), once; ``study_vocabulary`` can
        start it early, on a thread of its own."""
        with self._vocabulary_lock:
            if self._vocabulary is None:
                vocab = self._model.vocab
                texts, longest = [], 1
                for token in range(self.n_vocab):
                    piece = self._piece(token)
                    longest = max(longest, len(piece))
                    if llama_cpp.llama_vocab_get_attr(vocab, token) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
                        texts.append(piece.decode("utf-8", errors="replace"))
                self._vocabulary = ControlStrings(texts), longest
            return self._vocabulary

    def study_vocabulary(self) -> None:
        threading.Thread(target=self._vocabulary_facts, name="vocabulary", daemon=True).start()

    # --- completion ----------------------------------------------------------
    def start(self, job: Job) -> None:
        """Check a job and queue it; its ``emit`` gets Pieces and one Finished (or an exception), or, for a
        scoring job, the list of scores. Setting its ``cancel`` (then :meth:`wake`) stops it at the next step."""
        request = job.request
        self._check_prompt(request.prompt_tokens, None if job.score_only else request.context_limit)
        self.check_tokens(list(request.logit_bias), "logit_bias")
        _check_grammar(request.grammar)
        if request.num_predict == 0 and not job.score_only:
            job.emit(Finished("length", len(request.prompt_tokens), 0, 0, 0, []))
            return
        self._completions().submit(job)

    @staticmethod
    def scoring_job(tokens: list[int], top: int, emit: Emit) -> Job:
        """A job that scores each prompt token's log-probability given the tokens before it (the completions
        API's ``echo`` with ``logprobs``, used to score text); the first token's is None."""
        return Job(CompletionRequest(prompt_tokens=tokens, logprobs=top), emit=emit, score_only=True)

    def wake(self) -> None:
        if self.engine is not None:
            self.engine.wake()

    def _completions(self) -> BatchEngine:
        if self.engine is None:
            raise InvalidRequest("this instance was loaded for embeddings")
        return self.engine

    def _check_prompt(self, tokens: list[int], limit: int | None = None) -> None:
        n_ctx = min(limit or self.n_ctx, self.n_ctx)
        if not tokens:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if len(tokens) >= n_ctx:
            raise ContextLengthExceeded(
                f"the prompt is {len(tokens)} tokens, more than this model's context of "
                f"{n_ctx} tokens holds; shorten it or raise the num_ctx option"
            )

    # --- embeddings ----------------------------------------------------------
    def embed(self, inputs: list[str | list[int]], *, truncate: bool) -> tuple[list[list[float]], int]:
        """Pooled, L2-normalized embeddings of texts (or token lists) and the number of input tokens."""
        if self.embedder is None:
            raise InvalidRequest("this instance was loaded for completions")
        token_lists = []
        for item in inputs:
            if isinstance(item, str):
                tokens = self.tokenize(item, add_bos=True, special=False)
            else:
                tokens = list(item)
                self.check_tokens(tokens, "input")
            if not tokens:
                raise InvalidRequest("an input to embed is empty", param="input")
            if len(tokens) > self.n_ctx:
                if not truncate:
                    raise ContextLengthExceeded(
                        f"the input is {len(tokens)} tokens, more than the context of {self.n_ctx}; "
                        "set truncate to true or raise num_ctx", param="input"
                    )
                tokens = tokens[: self.n_ctx]
            token_lists.append(tokens)
        return self.embedder.embed_all(token_lists), sum(len(t) for t in token_lists)


def _apply_adapters(ctx: object, adapters: list[object]) -> None:
    count = len(adapters)
    pointers = (llama_cpp.llama_adapter_lora_p_ctypes * count)(*adapters)
    scales = (ctypes.c_float * count)(*([1.0] * count))
    if llama_cpp.llama_set_adapters_lora(ctx, pointers, count, scales) != 0:
        raise InvalidModelFile("llama.cpp could not apply the LoRA adapter(s)")


class _Embedder:
    """A context that pools one vector per input (mean pooling for causal models that declare none)."""

    def __init__(self, model: llama_cpp._internals.LlamaModel, config: LoadConfig) -> None:
        self.model = model
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.n_ctx
        params.n_batch = params.n_ubatch = config.n_ctx  # one input is one batch
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = config.n_threads
        params.embeddings = True
        params.pooling_type = (
            llama_cpp.LLAMA_POOLING_TYPE_MEAN if config.mean_pooling else llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
        )
        self.context = llama_cpp._internals.LlamaContext(model=model, params=params, verbose=False)
        self.batch = llama_cpp._internals.LlamaBatch(n_tokens=config.n_ctx, embd=0, n_seq_max=1, verbose=False)
        self.n_embd = model.n_embd()

    def embed_all(self, token_lists: list[list[int]]) -> list[list[float]]:
        return [self._embed(tokens) for tokens in token_lists]

    def _embed(self, tokens: list[int]) -> list[float]:
        llama_cpp.llama_memory_clear(self.context.memory, True)
        self.batch.reset()
        self.batch.add_sequence(tokens, 0, False)
        self.context.decode(self.batch)
        pointer = llama_cpp.llama_get_embeddings_seq(self.context.ctx, 0)
        if not pointer:
            raise InvalidModelFile("llama.cpp returned no pooled embedding for this model")
        vector = np.ctypeslib.as_array(pointer, shape=(self.n_embd,)).astype(np.float64)
        norm = float(np.linalg.norm(vector))
        return (vector / norm if norm > 0 else vector).tolist()

    def close(self) -> None:
        self.batch.close()
        self.context.close()


def _check_grammar(source: str | None) -> None:
    """Compile once before queueing, so a grammar llama.cpp rejects is a 400, not a failed step."""
    if not source:
        return
    try:
        llama_cpp.LlamaGrammar.from_string(source, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise InvalidRequest(f"the output grammar could not be compiled: {exc}", param="response_format") from exc


@llama_cpp.llama_log_callback
def _quiet_llama_log(_level: int, _text: bytes, _data: ctypes.c_void_p) -> None:
    """llama.cpp's own log lines would flood the daemon's stderr; the daemon logs what matters."""


with contextlib.suppress(Exception):
    llama_cpp.llama_log_set(_quiet_llama_log, ctypes.c_void_p())
