"""The fast token choice (numpy bias and penalties, top-k before the chain) picks what llama.cpp's whole
sampler chain picks from the same logits, token after token (the chain's penalty window included)."""

from __future__ import annotations

import ctypes
from dataclasses import replace

import llama_cpp
import numpy as np
import pytest

from localllm.llm.requests import CompletionRequest, Sampling
from localllm.llm.sampling import TokenSampler, _full_chain, _largest

N_VOCAB = 5000


def full_chain_choice(chain: object, logits: np.ndarray) -> int:
    """What llama.cpp's chain picks from the whole row (the candidates filled by numpy: 262k of them for
    a real vocabulary)."""
    data = np.zeros(len(logits), dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
    data["id"], data["logit"] = np.arange(len(logits)), logits
    candidates = llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), size=len(logits), selected=-1,
        sorted=False)
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(candidates))
    token = int(data["id"][candidates.selected])
    llama_cpp.llama_sampler_accept(chain, token)
    return token


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


@pytest.fixture(scope="module")
def gemma_vocab(gemma_path) -> object:
    """The real 262k-token vocabulary (no weights loaded), for grammars."""
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gemma_path).encode(), params)
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


@pytest.mark.parametrize("sampling", [Sampling(temperature=0), Sampling(temperature=0.9, top_k=40, seed=5),
                                      Sampling(temperature=0, repeat_penalty=1.2)],
                         ids=["greedy", "top-k", "penalty"])
def test_a_grammar_checked_from_the_best_tokens_picks_what_the_whole_chain_picks(gemma_vocab, sampling) -> None:
    """JSON mode over Gemma's 262k tokens: the grammar checks the best tokens first instead of all of them,
    and the tokens picked are the whole chain's (rows where few or many tokens are allowed, and a banned
    favourite)."""
    from localllm.llm.grammar import JSON_GBNF

    n_vocab = llama_cpp.llama_vocab_n_tokens(gemma_vocab)
    ids = (llama_cpp.llama_token * 4)()
    assert llama_cpp.llama_tokenize(gemma_vocab, b"{", 1, ids, 4, False, True) == 1
    brace = ids[0]  # banned: the object must open with another token that holds a "{"
    request = CompletionRequest(prompt_tokens=[2], sampling=sampling, grammar=JSON_GBNF, logit_bias={brace: -100})
    fast = TokenSampler(request, vocab=gemma_vocab, n_vocab=n_vocab, n_ctx=512)
    reference = _full_chain(request, gemma_vocab, n_vocab, 512, sampling.seed)
    rng = np.random.default_rng(2)
    try:
        picked, expected = [], []
        for _ in range(24):
            row = rng.standard_normal(n_vocab).astype(np.float32) * 3
            picked.append(fast.choose(row))
            expected.append(full_chain_choice(reference, row))
            assert picked == expected
    finally:
        fast.close()
        llama_cpp.llama_sampler_free(reference)
    assert brace not in picked
    assert len(set(picked)) > 5


def test_mirostat_and_unlimited_top_k_keep_the_whole_chain() -> None:
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


def _token(vocab: object, text: str) -> int:
    ids = (llama_cpp.llama_token * 4)()
    assert llama_cpp.llama_tokenize(vocab, text.encode(), len(text.encode()), ids, 4, False, True) == 1
    return ids[0]


@pytest.mark.parametrize("sampling", [Sampling(temperature=0.9, top_k=40, seed=3),
                                      Sampling(temperature=1.0, top_k=40, top_p=1.0, min_p=0.05, seed=4)],
                         ids=["top-p", "min-p"])
def test_where_few_tokens_are_allowed_the_choice_needs_no_check_of_the_whole_vocabulary(
        gemma_vocab, sampling, monkeypatch) -> None:
    """Rows shaped like a model's (a few strong favourites over a flat rest): at JSON's punctuation fewer
    than k tokens are allowed, yet top-p or min-p settles the draw from the best of them. The picks are
    the whole chain's, and most steps check far less than the 262k tokens. Each document ends, as in the
    engine, at an end-of-generation token."""
    from localllm.llm import sampling as module
    from localllm.llm.grammar import JSON_GBNF

    checked: list[int] = []
    real = module._grammar_logits
    monkeypatch.setattr(module, "_grammar_logits",
                        lambda grammar, ids, row: (checked.append(len(ids)), real(grammar, ids, row))[1])
    n_vocab = llama_cpp.llama_vocab_n_tokens(gemma_vocab)
    texts = ('{', '"', ' "', ':', ',', '}', '1', 'a', ' the', '\n', '<end_of_turn>')
    favourites = [_token(gemma_vocab, text) for text in texts]
    rng = np.random.default_rng(9)
    picked: list[int] = []
    for document in range(4):
        request = CompletionRequest(prompt_tokens=[2], sampling=replace(sampling, seed=sampling.seed + document),
                                    grammar=JSON_GBNF)
        fast = TokenSampler(request, vocab=gemma_vocab, n_vocab=n_vocab, n_ctx=512)
        reference = _full_chain(request, gemma_vocab, n_vocab, 512, sampling.seed + document)
        try:
            for _ in range(30):
                row = rng.standard_normal(n_vocab).astype(np.float32)
                row[favourites] += rng.uniform(10, 24, len(favourites)).astype(np.float32)
                token = fast.choose(row)
                assert token == full_chain_choice(reference, row)
                picked.append(token)
                if llama_cpp.llama_vocab_is_eog(gemma_vocab, token):
                    break
        finally:
            fast.close()
            llama_cpp.llama_sampler_free(reference)
    full_checks = sum(size == n_vocab for size in checked)
    assert full_checks * 4 < len(picked), f"{full_checks} of {len(picked)} steps checked the whole vocabulary"
    assert len(set(picked)) > 3


def test_control_tokens_are_never_chosen_under_a_grammar(gemma_vocab) -> None:
    """llama.cpp's grammar reads <start_of_turn> as the text "<start_of_turn>", which a JSON string may
    hold; the sampler does not pick it, nor Gemma's <unusedN> tokens, however likely they are."""
    from localllm.llm.grammar import JSON_GBNF
    from localllm.llm.sampling import control_mask

    n_vocab = llama_cpp.llama_vocab_n_tokens(gemma_vocab)
    mask = control_mask(gemma_vocab, n_vocab)
    start_of_turn, end_of_turn = _token(gemma_vocab, "<start_of_turn>"), _token(gemma_vocab, "<end_of_turn>")
    assert mask[start_of_turn] and not mask[end_of_turn]  # end of turn ends generation: the grammar decides it
    assert control_mask(gemma_vocab, n_vocab) is mask  # kept for the vocabulary
    for sampling in (Sampling(temperature=0), Sampling(temperature=0.9, top_k=40, seed=1)):
        fast = TokenSampler(CompletionRequest(prompt_tokens=[2], sampling=sampling, grammar=JSON_GBNF),
                            vocab=gemma_vocab, n_vocab=n_vocab, n_ctx=512)
        try:
            for text in ('{', '"', 'a'):  # into a string
                row = np.zeros(n_vocab, dtype=np.float32)
                row[np.flatnonzero(mask)] = 50.0
                row[_token(gemma_vocab, text)] = 10.0
                assert not mask[fast.choose(row)]
        finally:
            fast.close()
