"""A model's runner process (``python -m localllm.llm.runner_process``): one loaded model, many requests.

The daemon starts one per loaded model instance and speaks the protocol of ``protocol.py`` with it. A
GGML_ASSERT, a segfault or an OOM kill in llama.cpp ends this process only; the daemon fails the
requests it had here and starts a fresh one for the next. Prompts are built here (template rendering
and tokenization, on a thread pool), so a huge or hostile prompt never blocks the daemon's event loop,
and the engine's thread keeps decoding the other requests meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from ..errors import InvalidRequest, LocalLLMError
from . import protocol
from .engine import Job
from .prompt_build import build
from .protocol import LoadConfig, PromptSpec
from .requests import Finished, Piece, TokenLogprob
from .runner import LlamaRunner

STATS_EVERY = 1.0  # seconds


def rss_bytes() -> int:
    """This process's resident set now (``/proc``), else its peak."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Channel:
    """Events out, one whole line at a time, from any thread."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.timings: list[tuple[bool, float]] = []  # the engine's token timings, sent with the next stats

    def send(self, message: dict[str, Any]) -> None:
        line = protocol.dumps(message)
        with self.lock:
            try:
                self.out.write(line)
                self.out.flush()
            except (BrokenPipeError, ValueError):  # the daemon is gone: the reader sees EOF and ends us
                pass

    def observe_token(self, first: bool, seconds: float) -> None:
        with self.lock:
            self.timings.append((first, seconds))

    def take_timings(self) -> list[tuple[bool, float]]:
        with self.lock:
            taken, self.timings = self.timings, []
        return taken


class Runner:
    def __init__(self, model: LlamaRunner, channel: Channel) -> None:
        self.model = model
        self.channel = channel
        self.jobs: dict[int, Job] = {}
        self.cancelled: set[int] = set()  # cancelled before their job exists (the prompt was being built)
        self.lock = threading.Lock()
        # Prompt building: off the engine's thread, two at a time (one long prompt leaves room for others).
        self.prompts = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prompt")
        self.embeddings = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")  # one batch at a time

    # --- requests ----------------------------------------------------------------------------------
    def handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "cancel":
            self.cancel(int(message["id"]))
        elif op == "complete":
            self.prompts.submit(self.guarded, int(message["id"]), self.complete, message)
        elif op == "score":
            self.prompts.submit(self.guarded, int(message["id"]), self.score, message)
        elif op == "embed":
            self.embeddings.submit(self.guarded, int(message["id"]), self.embed, message)

    def guarded(self, job_id: int, work: Any, message: dict[str, Any]) -> None:
        try:
            work(job_id, message)
        except Exception as exc:  # one bad request never ends the runner
            self.error(job_id, exc)

    def error(self, job_id: int, exc: BaseException) -> None:
        with self.lock:
            self.jobs.pop(job_id, None)
            self.cancelled.discard(job_id)
        self.channel.send({"id": job_id, "event": "error", "error": protocol.error_to_wire(exc)})

    def complete(self, job_id: int, message: dict[str, Any]) -> None:
        spec = PromptSpec.from_wire(message["prompt"])
        wire = message["request"]
        limit = min(wire.get("context_limit") or self.model.n_ctx, self.model.n_ctx)
        tokens, template = build(spec, self.model, limit)
        request = protocol.request_from_wire(wire, tokens)
        if not request.stop and template is not None:
            request.stop = template.stop_words()
        echo = self.model.detokenize(tokens) if spec.echo else None
        self.channel.send({"id": job_id, "event": "prompt", "tokens": len(tokens), "echo": echo})

        def emit(item: object) -> None:
            if isinstance(item, Piece):
                self.channel.send(protocol.piece_to_wire(job_id, item))
                return
            with self.lock:
                self.jobs.pop(job_id, None)
            if isinstance(item, Finished):
                finished = Finished(item.reason, item.prompt_tokens, item.prompt_eval_ns, item.eval_count,
                                    item.eval_ns, item.output_tokens, tokens)
                self.channel.send(protocol.finished_to_wire(job_id, finished))
            elif isinstance(item, BaseException):
                self.channel.send({"id": job_id, "event": "error", "error": protocol.error_to_wire(item)})

        self.submit(job_id, Job(request, emit=emit))

    def score(self, job_id: int, message: dict[str, Any]) -> None:
        spec = PromptSpec.from_wire(message["prompt"])
        tokens, _template = build(spec, self.model, self.model.n_ctx)

        def emit(item: object) -> None:
            with self.lock:
                self.jobs.pop(job_id, None)
            if isinstance(item, BaseException):
                self.channel.send({"id": job_id, "event": "error", "error": protocol.error_to_wire(item)})
            elif isinstance(item, list):
                scores: list[TokenLogprob] = item
                if scores and self.model.adds_bos and tokens[0] == self.model.bos_token:
                    scores = scores[1:]  # the BOS token is not part of the echoed text
                    if scores:
                        scores[0] = TokenLogprob(scores[0].token, scores[0].bytes, None)
                self.channel.send({"id": job_id, "event": "scores", "logprobs": protocol.logprobs_to_wire(scores),
                                   "echo": self.model.detokenize(tokens) if spec.echo else None})
            elif isinstance(item, Finished):  # a job cancelled while it waited
                self.channel.send(protocol.finished_to_wire(job_id, item))

        self.submit(job_id, self.model.scoring_job(tokens, int(message["top"]), emit))

    def submit(self, job_id: int, job: Job) -> None:
        """Queue a job unless it was cancelled while its prompt was being built."""
        with self.lock:
            cancelled = job_id in self.cancelled
            self.cancelled.discard(job_id)
            if not cancelled:
                self.jobs[job_id] = job
        if cancelled:
            self.channel.send(protocol.finished_to_wire(job_id, Finished("cancelled", 0, 0, 0, 0, [])))
        else:
            self.model.start(job)

    def embed(self, job_id: int, message: dict[str, Any]) -> None:
        inputs = message.get("inputs")
        if not isinstance(inputs, list):
            raise InvalidRequest("nothing to embed", param="input")
        vectors, count = self.model.embed(inputs, truncate=bool(message.get("truncate", True)))
        self.channel.send({"id": job_id, "event": "embeddings", "vectors": vectors, "count": count})

    def cancel(self, job_id: int) -> None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                self.cancelled.add(job_id)
                return
        job.cancel.set()
        self.model.wake()

    def cancel_all(self) -> None:
        with self.lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            job.cancel.set()
        self.model.wake()

    # --- the process ---------------------------------------------------------------------------------
    def report_stats(self) -> None:
        while True:
            time.sleep(STATS_EVERY)
            self.send_stats()

    def send_stats(self) -> None:
        model = self.model
        self.channel.send({"event": "stats", "queued": model.queued, "active": model.active, "rss": rss_bytes(),
                           "timings": self.channel.take_timings()})


def lines(source: IO[bytes]) -> Iterator[dict[str, Any]]:
    for line in source:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            yield message


def main() -> None:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not break the protocol
    # the daemon puts each stderr line in its own log, after the runner's pid
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    channel = Channel(out)
    source = sys.stdin.buffer
    first = next(lines(source), None)
    if first is None or first.get("op") != "load":
        return
    config = LoadConfig.from_wire(first["config"])
    try:
        model = LlamaRunner(config, max_queue=int(first.get("max_queue", 512)), on_token=channel.observe_token)
    except LocalLLMError as exc:
        channel.send({"event": "load_failed", "error": protocol.error_to_wire(exc)})
        return
    model.study_vocabulary()  # for the first prompt: which strings are control tokens
    runner = Runner(model, channel)
    channel.send({"event": "ready", "pid": os.getpid(), "load_seconds": model.load_seconds, "n_ctx": model.n_ctx,
                  "n_vocab": model.n_vocab, "rss": rss_bytes()})
    threading.Thread(target=runner.report_stats, name="stats", daemon=True).start()
    for message in lines(source):
        runner.handle(message)
    # stdin closed: the daemon unloads us (or is gone). Stop what runs, then let the OS take the rest.
    runner.cancel_all()
    os._exit(0)


if __name__ == "__main__":
    main()
