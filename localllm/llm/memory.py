"""How much RAM a loaded model takes, estimated from its GGUF header before loading it.

Weights are the files' size (memory-mapped, but read in full by the first prompt); the KV cache is
f16 keys and values for every layer and every cell of the context (all sequences together); attention
without flash attention holds the scores of a batch of rows against a sequence's cells; the compute
buffers and logits take the rest, estimated generously.
"""

from __future__ import annotations

import os
import re

from ..gguf_info import GGUFInfo

F16 = 2
OVERHEAD = 96 * 1024 * 1024
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


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


def machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        return 8 * 1024**3


def default_budget() -> int:
    """Three quarters of the machine's RAM: room for the OS, the daemon and the page cache."""
    return machine_memory() * 3 // 4


def parse_size(text: str | int | None) -> int | None:
    """``"16GiB"``, ``"8 GB"``, ``"512m"`` or a number of bytes; empty means the default."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 16GiB, 8GB or a number of bytes)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def gib(value: int) -> str:
    return f"{value / 1024**3:.1f} GiB"
