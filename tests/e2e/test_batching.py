"""Concurrent serving: continuous batching, prefix reuse, the queue, cancellation, several models, metrics."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import Daemon, pull_events
from fakehub import FakeHub
from ggufs import write_tiny_llama

GEMMA = "gemma3:270m"
PROMPTS = ["Once upon a time", "The ocean is", "My favourite food is", "In the year 3000"]


def tiny_models(hub: FakeHub, tmp_path: Path, count: int) -> list[str]:
    names = []
    for index in range(count):
        path = write_tiny_llama(tmp_path / f"tiny{index}.gguf", seed=20 + index, context_length=1024)
        hub.add_file(f"acme/tiny{index}", f"tiny{index}.Q8_0.gguf", path)
        names.append(f"hf.co/acme/tiny{index}")
    return names


def generate(daemon: Daemon, model: str, prompt: str, keep_alive: object = None, **options: object) -> dict:
    body = {"model": model, "prompt": prompt, "raw": True, "stream": False, "keep_alive": keep_alive,
            "options": {"temperature": 0, "num_predict": 24, **options}}
    with daemon.client() as http:
        response = http.post("/api/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def stream_times(daemon: Daemon, model: str, prompt: str, tokens: int) -> tuple[float, float, str]:
    """(first token time, end time, text) of one streamed generation."""
    body = {"model": model, "prompt": prompt, "raw": True, "options": {"temperature": 0, "num_predict": tokens}}
    first, parts = 0.0, []
    with daemon.client() as http, http.stream("POST", "/api/generate", json=body) as response:
        for line in response.iter_lines():
            if not line:
                continue
            chunk = json.loads(line)
            if chunk.get("response") and not first:
                first = time.monotonic()
            parts.append(chunk.get("response", ""))
    return first, time.monotonic(), "".join(parts)


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """gemma3:270m served with 4 parallel sequences."""
    root = tmp_path_factory.mktemp("batching")
    server = Daemon(root / "home", "http://127.0.0.1:9",
                    {"HF_HOME": str(root / "hf"), "LOCALLLM_NUM_PARALLEL": "4"}).start()
    try:
        assert pull_events(server, GEMMA)[-1] == {"status": "success"}
        yield server
    finally:
        server.stop()


def test_greedy_answers_are_the_same_alone_and_batched(make_daemon, hub: FakeHub, tmp_path: Path) -> None:
    """Another architecture (llama, f32 weights): batching changes nothing."""
    (model,) = tiny_models(hub, tmp_path, 1)
    server = make_daemon(LOCALLLM_NUM_PARALLEL="4").start()
    assert pull_events(server, model)[-1] == {"status": "success"}
    prompts = [f"{word} " * (1 + index) for index, word in enumerate(["alpha", "beta", "gamma", "delta"])]
    alone = [generate(server, model, prompt, num_predict=64, keep_alive=0)["response"] for prompt in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: generate(server, model, p, num_predict=64)["response"], prompts))
    assert together == alone
    assert len(set(alone)) == 4


def test_quantized_greedy_answers_are_the_same_alone_batched_and_cached(gemma4: Daemon) -> None:
    """The real Q4_K_M model: an answer does not depend on what shares its batch, on how its prompt was
    cut into chunks, or on a cached prefix. Long prompts (past 512 cells) and more requests than slots
    included; 32 greedy tokens each, so a rounding difference that changes a choice would show."""
    tokens = 32
    facts = " ".join(f"Fact {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'}." for i in range(60))
    animals, places = ["fox", "cat", "owl", "bear"], ["river", "town", "hill", "sea"]
    story = " ".join(f"Chapter {i}: the {animals[i % 4]} walked to the {places[i // 4 % 4]} and back."
                     for i in range(100))
    prompts = PROMPTS + [facts + " Question: is 7 odd? Answer:", story + " The end. Summary:"]
    alone = [generate(gemma4, GEMMA, prompt, num_predict=tokens)["response"] for prompt in prompts]

    def staggered(index: int) -> str:
        time.sleep(0.15 * index)  # each joins a batch already decoding, some wait for a slot
        return generate(gemma4, GEMMA, prompts[index], num_predict=tokens)["response"]

    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(staggered, range(len(prompts))))
    assert together == alone
    with ThreadPoolExecutor(len(prompts)) as pool:  # now every prompt finds its own cells cached
        again = list(pool.map(staggered, reversed(range(len(prompts)))))[::-1]
    assert again == alone
    assert "reusing" in gemma4.log.read_text()
    assert len(set(alone)) == len(prompts)


def test_concurrent_streams_are_decoded_together(gemma4: Daemon) -> None:
    generate(gemma4, GEMMA, "warm up", num_predict=1)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: stream_times(gemma4, GEMMA, p, 48), PROMPTS))
    firsts, ends = [r[0] for r in results], [r[1] for r in results]
    assert max(firsts) < min(ends)  # every stream had begun before any ended: none waited for another
    metrics = httpx.get(gemma4.base_url + "/metrics").text
    assert 'localllm_requests_total{endpoint="POST /api/generate",status="200"}' in metrics
    assert "localllm_generated_tokens_total" in metrics and "localllm_time_to_first_token_seconds_count" in metrics
    assert "localllm_inter_token_latency_seconds_bucket" in metrics
    assert "localllm_loaded_models 1.0" in metrics and "localllm_active_sequences 0.0" in metrics


def test_the_next_chat_turn_reads_only_the_new_tokens(gemma4: Daemon) -> None:
    history = [{"role": "user", "content": "Remember these facts. " + " ".join(
        f"Fact {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'}." for i in range(120))}]
    options = {"temperature": 0, "num_predict": 8, "num_ctx": 4096}

    def chat(messages: list[dict]) -> dict:
        with gemma4.client() as http:
            response = http.post("/api/chat", json={"model": GEMMA, "messages": messages, "stream": False,
                                                    "options": options})
        assert response.status_code == 200, response.text
        return response.json()

    cold = chat(history)
    assert cold["prompt_eval_count"] > 1400
    history += [cold["message"], {"role": "user", "content": "Is 7 odd?"}]
    warm = chat(history)
    assert warm["prompt_eval_count"] > cold["prompt_eval_count"]
    assert warm["prompt_eval_duration"] * 4 <= cold["prompt_eval_duration"], (warm, cold)
    assert "reusing" in gemma4.log.read_text()


def test_queue_overflow_is_503_and_waiting_requests_go_in_order(make_daemon, gemma_path,
                                                                  hermetic_env: Path) -> None:
    model = GEMMA
    server = make_daemon(LOCALLLM_NUM_PARALLEL="1", LOCALLLM_MAX_QUEUE="2").start()
    assert pull_events(server, model)[-1] == {"status": "success"}
    generate(server, model, "load", num_predict=1)
    order: list[str] = []

    def queued(name: str) -> None:
        generate(server, model, name, num_predict=2)
        order.append(name)

    # the one slot is held by a stream that has begun and would go on for long, until its reader leaves
    endless = {"model": model, "prompt": "1, 2, 3, 4, 5, 6, 7,", "raw": True,  # it counts on and on
               "options": {"temperature": 0, "num_predict": 100000}}
    waiting = [threading.Thread(target=queued, args=(name,)) for name in ("first", "second")]
    with server.client() as http, http.stream("POST", "/api/generate", json=endless) as holder:
        lines = holder.iter_lines()  # kept: an iterator dropped here would close the stream
        next(line for line in lines if line)
        for thread in waiting:
            thread.start()
            time.sleep(0.5)  # arrival order
        busy = http.post("/api/generate", json={"model": model, "prompt": "x", "stream": False})
        busy_v1 = http.post("/v1/completions", json={"model": model, "prompt": "x"})
        assert not order  # both still wait for the slot
    assert busy.status_code == 503 and busy.headers["retry-after"]
    assert busy_v1.status_code == 503 and busy_v1.json()["error"]["code"] == "server_overloaded"
    for thread in waiting:
        thread.join(60)
    assert order == ["first", "second"]
    assert "queue_depth 0.0" in httpx.get(server.base_url + "/metrics").text


def test_a_burst_beyond_the_slots_and_the_queue_is_refused(make_daemon, gemma_path, hermetic_env: Path) -> None:
    """Requests that arrive together, before the engine has given out any slot, count against the queue
    too: with 2 slots and a queue of 1, at most 3 of 10 simultaneous requests are taken."""
    server = make_daemon(LOCALLLM_NUM_PARALLEL="2", LOCALLLM_MAX_QUEUE="1").start()
    assert pull_events(server, GEMMA)[-1] == {"status": "success"}
    generate(server, GEMMA, "load", num_predict=1)
    barrier = threading.Barrier(10)

    def one(index: int) -> httpx.Response:
        body = {"model": GEMMA, "prompt": f"Story {index}:", "raw": True, "stream": False,
                "options": {"temperature": 0, "num_predict": 96}}
        with server.client() as http:
            barrier.wait()
            return http.post("/api/generate", json=body)

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(one, range(10)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    assert statuses.count(200) <= 3, statuses
    assert all(r.headers["retry-after"] for r in responses if r.status_code == 503)
    assert all(r.json()["done"] and r.json()["response"] for r in responses if r.status_code == 200)


def test_a_cancelled_request_frees_its_slot_during_decode_and_prefill(make_daemon, gemma_path,
                                                                      hermetic_env: Path) -> None:
    server = make_daemon(LOCALLLM_NUM_PARALLEL="1").start()
    assert pull_events(server, GEMMA)[-1] == {"status": "success"}
    generate(server, GEMMA, "load", num_predict=1, num_ctx=8192)

    body = {"model": GEMMA, "prompt": "Once upon a time", "raw": True,
            "options": {"num_predict": 100000, "num_ctx": 8192}}
    with server.client() as http, http.stream("POST", "/api/generate", json=body) as response:
        for index, _ in enumerate(response.iter_lines()):
            if index == 3:
                break
    started = time.monotonic()
    generate(server, GEMMA, "Hello", num_predict=4, num_ctx=8192)
    assert time.monotonic() - started < 20  # the slot was given back, not held by a stream nobody reads

    long_prompt = "word " * 6000  # several seconds of prefill
    try:
        with server.client(timeout=1.5) as http:
            http.post("/api/generate", json={**body, "prompt": long_prompt, "stream": False})
    except httpx.ReadTimeout:
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "prefill aborted" not in server.log.read_text():
        time.sleep(0.1)
    assert "prefill aborted" in server.log.read_text()
    started = time.monotonic()
    generate(server, GEMMA, "Hello", num_predict=4, num_ctx=8192)
    assert time.monotonic() - started < 20


def test_two_models_stream_at_once_and_the_least_recently_used_goes_first(
    make_daemon, hub: FakeHub, tmp_path: Path
) -> None:
    a, b, c = tiny_models(hub, tmp_path, 3)
    server = make_daemon(LOCALLLM_MAX_LOADED_MODELS="2").start()
    for model in (a, b, c):
        assert pull_events(server, model)[-1] == {"status": "success"}
    generate(server, a, "hi", num_predict=1)
    generate(server, b, "hi", num_predict=1)
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda m: stream_times(server, m, "Once", 400), [a, b]))
    assert max(r[0] for r in runs) < min(r[1] for r in runs)  # both models were answering at the same time

    generate(server, a, "again", num_predict=1)  # b is now the least recently used
    generate(server, c, "hi", num_predict=1)
    loaded = {m["name"] for m in httpx.get(server.base_url + "/api/ps").json()["models"]}
    assert loaded == {f"{a}:latest", f"{c}:latest"}


def test_the_memory_budget_evicts_and_refuses(make_daemon, hub: FakeHub, tmp_path: Path, gemma_path) -> None:
    a, b = tiny_models(hub, tmp_path, 2)
    server = make_daemon(LOCALLLM_MAX_MEMORY="150MiB").start()
    for model in (a, b, GEMMA):
        assert pull_events(server, model)[-1] == {"status": "success"}
    generate(server, a, "hi", num_predict=1, num_ctx=1024)
    ps = httpx.get(server.base_url + "/api/ps").json()["models"]
    one = ps[0]["size"]
    assert 90 * 2**20 < one < 150 * 2**20  # the estimate: weights, KV for 4 x 1024 cells, buffers
    generate(server, b, "hi", num_predict=1, num_ctx=1024)  # two do not fit in 150 MiB: a makes room
    assert [m["name"] for m in httpx.get(server.base_url + "/api/ps").json()["models"]] == [f"{b}:latest"]
    with server.client() as http:
        refused = http.post("/api/generate", json={"model": GEMMA, "prompt": "hi", "stream": False})
    assert refused.status_code == 507 and "LOCALLLM_MAX_MEMORY" in refused.json()["error"]


def test_busy_sequences_are_kept_side_by_side_without_changing_answers(gemma_path: Path) -> None:
    """llama.cpp reads one batch in one pass only over consecutive sequence ids. When the middle one of
    three streams ends, a neighbour is moved into line (a copy of its KV stream), and its answer is the
    same as alone."""
    from localllm.llm.engine import Job
    from localllm.llm.requests import CompletionRequest, Finished, Piece, Sampling
    from localllm.llm.runner import LlamaRunner, LoadConfig

    runner = LlamaRunner(LoadConfig(gemma_path, n_ctx=512, n_batch=512, n_threads=2, n_parallel=4))
    engine = runner.engine
    decoded_together: list[list[int]] = []  # the sequence ids of each step's decode call
    decode = engine._decode

    def watch(parts):
        if all(slot.next_token is not None for slot, _ in parts):
            decoded_together.append([slot.seq for slot, _ in parts])
        return decode(parts)

    engine._decode = watch

    def submit(prompt: str, tokens: int) -> tuple[threading.Event, threading.Event, list[str]]:
        started, done, text = threading.Event(), threading.Event(), []

        def emit(item: object) -> None:
            if isinstance(item, Piece):
                text.append(item.text)
                started.set()
            elif isinstance(item, (Finished, Exception)):
                text.append("" if isinstance(item, Finished) else f"error: {item}")
                started.set()
                done.set()

        ids = runner._model.tokenize(prompt.encode(), add_bos=True, special=True)
        engine.submit(Job(CompletionRequest(ids, Sampling(temperature=0), num_predict=tokens), emit=emit))
        return started, done, text

    try:
        runs = []
        for prompt, tokens in [(PROMPTS[0], 48), (PROMPTS[1], 16), (PROMPTS[2], 48)]:
            runs.append(submit(prompt, tokens))
            assert runs[-1][0].wait(60)  # streaming before the next arrives: slots 0, 1 and 2 in that order
        for _started, done, _text in runs:
            assert done.wait(120)
        together = ["".join(text) for _started, _done, text in runs]
        assert any(seqs == [0, 1, 2] for seqs in decoded_together)
        assert all(seqs == list(range(seqs[0], seqs[0] + len(seqs))) for seqs in decoded_together)
        after_the_middle_ended = decoded_together[decoded_together.index([0, 1, 2]) + 1:]
        assert any(len(seqs) == 2 and seqs != [0, 2] for seqs in after_the_middle_ended)

        alone = []
        for prompt, tokens in [(PROMPTS[0], 48), (PROMPTS[1], 16), (PROMPTS[2], 48)]:
            _started, done, text = submit(prompt, tokens)
            assert done.wait(120)
            alone.append("".join(text))
        assert together == alone
        assert len(set(alone)) == 3
    finally:
        runner.close()
