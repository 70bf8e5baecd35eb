"""The operators, in numpy: each takes its input arrays (``None`` for an absent optional input) and
the op's attributes, and returns its outputs.

Heavy ops hand their work to BLAS (``matmul``), which uses every core. Convolutions build their
im2col buffer one band of output rows at a time within ``CONV_BUDGET`` bytes, and 1×1 convolutions
are plain matrix products. ``Attention`` is the fused ``MatMul → (Mul|Div) → Softmax → MatMul``
(see ``engine.fuse_attention``), computed in slices of query rows within ``ATTENTION_BUDGET`` bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from localllm.diffusion import threads
from localllm.diffusion.layout import ONNX_DTYPES
from localllm.diffusion.quant import Packed
from localllm.errors import UnsupportedOperator

Array = np.ndarray
OpFn = Callable[[list[Any], dict[str, Any]], list[Array]]

CONV_BUDGET = 16 << 20
ATTENTION_BUDGET = 1 << 20

OPS: dict[str, OpFn] = {}


def op(*names: str) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        for name in names:
            OPS[name] = fn
        return fn

    return register


# ---------------------------------------------------------------- elementwise

_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Pow": np.power,
    "Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or, "Mod": np.mod,
}
_UNARY = {
    "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log, "Sin": np.sin, "Cos": np.cos, "Tanh": np.tanh,
    "Neg": np.negative, "Abs": np.abs, "Reciprocal": np.reciprocal, "Floor": np.floor, "Ceil": np.ceil,
    "Not": np.logical_not,
}


def _binary(ufunc: np.ufunc) -> OpFn:
    def run(x: list[Any], a: dict[str, Any]) -> list[Array]:
        left, right = x[0], x[1]
        if ufunc is np.power and np.ndim(right) == 0 and float(right) == 2.0:
            return [np.square(left)]
        out = a.get("_out")
        if out is not None and np.broadcast_shapes(left.shape, right.shape) == out.shape:
            return [ufunc(left, right, out=out)]
        return [ufunc(left, right)]

    return run


for _name, _fn in _BINARY.items():
    OPS[_name] = _binary(_fn)


@op("Div")
def div(x: list[Any], a: dict[str, Any]) -> list[Array]:
    left, right = x
    if np.issubdtype(left.dtype, np.integer) and np.issubdtype(right.dtype, np.integer):
        return [np.trunc(left / right).astype(left.dtype)]
    out = a.get("_out")
    if out is not None and np.broadcast_shapes(left.shape, right.shape) == out.shape:
        return [np.divide(left, right, out=out)]
    return [np.divide(left, right)]


def _unary(ufunc: np.ufunc) -> OpFn:
    def run(x: list[Any], a: dict[str, Any]) -> list[Array]:
        out = a.get("_out")
        if out is not None:
            return [ufunc(x[0], out=out)]
        return [ufunc(x[0])]

    return run


for _name, _fn in _UNARY.items():
    OPS[_name] = _unary(_fn)


def _sigmoid_into(x: Array, out: Array) -> None:
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1
    np.reciprocal(out, out=out)


def _threaded(kernel: Callable[[Array, Array], None]) -> OpFn:
    """A one-input elementwise op split over the worker threads, writing into its input (``_out``) when
    that dies here, else into a new array."""

    def run(x: list[Any], a: dict[str, Any]) -> list[Array]:
        v = x[0]
        out = a.get("_out")
        return [threads.elementwise(kernel, v, out if out is not None else np.empty(v.shape, dtype=v.dtype))]

    return run


OPS["Sigmoid"] = _threaded(_sigmoid_into)


def _silu_into(x: Array, out: Array) -> None:
    s = np.negative(x)
    np.exp(s, out=s)
    s += 1
    np.divide(x, s, out=out)


OPS["Silu"] = _threaded(_silu_into)  # x · sigmoid(x), fused from Sigmoid → Mul


@op("Relu")
def relu(x: list[Any], a: dict[str, Any]) -> list[Array]:
    return [np.maximum(x[0], 0)]


def _erf_into(v: Array, out: Array) -> None:
    """Abramowitz & Stegun 7.1.26: |error| < 1.5e-7."""
    t = np.abs(v)
    e = np.square(t)
    np.negative(e, out=e)
    np.exp(e, out=e)
    t *= 0.3275911
    t += 1
    np.reciprocal(t, out=t)
    p = t * np.float32(1.061405429)
    p -= np.float32(1.453152027)
    p *= t
    p += np.float32(1.421413741)
    p *= t
    p -= np.float32(0.284496736)
    p *= t
    p += np.float32(0.254829592)
    p *= t
    p *= e
    np.subtract(1, p, out=p)
    np.copysign(p, v, out=out)


@op("Erf")
def erf(x: list[Any], a: dict[str, Any]) -> list[Array]:
    v = x[0].astype(np.float32, copy=False)
    return [threads.elementwise(_erf_into, v, np.empty(v.shape, dtype=np.float32))]


def _gelu_into(v: Array, out: Array) -> None:
    _erf_into(v * np.float32(0.7071067811865476), out)
    out += 1
    out *= v
    out *= np.float32(0.5)


@op("Gelu")
def gelu(x: list[Any], a: dict[str, Any]) -> list[Array]:
    """x · Φ(x), exact (erf) form; fused from the exported Div → Erf → Add → Mul → Mul."""
    v = x[0].astype(np.float32, copy=False)
    return [threads.elementwise(_gelu_into, v, np.empty(v.shape, dtype=np.float32))]


@op("Max")
def maximum(x: list[Any], a: dict[str, Any]) -> list[Array]:
    return [functools.reduce(np.maximum, x)]


@op("Min")
def minimum(x: list[Any], a: dict[str, Any]) -> list[Array]:
    return [functools.reduce(np.minimum, x)]


@op("Where")
def where(x: list[Any], a: dict[str, Any]) -> list[Array]:
    return [np.where(x[0], x[1], x[2])]


@op("Clip")
def clip(x: list[Any], a: dict[str, Any]) -> list[Array]:
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    return [np.clip(x[0], lo, hi)]


@op("Cast")
def cast(x: list[Any], a: dict[str, Any]) -> list[Array]:
    return [x[0].astype(ONNX_DTYPES[a["to"]], copy=False)]


@op("Identity", "Dropout")
def identity(x: list[Any], a: dict[str, Any]) -> list[Array]:
    return [x[0]]


# ---------------------------------------------------------------- shapes and data movement

@op("Shape")
def shape(x: list[Any], a: dict[str, Any]) -> list[Array]:
    dims = np.array(x[0].shape, dtype=np.int64)
    start, end = a.get("start", 0), a.get("end")
    return [dims[start:end]]


@op("Size")
def size(x: list[Any], a: dict[str, Any]) -> list[Array]:
    return [np.array(x[0].size, dtype=np.int64)]


@op("Reshape")
def reshape(x: list[Any], a: dict[str, Any]) -> list[Array]:
    data, target = x[0], [int(d) for d in x[1]]
    if not a.get("allowzero", 0):
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return [data.reshape(target)]


@op("Flatten")
def flatten(x: list[Any], a: dict[str, Any]) -> list[Array]:
    axis = a.get("axis", 1) % max(x[0].ndim, 1) if x[0].ndim else 0
    lead = int(np.prod(x[0].shape[:axis], dtype=np.int64))
    return [x[0].reshape(lead, -1)]


@op("Transpose")
def transpose(x: list[Any], a: dict[str, Any]) -> list[Array]:
    perm = a.get("perm")
    return [np.transpose(x[0], perm)]


def _axes(x: list[Any], a: dict[str, Any], index: int = 1) -> list[int] | None:
    if len(x) > index and x[index] is not None:
        return [int(v) for v in np.ravel(x[index])]
    return a.get("axes")


@op("Unsqueeze")
def unsqueeze(x: list[Any], a: dict[str, Any]) -> list[Array]:
    axes = _axes(x, a)
    rank = x[0].ndim + len(axes)
    out = x[0]
    for ax in sorted(v % rank for v in axes):
        out = np.expand_dims(out, ax)
    return [out]


@op("Squeeze")
def squeeze(x: list[Any], a: dict[str, Any]) -> list[Array]:
    axes = _axes(x, a)
    if axes is None:
        return [np.squeeze(x[0])]
    return [np.squeeze(x[0], axis=tuple(v % x[0].ndim for v in axes))]


@op("Concat")
def concat(x: list[Any], a: dict[str, Any]) -> list[Array]:
    parts = [v for v in x if v is not None and (v.ndim == 0 or v.size or len(x) == 1)]
    return [np.concatenate(parts, axis=a["axis"])]


@op("Split")
def split(x: list[Any], a: dict[str, Any]) -> list[Array]:
    data, axis = x[0], a.get("axis", 0)
    sizes = x[1] if len(x) > 1 and x[1] is not None else a.get("split")
    n_out = a["_n_outputs"]
    if sizes is None:
        n = data.shape[axis]
        chunk = -(-n // n_out)
        sizes = [min(chunk, n - i * chunk) for i in range(n_out)]
    bounds = np.cumsum([int(s) for s in sizes])[:-1]
    return list(np.split(data, bounds, axis=axis))


@op("Slice")
def slice_(x: list[Any], a: dict[str, Any]) -> list[Array]:
    data = x[0]
    starts, ends = np.ravel(x[1]), np.ravel(x[2])
    axes = np.ravel(x[3]) if len(x) > 3 and x[3] is not None else np.arange(len(starts))
    steps = np.ravel(x[4]) if len(x) > 4 and x[4] is not None else np.ones(len(starts), dtype=np.int64)
    index: list[slice] = [slice(None)] * data.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        dim = data.shape[int(ax)]
        s, e, st = int(s), int(e), int(st)
        s = max(min(s, dim), -dim - 1) if st < 0 else max(min(s, dim), -dim)
        e = max(min(e, dim), -dim - 1)
        if st < 0 and e < -dim:
            e = None  # type: ignore[assignment]
        index[int(ax) % data.ndim] = slice(s, e, st)
    return [data[tuple(index)]]


@op("Gather")
def gather(x: list[Any], a: dict[str, Any]) -> list[Array]:
    return [np.take(x[0], x[1].astype(np.int64, copy=False), axis=a.get("axis", 0))]


@op("Expand")
def expand(x: list[Any], a: dict[str, Any]) -> list[Array]:
    shape = np.broadcast_shapes(x[0].shape, tuple(int(d) for d in x[1]))
    return [np.broadcast_to(x[0], shape)]


@op("Tile")
def tile(x: list[Any], a: dict[str, Any]) -> list[Array]:
    return [np.tile(x[0], [int(r) for r in x[1]])]


@op("ConstantOfShape")
def constant_of_shape(x: list[Any], a: dict[str, Any]) -> list[Array]:
    value = a.get("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value)
    return [np.full([int(d) for d in x[0]], fill.ravel()[0], dtype=fill.dtype)]


@op("Range")
def range_(x: list[Any], a: dict[str, Any]) -> list[Array]:
    start, limit, delta = (np.asarray(v).item() for v in x)
    return [np.arange(start, limit, delta, dtype=np.asarray(x[0]).dtype)]


@op("Trilu")
def trilu(x: list[Any], a: dict[str, Any]) -> list[Array]:
    k = int(x[1]) if len(x) > 1 and x[1] is not None else 0
    return [np.triu(x[0], k) if a.get("upper", 1) else np.tril(x[0], k)]


@op("Pad")
def pad(x: list[Any], a: dict[str, Any]) -> list[Array]:
    data = x[0]
    pads = [int(p) for p in (x[1] if len(x) > 1 and x[1] is not None else a["pads"])]
    value = x[2] if len(x) > 2 and x[2] is not None else 0
    axes = _axes(x, a, 3) or list(range(data.ndim))
    width = [(0, 0)] * data.ndim
    n = len(axes)
    for i, ax in enumerate(axes):
        width[ax % data.ndim] = (pads[i], pads[i + n])
    mode = a.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode == "constant":
        return [np.pad(data, width, constant_values=np.asarray(value).item() if np.size(value) else 0)]
    return [np.pad(data, width, mode={"reflect": "reflect", "edge": "edge"}[mode])]


@op("Resize", "Upsample")
def resize(x: list[Any], a: dict[str, Any]) -> list[Array]:
    data = x[0]
    mode = a.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    scales = x[2] if len(x) > 2 and x[2] is not None and np.size(x[2]) else None
    sizes = x[3] if len(x) > 3 and x[3] is not None and np.size(x[3]) else None
    if sizes is not None:
        out_shape = [int(s) for s in sizes]
    elif scales is not None:
        out_shape = [int(np.floor(d * s)) for d, s in zip(data.shape, scales, strict=True)]
    else:
        raise UnsupportedOperator("Resize without scales or sizes is not supported")
    if mode != "nearest":
        raise UnsupportedOperator(f"Resize mode {mode!r} is not supported (only nearest)")
    out = data
    for ax, (n_in, n_out) in enumerate(zip(data.shape, out_shape, strict=True)):
        if n_in == n_out:
            continue
        if n_out % n_in == 0:
            out = np.repeat(out, n_out // n_in, axis=ax)
        else:  # asymmetric coordinates, floor rounding (torch's "nearest")
            idx = np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)
            out = np.take(out, idx, axis=ax)
    return [out]


# ---------------------------------------------------------------- reductions and normalizations

def _reduce(fn: Callable[..., Array]) -> OpFn:
    def run(x: list[Any], a: dict[str, Any]) -> list[Array]:
        axes = _axes(x, a)
        keep = bool(a.get("keepdims", 1))
        if axes is None or len(axes) == 0:
            if a.get("noop_with_empty_axes", 0):
                return [x[0]]
            axes = list(range(x[0].ndim))
        return [fn(x[0], axis=tuple(axes), keepdims=keep)]

    return run


OPS["ReduceMean"] = _reduce(np.mean)
OPS["ReduceSum"] = _reduce(np.sum)
OPS["ReduceMax"] = _reduce(np.max)
OPS["ReduceMin"] = _reduce(np.min)


@op("ArgMax")
def argmax(x: list[Any], a: dict[str, Any]) -> list[Array]:
    axis = a.get("axis", 0)
    data = x[0]
    if a.get("select_last_index", 0):
        flipped = np.flip(data, axis=axis)
        out = data.shape[axis] - 1 - np.argmax(flipped, axis=axis)
    else:
        out = np.argmax(data, axis=axis)
    if a.get("keepdims", 1):
        out = np.expand_dims(out, axis)
    return [out.astype(np.int64)]


@op("Softmax")
def softmax(x: list[Any], a: dict[str, Any]) -> list[Array]:
    axis = a.get("axis", -1)
    out = x[0] - x[0].max(axis=axis, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return [out]


@op("InstanceNormalization")
def instance_norm(x: list[Any], a: dict[str, Any]) -> list[Array]:
    data, scale, bias = x
    eps = a.get("epsilon", 1e-5)
    n, c = data.shape[:2]
    flat = data.reshape(n, c, -1)
    mean = flat.mean(axis=-1, keepdims=True)
    out = flat - mean
    var = np.einsum("ncx,ncx->nc", out, out)[..., None] / flat.shape[-1]
    out *= (1.0 / np.sqrt(var + eps)).astype(out.dtype) * scale.reshape(1, c, 1)
    out += bias.reshape(1, c, 1)
    return [out.reshape(data.shape)]


@op("LayerNormalization")
def layer_norm(x: list[Any], a: dict[str, Any]) -> list[Array]:
    data, scale = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    axis = a.get("axis", -1) % data.ndim
    axes = tuple(range(axis, data.ndim))
    mean = data.mean(axis=axes, keepdims=True)
    out = data - mean
    var = np.mean(np.square(out), axis=axes, keepdims=True)
    out /= np.sqrt(var + a.get("epsilon", 1e-5))
    out *= scale
    if bias is not None:
        out += bias
    return [out]


# ---------------------------------------------------------------- matrix products

def matmul_2d_weight(left: Array, right: Array) -> Array:
    """(…, K) @ (K, N) as GEMMs over shares of all leading rows, one per worker (of columns, for few rows)."""
    lead = left.shape[:-1]
    flat = left.reshape(-1, left.shape[-1])
    m, n = flat.shape[0], right.shape[1]
    out = np.empty((m, n), dtype=np.result_type(left, right))
    if m >= 256 * threads.WORKERS or n < 256:
        rows = list(range(0, m, 64))

        def by_rows(share: Sequence[int]) -> None:
            if share:
                r0, r1 = share[0], min(m, share[-1] + 64)
                np.matmul(flat[r0:r1], right, out=out[r0:r1])

        threads.run_split(rows, by_rows)
    else:
        cols = list(range(0, n, 64))

        def by_cols(share: Sequence[int]) -> None:
            if share:
                c0, c1 = share[0], min(n, share[-1] + 64)
                out[:, c0:c1] = flat @ right[:, c0:c1]

        threads.run_split(cols, by_cols)
    return out.reshape(*lead, n)


@op("MatMul")
def matmul(x: list[Any], a: dict[str, Any]) -> list[Array]:
    left, right = x
    if isinstance(right, Packed):
        if right.ndim != 2:
            right = right.block(slice(None))
        else:
            step = right.cols_per_block(a.get("_budget", CONV_BUDGET))
            out = np.empty((*left.shape[:-1], right.shape[1]), dtype=np.float32)
            for c0 in range(0, right.shape[1], step):
                out[..., c0:c0 + step] = matmul_2d_weight(left, right.block((slice(None), slice(c0, c0 + step))))
            return [out]
    if right.ndim == 2 and left.ndim >= 2:
        return [matmul_2d_weight(left, right)]
    if left.ndim >= 3 and right.ndim >= 3:
        lead = np.broadcast_shapes(left.shape[:-2], right.shape[:-2])
        lb = np.broadcast_to(left, (*lead, *left.shape[-2:])).reshape(-1, *left.shape[-2:])
        rb = np.broadcast_to(right, (*lead, *right.shape[-2:])).reshape(-1, *right.shape[-2:])
        out = np.empty((lb.shape[0], left.shape[-2], right.shape[-1]), dtype=np.result_type(left, right))

        def work(share: Sequence[int]) -> None:
            for i in share:
                np.matmul(lb[i], rb[i], out=out[i])

        threads.run_split(range(lb.shape[0]), work)
        return [out.reshape(*lead, left.shape[-2], right.shape[-1])]
    return [np.matmul(left, right)]


@op("Gemm")
def gemm(x: list[Any], a: dict[str, Any]) -> list[Array]:
    left, right = x[0], x[1]
    if a.get("transA", 0):
        left = left.T
    if a.get("transB", 0):
        right = right.T
    out = left @ right
    alpha = a.get("alpha", 1.0)
    if alpha != 1.0:
        out *= alpha
    if len(x) > 2 and x[2] is not None:
        beta = a.get("beta", 1.0)
        out += x[2] * beta if beta != 1.0 else x[2]
    return [out]


def attention(q: Array, kt: Array, v: Array, scale: float | None, divide: bool,
              budget: int = ATTENTION_BUDGET) -> Array:
    """softmax((q @ kt) · scale) @ v, a slice of query rows at a time: the score matrix never exists whole.

    Slices are small (``budget`` bytes of scores per worker, ~1 MiB by default) so that the softmax's
    passes run in cache; the workers share out (head, slice) pairs.
    """
    lead = np.broadcast_shapes(q.shape[:-2], kt.shape[:-2], v.shape[:-2])
    n, m = q.shape[-2], kt.shape[-1]
    out = np.empty((*lead, n, v.shape[-1]), dtype=np.float32)
    qb = np.broadcast_to(q, (*lead, *q.shape[-2:])).reshape(-1, *q.shape[-2:])
    kb = np.broadcast_to(kt, (*lead, *kt.shape[-2:])).reshape(-1, *kt.shape[-2:])
    vb = np.broadcast_to(v, (*lead, *v.shape[-2:])).reshape(-1, *v.shape[-2:])
    ob = out.reshape(-1, n, v.shape[-1])
    rows = max(1, min(n, budget // (4 * m)))
    items = [(h, r0) for h in range(qb.shape[0]) for r0 in range(0, n, rows)]
    factor = None if scale is None else np.float32(1.0 / scale if divide else scale)

    def work(share: Sequence[tuple[int, int]]) -> None:
        scores = np.empty((rows, m), dtype=np.float32)
        sums = np.empty((rows, 1), dtype=np.float32)
        head, kh, vh = -1, kb[0], vb[0]
        for h, r0 in share:
            if h != head:
                head, kh, vh = h, np.ascontiguousarray(kb[h]), np.ascontiguousarray(vb[h])
            r1 = min(n, r0 + rows)
            s, t = scores[: r1 - r0], sums[: r1 - r0]
            np.matmul(qb[h, r0:r1], kh, out=s)
            if factor is not None:
                s *= factor
            np.max(s, axis=-1, keepdims=True, out=t)
            s -= t
            np.exp(s, out=s)
            np.sum(s, axis=-1, keepdims=True, out=t)
            o = ob[h, r0:r1]
            np.matmul(s, vh, out=o)
            o /= t

    threads.run_split(items, work)
    return out


@op("Attention")
def attention_op(x: list[Any], a: dict[str, Any]) -> list[Array]:
    scale = None if len(x) < 4 or x[3] is None else float(np.asarray(x[3]).reshape(-1)[0])
    return [attention(x[0], x[1], x[2], scale, a.get("divide", False), a.get("budget", ATTENTION_BUDGET))]


# ---------------------------------------------------------------- convolution

def _pairs(a: dict[str, Any], key: str, default: int, n: int) -> list[int]:
    v = a.get(key)
    return [default] * n if v is None else [int(i) for i in v]


@op("Conv")
def conv(x: list[Any], a: dict[str, Any]) -> list[Array]:
    data, weight = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    if data.ndim != 4:
        raise UnsupportedOperator(f"Conv on a {data.ndim}-d input is not supported (only 2-d images)")
    args = (_pairs(a, "strides", 1, 2), _pairs(a, "pads", 0, 4), _pairs(a, "dilations", 1, 2))
    budget = a.get("_budget", CONV_BUDGET)
    group = int(a.get("group", 1))
    if not isinstance(weight, Packed):
        return [conv2d(data, weight, bias, *args, group, budget)]
    if group != 1:
        return [conv2d(data, weight.block(slice(None)), bias, *args, group, budget)]
    step = weight.rows_per_block(budget)  # output channels whose float32 kernels fit the budget
    parts = [conv2d(data, weight.block(slice(c0, c0 + step)), None if bias is None else bias[c0:c0 + step],
                    *args, 1, budget) for c0 in range(0, weight.shape[0], step)]
    return [parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)]


def conv2d(x: Array, w: Array, b: Array | None, strides: Sequence[int], pads: Sequence[int],
           dilations: Sequence[int], group: int = 1, budget: int = CONV_BUDGET) -> Array:
    """Bands of output rows, each an im2col of ≤ ``budget`` bytes times the kernel matrix; workers share bands."""
    n, c, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    pt, pl, pb, pr = pads
    ho = (h + pt + pb - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (wd + pl + pr - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.empty((n, cout, ho, wo), dtype=np.float32)
    cout_g = cout // group
    bias = None if b is None else b.reshape(cout, 1).astype(np.float32)
    for g in range(group):
        wg = np.ascontiguousarray(w[g * cout_g:(g + 1) * cout_g].reshape(cout_g, cg * kh * kw))
        bg = None if bias is None else bias[g * cout_g:(g + 1) * cout_g]
        og = out[:, g * cout_g:(g + 1) * cout_g]
        xg = x[:, g * cg:(g + 1) * cg]
        if kh == kw == 1 and tuple(strides) == (1, 1) and not any(pads):
            _pointwise(xg, wg, bg, og, budget)
        else:
            _banded(xg, wg, bg, og, (kh, kw), strides, pads, dilations, budget)
    return out


def _pointwise(x: Array, w: Array, b: Array | None, out: Array, budget: int) -> None:
    """1×1 convolution: the kernel matrix times column blocks of each image."""
    n, c, h, wd = x.shape
    cout = w.shape[0]
    cols = max(64, budget // (4 * max(c, cout)))
    items = [(i, c0) for i in range(n) for c0 in range(0, h * wd, cols)]

    def work(share: Sequence[tuple[int, int]]) -> None:
        for i, c0 in share:
            c1 = min(h * wd, c0 + cols)
            dst = out[i].reshape(cout, h * wd)[:, c0:c1]
            np.matmul(w, x[i].reshape(c, h * wd)[:, c0:c1], out=dst)
            if b is not None:
                dst += b

    threads.run_split(items, work)


def _banded(x: Array, w: Array, b: Array | None, out: Array, kernel: tuple[int, int], strides: Sequence[int],
            pads: Sequence[int], dilations: Sequence[int], budget: int) -> None:
    n, c = x.shape[:2]
    cout, ho, wo = out.shape[1:]
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    rows = max(1, min(ho, budget // (4 * c * kh * kw * wo)))
    items = [(i, r0) for i in range(n) for r0 in range(0, ho, rows)]
    h, wd = x.shape[2:]

    def padded_band(i: int, top: int, bottom: int) -> Array:
        """Rows [top, bottom) of the zero-padded image i: padding is built per band, never for the whole image."""
        if not any(pads):
            return x[i][:, top:bottom]
        band = np.zeros((c, bottom - top, wd + pl + pr), dtype=np.float32)
        src0, src1 = max(top - pt, 0), min(bottom - pt, h)
        if src1 > src0:
            band[:, src0 + pt - top: src1 + pt - top, pl:pl + wd] = x[i][:, src0:src1]
        return band

    def work(share: Sequence[tuple[int, int]]) -> None:
        for i, r0 in share:
            r1 = min(ho, r0 + rows)
            band = padded_band(i, r0 * sh, (r1 - 1) * sh + dh * (kh - 1) + 1)
            win = sliding_window_view(band, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(1, 2))
            win = win[:, ::sh, ::sw, ::dh, ::dw][:, :, :wo]
            col = np.ascontiguousarray(win.transpose(0, 3, 4, 1, 2)).reshape(c * kh * kw, -1)
            dst = out[i, :, r0:r1].reshape(cout, (r1 - r0) * wo)
            np.matmul(w, col, out=dst)
            if b is not None:
                dst += b

    threads.run_split(items, work)


def run_op(op_type: str, inputs: list[Any], attrs: dict[str, Any], node: str = "") -> list[Array]:
    fn = OPS.get(op_type)
    if fn is None:
        raise UnsupportedOperator(f"operator {op_type} (node {node!r}) is not supported by the image engine")
    return [o if isinstance(o, np.ndarray) else np.asarray(o) for o in fn(inputs, attrs)]
