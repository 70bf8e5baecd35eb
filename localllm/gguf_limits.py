"""A GGUF's hyperparameters checked against what llama.cpp accepts, before anything loads it.

llama.cpp trusts the numbers in a file's header: a ``block_count`` of 0 or 1000, an ``expert_count``
without an ``expert_used_count``, an unknown ``rope.scaling.type``, a key length that differs from the
value length, or a vocabulary with a duplicated token all end in a ``GGML_ASSERT``, and an assert is
``abort()``: the process that loads the model dies. Most other bad numbers only make llama.cpp refuse
the file with an error, which is fine, but a refusal at ``/api/create`` names the problem where the
user can fix it. :func:`check_hyperparameters` refuses both kinds with :class:`InvalidModelFile` (422).

Every limit here is llama.cpp's own, read from the sources that llama-cpp-python 0.3.36 vendors
(``vendor/llama.cpp`` in its sdist); the file and line are next to each check. The per-architecture
sets below were derived from the same sources: ``_SAME_KV_HEAD_SIZE`` are the architectures whose graph
code asserts ``n_embd_head_v == n_embd_head_k``, ``_ROPE_IS_HEAD_SIZE`` those that assert
``n_embd_head == n_rot`` (``src/models/<arch>.cpp``). An architecture this module does not know gets
the generic checks only (``load_hparams`` reads those keys for every architecture).

The checks read the header that :func:`localllm.gguf_info.read_gguf` already parsed, plus the
tokenizer's token strings (one pass over them, about 0.2 s for a 262k-token vocabulary), so they belong
where a model enters the store (create, pull), not before every load.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .errors import InvalidModelFile
from .gguf_info import GGUFInfo, TensorInfo

__all__ = ["LLAMA_MAX_EXPERTS", "LLAMA_MAX_LAYERS", "MAX_CONTEXT_LENGTH", "check_hyperparameters"]

# src/llama-hparams.h:11-12
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
# Not llama.cpp's: the largest trained context of a real model is 10M tokens (Llama 4 Scout); a bigger
# number only makes buffers sized by it absurd.
MAX_CONTEXT_LENGTH = 1 << 24
MAX_EMBEDDING_LENGTH = 1 << 20  # 64x the widest real model
MAX_HEAD_SIZE = 1 << 16
UINT32_MAX = (1 << 32) - 1
INT32_MAX = (1 << 31) - 1
NONE_ID = UINT32_MAX  # a token id of -1 written as uint32: "no such token"

# src/llama-model.cpp:1034 LLAMA_ROPE_SCALING_TYPES; anything else is LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED,
# and load_hparams asserts it is not (src/llama-model.cpp:1420)
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")
# include/llama.h:177-182; another value reaches GGML_ABORT("unknown pooling type") (src/llama-graph.cpp:3801)
POOLING_TYPES = {0, 1, 2, 3, 4, UINT32_MAX}

# Architectures whose graph asserts n_embd_head_v == n_embd_head_k (GGML_ASSERT(n_embd_head ==
# hparams.n_embd_head_k()) with n_embd_head = hparams.n_embd_head_v(), in src/models/<arch>.cpp).
_SAME_KV_HEAD_SIZE = frozenset("""
afmoe apertus arcee arctic baichuan bailingmoe2 bert bitnet bloom chameleon chatglm codeshell cogvlm cohere2
cohere2moe command-r dbrx deci deepseek deepseek4 dflash dots1 dream eagle3 ernie4_5 ernie4_5-moe eurobert
exaone falcon glm4 glm4moe gpt2 gptneox granite granite_swa granitehybrid graniteswitch grok hunyuan-dense
hunyuan-moe hunyuan_vl hy_v3 internlm2 jais jais2 laguna llada llada-moe llama llama-embed llama4 maincoder
mellum minimax-01 minimax-m2 minimax-m3 mistral3 modern-bert mpt muse-glimmer nanbeige nemotron nemotron_h
nemotron_h_moe neo-bert olmo olmo2 olmoe openelm orion paddleocr pangu-embedded phi2 phi3 plamo pockettts
qwen qwen2 qwen2moe qwen2vl qwen3 qwen35 qwen35moe qwen3moe qwen3next qwen3tts qwen3vl qwen3vlmoe qwen4exp
refact rnd1 seed_oss smallthinker smollm3 spark2_5 stablelm starcoder starcoder2 t5 xverse
""".split())

# Architectures whose graph asserts n_embd_head == n_rot (GGML_ASSERT(n_embd_head == n_rot), same files).
_ROPE_IS_HEAD_SIZE = frozenset("""
apertus arcee arctic baichuan chameleon codeshell cogvlm cohere2moe dbrx deci deepseek dots1 dream ernie4_5
ernie4_5-moe exaone exaone-moe exaone4 falcon granite granite_swa graniteswitch grok grovemoe hunyuan-dense
hunyuan-moe hunyuan_vl hy_v3 internlm2 jais2 llada llada-moe llama llama-embed llama4 maincoder mellum
minimax-01 minimax-m2 mistral3 nemotron olmo olmo2 olmoe orion paddleocr pangu-embedded plamo pockettts qwen2
qwen2moe qwen2vl qwen3 qwen3moe qwen3tts qwen3vl qwen3vlmoe rnd1 seed_oss smallthinker smollm3 starcoder2
talkie xverse
""".split())

# Plain transformers: every block has attention heads and its own tensors (blk.N.*), and token_embd is
# [embedding_length, n_vocab] (src/models/<arch>.cpp load_arch_tensors). Hybrid and recurrent models
# (per-layer head counts of 0), draft models and encoder-decoders are not here: they get the generic checks.
_PLAIN_TRANSFORMERS = frozenset("""
llama llama-embed mistral3 gemma gemma2 gemma3 gemma-embedding qwen2 qwen2moe qwen2vl qwen3 qwen3moe phi2
phi3 starcoder2 granite olmo olmo2 olmoe stablelm internlm2 smollm3 gpt2 command-r cohere2 exaone exaone4
baichuan orion falcon bitnet bert ernie4_5 seed_oss arcee deepseek
""".split())

# llm_hparams read with get_key_or_arr(..., n_layer_all): a scalar, or an array of exactly block_count
# entries (src/llama-model-loader.cpp:477)
_PER_LAYER_KEYS = ("feed_forward_length", "attention.head_count", "attention.head_count_kv",
                   "expert_used_count", "expert_feed_forward_length")

# hunyuan-vl and hunyuan-dense turn expert_count <= 1 into no experts (src/llama-model.cpp:1340)
_EXPERTS_DROPPED_WHEN_ONE = frozenset({"hunyuan_vl", "hunyuan-dense"})
# deepseek2's loader reads attention.temperature_length with a default of 0, and the graph asserts it is not 0
# when attention.temperature_scale is set (src/models/deepseek2.cpp:41-42, src/llama-graph.cpp:161-162)
_TEMPERATURE_LENGTH_DEFAULTS_TO_0 = frozenset({"deepseek2", "mistral4"})

_BLOCK = re.compile(r"blk\.(\d+)\.")

# tokenizer.ggml.model -> (llama.cpp vocabulary type, default special ids, default add_bos, add_eos), from
# llama_vocab::impl::load (src/llama-vocab.cpp:1949-2110, 2430-2445). None: no such token.
_TOKENIZERS: dict[str, tuple[str, dict[str, int | None], bool, bool]] = {
    "llama": ("spm", {"bos": 1, "eos": 2, "unk": 0, "sep": None}, True, False),
    "bert": ("wpm", {"bos": 101, "eos": None, "unk": 100, "sep": 102}, True, False),
    # BPE's add_bos depends on the pre-tokenizer (true for several): assume it may be set
    "gpt2": ("bpe", {"bos": 11, "eos": 11, "unk": None, "sep": None}, True, False),
    "hybriddna": ("bpe", {"bos": 11, "eos": 11, "unk": None, "sep": None}, True, False),
    "whitespace": ("bpe", {"bos": 11, "eos": 11, "unk": None, "sep": None}, True, False),
    "gemma4": ("bpe", {"bos": 11, "eos": 11, "unk": None, "sep": None}, True, False),
    "t5": ("ugm", {"bos": None, "eos": 1, "unk": 2, "sep": None}, False, True),
    "rwkv": ("rwkv", {"bos": None, "eos": None, "unk": None, "sep": None}, False, False),
    "plamo2": ("plamo2", {"bos": 1, "eos": 2, "unk": 0, "sep": None}, False, False),
}
_SPECIAL_TOKEN_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id", "sep": "tokenizer.ggml.seperator_token_id",
    "pad": "tokenizer.ggml.padding_token_id", "mask": "tokenizer.ggml.mask_token_id",
    "eot": "tokenizer.ggml.eot_token_id", "eom": "tokenizer.ggml.eom_token_id",
    "fim_pre": "tokenizer.ggml.fim_pre_token_id", "fim_suf": "tokenizer.ggml.fim_suf_token_id",
    "fim_mid": "tokenizer.ggml.fim_mid_token_id", "fim_pad": "tokenizer.ggml.fim_pad_token_id",
    "fim_rep": "tokenizer.ggml.fim_rep_token_id", "fim_sep": "tokenizer.ggml.fim_sep_token_id",
    "prefix": "tokenizer.ggml.prefix_token_id", "suffix": "tokenizer.ggml.suffix_token_id",
    "middle": "tokenizer.ggml.middle_token_id",
}
TOKEN_TYPE_BYTE = 6  # LLAMA_TOKEN_TYPE_BYTE (include/llama.h)


class _Refused(Exception):
    pass


def check_hyperparameters(info: GGUFInfo, tensors: Sequence[TensorInfo] | None = None) -> None:
    """Refuse (:class:`InvalidModelFile`, 422) a GGUF model whose hyperparameters llama.cpp would assert on
    or refuse. ``info`` is the file (the first part of a split model, which holds the metadata);
    ``tensors`` are all the parts' tensors, when they are not all in ``info``. LoRA adapters and
    multimodal projectors (``clip``) are not model files and pass."""
    if info.metadata.get("general.type") == "adapter" or info.architecture == "clip":
        return
    if tensors is None:
        tensors = info.tensors if info.split_count == 1 else None  # the other parts are not known here
    try:
        if not isinstance(info.metadata.get("general.architecture"), str):
            raise _Refused("general.architecture is missing: the file does not say what model it is")
        _Checker(info, tensors).run()
    except _Refused as exc:
        raise InvalidModelFile(str(exc)) from None


class _Checker:
    def __init__(self, info: GGUFInfo, tensors: Sequence[TensorInfo] | None) -> None:
        self.info = info
        self.md = info.metadata
        self.arch = info.architecture
        self.plain = self.arch in _PLAIN_TRANSFORMERS
        self.tensors = {t.name: t for t in tensors} if tensors is not None else None

    # --- reading ------------------------------------------------------------------------------------------
    def key(self, name: str) -> str:
        return f"{self.arch}.{name}"

    def count(self, key: str, *, required: bool = False) -> int | None:
        """An unsigned 32-bit count (llama.cpp reads these keys as uint32_t)."""
        if key not in self.md:
            if required:
                raise _Refused(f"{key} is missing (llama.cpp needs it)")
            return None
        value = self.md[key]
        if isinstance(value, bool) or not isinstance(value, int):
            kind = "an array" if key in self.info.array_lengths or isinstance(value, list) else repr(value)
            raise _Refused(f"{key} is {kind}, not a count")
        if not 0 <= value <= UINT32_MAX:
            raise _Refused(f"{key} is {value}, not an unsigned 32-bit count")
        return value

    def per_layer(self, name: str, n_layer: int) -> list[int] | None:
        """A key that is a scalar or one value per block (get_key_or_arr), as one value per block."""
        key = self.key(name)
        if key not in self.md:
            return None
        if key in self.info.arrays or isinstance(self.md[key], list):
            values = self.info.array(key)
            if values is None:
                raise _Refused(f"{key} is an array of strings, not of counts")
            if len(values) != n_layer:  # src/llama-model-loader.cpp:477
                raise _Refused(f"{key} has {len(values)} entries, but {self.key('block_count')} is {n_layer}: "
                               "a per-layer array needs one entry per block")
            for index, value in enumerate(values):
                if isinstance(value, float) or not 0 <= int(value) <= UINT32_MAX:
                    raise _Refused(f"{key}[{index}] is {value}, not an unsigned 32-bit count")
            return [int(value) for value in values]
        value = self.count(key)
        assert value is not None
        return [value] * n_layer

    # --- the checks -----------------------------------------------------------------------------------------
    def run(self) -> None:
        n_layer = self.blocks()
        self.contexts()
        n_embd = self.count(self.key("embedding_length"), required=True)
        assert n_embd is not None
        if not 1 <= n_embd <= MAX_EMBEDDING_LENGTH:
            raise _Refused(f"{self.key('embedding_length')} is {n_embd}; it must be between 1 and "
                           f"{MAX_EMBEDDING_LENGTH}")
        for name in ("feed_forward_length", "expert_feed_forward_length"):
            self.per_layer(name, n_layer)
        self.experts(n_layer)
        head_k = self.heads(n_layer, n_embd)
        self.rope(head_k)
        self.misc()
        n_tokens = self.vocabulary()
        self.shapes(n_embd, n_tokens)

    def blocks(self) -> int:
        key = self.key("block_count")
        n_layer = self.count(key, required=True)
        assert n_layer is not None
        # GGML_ASSERT(hparams.n_layer_all > 0 && hparams.n_layer_all <= LLAMA_MAX_LAYERS): src/llama-model.cpp:1328
        if n_layer == 0:
            raise _Refused(f"{key} is 0: a model needs at least one block")
        if n_layer > LLAMA_MAX_LAYERS:
            raise _Refused(f"{key} is {n_layer}, more than llama.cpp's limit of {LLAMA_MAX_LAYERS} layers "
                           "(LLAMA_MAX_LAYERS)")
        # GGML_ASSERT(hparams.n_layer_nextn <= hparams.n_layer_all): src/llama-model.cpp:1330
        nextn = self.count(self.key("nextn_predict_layers"))
        if nextn is not None and nextn > n_layer:
            raise _Refused(f"{self.key('nextn_predict_layers')} is {nextn}, more than {key} ({n_layer})")
        if self.arch == "wavtokenizer-dec":  # src/llama-model.cpp:1354-1355
            for name in ("posnet.block_count", "convnext.block_count"):
                value = self.count(self.key(name))
                if value is not None and value > n_layer:
                    raise _Refused(f"{self.key(name)} is {value}, more than {key} ({n_layer})")
        if self.tensors is not None:
            seen = {int(match[1]) for name in self.tensors if (match := _BLOCK.match(name))}
            if seen and max(seen) >= n_layer:
                raise _Refused(f"{key} is {n_layer}, but the file has tensors for block {max(seen)} "
                               f"(blk.{max(seen)}.*)")
            if self.plain and len(seen) != n_layer:
                missing = min(set(range(n_layer)) - seen)
                if not seen:
                    raise _Refused(f"{key} is {n_layer}, but the file has no block tensors (blk.N.*)")
                if missing == len(seen):
                    raise _Refused(f"{key} is {n_layer}, but the file has tensors for {len(seen)} "
                                   f"block{'s' if len(seen) != 1 else ''}")
                raise _Refused(f"{key} is {n_layer}, but the file has no tensors for block {missing}")
        return n_layer

    def contexts(self) -> None:
        key = self.key("context_length")
        n_ctx = self.count(key, required=True)
        assert n_ctx is not None
        if not 1 <= n_ctx <= MAX_CONTEXT_LENGTH:
            raise _Refused(f"{key} is {n_ctx}; a trained context must be between 1 and {MAX_CONTEXT_LENGTH:,} "
                           "tokens")
        for name in ("rope.scaling.original_context_length", "attention.sliding_window"):
            value = self.count(self.key(name))
            if value is not None and value > MAX_CONTEXT_LENGTH:
                raise _Refused(f"{self.key(name)} is {value}, more than {MAX_CONTEXT_LENGTH:,}")

    def experts(self, n_layer: int) -> None:
        # src/llama-model.cpp:1361-1374
        key = self.key("expert_count")
        n_expert = self.count(key) or 0
        used = self.per_layer("expert_used_count", n_layer) or [0]
        groups = self.count(self.key("expert_group_count")) or 0
        group_used = self.count(self.key("expert_group_used_count")) or 0
        if self.arch in _EXPERTS_DROPPED_WHEN_ONE and n_expert <= 1:
            return
        used_max = max(used)
        used_key = self.key("expert_used_count")
        if n_expert > LLAMA_MAX_EXPERTS:
            raise _Refused(f"{key} is {n_expert}, more than llama.cpp's limit of {LLAMA_MAX_EXPERTS} experts "
                           "(LLAMA_MAX_EXPERTS)")
        if used_max > n_expert:
            raise _Refused(f"{used_key} is {used_max}, more than {key} ({n_expert}): a token cannot use more "
                           "experts than there are")
        if n_expert > 0:
            if used_max == 0:
                raise _Refused(f"{key} is {n_expert}, but {used_key} is missing or 0: a mixture of experts must "
                               "use at least one per token")
            if groups >= n_expert:
                raise _Refused(f"{self.key('expert_group_count')} is {groups}, not fewer than {key} ({n_expert})")
            if groups > 1:
                if n_expert % groups:
                    raise _Refused(f"{key} ({n_expert}) is not a multiple of {self.key('expert_group_count')} "
                                   f"({groups})")
                if not 0 < group_used < groups:
                    raise _Refused(f"{self.key('expert_group_used_count')} is {group_used}; it must be between 1 "
                                   f"and {groups - 1} ({self.key('expert_group_count')} - 1)")
        elif groups:
            raise _Refused(f"{self.key('expert_group_count')} is {groups}, but the model has no experts")

    def heads(self, n_layer: int, n_embd: int) -> int:
        """Check the attention heads; return the key head size (0 for a model without attention)."""
        head_key, kv_key = self.key("attention.head_count"), self.key("attention.head_count_kv")
        heads = self.per_layer("attention.head_count", n_layer)
        if heads is None:
            if self.plain:
                raise _Refused(f"{head_key} is missing: a {self.arch} model needs attention heads")
            heads = [0] * n_layer
        kv_heads = self.per_layer("attention.head_count_kv", n_layer) or heads  # optional, defaults to head_count
        for il, (n_head, n_head_kv) in enumerate(zip(heads, kv_heads, strict=False)):
            where = f" (block {il})" if len(set(heads)) > 1 or len(set(kv_heads)) > 1 else ""
            if self.plain and n_head == 0:
                raise _Refused(f"{head_key} is 0{where}: a {self.arch} model needs at least one attention head")
            if self.plain and n_head_kv == 0:
                raise _Refused(f"{kv_key} is 0{where}: a {self.arch} model needs at least one key/value head")
            if n_head_kv and (n_head == 0 or n_head % n_head_kv):
                # grouped-query attention shares each key/value head among n_head / n_head_kv query heads;
                # ggml's matrix product asserts the division is exact
                raise _Refused(f"{kv_key} is {n_head_kv}{where}, which does not divide {head_key} ({n_head})")
            if n_head > n_embd * 64:
                raise _Refused(f"{head_key} is {n_head}{where}, absurd for an embedding of {n_embd}")
        n_head = heads[0]  # llama.cpp's hparams.n_head() is block 0's
        if n_head == 0:
            return 0
        # src/llama-model.cpp:1441-1447: head sizes default to embedding_length / head_count
        k_key, v_key = self.key("attention.key_length"), self.key("attention.value_length")
        head_k, head_v = self.count(k_key), self.count(v_key)
        if head_k is None or head_v is None:
            if n_embd % n_head:
                raise _Refused(f"{self.key('embedding_length')} ({n_embd}) is not a multiple of {head_key} "
                               f"({n_head}), and {k_key if head_k is None else v_key} is not given")
        head_k = n_embd // n_head if head_k is None else head_k
        head_v = n_embd // n_head if head_v is None else head_v
        for key, size in ((k_key, head_k), (v_key, head_v)):
            if not 1 <= size <= MAX_HEAD_SIZE:
                raise _Refused(f"{key} is {size}; a head size must be between 1 and {MAX_HEAD_SIZE}")
        if self.arch in _SAME_KV_HEAD_SIZE and head_k != head_v:
            raise _Refused(f"{k_key} ({head_k}) and {v_key} ({head_v}) differ, and llama.cpp's {self.arch} "
                           "needs them equal")
        for name in ("attention.key_length_swa", "attention.value_length_swa"):
            value = self.count(self.key(name))
            if value is not None and not 1 <= value <= MAX_HEAD_SIZE:
                raise _Refused(f"{self.key(name)} is {value}; a head size must be between 1 and {MAX_HEAD_SIZE}")
        return head_k

    def rope(self, head_k: int) -> None:
        scaling = self.md.get(self.key("rope.scaling.type"))
        if scaling is not None and scaling not in ROPE_SCALING_TYPES:  # src/llama-model.cpp:1420
            raise _Refused(f"{self.key('rope.scaling.type')} is {scaling!r}; llama.cpp knows "
                           f"{', '.join(ROPE_SCALING_TYPES)}")
        if head_k == 0:
            return
        key = self.key("rope.dimension_count")
        n_rot = self.count(key)
        n_rot = head_k if n_rot is None else n_rot
        # ggml's rope asserts n_dims <= ne0 and n_dims % 2 == 0 (ggml/src/ggml-cpu/ops.cpp:6355-6356)
        if n_rot % 2 or n_rot > head_k:
            raise _Refused(f"{key} is {n_rot}; rotary dimensions must be even and at most the head size "
                           f"({head_k})")
        if self.arch in _ROPE_IS_HEAD_SIZE and n_rot != head_k:
            raise _Refused(f"{key} is {n_rot}, but llama.cpp's {self.arch} rotates whole heads of {head_k}")
        head_swa = self.count(self.key("attention.key_length_swa"))
        head_swa = head_k if head_swa is None else head_swa
        rot_swa = self.count(self.key("rope.dimension_count_swa"))
        rot_swa = n_rot if rot_swa is None else rot_swa
        if rot_swa % 2 or rot_swa > head_swa:
            raise _Refused(f"{self.key('rope.dimension_count_swa')} is {rot_swa}; rotary dimensions must be even "
                           f"and at most the sliding-window head size ({head_swa})")

    def misc(self) -> None:
        for name in ("pooling_type", "classifier.pooling_type"):
            value = self.count(self.key(name))
            if value is not None and value not in POOLING_TYPES:
                raise _Refused(f"{self.key(name)} is {value}; llama.cpp knows 0 to 4 (none, mean, cls, last, rank)")
        scale = self.md.get(self.key("attention.temperature_scale"))
        if isinstance(scale, (int, float)) and scale != 0:
            length = self.count(self.key("attention.temperature_length"))
            if length == 0 or (length is None and self.arch in _TEMPERATURE_LENGTH_DEFAULTS_TO_0):
                raise _Refused(f"{self.key('attention.temperature_scale')} is set, but "
                               f"{self.key('attention.temperature_length')} is missing or 0")

    # --- the vocabulary ---------------------------------------------------------------------------------------
    def vocabulary(self) -> int | None:
        """Check the tokenizer; return its token count (None without one)."""
        model = self.md.get("tokenizer.ggml.model")
        key = "tokenizer.ggml.tokens"
        n_tokens = self.info.array_lengths.get(key)
        if n_tokens is None and isinstance(self.md.get(key), list):
            n_tokens = len(self.md[key])
        if not isinstance(model, str):
            raise _Refused("tokenizer.ggml.model is missing: the file has no tokenizer")
        if model in ("no_vocab", "none"):
            # llama.cpp loads it, then asserts on the first text it is asked to tokenize ("Tokenizer not
            # initialized", src/llama-vocab.cpp:3422): every request here starts with text
            raise _Refused(f"tokenizer.ggml.model is {model!r}: the file has no tokenizer, and text cannot be "
                           "turned into its tokens")
        if model not in _TOKENIZERS:
            raise _Refused(f"tokenizer.ggml.model is {model!r}, not one of the tokenizers llama.cpp reads text "
                           f"with ({', '.join(sorted(_TOKENIZERS))})")
        if n_tokens is None:
            raise _Refused(f"{key} is missing: the file has no vocabulary")
        if not 0 < n_tokens <= INT32_MAX:
            raise _Refused(f"{key} has {n_tokens} tokens")
        for other in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            length = self.info.array_lengths.get(other)
            if length is None and isinstance(self.md.get(other), list):
                length = len(self.md[other])
            if length is not None and length < n_tokens:  # src/llama-vocab.cpp:2483, 2501
                raise _Refused(f"{other} has {length} entries for {n_tokens} tokens")
        for special in _SPECIAL_TOKEN_KEYS.values():
            value = self.md.get(special)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not (0 <= value < n_tokens or value in
                                                                             (NONE_ID, -1)):
                raise _Refused(f"{special} is {value!r}, not a token of the vocabulary (0 to {n_tokens - 1})")
        kind, defaults, add_bos, add_eos = _TOKENIZERS[model]

        def special_id(name: str) -> int | None:
            value = self.md.get(_SPECIAL_TOKEN_KEYS[name])
            if isinstance(value, int) and 0 <= value < n_tokens:
                return value
            default = defaults.get(name)
            return default if default is not None and default < n_tokens else None

        add_bos = _flag(self.md.get("tokenizer.ggml.add_bos_token"), add_bos)
        add_eos = _flag(self.md.get("tokenizer.ggml.add_eos_token"), add_eos)
        # tokenizing with add_special asserts the token it adds exists (src/llama-vocab.cpp:588, 597, 3443-3579)
        needed = [("bos", "tokenizer.ggml.add_bos_token is true")] if add_bos and kind != "rwkv" else []
        needed += [("eos", "tokenizer.ggml.add_eos_token is true")] if add_eos and kind in ("spm", "bpe", "ugm") else []
        if kind == "wpm":
            needed = [("bos", "a BERT tokenizer adds it"), ("sep", "a BERT tokenizer adds it")]
        for name, why in needed:
            if special_id(name) is None:
                raise _Refused(f"{why}, but the vocabulary has no {name.upper()} token "
                               f"({_SPECIAL_TOKEN_KEYS[name]}); llama.cpp would abort on the first prompt")
        self.token_strings(kind, n_tokens)
        return n_tokens

    def token_strings(self, kind: str, n_tokens: int) -> None:
        tokens = self.info.strings("tokenizer.ggml.tokens")
        if tokens is None:
            raise _Refused("tokenizer.ggml.tokens is not an array of strings")
        # llama.cpp names an empty token "[EMPTY_<id>]" (src/llama-vocab.cpp:2512)
        seen = set(tokens)
        if b"" in seen:
            seen.discard(b"")
            seen.update(f"[EMPTY_{i}]".encode() for i, token in enumerate(tokens) if not token)
        if len(seen) != n_tokens:
            # GGML_ASSERT(id_to_token.size() == token_to_id.size()): src/llama-vocab.cpp:2544
            first = _first_duplicate(tokens)
            raise _Refused(f"tokenizer.ggml.tokens holds the token {first!r} more than once; llama.cpp needs "
                           "every token to be distinct")
        if kind == "spm":
            # SentencePiece falls back to byte tokens for text its pieces do not cover, and llama.cpp's
            # byte_to_token throws out of a C function (abort) for a byte with neither <0xXX> nor the
            # character itself (src/llama-vocab.cpp:193, 4001-4013)
            missing = [b for b in range(256) if f"<0x{b:02X}>".encode() not in seen and bytes([b]) not in seen]
            if missing:
                raise _Refused(f"the SentencePiece vocabulary has no byte token for {len(missing)} of the 256 "
                               f"bytes (<0x{missing[0]:02X}> first); llama.cpp would abort on a prompt that "
                               "needs one")
        if kind == "rwkv":
            # The RWKV tokenizer follows a trie of the (unescaped) tokens and, when the bytes it followed
            # end no token, restarts from the beginning of the text: an endless loop that fills memory
            # (llm_tokenizer_rwkv_session::tokenize, src/llama-vocab.cpp:1331-1359). It always advances
            # when every byte that starts a token is a token by itself.
            pieces = {_unescape_rwkv(token) for token in tokens}
            starts = {piece[0] for piece in pieces if piece}
            lonely = sorted(b for b in starts if bytes([b]) not in pieces)
            if lonely:
                raise _Refused(f"the RWKV vocabulary has tokens starting with byte 0x{lonely[0]:02x} but no token "
                               "for that byte alone; llama.cpp's RWKV tokenizer would loop for ever on text "
                               "with it")
        if kind == "wpm":
            types = self.info.array("tokenizer.ggml.token_type")
            if types is not None and TOKEN_TYPE_BYTE in types:
                # token_to_byte aborts for a WPM vocabulary (src/llama-vocab.cpp:3205-3207), at load
                raise _Refused("the BERT vocabulary has tokens of the byte type, which llama.cpp cannot decode")

    # --- tensors against the numbers -----------------------------------------------------------------------------
    def shapes(self, n_embd: int, n_tokens: int | None) -> None:
        if self.tensors is None or not self.plain:
            return
        for name in ("token_embd.weight", "output.weight"):
            tensor = self.tensors.get(name)
            if tensor is None or len(tensor.shape) != 2:
                continue
            width, rows = tensor.shape  # ggml order: [n_embd, n_vocab]
            if width != n_embd:
                raise _Refused(f"{name} is {width} wide, but {self.key('embedding_length')} is {n_embd}")
            if n_tokens is not None and rows != n_tokens:
                raise _Refused(f"the vocabulary has {n_tokens} tokens (tokenizer.ggml.tokens), but {name} has "
                               f"rows for {rows}")


def _flag(value: Any, default: bool) -> bool:
    return value if isinstance(value, bool) else default


def _unescape_rwkv(token: bytes) -> bytes:
    """An RWKV token's bytes, as llama_unescape_rwkv_token reads its escapes (src/llama-vocab.cpp:1258)."""
    if b"\\" not in token:
        return token
    out = bytearray()
    escaping, hex_left, acc = False, 0, 0
    for c in token:
        if hex_left:
            acc = ((acc << 4) + (c - 87 if c >= 97 else c - 48)) & 0xFF  # 'a' - 10 = 87, '0' = 48
            hex_left -= 1
            if not hex_left:
                out.append(acc)
                acc = 0
        elif escaping:
            out.extend({116: b"\t", 110: b"\n", 114: b"\r"}.get(c, b"" if c == 120 else bytes([c])))
            hex_left = 2 if c == 120 else 0  # 'x'
            escaping = False
        elif c == 92:  # backslash
            escaping = True
        else:
            out.append(c)
    return bytes(out)


def _first_duplicate(tokens: list[bytes]) -> str:
    seen: set[bytes] = set()
    for index, token in enumerate(tokens):
        token = token or f"[EMPTY_{index}]".encode()
        if token in seen:
            return token.decode("utf-8", errors="replace")
        seen.add(token)
    return "?"
