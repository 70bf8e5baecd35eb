"""Continuous batching: many sequences decode together in one llama.cpp batch.

One thread owns the llama context. Each step decodes the next token of every decoding sequence in one
``llama_batch``, samples each with that sequence's own sampler chain, then reads chunks of prompts
still waiting (so a long prompt does not stall the others). Requests wait in arrival order for a free
slot (one llama.cpp sequence id each), and join between steps.

A greedy answer is the same alone or beside others, and with or without a cached prefix. llama.cpp's
numbers for one sequence depend on which kernel multiplies its rows, so the engine keeps that choice
independent of the batch: a KV stream per sequence, weights in their file layout (no repacking), no
tiled K-quant products, attention without flash attention, and prompt rows always read at least two at
a time (see ``_prompt_chunk``), in a call of their own.

A slot keeps the KV cells of its last request after it ends: the next request whose prompt starts
with those tokens (the next turn of a chat, a shared system prompt) reads only the rest. Cells are
given back when a request is cancelled, and the idle slots' cells when the cache runs out of room.

llama.cpp reads the streams of one batch in a single pass over the weights only when their sequence
ids are consecutive; slots 0, 1 and 3 would cost two passes per token. So busy sequences are kept
side by side: a request takes a slot next to the others when its cache gives no reason to go
elsewhere, and a sequence left apart (its neighbour finished) is copied into the gap, cell for cell.

A cancelled request stops at the next step; one cancelled while its prompt is being read aborts that
read through llama.cpp's abort callback (installed only for prompt reads: see ``_watch_for_cancel``).
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from ..errors import ContextLengthExceeded, LocalLLMError, ServerBusy
from .requests import CompletionRequest, Finished, Piece, StopMatcher, TokenLogprob
from .sampling import TokenSampler

log = logging.getLogger(__name__)

# ggml's "tiled" K-quant matrix product serves 8 rows or more and rounds differently from the row-at-a-
# time one, so one sequence's numbers would depend on how many others share its batch. Read once, at
# the first product of the process.
os.environ.setdefault("GGML_CPU_TILED_MM", "0")

MIN_PROMPT_ROWS = 2  # a prompt chunk is never one row: see BatchEngine._prompt_chunk
# A cached prefix shorter than this (say, only the BOS token) does not outweigh a slot beside the busy
# ones: reading a few tokens again costs less than moving a sequence later.
MIN_REUSE = 16
Emit = Callable[[object], None]


@dataclass
class Job:
    """One request on its way through the engine; ``emit`` gets Pieces, then a Finished or an exception."""

    request: CompletionRequest
    emit: Emit
    cancel: threading.Event = field(default_factory=threading.Event)
    score_only: bool = False  # score the prompt's tokens instead of generating
    arrived_ns: int = field(default_factory=time.perf_counter_ns)


class Slot:
    """One llama.cpp sequence: the request it serves, and the tokens its KV cells hold."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.cached: list[int] = []  # tokens whose cells this sequence holds, position i = cached[i]
        self.prompt_cells = 0  # how many of the first cached cells were read as prompt rows (reusable)
        self.job: Job | None = None
        self.pending: list[int] = []  # prompt tokens not yet decoded
        self.next_token: int | None = None  # sampled, to be decoded next
        self.sampler: TokenSampler | None = None
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stopper = StopMatcher([])
        self.output: list[int] = []
        self.logprobs: list[TokenLogprob] | None = None
        self.scores: list[TokenLogprob] = []
        self.batch_index = -1
        self.started_ns = 0
        self.first_token_ns = 0
        self.last_token_ns = 0

    def reusable(self, prompt: list[int]) -> int:
        """How many of ``prompt``'s first tokens this slot's cells hold, counting only cells read as prompt
        rows: a generated token's cell was computed as a lone row, and the same token read afresh as part
        of a prompt would round differently."""
        return min(_common_prefix(self.cached, prompt), self.prompt_cells)

    @property
    def n_past(self) -> int:
        return len(self.cached)

    @property
    def busy(self) -> bool:
        return self.job is not None


class BatchEngine:
    """Completions for many sequences over one model context (``n_parallel`` sequences of ``n_ctx`` each)."""

    def __init__(
        self,
        model: llama_cpp._internals.LlamaModel,
        *,
        n_ctx: int,
        n_parallel: int,
        n_batch: int,
        n_threads: int,
        max_queue: int,
        on_token: Callable[[bool, float], None] | None = None,
    ) -> None:
        self.model = model
        self.vocab = model.vocab
        self.n_vocab = model.n_vocab()
        self.n_ctx = n_ctx
        self.n_batch = max(MIN_PROMPT_ROWS, min(n_batch, n_ctx * n_parallel))
        self.max_queue = max_queue
        self.on_token = on_token  # metrics: (first token?, seconds since arrival or since the previous token)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * n_parallel
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = n_parallel
        # Logits are kept for this many rows of a batch: one per sequence, or a chunk of a prompt being
        # scored. llama.cpp's default (every row of n_batch) reserves n_batch x vocabulary floats, 512 MiB
        # for Gemma's 262k tokens.
        self.n_outputs = max(32, 2 * n_parallel)
        params.n_outputs_max = self.n_outputs
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        # A KV stream per sequence: its cells stay contiguous whoever else runs, so attention adds its
        # numbers in the same order alone or batched (one shared pool interleaves them).
        params.kv_unified = False
        # Attention as plain matrix products: llama.cpp's flash attention takes another path for a lone
        # sequence's single row once its context passes 512 cells, so a request alone would round
        # differently from the same request batched.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.swa_full = True  # sliding-window layers keep every cell, so a cached prefix can be cut anywhere
        params.no_perf = True
        self.context = llama_cpp._internals.LlamaContext(model=model, params=params, verbose=False)
        self.ctx = self.context.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._abort = llama_cpp.ggml_abort_callback(self._should_abort)
        self._no_abort = llama_cpp.ggml_abort_callback()  # a NULL callback
        self._abort_installed = False
        self.slots = [Slot(seq) for seq in range(n_parallel)]  # always in sequence id order
        # A sequence moves by a copy of its whole KV stream; recurrent state is not laid out that way.
        self._can_move = not (llama_cpp.llama_model_is_recurrent(model.model)
                              or llama_cpp.llama_model_is_hybrid(model.model))
        self._in_batch: list[Slot] = []
        self._step_record: dict[int, tuple[int, bool, int]] = {}  # seq -> (n_past before, fed next_token, first row)
        self._waiting: deque[Job] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._piece_buffer = ctypes.create_string_buffer(256)
        self._thread = threading.Thread(target=self._run, name="llama-engine", daemon=True)
        self._thread.start()

    # --- the outside: submit, counts, close ----------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._wake:
            if self._closed:
                raise LocalLLMError("the model is being unloaded; try again")
            # Jobs already waiting take the free slots first (a burst can arrive before the loop admits
            # any); a cancelled job's slot is free at the next step.
            free = sum(not slot.busy or slot.job.cancel.is_set() for slot in self.slots)
            queued = len(self._waiting) - free
            if queued >= self.max_queue:
                raise ServerBusy(
                    f"this model is busy and {queued} request(s) are already waiting for it; try again shortly"
                )
            self._waiting.append(job)
            self._wake.notify()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return sum(slot.busy for slot in self.slots)

    def wake(self) -> None:
        """A job was cancelled: let the loop see it even if it was waiting for work."""
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        for slot in self.slots:
            self._free_sampler(slot)
        llama_cpp.llama_batch_free(self.batch)
        self.context.close()

    # --- the loop ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not any(s.busy for s in self.slots):
                    self._wake.wait()
                if self._closed:
                    break
                self._admit()
            try:
                self._step()
            except Exception as exc:  # never leave a client waiting on a dead thread
                log.exception("batch step failed")
                for slot in self.slots:
                    if slot.busy:
                        self._finish(slot, error=exc)
        error = LocalLLMError("the model was unloaded")
        for job in self._waiting:
            job.emit(error)
        for slot in self.slots:
            if slot.busy:
                self._finish(slot, error=error)

    def _admit(self) -> None:
        """Waiting jobs take free slots in arrival order: the slot whose cache shares most of the prompt,
        else one beside the busy slots, else the emptiest."""
        while self._waiting:
            job = self._waiting[0]
            if job.cancel.is_set():
                self._waiting.popleft()
                job.emit(Finished("cancelled", len(job.request.prompt_tokens), 0, 0, 0, []))
                continue
            free = [slot for slot in self.slots if not slot.busy]
            if not free:
                return
            slot = max(free, key=self._preference(job.request.prompt_tokens))
            self._waiting.popleft()
            try:
                self._start(slot, job)
            except Exception as exc:
                if slot.job is job:
                    self._finish(slot, error=exc)
                else:
                    job.emit(exc)

    def _preference(self, prompt: list[int]) -> Callable[[Slot], tuple[int, bool, int, int]]:
        """How much a free slot suits ``prompt``, as a sort key (higher is better)."""
        busy = [slot.seq for slot in self.slots if slot.busy]

        def key(slot: Slot) -> tuple[int, bool, int, int]:
            reuse = slot.reusable(prompt)
            return (reuse if reuse >= MIN_REUSE else 0), _consecutive(busy + [slot.seq]), reuse, -slot.n_past

        return key

    def _start(self, slot: Slot, job: Job) -> None:
        prompt = job.request.prompt_tokens
        # The last rows are read again, in a chunk of their own, for the logits of the first answer token.
        keep = min(slot.reusable(prompt), max(0, len(prompt) - MIN_PROMPT_ROWS))
        if job.score_only:
            keep = 0  # every position's logits are needed
        if keep < slot.n_past and not llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, keep, -1):
            keep = 0
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
        del slot.cached[keep:]
        slot.prompt_cells = min(slot.prompt_cells, keep)
        if keep:
            log.info("reusing %d cached prompt tokens of %d", keep, len(prompt))
        slot.job = job
        slot.pending = list(prompt[keep:])
        slot.next_token = None
        slot.output = []
        slot.scores = []
        slot.started_ns = time.perf_counter_ns()
        slot.first_token_ns = slot.last_token_ns = 0
        request = job.request
        slot.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        slot.stopper = StopMatcher(request.stop)
        slot.logprobs = [] if request.logprobs is not None else None
        if not job.score_only:
            slot.sampler = TokenSampler(request, vocab=self.vocab, n_vocab=self.n_vocab, n_ctx=self.n_ctx)
        if job.score_only and prompt:
            first = self._piece(prompt[0])
            slot.scores = [TokenLogprob(first.decode("utf-8", errors="replace"), first, None)]

    # --- one step --------------------------------------------------------------------------------------
    def _step(self) -> None:
        """One token for every decoding sequence (one call), then prompt chunks (one call per sequence)."""
        for slot in self.slots:
            if slot.busy and slot.job.cancel.is_set():
                self._finish(slot, reason="cancelled")
        self._keep_busy_side_by_side()
        decoding = [slot for slot in self.slots if slot.busy and slot.next_token is not None]
        if decoding and self._decode([(slot, [slot.next_token]) for slot in decoding]):
            for slot in decoding:
                if slot.busy:
                    self._sample(slot)
        # Beside streams that are decoding, a prompt gets a smaller share so their next tokens are not late.
        room = max(MIN_PROMPT_ROWS, self.n_batch // 4) if decoding else self.n_batch
        reading = sorted((s for s in self.slots if s.busy and s.pending), key=lambda s: s.job.arrived_ns)
        for slot in reading:
            chunk = self._prompt_chunk(slot, room)
            if not chunk:
                continue
            if not self._decode([(slot, chunk)]):
                break
            room -= len(chunk)
            if slot.job.score_only:
                self._read_scores(slot)
                if not slot.pending:
                    self._finish(slot, reason="length")
            elif not slot.pending:
                self._sample(slot)

    def _keep_busy_side_by_side(self) -> None:
        """Move busy sequences into the gaps between others, so one batch is one pass over the weights.

        The busy ids are gathered into the window that already holds most of them. A move copies the
        sequence's whole KV stream to the free id (same cells, same order: its answer does not change)
        and swaps the two slots' ids; the idle slot keeps the cells left behind, still reusable."""
        busy = [slot.seq for slot in self.slots if slot.busy]
        if not self._can_move or _consecutive(busy):
            return
        by_seq = {slot.seq: slot for slot in self.slots}
        width = len(busy)

        def window_cost(start: int) -> tuple[int, int]:  # (moves, cached cells of idle slots overwritten)
            inside = range(start, start + width)
            return (sum(seq not in inside for seq in busy),
                    sum(by_seq[seq].n_past for seq in inside if not by_seq[seq].busy))

        start = min(range(len(self.slots) - width + 1), key=window_cost)
        inside = range(start, start + width)
        movers = [by_seq[seq] for seq in busy if seq not in inside]
        gaps = [by_seq[seq] for seq in inside if not by_seq[seq].busy]
        for mover, gap in zip(movers, gaps, strict=True):
            llama_cpp.llama_memory_seq_cp(self.memory, mover.seq, gap.seq, -1, -1)  # applied at the next decode
            log.debug("moving sequence %d to %d", mover.seq, gap.seq)
            mover.seq, gap.seq = gap.seq, mover.seq
            gap.cached, gap.prompt_cells = list(mover.cached), mover.prompt_cells
        self.slots.sort(key=lambda slot: slot.seq)

    def _prompt_chunk(self, slot: Slot, room: int) -> list[int]:
        """The next piece of a prompt: at least two rows, and never leaving a lone row for later.

        llama.cpp's attention uses one kernel for a sequence's single row and another for several; they
        round differently. A prompt row is therefore always read beside another of its own, whatever the
        batch, so it gets the same numbers as when the prompt is read alone in one piece."""
        pending = slot.pending
        if slot.job.score_only:
            room = min(room, self.n_outputs)  # every scored row keeps its logits
        take = min(room, len(pending))
        if 0 < len(pending) - take < MIN_PROMPT_ROWS:
            take = len(pending) - MIN_PROMPT_ROWS
        if take < MIN_PROMPT_ROWS and take < len(pending):
            return []  # not enough room in this step
        chunk, slot.pending = pending[:take], pending[take:]
        return chunk

    def _decode(self, parts: list[tuple[Slot, list[int]]]) -> bool:
        """One llama_decode over each slot's tokens; False (and nothing kept) if it did not go through.

        A call holds either one token of each decoding sequence or one sequence's prompt chunk, never
        both: llama.cpp would split a mixed batch into equal-length pieces and read a prompt's first
        row alone."""
        batch, row = self.batch, 0
        self._in_batch = [slot for slot, _ in parts]
        self._step_record = {}
        self._watch_for_cancel(reading_prompt=any(slot.next_token is None for slot, _ in parts))
        for slot, tokens in parts:
            prompt = slot.next_token is None
            self._step_record[slot.seq] = (slot.n_past, not prompt, row)
            slot.next_token = None
            every_row = slot.job.score_only
            for index, token in enumerate(tokens):
                wants_logits = every_row or (index == len(tokens) - 1 and not (prompt and slot.pending))
                batch.token[row] = token
                batch.pos[row] = slot.n_past
                batch.n_seq_id[row] = 1
                batch.seq_id[row][0] = slot.seq
                batch.logits[row] = wants_logits
                slot.cached.append(token)
                if wants_logits:
                    slot.batch_index = row
                row += 1
            if prompt and len(tokens) >= MIN_PROMPT_ROWS and slot.prompt_cells == slot.n_past - len(tokens):
                slot.prompt_cells = slot.n_past
        batch.n_tokens = row
        status = llama_cpp.llama_decode(self.ctx, batch)
        if status == 0:
            self._in_batch = []
            return True
        failed = list(self._in_batch)
        self._rollback()
        if status == 1 and self._free_idle_cells():
            return False  # the next step retries with the room given back
        if status == 2:  # aborted: a cancelled prompt; the next step finishes it
            log.info("prefill aborted: a request was cancelled while its prompt was being read")
            return False
        for slot in failed:
            message = "the model's context is full" if status == 1 else f"llama.cpp failed to decode ({status})"
            self._finish(slot, error=ContextLengthExceeded(message) if status == 1 else LocalLLMError(message))
        return False

    def _rollback(self) -> None:
        """Undo the last call's additions (llama.cpp dropped an aborted batch's cells; drop any left)."""
        for slot in self._in_batch:
            start, fed_next, _row = self._step_record[slot.seq]
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, start, -1)
            added = slot.cached[start:]
            del slot.cached[start:]
            slot.prompt_cells = min(slot.prompt_cells, start)
            if fed_next:
                slot.next_token = added[0]
            else:
                slot.pending = added + slot.pending
            slot.batch_index = -1
        self._in_batch = []

    def _free_idle_cells(self) -> bool:
        freed = False
        for slot in self.slots:
            if not slot.busy and slot.cached:
                llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
                slot.cached = []
                slot.prompt_cells = 0
                freed = True
        return freed

    def _watch_for_cancel(self, *, reading_prompt: bool) -> None:
        """Install llama.cpp's abort callback only while a prompt is read.

        llama.cpp calls it after every node of the graph (some 800 per token), each call taking the GIL:
        while the event loop holds it, both compute threads wait. A decode step is short, and a
        cancelled stream stops at the next one anyway."""
        if reading_prompt != self._abort_installed:
            llama_cpp.llama_set_abort_callback(self.ctx, self._abort if reading_prompt else self._no_abort, None)
            self._abort_installed = reading_prompt

    def _should_abort(self, _data: ctypes.c_void_p) -> bool:
        """Called by llama.cpp after each graph node of a prompt read: stop a read of a cancelled prompt."""
        return any(
            slot.busy and slot.job.cancel.is_set() and not self._step_record[slot.seq][1]
            for slot in self._in_batch
        )

    # --- sampling and scoring ----------------------------------------------------------------------------
    def _read_scores(self, slot: Slot) -> None:
        """Each decoded row scores the prompt token after it (the rows of this step, read before the next)."""
        start, _fed, first_row = self._step_record[slot.seq]
        prompt, top = slot.job.request.prompt_tokens, slot.job.request.logprobs or 0
        for row, position in enumerate(range(start, slot.n_past)):
            if position + 1 < len(prompt):
                token = prompt[position + 1]
                slot.scores.append(self._logprob(first_row + row, token, self._piece(token), top))

    def _sample(self, slot: Slot) -> None:
        job, request = slot.job, slot.job.request
        try:
            token = slot.sampler.sample(self.ctx, slot.batch_index)
        except LocalLLMError as exc:  # this request's own dead end (its grammar); the others go on
            self._finish(slot, error=exc)
            return
        now = time.perf_counter_ns()
        if self.on_token is not None:
            since = slot.last_token_ns or job.arrived_ns
            self.on_token(not slot.last_token_ns, (now - since) / 1e9)
        if not slot.first_token_ns:
            slot.first_token_ns = now
        slot.last_token_ns = now
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            self._finish(slot, reason="stop")
            return
        slot.output.append(token)
        raw = self._piece(token)
        if slot.logprobs is not None:
            slot.logprobs.append(self._logprob(slot.batch_index, token, raw, request.logprobs or 0))
        safe, stopped = slot.stopper.feed(slot.decoder.decode(raw))
        if safe:
            job.emit(Piece(safe, slot.logprobs))
            slot.logprobs = [] if slot.logprobs is not None else None
        if stopped:
            self._finish(slot, reason="stop")
            return
        budget = request.num_predict
        n_ctx = min(request.context_limit or self.n_ctx, self.n_ctx)
        if (budget >= 0 and len(slot.output) >= budget) or slot.n_past + 1 >= n_ctx:
            self._finish(slot, reason="length")
            return
        slot.next_token = token

    def _logprob(self, row: int, token: int, raw: bytes, top: int) -> TokenLogprob:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))
        logits = logits.astype(np.float64)
        peak = logits.max()
        log_total = peak + np.log(np.exp(logits - peak).sum())
        best: list[tuple[str, bytes, float]] = []
        if top > 0:
            ids = np.argpartition(-logits, top)[:top]
            for other in ids[np.argsort(-logits[ids])]:
                piece = self._piece(int(other))
                best.append((piece.decode("utf-8", errors="replace"), piece, float(logits[other] - log_total)))
        return TokenLogprob(raw.decode("utf-8", errors="replace"), raw, float(logits[token] - log_total), best)

    def _finish(self, slot: Slot, *, reason: str = "stop", error: BaseException | None = None) -> None:
        job = slot.job
        if job is None:
            return
        slot.job = None
        self._free_sampler(slot)
        if reason == "cancelled" or error is not None:
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
            slot.cached = []
            slot.prompt_cells = 0
            if reason == "cancelled":
                log.info("generation cancelled after %d tokens", len(slot.output))
        if error is not None:
            job.emit(error)
            return
        if job.score_only:
            job.emit(slot.scores)
            return
        tail = slot.stopper.flush() if reason != "stop" or not slot.stopper.stops else ""
        tail += slot.decoder.decode(b"", final=True)
        if tail and reason != "cancelled":
            job.emit(Piece(tail, slot.logprobs))
        ended = time.perf_counter_ns()
        first = slot.first_token_ns or ended
        job.emit(Finished(
            reason=reason,
            prompt_tokens=len(job.request.prompt_tokens),
            prompt_eval_ns=first - slot.started_ns,
            eval_count=len(slot.output),
            eval_ns=ended - first,
            output_tokens=list(slot.output),
        ))

    def _free_sampler(self, slot: Slot) -> None:
        if slot.sampler is not None:
            slot.sampler.close()
            slot.sampler = None

    def _piece(self, token: int) -> bytes:
        """The bytes of one token, control tokens included (stop words may be written with them)."""
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece_buffer, 256, 0, True)
        if n >= 0:
            return self._piece_buffer.raw[:n]
        buffer = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, True)
        return buffer.raw[:n]


def _consecutive(seqs: list[int]) -> bool:
    """Whether these sequence ids (no repeats) form one run, such as 2, 3, 4."""
    return not seqs or max(seqs) - min(seqs) + 1 == len(seqs)


def _common_prefix(a: list[int], b: list[int]) -> int:
    limit = min(len(a), len(b))
    if limit and a[:limit] == b[:limit]:
        return limit
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index
