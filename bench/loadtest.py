"""Load test: many clients on both APIs at once, some leaving mid-stream, some beyond the queue.

    .venv/bin/python bench/loadtest.py [--clients 48] [--waves 3] [--parallel 4] [--queue 8]

A real daemon serves the embedded gemma3:270m. Each prompt's greedy answer is first taken alone; then
each wave starts ``--clients`` streamed requests at once, spread over ``/api/generate``, ``/api/chat``
(with a system prompt), ``/v1/completions`` and ``/v1/chat/completions``. A quarter of the clients
close their connection after a few tokens. The queue holds ``--queue`` requests, so some are refused.

Checks, printed as a table and an exit status:
  * every finished answer is the same text as that prompt's answer alone (greedy, so exact);
  * every other request is a clean 503 with Retry-After, or a client that left;
  * nothing hangs (each request has a deadline), and afterwards no sequence is active, no request is
    queued (``/metrics``), and the daemon's memory after the last wave is within 5% of after the first.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from daemon import start_daemon, stop

MODEL = "gemma3:270m"
TOKENS = 48
SUBJECTS = ["the sea", "a lighthouse", "bread", "the moon", "a red fox", "old maps", "rain", "a violin"]
ENDPOINTS = ["/api/generate", "/api/chat", "/v1/completions", "/v1/chat/completions"]


@dataclass
class Outcome:
    kind: str  # "answer", "left", "503", or what went wrong
    text: str = ""


def body(endpoint: str, subject: str) -> dict:
    prompt = f"Write two sentences about {subject}."
    options = {"temperature": 0, "num_predict": TOKENS}
    if endpoint == "/api/generate":
        return {"model": MODEL, "prompt": prompt, "raw": True, "options": options}
    if endpoint == "/api/chat":
        return {"model": MODEL, "options": options,
                "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": prompt}]}
    if endpoint == "/v1/completions":
        return {"model": MODEL, "prompt": prompt, "max_tokens": TOKENS, "temperature": 0, "stream": True}
    return {"model": MODEL, "max_tokens": TOKENS, "temperature": 0, "stream": True,
            "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": prompt}]}


def text_of(endpoint: str, line: str) -> str:
    if endpoint.startswith("/api/"):
        chunk = json.loads(line)
        return chunk.get("response") or chunk.get("message", {}).get("content", "")
    if not line.startswith("data: ") or line == "data: [DONE]":
        return ""
    choice = (json.loads(line[6:]).get("choices") or [{}])[0]
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


def request(base_url: str, endpoint: str, subject: str, leave_after: int | None) -> Outcome:
    parts: list[str] = []
    try:
        with httpx.Client(timeout=httpx.Timeout(10, read=120)) as client, \
                client.stream("POST", base_url + endpoint, json=body(endpoint, subject)) as response:
            if response.status_code == 503:
                ok = "retry-after" in response.headers and "error" in json.loads(response.read())
                return Outcome("503" if ok else "503 without Retry-After or error body")
            if response.status_code != 200:
                return Outcome(f"status {response.status_code}: {response.read()[:200]!r}")
            for line in response.iter_lines():
                if line:
                    parts.append(text_of(endpoint, line))
                if leave_after is not None and sum(1 for p in parts if p) >= leave_after:
                    return Outcome("left")
    except httpx.HTTPError as exc:
        return Outcome(f"{type(exc).__name__}: {exc}")
    return Outcome("answer", "".join(parts))


def run_into(results: list[Outcome | None], index: int, base_url: str, job: tuple) -> None:
    results[index] = request(base_url, *job)


def metric(base_url: str, name: str) -> float:
    for line in httpx.get(base_url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--queue", type=int, default=8)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="localllm-load-"))
    process = None
    failures: list[str] = []
    try:
        process, base_url = start_daemon(home, LOCALLLM_NUM_PARALLEL=str(args.parallel),
                                         LOCALLLM_MAX_QUEUE=str(args.queue))
        httpx.post(base_url + "/api/pull", json={"model": MODEL, "stream": False}, timeout=600).raise_for_status()
        alone = {(e, s): request(base_url, e, s, None).text for e in ENDPOINTS for s in SUBJECTS}
        print(f"{len(alone)} reference answers taken alone, daemon RSS {rss_mib(process.pid):.0f} MiB")
        rng = random.Random(7)
        memory: list[float] = []
        for wave in range(args.waves):
            jobs = [(rng.choice(ENDPOINTS), rng.choice(SUBJECTS), rng.choice([None, None, None, 3]))
                    for _ in range(args.clients)]
            results: list[Outcome | None] = [None] * len(jobs)

            threads = [threading.Thread(target=run_into, args=(results, i, base_url, job), daemon=True)
                       for i, job in enumerate(jobs)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=max(1.0, 300 - (time.monotonic() - started)))
            counts: dict[str, int] = {}
            for job, result in zip(jobs, results, strict=True):
                kind = "hang" if result is None else result.kind
                if kind == "answer" and result.text != alone[job[:2]]:
                    kind = "wrong answer"
                    failures.append(f"{job[0]} {job[1]!r}: {result.text!r} != {alone[job[:2]]!r}")
                elif kind not in ("answer", "left", "503"):
                    failures.append(f"{job[0]} {job[1]!r}: {kind}")
                counts[kind] = counts.get(kind, 0) + 1
            time.sleep(1.0)  # the engine frees a departed client's slot at its next step
            active, queued = metric(base_url, "localllm_active_sequences"), metric(base_url, "localllm_queue_depth")
            memory.append(rss_mib(process.pid))
            print(f"wave {wave + 1}: {len(jobs)} clients in {time.monotonic() - started:.1f} s: "
                  + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                  + f"; afterwards {active:.0f} active, {queued:.0f} queued, RSS {memory[-1]:.0f} MiB")
            if active != 0 or queued != 0:
                failures.append(f"wave {wave + 1}: {active} sequences still active, {queued} queued")
        if len(memory) > 1 and memory[-1] > memory[0] * 1.05:
            failures.append(f"memory grew from {memory[0]:.0f} MiB to {memory[-1]:.0f} MiB")
    finally:
        stop(process)
        shutil.rmtree(home, ignore_errors=True)
    print("\n".join(["FAILED:", *failures]) if failures else "all answers correct or a clean 503; nothing leaked")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
