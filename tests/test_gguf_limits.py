"""GGUF hyperparameters held to llama.cpp's limits (localllm.gguf_limits), at create and at pull.

A file llama.cpp would ``GGML_ASSERT`` on (an ``abort()`` of the process that loads it) is refused with a
422 naming the problem. The fuzzer at the end mutates a tiny valid model's integer hyperparameters and
loads every file the check accepts with llama.cpp in a child process: none may die by a signal.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ggufs import TOKENS, tokens, write_split_llama, write_tiny_llama, write_tiny_lora
from localllm.errors import InvalidModelFile
from localllm.gguf_info import read_gguf
from localllm.gguf_limits import LLAMA_MAX_EXPERTS, LLAMA_MAX_LAYERS, check_hyperparameters
from localllm.llm.prompts import check_template
from localllm.names import ModelName
from localllm.services.create import CreateSpec, ModelCreator
from localllm.store.manifests import FILENAME_ANNOTATION, Manifest, MediaType
from localllm.store.models import ModelStore


def refusal(path: Path) -> str | None:
    """The check's message for a file, or None when it passes."""
    try:
        check_hyperparameters(read_gguf(path))
    except InvalidModelFile as exc:
        return exc.message
    return None


def _renamed_bytes() -> list[str]:
    return [f"<b{i}>" if t.startswith("<0x") else t for i, t in enumerate(tokens())]


def _duplicated() -> list[str]:
    vocab = tokens()
    vocab[300] = vocab[301]
    return vocab


# metadata written over a valid tiny llama (2 blocks, 4 heads of 16, 2 kv heads, 424 tokens) -> words of the refusal
BAD: dict[str, tuple[dict[str, object], str]] = {
    "no blocks": ({"llama.block_count": 0}, "llama.block_count is 0"),
    "513 blocks": ({"llama.block_count": 513}, "more than llama.cpp's limit of 512 layers (LLAMA_MAX_LAYERS)"),
    "1000 blocks": ({"llama.block_count": 1000}, "llama.block_count is 1000, more than llama.cpp's limit of 512"),
    "uint32 -1 blocks": ({"llama.block_count": 2**32 - 1}, "limit of 512 layers"),
    "3 blocks, tensors for 2": ({"llama.block_count": 3},
                                "llama.block_count is 3, but the file has tensors for 2 blocks"),
    "1 block, tensors for 2": ({"llama.block_count": 1}, "the file has tensors for block 1"),
    "no block count": ({"llama.block_count": None}, "llama.block_count is missing"),
    "block count as a string": ({"llama.block_count": "2"}, "not a count"),
    "no heads": ({"llama.attention.head_count": 0}, "llama.attention.head_count is 0"),
    "no kv heads": ({"llama.attention.head_count_kv": 0}, "llama.attention.head_count_kv is 0"),
    "kv heads not dividing": ({"llama.attention.head_count_kv": 3}, "which does not divide"),
    "more kv heads than heads": ({"llama.attention.head_count_kv": 8}, "which does not divide"),
    "per-layer heads, 3 for 2 blocks": ({"llama.attention.head_count": [4, 4, 4]},
                                        "has 3 entries, but llama.block_count is 2"),
    "per-layer ff, 1 for 2 blocks": ({"llama.feed_forward_length": [128]}, "has 1 entries"),
    "per-layer kv heads, one 0": ({"llama.attention.head_count_kv": [2, 0]}, "is 0 (block 1)"),
    "embedding not divisible by heads": ({"llama.attention.head_count": 3, "llama.attention.head_count_kv": 1},
                                         "is not a multiple of llama.attention.head_count"),
    "no embedding": ({"llama.embedding_length": 0}, "llama.embedding_length is 0"),
    "embedding narrower than token_embd": ({"llama.embedding_length": 48, "llama.rope.dimension_count": 12},
                                           "token_embd.weight is 64 wide, but llama.embedding_length is 48"),
    "key and value lengths differ": ({"llama.attention.key_length": 32, "llama.attention.value_length": 16},
                                     "differ"),
    "rope wider than a head": ({"llama.rope.dimension_count": 18}, "at most the head size (16)"),
    "odd rope": ({"llama.rope.dimension_count": 7}, "must be even"),
    "rope not the whole head (llama)": ({"llama.rope.dimension_count": 8}, "rotates whole heads of 16"),
    "unknown rope scaling": ({"llama.rope.scaling.type": "bogus"}, "llama.rope.scaling.type is 'bogus'"),
    "no context": ({"llama.context_length": 0}, "llama.context_length is 0"),
    "absurd context": ({"llama.context_length": 2**31}, "llama.context_length is 2147483648"),
    "context just past the bound": ({"llama.context_length": 2**24 + 1}, "between 1 and 16,777,216"),
    "experts but none used": ({"llama.expert_count": 8}, "expert_used_count is missing or 0"),
    "used experts without experts": ({"llama.expert_used_count": 2}, "more than llama.expert_count (0)"),
    "more used than experts": ({"llama.expert_count": 4, "llama.expert_used_count": 5},
                               "more than llama.expert_count (4)"),
    "too many experts": ({"llama.expert_count": LLAMA_MAX_EXPERTS + 1, "llama.expert_used_count": 2},
                         "limit of 1024 experts (LLAMA_MAX_EXPERTS)"),
    "expert groups without experts": ({"llama.expert_group_count": 2}, "the model has no experts"),
    "expert groups not dividing": ({"llama.expert_count": 9, "llama.expert_used_count": 2,
                                    "llama.expert_group_count": 2, "llama.expert_group_used_count": 1},
                                   "is not a multiple of"),
    "more next-token layers than blocks": ({"llama.nextn_predict_layers": 3}, "nextn_predict_layers is 3"),
    "unknown pooling": ({"llama.pooling_type": 9}, "llama.pooling_type is 9"),
    "bos past the vocabulary": ({"tokenizer.ggml.bos_token_id": TOKENS}, "not a token of the vocabulary"),
    "eos past the vocabulary": ({"tokenizer.ggml.eos_token_id": 2**31}, "tokenizer.ggml.eos_token_id"),
    "fewer tokens than token_embd rows": ({"tokenizer.ggml.tokens": tokens()[:-1]},
                                          f"the vocabulary has {TOKENS - 1} tokens (tokenizer.ggml.tokens), but "
                                          f"token_embd.weight has rows for {TOKENS}"),
    "scores shorter than tokens": ({"tokenizer.ggml.scores": [0.0] * 10}, "tokenizer.ggml.scores has 10 entries"),
    "a duplicated token": ({"tokenizer.ggml.tokens": _duplicated()}, "more than once"),
    "SentencePiece without byte tokens": ({"tokenizer.ggml.tokens": _renamed_bytes()}, "no byte token"),
    "no tokenizer": ({"tokenizer.ggml.model": "no_vocab"}, "has no tokenizer"),
    "unknown tokenizer": ({"tokenizer.ggml.model": "klingon"}, "'klingon'"),
    "BERT tokenizer with byte tokens": ({"tokenizer.ggml.model": "bert"}, "tokens of the byte type"),
    "add_bos without a BOS token": ({"tokenizer.ggml.model": "t5", "tokenizer.ggml.bos_token_id": None,
                                     "tokenizer.ggml.add_bos_token": True}, "no BOS token"),
    "RWKV tokens without their first bytes": ({"tokenizer.ggml.model": "rwkv"}, "loop for ever"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_hyperparameter_is_refused_with_its_name(case: str, tmp_path: Path) -> None:
    metadata, words = BAD[case]
    message = refusal(write_tiny_llama(tmp_path / "bad.gguf", metadata=metadata))
    assert message is not None and words in message, (case, message)


def test_limits_are_llama_cpps() -> None:
    assert (LLAMA_MAX_LAYERS, LLAMA_MAX_EXPERTS) == (512, 1024)  # src/llama-hparams.h of the vendored llama.cpp


def test_good_variants_pass(tmp_path: Path) -> None:
    good = {
        "per-layer arrays of the right length": {"llama.attention.head_count": [4, 4],
                                                 "llama.attention.head_count_kv": [2, 1],
                                                 "llama.feed_forward_length": [128, 128]},
        "explicit head sizes": {"llama.attention.key_length": 16, "llama.attention.value_length": 16},
        "a long trained context": {"llama.context_length": 2**24},
        "experts in range": {"llama.expert_count": 8, "llama.expert_used_count": 2},
        "no such token written as -1": {"tokenizer.ggml.padding_token_id": 2**32 - 1},
        "known rope scaling": {"llama.rope.scaling.type": "yarn"},
        "a single-entry array": {"general.tags": [7]},
    }
    for case, metadata in good.items():
        assert refusal(write_tiny_llama(tmp_path / "good.gguf", metadata=metadata)) is None, case


def test_long_per_layer_arrays_are_read_from_the_file(tmp_path: Path) -> None:
    shape = {"n_layer": 65, "n_embd": 16, "n_head": 2, "n_head_kv": 1, "n_ff": 16}  # arrays past 64 items
    good = write_tiny_llama(tmp_path / "long.gguf", metadata={"llama.attention.head_count_kv": [1] * 65}, **shape)
    assert "llama.attention.head_count_kv" in read_gguf(good).arrays and refusal(good) is None
    bad = write_tiny_llama(tmp_path / "bad.gguf", metadata={"llama.attention.head_count_kv": [1] * 64 + [0]},
                           **shape)
    assert "llama.attention.head_count_kv is 0 (block 64)" in (refusal(bad) or "")
    one = write_tiny_llama(tmp_path / "one.gguf", metadata={"general.tags": [7]})
    assert read_gguf(one).metadata["general.tags"] == [7]  # a one-item array is a list, not its item


def test_every_fixture_of_the_test_suite_passes(tmp_path: Path) -> None:
    import gguf

    paths = [
        write_tiny_llama(tmp_path / "a.gguf"),
        write_tiny_llama(tmp_path / "b.gguf", file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M, seed=3),
        write_tiny_llama(tmp_path / "c.gguf", context_length=2048, chat_template="{{ messages }}"),
        write_tiny_llama(tmp_path / "d.gguf", n_vocab=TOKENS + 100, n_layer=3, n_head=8, n_head_kv=8, n_embd=128),
        write_tiny_lora(tmp_path / "lora.gguf"),
        write_tiny_lora(tmp_path / "qwen-lora.gguf", architecture="qwen2"),
    ]
    for path in paths:
        assert refusal(path) is None, path.name
    parts = [read_gguf(path) for path in write_split_llama(tmp_path / "split", "tiny", 3)]
    check_hyperparameters(parts[0], [t for part in parts for t in part.tensors])
    check_hyperparameters(parts[0])  # the first part alone: what can be checked without the others


def test_the_embedded_models_pass(gemma_path: Path) -> None:
    from localllm.store.bundled import smollm2_135m

    smollm2 = smollm2_135m().chunks[0]
    for path in (gemma_path, smollm2):
        started = time.perf_counter()
        info = read_gguf(path)
        check_hyperparameters(info)
        assert time.perf_counter() - started < 3, path.name  # one pass over 262k tokens: about 0.3 s here
    check_template(read_gguf(smollm2).chat_template)  # SmolLM2's own template is what create checks


# --- at create: a 422 before anything is written ------------------------------------------------------------------
class _NoPuller:
    def plan(self, name: object) -> None:
        raise AssertionError("nothing is pulled here")


def _stored(store: ModelStore, name: str, path: Path, template: str | None = None) -> None:
    """A model written straight into the store, as one created before the checks existed would be."""
    layers = [store.add_bytes(path.read_bytes(), MediaType.MODEL, **{FILENAME_ANNOTATION: path.name})]
    if template is not None:
        layers.append(store.add_bytes(template.encode(), MediaType.TEMPLATE))
    store.commit(ModelName.parse(name), Manifest(config=store.add_config({"model_format": "gguf"}), layers=layers))


def test_create_from_a_stored_model_checks_its_weights_and_template(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    creator = ModelCreator(store, _NoPuller())  # type: ignore[arg-type]
    _stored(store, "old-bad", write_tiny_llama(tmp_path / "bad.gguf", metadata={"llama.block_count": 1000}))
    _stored(store, "bad-template", write_tiny_llama(tmp_path / "t.gguf", chat_template="{% if %}"))
    _stored(store, "own-template", write_tiny_llama(tmp_path / "o.gguf", chat_template="{% if %}"),
            template="{{ .Prompt }}")
    with pytest.raises(InvalidModelFile, match="old-bad:latest is not a usable model: llama.block_count is 1000"):
        creator.prepare(CreateSpec(name=ModelName.parse("new"), model_from="old-bad", system="hi"))
    with pytest.raises(InvalidModelFile, match=r"tokenizer\.chat_template"):
        creator.prepare(CreateSpec(name=ModelName.parse("new"), model_from="bad-template", system="hi"))
    # a TEMPLATE of the model's own (or of the request) replaces the GGUF's: its template is not used
    creator.prepare(CreateSpec(name=ModelName.parse("new"), model_from="own-template", system="hi"))
    creator.prepare(CreateSpec(name=ModelName.parse("new"), model_from="bad-template", template="{{ .Prompt }}"))


# --- the fuzzer ---------------------------------------------------------------------------------------------------
# Loads a GGUF as the daemon's runner would (model, context of min(4096, trained) tokens, a tokenized prompt
# with special tokens, one decode, one more token). Exit codes: 0 ran, 3-7 llama.cpp refused cleanly at a step.
CHILD = r"""
import ctypes, sys
import llama_cpp
path, n_ctx = sys.argv[1], int(sys.argv[2])
llama_cpp.llama_backend_init()
model = llama_cpp.llama_model_load_from_file(path.encode(), llama_cpp.llama_model_default_params())
if not model:
    sys.exit(3)
cp = llama_cpp.llama_context_default_params()
cp.n_ctx = n_ctx
cp.n_batch = cp.n_ubatch = max(2, min(512, n_ctx))
cp.n_seq_max = 1
cp.n_threads = cp.n_threads_batch = 1
cp.kv_unified = False
cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
cp.swa_full = True
ctx = llama_cpp.llama_init_from_model(model, cp)
if not ctx:
    sys.exit(4)
vocab = llama_cpp.llama_model_get_vocab(model)
text = "hello world, \u00e9 \u2603 <s></s>\n".encode()
buf = (llama_cpp.llama_token * 256)()
n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, 256, True, True)
if n <= 0:
    sys.exit(5)
n = max(1, min(n, n_ctx - 1, cp.n_batch))
if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(buf, n)) != 0:
    sys.exit(6)
logits = llama_cpp.llama_get_logits_ith(ctx, -1)
best = max(range(llama_cpp.llama_vocab_n_tokens(vocab)), key=lambda i: logits[i])
piece = ctypes.create_string_buffer(64)
llama_cpp.llama_token_to_piece(vocab, best, piece, 64, 0, True)
one = (llama_cpp.llama_token * 1)(best)
if n + 1 < n_ctx and llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) != 0:
    sys.exit(7)
"""

FUZZ_KEYS = {  # the tiny model's value (None: a key it does not have)
    "llama.block_count": 2, "llama.context_length": 256, "llama.embedding_length": 64,
    "llama.feed_forward_length": 128, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
    "llama.rope.dimension_count": 16, "llama.attention.key_length": None, "llama.attention.value_length": None,
    "llama.expert_count": None, "llama.expert_used_count": None, "llama.expert_group_count": None,
    "llama.nextn_predict_layers": None, "llama.pooling_type": None, "llama.vocab_size": TOKENS,
    "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
    "tokenizer.ggml.padding_token_id": None, "general.file_type": 0,
}
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 16, 17, 63, 64, 65, 255, 256, 511, 512, 513, 1000, 1024, 1025, 2**16,
               2**24, 2**24 + 1, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]  # 2**32 - 1 is -1 as a uint32


def _mutation(rng: random.Random) -> dict[str, object]:
    mutation: dict[str, object] = {}
    for key in rng.sample(sorted(FUZZ_KEYS), rng.choice([1, 2])):
        base = FUZZ_KEYS[key]
        values = INTERESTING + ([base - 1, base + 1, base * 2, base // 2] if base else [])
        if key in ("llama.attention.head_count", "llama.attention.head_count_kv", "llama.feed_forward_length") \
                and rng.random() < 0.25:  # a per-layer array, of the right length or not
            mutation[key] = [rng.choice([base, base, *values]) % 2**31 for _ in range(rng.choice([1, 2, 3]))]
        else:
            mutation[key] = rng.choice(values)
    return mutation


def _load_in_child(path: Path, context_length: int | None) -> int:
    trained = context_length or 4096  # as the scheduler sizes the context
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}  # an abort prints no gdb backtrace (seconds each)
    result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(min(4096, trained))], env=env,
                            capture_output=True, timeout=30)
    return result.returncode


def test_fuzzed_hyperparameters_never_crash_llama_cpp_once_accepted(tmp_path: Path) -> None:
    # the harness sees a crash: the file of D1 aborts llama.cpp when nothing checks it
    d1 = write_tiny_llama(tmp_path / "d1.gguf", metadata={"llama.block_count": 1000})
    assert _load_in_child(d1, 256) == -signal.SIGABRT
    assert refusal(d1) is not None

    rng = random.Random(16)
    accepted = refused = 0
    crashes: list[tuple[dict, int]] = []
    started = time.monotonic()
    for index in range(40):
        mutation = _mutation(rng)
        path = write_tiny_llama(tmp_path / f"fuzz{index}.gguf", metadata=mutation)
        info = read_gguf(path)
        try:
            check_hyperparameters(info)
        except InvalidModelFile:
            refused += 1
            continue
        accepted += 1
        try:
            code = _load_in_child(path, info.context_length)
        except subprocess.TimeoutExpired:
            code = -signal.SIGALRM  # a hang is as bad as a crash
        if code < 0:
            crashes.append((mutation, code))
    print(f"\nGGUF hparam fuzzer: {accepted} accepted and loaded, {refused} refused, {len(crashes)} crashes, "
          f"{time.monotonic() - started:.1f} s")
    assert not crashes, crashes
    assert accepted >= 5 and refused >= 5  # both sides were exercised
