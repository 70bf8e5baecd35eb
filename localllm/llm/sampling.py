"""Choosing a sequence's next token from its logits row.

llama.cpp's sampler chain turns the whole vocabulary into a candidates array for every token, and its
repetition penalty looks each of them up in a hash map: with Gemma's 262k-token vocabulary that costs
milliseconds per token, a large share of a batched decode step. Most requests need far less:

* greedy (temperature 0): the argmax of the row, after any logit bias and penalties;
* top-k sampling: only the k largest logits can be chosen, so the chain after top-k runs on those k.

Bias and penalties are applied here in numpy to the few tokens they touch, with llama.cpp's formulas
and its order (bias, then penalties), so the answers are the ones the full chain gives.

A grammar (JSON mode, a schema) checked against all 262k tokens costs ~30 ms per token, twice a decode
step, and the whole batch waits for it. Here it checks the best tokens first, in windows that widen
until k of them are allowed: the k best allowed tokens are the ones the full chain's grammar-then-top-k
keeps, and usually a few dozen checks find them. Where the grammar allows fewer than k tokens in all
(JSON's punctuation, numbers, ``true``), top-p and min-p usually settle the choice without the rest of the
vocabulary: see ``_outside_cannot_matter``. Mirostat, or sampling without top-k, need the whole
vocabulary and keep llama.cpp's full chain.

Under a grammar, control tokens that do not end the generation (``<start_of_turn>``, ``<|im_start|>``,
Gemma's thousands of ``<unusedN>``) are never chosen: llama.cpp's grammar reads their names as text, so
one could sit inside a JSON string, yet they are not text, and read back in a later prompt they would
turn into the control token again.
"""

from __future__ import annotations

import ctypes
import math
import random
from collections import Counter, deque

import llama_cpp
import numpy as np

from ..errors import InvalidRequest, LocalLLMError
from .requests import CompletionRequest, Sampling

__all__ = ["TokenSampler"]

# Slack for float32 rounding in llama.cpp's top-p and min-p when deciding that tokens never checked by the
# grammar cannot change the choice (relative for top-p's running sum, in logits for min-p).
_CUT_MARGIN = 1e-3


class TokenSampler:
    """One request's token choice; call ``close`` when the request ends."""

    def __init__(self, request: CompletionRequest, *, vocab: object, n_vocab: int, n_ctx: int) -> None:
        s: Sampling = request.sampling
        self.n_vocab = n_vocab
        self._penalized = s.repeat_penalty != 1.0 or bool(s.frequency_penalty) or bool(s.presence_penalty)
        self._sampling = s
        self._history: deque[int] = deque(maxlen=max(0, s.repeat_last_n if s.repeat_last_n >= 0 else n_ctx))
        bias = {token: bias for token, bias in request.logit_bias.items() if 0 <= token < n_vocab}
        self._bias_ids = np.fromiter(bias, dtype=np.int64, count=len(bias))
        self._bias_values = np.array(
            [float("-inf") if value <= -100 else value for value in bias.values()], dtype=np.float32
        )
        seed = s.seed % 2**32 if s.seed >= 0 else random.randrange(2**31)
        self._grammar = None
        if s.temperature > 0 and (s.mirostat in (1, 2) or s.top_k <= 0):
            self.mode = "full"
            self._chain = _full_chain(request, vocab, n_vocab, n_ctx, seed)
            return
        if s.temperature <= 0:
            self.mode = "greedy"
            self._chain = None
        else:
            self.mode = "top_k"
            self._chain = _top_k_chain(s, seed)
            self._buffer = (llama_cpp.llama_token_data * min(s.top_k, n_vocab))()
        if request.grammar:
            self._grammar = _grammar_sampler(request.grammar, vocab)
            if not self._grammar:
                self.close()
                raise InvalidRequest("the output grammar could not be compiled", param="response_format")
            self._control = control_mask(vocab, n_vocab)

    def close(self) -> None:
        for sampler in (self._chain, self._grammar):
            if sampler:
                llama_cpp.llama_sampler_free(sampler)
        self._chain = self._grammar = None

    def sample(self, ctx: object, row_index: int) -> int:
        """The next token from row ``row_index`` of the context's last logits."""
        if self.mode == "full":
            return int(llama_cpp.llama_sampler_sample(self._chain, ctx, row_index))
        return self.choose(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row_index),
                                                 shape=(self.n_vocab,)))

    def choose(self, logits: np.ndarray) -> int:
        """The next token from a logits row (greedy and top-k modes; the row is not modified)."""
        logits = self._adjusted(logits)
        k = 1 if self.mode == "greedy" else min(self._sampling.top_k, self.n_vocab)
        if self._grammar is not None:
            ids = self._best_allowed(logits, k)
        else:
            ids = np.array([logits.argmax()]) if k == 1 else _largest(logits, k)
        token = int(ids[0]) if self.mode == "greedy" else self._sample_top_k(logits, ids)
        if self._grammar is not None:
            llama_cpp.llama_sampler_accept(self._grammar, token)
        if self._penalized:
            self._history.append(token)
        return token

    def _best_allowed(self, logits: np.ndarray, k: int) -> np.ndarray:
        """The k highest-logit tokens the grammar allows, best first (ties: lower id first).

        The grammar checks ever wider windows of the best tokens: once a window holds k allowed ones,
        no token outside it can beat them. Where the grammar allows fewer (say, only "{" may open a JSON
        object), it checks the whole vocabulary once, unless the tokens outside the window cannot change
        the choice anyway; fewer than k are returned then."""
        width = max(32, 4 * k)
        weights = None  # exp(logit - max logit) of every token, once needed
        while True:
            window = _largest(logits, width) if width < self.n_vocab else np.arange(self.n_vocab)
            allowed = window[np.isfinite(_grammar_logits(self._grammar, window, logits))]
            allowed = allowed[~self._control[allowed]]
            if len(allowed) >= k or width >= self.n_vocab:
                break
            if len(allowed) and self._may_settle_early():
                if weights is None:
                    weights = np.exp(logits.astype(np.float64) - float(logits.max()))
                if self._outside_cannot_matter(logits, window, allowed, weights):
                    break
            width = width * 8 if width * 8 < self.n_vocab // 4 else self.n_vocab
        if not len(allowed):
            raise LocalLLMError("the output grammar allows no token here (is every allowed token banned by "
                                "logit_bias?)")
        return allowed[np.lexsort((allowed, -logits[allowed]))][:k]

    def _may_settle_early(self) -> bool:
        """Top-k sampling with top-p or min-p, and no typical-p (which weighs the whole distribution)."""
        s = self._sampling
        return self.mode == "top_k" and s.typical_p >= 1.0 and (s.top_p < 1.0 or s.min_p > 0)

    def _outside_cannot_matter(self, logits: np.ndarray, window: np.ndarray, allowed: np.ndarray,
                               weights: np.ndarray) -> bool:
        """Whether the tokens outside the window, whichever the grammar allows, cannot change a top-k draw
        from ``allowed`` (the allowed tokens of the window, fewer than k).

        Their logits are known, only not which of them the grammar allows, so together they weigh at most
        their whole softmax mass. llama.cpp's top-p keeps the shortest run of best tokens whose share
        reaches p: if that run ends at the same allowed token whether the outside weighs nothing or all of
        that mass, the outside is cut whatever the grammar says. With top-p off, min-p cuts every token
        whose logit is below the best's plus log(min_p). Either way the survivors, and so the draw
        (temperature and the seeded choice see only them), are those of the whole chain."""
        s = self._sampling
        values = np.sort(logits[allowed].astype(np.float64))[::-1]
        if s.top_p >= 1.0:
            return float(logits[window].min()) < values[0] + math.log(s.min_p) - _CUT_MARGIN
        scale = math.exp(float(logits.max()) - values[0])  # from weights (relative to the max) to the best allowed
        outside = max(0.0, float(weights.sum() - weights[window].sum())) * scale
        running = np.cumsum(np.exp(values - values[0]))
        total = running[-1]
        last = int(np.searchsorted(running, s.top_p * (total + outside) * (1 + _CUT_MARGIN)))
        return last < len(values) and (last == 0 or running[last - 1] < s.top_p * total * (1 - _CUT_MARGIN))

    def _adjusted(self, logits: np.ndarray) -> np.ndarray:
        """The row with logit bias and repetition penalties applied (a copy only when something changes)."""
        if not len(self._bias_ids) and not (self._penalized and self._history):
            return logits
        logits = logits.copy()
        if len(self._bias_ids):
            logits[self._bias_ids] += self._bias_values
        if self._penalized and self._history:
            s = self._sampling
            counts = Counter(self._history)
            ids = np.fromiter(counts, dtype=np.int64, count=len(counts))
            seen = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
            values = logits[ids]
            values = np.where(values <= 0, values * s.repeat_penalty, values / s.repeat_penalty)
            logits[ids] = values - seen * s.frequency_penalty - s.presence_penalty
        return logits

    def _sample_top_k(self, logits: np.ndarray, ids: np.ndarray) -> int:
        """The chain from top-k on (typical, top-p, min-p, temperature, seeded draw) over the k best ``ids``."""
        buffer = self._buffer
        for slot, token in enumerate(ids.tolist()):
            buffer[slot].id = token
            buffer[slot].logit = float(logits[token])
            buffer[slot].p = 0.0
        candidates = llama_cpp.llama_token_data_array(
            data=buffer, size=len(ids), selected=-1, sorted=False
        )
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(candidates))
        token = buffer[candidates.selected].id
        llama_cpp.llama_sampler_accept(self._chain, token)
        return int(token)


def _largest(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits. A full partition of 262k floats takes ~2 ms, so first keep only the
    logits near the maximum (widening the margin until at least k are kept), then partition those."""
    peak = float(logits.max())
    margin = 4.0
    ids = np.empty(0, dtype=np.int64)
    while np.isfinite(peak) and margin < 1e4:
        ids = np.flatnonzero(logits >= peak - margin)
        if len(ids) >= k:
            break
        margin *= 4
    if len(ids) < k:  # a row with fewer than k finite logits: the exact partition
        ids = np.argpartition(logits, -k)[-k:]
    elif len(ids) > k:
        ids = ids[np.argpartition(logits[ids], -k)[-k:]]
    return ids


_CONTROL_MASKS: dict[tuple[int, int], tuple[tuple[bytes, ...], np.ndarray]] = {}


def control_mask(vocab: object, n_vocab: int) -> np.ndarray:
    """Which tokens are control tokens that do not end generation (the ones a grammar must not pick).

    Asking llama.cpp about all of Gemma's 262k tokens takes ~0.15 s, so the answer is kept per vocabulary
    (its address, checked against a few of its tokens' texts in case another model's took its place)."""
    key = (int(vocab or 0), n_vocab)
    fingerprint = tuple(_token_text(vocab, token) for token in range(0, n_vocab, max(1, n_vocab // 16)))
    cached = _CONTROL_MASKS.get(key)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    mask = np.fromiter(
        (llama_cpp.llama_vocab_is_control(vocab, token) and not llama_cpp.llama_vocab_is_eog(vocab, token)
         for token in range(n_vocab)), dtype=bool, count=n_vocab)
    if len(_CONTROL_MASKS) >= 8:
        _CONTROL_MASKS.clear()
    _CONTROL_MASKS[key] = (fingerprint, mask)
    return mask


def _token_text(vocab: object, token: int) -> bytes:
    text = llama_cpp.llama_vocab_get_text(vocab, token)
    return text or b""


def _grammar_sampler(grammar: str, vocab: object) -> object:
    """llama.cpp's grammar sampler for a GBNF text (a NULL pointer if it does not compile)."""
    return llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])  # llama_token_data


def _grammar_logits(grammar: object, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """The candidates' logits after the grammar has set the ones it rejects to -inf."""
    data = np.zeros(len(ids), dtype=_TOKEN_DATA)
    data["id"], data["logit"] = ids, logits[ids]
    candidates = llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), size=len(ids), selected=-1,
        sorted=False,
    )
    llama_cpp.llama_sampler_apply(grammar, ctypes.byref(candidates))
    return data["logit"]


def _top_k_chain(s: Sampling, seed: int) -> object:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for sampler in (
        llama_cpp.llama_sampler_init_top_k(s.top_k),
        llama_cpp.llama_sampler_init_typical(s.typical_p, 1),
        llama_cpp.llama_sampler_init_top_p(s.top_p, 1),
        llama_cpp.llama_sampler_init_min_p(s.min_p, 1),
        llama_cpp.llama_sampler_init_temp(s.temperature),
        llama_cpp.llama_sampler_init_dist(seed),
    ):
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    return chain


def _full_chain(request: CompletionRequest, vocab: object, n_vocab: int, n_ctx: int, seed: int) -> object:
    """llama.cpp's whole chain, in its usual order: bias, penalties, grammar, then the choice."""
    s = request.sampling
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: object) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    bias = {token: float("-inf") if value <= -100 else value for token, value in request.logit_bias.items()}
    if request.grammar:  # as the fast path: control tokens are not text (see the module's docstring)
        bias.update(dict.fromkeys(np.flatnonzero(control_mask(vocab, n_vocab)).tolist(), float("-inf")))
    if bias:
        biases = (llama_cpp.llama_logit_bias * len(bias))(*[
            llama_cpp.llama_logit_bias(token, value) for token, value in bias.items()
        ])
        add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), biases))
    if s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty:
        last_n = s.repeat_last_n if s.repeat_last_n >= 0 else n_ctx
        add(llama_cpp.llama_sampler_init_penalties(n_vocab, last_n, s.repeat_penalty, s.frequency_penalty,
                                                   s.presence_penalty))
    if request.grammar:
        grammar = _grammar_sampler(request.grammar, vocab)
        if not grammar:
            llama_cpp.llama_sampler_free(chain)
            raise InvalidRequest("the output grammar could not be compiled", param="response_format")
        add(grammar)
    if s.temperature <= 0:
        add(llama_cpp.llama_sampler_init_greedy())
    elif s.mirostat == 1:
        add(llama_cpp.llama_sampler_init_temp(s.temperature))
        add(llama_cpp.llama_sampler_init_mirostat(n_vocab, seed, s.mirostat_tau, s.mirostat_eta, 100))
    elif s.mirostat == 2:
        add(llama_cpp.llama_sampler_init_temp(s.temperature))
        add(llama_cpp.llama_sampler_init_mirostat_v2(seed, s.mirostat_tau, s.mirostat_eta))
    else:
        if s.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(s.top_k))
        add(llama_cpp.llama_sampler_init_typical(s.typical_p, 1))
        add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
        add(llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(s.temperature))
        add(llama_cpp.llama_sampler_init_dist(seed))
    return chain
