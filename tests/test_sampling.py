"""The fast token choice (numpy bias and penalties, top-k before the chain) picks what llama.cpp's whole
sampler chain picks from the same logits, token after token (the chain's penalty window included)."""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np
import pytest

from localllm.llm.requests import CompletionRequest, Sampling
from localllm.llm.sampling import TokenSampler, _full_chain, _largest

N_VOCAB = 5000


def full_chain_choice(chain: object, logits: np.ndarray) -> int:
    data = (llama_cpp.llama_token_data * len(logits))()
    for token, logit in enumerate(logits.tolist()):
        data[token].id, data[token].logit, data[token].p = token, logit, 0.0
    candidates = llama_cpp.llama_token_data_array(data=data, size=len(logits), selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(candidates))
    token = data[candidates.selected].id
    llama_cpp.llama_sampler_accept(chain, token)
    return int(token)


def rows(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # a few favourites that keep coming back, so the penalties have something to do
    base = rng.standard_normal(N_VOCAB).astype(np.float32) * 2
    base[:8] += 9
    return [base + rng.standard_normal(N_VOCAB).astype(np.float32) for _ in range(count)]


CASES = {
    "greedy": Sampling(temperature=0),
    "greedy, repeat penalty": Sampling(temperature=0, repeat_penalty=1.3, repeat_last_n=16),
    "greedy, frequency and presence": Sampling(temperature=0, frequency_penalty=1.5, presence_penalty=0.7,
                                               repeat_last_n=-1),
    "top-k, seeded": Sampling(temperature=0.8, top_k=40, top_p=0.9, seed=7),
    "top-k, all filters and penalties": Sampling(temperature=1.3, top_k=64, top_p=0.95, min_p=0.05,
                                                 typical_p=0.9, repeat_penalty=1.15, seed=11),
}


@pytest.mark.parametrize("name", CASES)
def test_the_fast_choice_matches_llama_cpps_whole_chain(name: str) -> None:
    request = CompletionRequest(prompt_tokens=[1], sampling=CASES[name], logit_bias={3: -100, 9: 4.0})
    fast = TokenSampler(request, vocab=None, n_vocab=N_VOCAB, n_ctx=512)
    assert fast.mode in ("greedy", "top_k")
    reference = _full_chain(request, None, N_VOCAB, 512, CASES[name].seed)
    try:
        picked = [fast.choose(row) for row in rows(1, 60)]
        expected = [full_chain_choice(reference, row) for row in rows(1, 60)]
    finally:
        fast.close()
        llama_cpp.llama_sampler_free(reference)
    assert picked == expected
    assert 3 not in picked  # banned
    assert len(set(picked)) > 1


def test_grammar_mirostat_and_unlimited_top_k_keep_the_whole_chain() -> None:
    for sampling in (Sampling(temperature=0.7, mirostat=2), Sampling(temperature=0.7, top_k=0)):
        sampler = TokenSampler(CompletionRequest(prompt_tokens=[1], sampling=sampling), vocab=None,
                               n_vocab=N_VOCAB, n_ctx=512)
        assert sampler.mode == "full"
        sampler.close()


def test_the_k_largest_are_found_in_any_row() -> None:
    rng = np.random.default_rng(3)
    flat = np.zeros(N_VOCAB, dtype=np.float32)
    mostly_banned = np.full(N_VOCAB, -np.inf, dtype=np.float32)
    mostly_banned[[5, 50, 500]] = [1.0, 2.0, 3.0]
    for row in (rng.standard_normal(N_VOCAB).astype(np.float32) * 10, flat, mostly_banned,
                np.arange(N_VOCAB, dtype=np.float32)):
        got = np.sort(row[_largest(row, 40)])
        assert np.array_equal(got, np.sort(row)[-40:])
