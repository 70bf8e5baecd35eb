"""Tiny but real GGUF models for tests, written with the ``gguf`` package.

``write_tiny_llama`` writes a complete llama-architecture model (random seeded F32 weights,
a small SentencePiece-style vocabulary with byte fallback) that ``llama_cpp.Llama`` loads and
runs (``metadata`` replaces, adds or removes key/values, to write broken ones);
``write_split_llama`` writes the same model split into ``-0000i-of-0000n.gguf`` parts the way
llama.cpp's ``gguf-split`` does (all metadata in the first part, ``split.*`` keys in each).
A model is about 0.5 MB with the defaults.
"""

from __future__ import annotations

import os
import pathlib

import gguf
import numpy as np

__all__ = ["TOKENS", "tokens", "write_split_llama", "write_tiny_llama", "write_tiny_lora"]

_ARCH = "llama"
_WORDS = (
    "hello", "world", "the", "a", "is", "of", "and", "to", "in", "you", "what", "how",
    "model", "test", "local", "llm", "why", "sky", "blue", "user", "assistant", "system",
)  # fmt: skip


def _base_vocab() -> list[tuple[str, float, int]]:
    """(text, score, token type) for every token of the SentencePiece-style vocabulary."""
    tt = gguf.TokenType
    vocab: list[tuple[str, float, int]] = [
        ("<unk>", 0.0, tt.UNKNOWN),
        ("<s>", 0.0, tt.CONTROL),
        ("</s>", 0.0, tt.CONTROL),
    ]
    vocab += [(f"<0x{b:02X}>", 0.0, tt.BYTE) for b in range(256)]
    pieces: list[str] = ["▁"] + [chr(c) for c in range(0x21, 0x7F)]
    for word in _WORDS:  # every prefix, so SentencePiece merges can build the whole word
        piece = "▁" + word
        pieces += [piece[:i] for i in range(2, len(piece) + 1)]
    seen: set[str] = set()
    normal = [p for p in pieces if not (p in seen or seen.add(p))]
    # longer pieces score higher so merges prefer them
    vocab += [(p, -1000.0 + 10.0 * len(p) - i * 1e-3, tt.NORMAL) for i, p in enumerate(normal)]
    return vocab


TOKENS: int = len(_base_vocab())
"""Size of the built-in vocabulary (the smallest allowed ``n_vocab``)."""


def tokens(n_vocab: int = TOKENS) -> list[str]:
    """The token strings ``write_tiny_llama`` writes for ``n_vocab`` (to write a changed copy)."""
    vocab = [text for text, _, _ in _base_vocab()]
    return vocab + [f"<unused{i}>" for i in range(n_vocab - len(vocab))]


def _gguf_value(value: object) -> gguf.gguf_writer.GGUFValue:
    """A metadata value as the writer stores it: an int is a UINT32 (as llama.cpp reads counts), a list
    an array (of INT32 for ints), or give ``(value, GGUFValueType)`` or ``(list, ARRAY, item type)``."""
    value_type, sub_type = gguf.GGUFValueType, None
    if isinstance(value, tuple):
        value, kind, *rest = value
        sub_type = rest[0] if rest else None
    elif isinstance(value, bool):
        kind = value_type.BOOL
    elif isinstance(value, int):
        kind = value_type.UINT32
    elif isinstance(value, float):
        kind = value_type.FLOAT32
    elif isinstance(value, str):
        kind = value_type.STRING
    elif isinstance(value, list):
        kind = value_type.ARRAY
        if value and all(isinstance(item, str) for item in value):
            sub_type = value_type.STRING
        elif any(isinstance(item, float) for item in value):
            sub_type = value_type.FLOAT32
        else:
            sub_type = value_type.INT32
    else:
        raise TypeError(f"no GGUF type for {value!r}")
    return gguf.gguf_writer.GGUFValue(value=value, type=kind, sub_type=sub_type)


def _build_writer(
    path: pathlib.Path,
    *,
    name: str,
    file_type: int | None,
    context_length: int,
    seed: int,
    chat_template: str | None,
    n_vocab: int,
    n_embd: int,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    n_ff: int,
    metadata: dict[str, object] | None = None,
) -> gguf.GGUFWriter:
    """A GGUFWriter holding the whole model's metadata and tensors, not yet written."""
    vocab = _base_vocab()
    if n_vocab < len(vocab):
        raise ValueError(f"n_vocab must be at least {len(vocab)}")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must be divisible by n_head, and n_head by n_head_kv")
    vocab += [(f"<unused{i}>", 0.0, gguf.TokenType.UNUSED) for i in range(n_vocab - len(vocab))]
    head_dim = n_embd // n_head

    w = gguf.GGUFWriter(path, _ARCH)
    w.add_name(name)
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32 if file_type is None else file_type))
    w.add_vocab_size(n_vocab)
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)

    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _, _ in vocab])
    w.add_token_scores([s for _, s, _ in vocab])
    w.add_token_types([int(k) for _, _, k in vocab])
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        # numpy shapes are ggml's ne reversed: (rows = outputs, cols = inputs)
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    n_kv = head_dim * n_head_kv
    w.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{i}.attn_q.weight", weight(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", weight(n_kv, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", weight(n_kv, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", weight(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones(n_embd))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
    w.add_tensor("output_norm.weight", ones(n_embd))
    w.add_tensor("output.weight", weight(n_vocab, n_embd))
    for key, value in (metadata or {}).items():  # broken files on purpose: None removes a key
        if value is None:
            w.kv_data[0].pop(key, None)
        else:
            w.kv_data[0][key] = _gguf_value(value)
    return w


def _write(w: gguf.GGUFWriter) -> None:
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()


def write_tiny_llama(
    path: str | os.PathLike[str],
    *,
    name: str = "tiny-llama",
    file_type: int | None = None,
    context_length: int = 256,
    seed: int = 0,
    chat_template: str | None = None,
    n_vocab: int = TOKENS,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    metadata: dict[str, object] | None = None,
) -> pathlib.Path:
    """Write a tiny llama model that llama.cpp can load and run; return its path.

    Weights are random F32 (``seed`` picks them, so different seeds give different bytes).
    ``file_type`` only sets the ``general.file_type`` label (e.g. ``gguf.LlamaFileType.MOSTLY_Q4_K_M``);
    the tensors stay F32. ``n_vocab`` above ``TOKENS`` pads the vocabulary with unused tokens.
    ``metadata`` is written over the model's own key/values once they are all set: ``{"llama.block_count":
    1000}`` writes a model that claims 1000 blocks, a value of None removes the key (see ``_gguf_value``
    for the types). About 0.5 MB with the defaults.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = _build_writer(
        path,
        name=name,
        file_type=file_type,
        context_length=context_length,
        seed=seed,
        chat_template=chat_template,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_ff=n_ff,
        metadata=metadata,
    )
    _write(w)
    return path


def write_split_llama(
    directory: str | os.PathLike[str],
    stem: str,
    parts: int,
    **kw: object,
) -> list[pathlib.Path]:
    """Write ``write_tiny_llama``'s model as ``parts`` files ``{stem}-0000i-of-0000n.gguf``.

    Like ``gguf-split``: the first part carries all metadata, every part carries ``split.no``
    (0-based), ``split.count`` and ``split.tensors.count``, and tensors are spread in order over
    the parts (each part gets at least one). Load the model from the first part's path.
    ``kw`` is passed to ``write_tiny_llama`` (raise ``n_layer`` for more parts than tensors).
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if parts < 1:
        raise ValueError("parts must be >= 1")
    defaults: dict[str, object] = {
        "name": "tiny-llama", "file_type": None, "context_length": 256, "seed": 0, "chat_template": None,
        "n_vocab": TOKENS, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_head_kv": 2, "n_ff": 128,
        "metadata": None,
    }  # fmt: skip
    unknown = set(kw) - set(defaults)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    w = _build_writer(directory / f"{stem}.gguf", **{**defaults, **kw})  # type: ignore[arg-type]
    if parts > 1:
        # Re-shard the writer's (single) tensor group into exactly `parts` groups; the writer then
        # names the files and adds the split.* keys itself (the same code path as split_max_tensors).
        tensors = list(w.tensors[0].items())
        if parts > len(tensors):
            raise ValueError(f"at most {len(tensors)} parts with these settings (one tensor per part at least)")
        bounds = [round(i * len(tensors) / parts) for i in range(parts + 1)]
        w.tensors = [dict(tensors[bounds[i] : bounds[i + 1]]) for i in range(parts)]
    paths = w.format_shard_names(directory / f"{stem}.gguf")
    if parts == 1:
        # a single part still follows the naming scheme and carries split.* keys like gguf-split's output
        paths = [directory / f"{stem}-00001-of-00001.gguf"]
        w.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, 0)
        w.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 1)
        w.add_int32(gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, len(w.tensors[0]))
        w.path = paths[0]
    _write(w)
    return paths


def write_tiny_lora(
    path: str | os.PathLike[str],
    *,
    seed: int = 1,
    rank: int = 4,
    alpha: float = 8.0,
    n_vocab: int = TOKENS,
    n_embd: int = 64,
    n_layer: int = 2,
    n_ff: int = 128,
    architecture: str = _ARCH,
) -> pathlib.Path:
    """Write a LoRA adapter GGUF for ``write_tiny_llama``'s model, as llama.cpp's ``convert_lora_to_gguf``
    does (``general.type = adapter``, ``adapter.type = lora``, ``*.lora_a``/``*.lora_b`` pairs). Its random
    deltas are large next to the base's weights, so it changes what the model says."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(path, architecture)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    rng = np.random.default_rng(seed)

    def pair(name: str, n_out: int, n_in: int) -> None:
        # ggml shapes: A is [n_in, rank], B is [rank, n_out]; numpy shapes are those reversed
        w.add_tensor(f"{name}.lora_a", (rng.standard_normal((rank, n_in)) * 0.5).astype(np.float32))
        w.add_tensor(f"{name}.lora_b", (rng.standard_normal((n_out, rank)) * 0.5).astype(np.float32))

    for i in range(n_layer):
        pair(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        pair(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
    pair("output.weight", n_vocab, n_embd)
    _write(w)
    return path
