"""How much RAM a loaded model takes, estimated from its GGUF header before loading it.

Weights are the files' size (memory-mapped, but read in full by the first prompt); the KV cache is
f16 keys and values for every layer and every cell of the context (all sequences together); attention
without flash attention holds the scores of a batch of rows against a sequence's cells; the compute
buffers and logits take the rest, estimated generously.
"""

from __future__ import annotations

from ..gguf_info import GGUFInfo

F16 = 2
OVERHEAD = 96 * 1024 * 1024


def _number(info: GGUFInfo, key: str, default: int) -> int:
    """A positive number of the architecture's metadata (``block_count``, ...), else ``default``."""
    value = info.metadata.get(f"{info.architecture}.{key}")
    return int(value) if isinstance(value, int | float) and value > 0 else default


def kv_bytes_per_token(info: GGUFInfo) -> int:
    layers = _number(info, "block_count", 0)
    heads = _number(info, "attention.head_count", 1)
    kv_heads = _number(info, "attention.head_count_kv", heads)  # a per-layer array is not kept: count as heads
    key_length = _number(info, "attention.key_length", _number(info, "embedding_length", 0) // heads)
    value_length = _number(info, "attention.value_length", key_length)
    return layers * kv_heads * (key_length + value_length) * F16


def attention_scores_bytes(info: GGUFInfo, n_batch: int, sequence_cells: int) -> int:
    """f32 scores (and their softmax) of ``n_batch`` rows against one sequence's cells, every head."""
    return 2 * n_batch * sequence_cells * _number(info, "attention.head_count", 32) * 4


def estimate(info: GGUFInfo, weights_bytes: int, n_ctx: int, n_parallel: int, n_batch: int) -> int:
    """Bytes for one instance: ``n_parallel`` sequences of ``n_ctx`` cells, prompts read ``n_batch`` rows at a time."""
    vocab = info.array_lengths.get("tokenizer.ggml.tokens", 32000)
    logits = 64 * vocab * 4  # the logits rows kept per batch (engine.py: n_outputs)
    return (weights_bytes + kv_bytes_per_token(info) * n_ctx * n_parallel
            + attention_scores_bytes(info, n_batch, n_ctx) + logits + OVERHEAD)


def gib(value: int) -> str:
    return f"{value / 1024**3:.1f} GiB"
