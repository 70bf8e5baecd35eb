"""8-bit asymmetric quantization with percentile ranges, and fp16 storage (OnnxStream's scheme).

The range is the approximate 0.1 % / 99.9 % percentiles (outliers saturate); when both ends share
a sign the nearer one is pinned to 0 so that 0 stays exact. ``scale = (max - min) / 255`` and
``zero_point = round(-min / scale)``; values come back as ``(q - zero_point) * scale``.
"""

from __future__ import annotations

import numpy as np

SAMPLE = 1 << 20  # percentiles of big tensors are estimated from this many evenly spaced values


def percentile_range(x: np.ndarray, low: float = 0.1, high: float = 99.9) -> tuple[float, float]:
    flat = x.reshape(-1)
    if flat.size > SAMPLE:
        flat = flat[:: flat.size // SAMPLE]
    lo, hi = np.percentile(flat.astype(np.float32), [low, high])
    lo, hi = float(lo), float(hi)
    if lo > 0:
        lo = 0.0
    if hi < 0:
        hi = 0.0
    return lo, hi


def quantize(x: np.ndarray, low: float = 0.1, high: float = 99.9) -> tuple[np.ndarray, float, int]:
    lo, hi = percentile_range(x, low, high)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero_point = int(round(-lo / scale))
    q = np.empty(x.shape, dtype=np.uint8)
    tmp = x.astype(np.float32, copy=True)
    np.multiply(tmp, np.float32(1.0 / scale), out=tmp)
    np.add(tmp, np.float32(zero_point), out=tmp)
    np.rint(tmp, out=tmp)
    np.clip(tmp, 0, 255, out=tmp)
    q[...] = tmp
    return q, scale, zero_point


def dequantize(q: np.ndarray, scale: float, zero_point: int, out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
        out = np.empty(q.shape, dtype=np.float32)
    np.subtract(q, np.float32(zero_point), out=out, dtype=np.float32)
    np.multiply(out, np.float32(scale), out=out)
    return out


def to_stored(x: np.ndarray, precision: str) -> tuple[np.ndarray, float, int]:
    """A float weight in its stored form for a precision: fp32, fp16 or uint8."""
    x = np.asarray(x, dtype=np.float32)
    if precision == "fp32" or not np.isfinite(x).all() or np.abs(x).max(initial=0.0) > 60000:
        return x, 1.0, 0  # masks (-inf, float32's min) would overflow fp16 and wreck a uint8 range: keep them exact
    if precision == "fp16":
        return x.astype(np.float16), 1.0, 0
    if precision == "uint8":
        return quantize(x)
    raise ValueError(f"unknown precision {precision!r}: use fp32, fp16 or uint8")


def from_stored(stored: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Dequantize on use: always float32 for the ops."""
    if stored.dtype == np.uint8:
        return dequantize(stored, scale, zero_point)
    if stored.dtype == np.float16:
        return stored.astype(np.float32)
    return np.ascontiguousarray(stored)


class Packed:
    """A weight still in its stored form (fp16 or uint8), dequantized a block at a time by the op using it.

    For the largest kernels (SD's 1280×2560×3×3 convolutions: 118 MB in fp32) this keeps the
    float32 copy from ever existing whole.
    """

    def __init__(self, data: np.ndarray, scale: float, zero_point: int) -> None:
        self.data, self.scale, self.zero_point = data, scale, zero_point
        self.shape = data.shape
        self.ndim = data.ndim
        self.nbytes = data.nbytes

    def block(self, index: object) -> np.ndarray:
        return from_stored(self.data[index], self.scale, self.zero_point)

    def rows_per_block(self, budget: int) -> int:
        """How many slices along the first axis dequantize within ``budget`` float32 bytes."""
        per_row = 4 * int(np.prod(self.shape[1:], dtype=np.int64))
        return max(1, budget // per_row)

    def cols_per_block(self, budget: int) -> int:
        return max(1, budget // (4 * self.shape[0]))
