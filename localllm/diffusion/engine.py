"""Runs an op list: weights just in time from a WeightsProvider, every intermediate freed right after
its last consumer, and the peak of bytes held reported.

Before the first run the engine counts each intermediate's consumers, learns the order in which
weights will be asked for (so a prefetching provider can read ahead), and, when attention slicing
is on, fuses ``MatMul → (Mul|Div) → Softmax → MatMul`` into one sliced ``Attention`` op. Chosen
large intermediates (a UNet's skip connections) can be held as uint8 while they wait.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from localllm.diffusion import ops, threads
from localllm.diffusion.layout import OpSpec, StreamGraph
from localllm.diffusion.memory import release_memory_eagerly
from localllm.diffusion.quant import dequantize, quantize
from localllm.diffusion.weights import WeightsProvider, make_provider
from localllm.errors import UnsupportedInput

PACKED_OK = {"Conv", "MatMul"}  # ops that dequantize big weights a block at a time
IN_PLACE = {"Silu", "Add", "Sub", "Mul", "Div", "Sqrt", "Exp", "Sin", "Cos", "Tanh", "Neg", "Reciprocal", "Sigmoid",
            "Abs"}


@dataclass
class RunStats:
    peak_bytes: int = 0  # live intermediates + the current op's weights, at their highest
    peak_activation_bytes: int = 0
    weight_bytes: int = 0  # float32 bytes of weights handed to ops in the last run
    peak_op: str = ""  # the op at which the peak was reached


@dataclass
class _Quantized:
    q: np.ndarray
    scale: float
    zero_point: int

    @property
    def nbytes(self) -> int:
        return self.q.nbytes


def fuse_attention(op_list: list[OpSpec], graph: StreamGraph, budget: int = ops.ATTENTION_BUDGET) -> list[OpSpec]:
    """Replace each single-consumer ``MatMul → (Mul|Div by a constant)? → Softmax(last axis) → MatMul``."""
    consumers: dict[str, list[int]] = {}
    for i, spec in enumerate(op_list):
        for n in spec.inputs:
            consumers.setdefault(n, []).append(i)
    outputs = set(graph.outputs.values())

    def only(name: str) -> int | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in outputs else None

    drop: set[int] = set()
    replace: dict[int, OpSpec] = {}
    for i, first in enumerate(op_list):
        if first.type != "MatMul" or i in drop:
            continue
        j = only(first.outputs[0])
        if j is None:
            continue
        scale, divide, chain = "", False, [i]
        nxt = op_list[j]
        if nxt.type in ("Mul", "Div"):
            other = [n for n in nxt.inputs if n != first.outputs[0]]
            if len(other) != 1 or other[0] not in graph.constants or graph.constants[other[0]].size != 1:
                continue
            if nxt.type == "Div" and nxt.inputs[0] != first.outputs[0]:
                continue
            scale, divide = other[0], nxt.type == "Div"
            chain.append(j)
            j = only(nxt.outputs[0])
            if j is None:
                continue
            nxt = op_list[j]
        if nxt.type != "Softmax":
            continue
        rank = len(graph.values[nxt.outputs[0]].shape)
        if nxt.attrs.get("axis", -1) % rank != rank - 1:
            continue
        chain.append(j)
        k = only(nxt.outputs[0])
        if k is None or op_list[k].type != "MatMul" or op_list[k].inputs[0] != nxt.outputs[0]:
            continue
        last = op_list[k]
        drop.update(chain)
        replace[k] = OpSpec("Attention", f"{first.name}+attention", [*first.inputs, last.inputs[1], scale],
                            last.outputs, {"divide": divide, "budget": budget})
    return [replace.get(i, spec) for i, spec in enumerate(op_list) if i not in drop]


def fuse_gelu(op_list: list[OpSpec], graph: StreamGraph) -> list[OpSpec]:
    """Replace torch's exact GELU, ``Div(x, √2) → Erf → Add(1) → Mul(x) → Mul(0.5)``, with one op.

    Besides saving four passes, it keeps three activation-sized temporaries from being alive at once
    (in SD's GEGLU feed-forward they are the UNet's largest tensors).
    """
    consumers: dict[str, list[int]] = {}
    for i, spec in enumerate(op_list):
        for n in spec.inputs:
            consumers.setdefault(n, []).append(i)
    outputs = set(graph.outputs.values())

    def only(name: str) -> OpSpec | None:
        users = consumers.get(name, [])
        return op_list[users[0]] if len(users) == 1 and name not in outputs else None

    def scalar(spec: OpSpec, value: float) -> str | None:
        """The other input of a binary op, when this one is the scalar constant ``value``."""
        consts = [n for n in spec.inputs if n in graph.constants and graph.constants[n].size == 1]
        if len(consts) != 1 or abs(float(graph.constants[consts[0]].reshape(-1)[0]) - value) > 1e-4:
            return None
        others = [n for n in spec.inputs if n != consts[0]]
        return others[0] if len(others) == 1 else None

    drop: set[int] = set()
    replace: dict[int, OpSpec] = {}
    index = {id(spec): i for i, spec in enumerate(op_list)}
    for spec in op_list:
        if spec.type != "Div" or spec.inputs[0] in graph.constants:
            continue
        x = spec.inputs[0]
        if spec.inputs[1] not in graph.constants or scalar(spec, 2**0.5) != x:
            continue
        erf = only(spec.outputs[0])
        add = erf and erf.type == "Erf" and only(erf.outputs[0])
        mul = add and add.type == "Add" and scalar(add, 1.0) == erf.outputs[0] and only(add.outputs[0])
        if not mul or mul.type != "Mul" or sorted(mul.inputs) != sorted([x, add.outputs[0]]):
            continue
        half = only(mul.outputs[0])
        chain = [spec, erf, add, mul]
        if half is not None and half.type == "Mul" and scalar(half, 0.5) == mul.outputs[0]:
            chain.append(half)
        else:
            continue
        drop.update(index[id(c)] for c in chain[:-1])
        replace[index[id(chain[-1])]] = OpSpec("Gelu", f"{spec.name}+gelu", [x], chain[-1].outputs, {})
    return [replace.get(i, spec) for i, spec in enumerate(op_list) if i not in drop]


def fuse_silu(op_list: list[OpSpec], graph: StreamGraph) -> list[OpSpec]:
    """``Sigmoid(x) → Mul(x, ·)`` as one ``Silu`` op, which can write over x when x dies there."""
    consumers: dict[str, list[int]] = {}
    for i, spec in enumerate(op_list):
        for n in spec.inputs:
            consumers.setdefault(n, []).append(i)
    outputs = set(graph.outputs.values())
    drop: set[int] = set()
    replace: dict[int, OpSpec] = {}
    for i, spec in enumerate(op_list):
        if spec.type != "Sigmoid" or spec.outputs[0] in outputs:
            continue
        users = consumers.get(spec.outputs[0], [])
        if len(users) != 1:
            continue
        mul = op_list[users[0]]
        if mul.type == "Mul" and sorted(mul.inputs) == sorted([spec.inputs[0], spec.outputs[0]]):
            drop.add(i)
            replace[users[0]] = OpSpec("Silu", f"{spec.name}+silu", [spec.inputs[0]], mul.outputs, {})
    return [replace.get(i, spec) for i, spec in enumerate(op_list) if i not in drop]


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class _Ledger:
    """Bytes held by live tensors, counting a buffer once however many views of it are alive."""

    def __init__(self) -> None:
        self.roots: dict[int, list[Any]] = {}  # id(root buffer) → [nbytes, live tensors on it, buffer]
        self.live = 0

    def hold(self, value: Any) -> None:
        r = _root(value.q if isinstance(value, _Quantized) else value)
        entry = self.roots.setdefault(id(r), [r.nbytes, 0, r])
        if entry[1] == 0:
            self.live += entry[0]
        entry[1] += 1

    def drop(self, value: Any) -> None:
        r = _root(value.q if isinstance(value, _Quantized) else value)
        entry = self.roots[id(r)]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.roots[id(r)]

    def sharing(self, arr: np.ndarray) -> int:
        return self.roots[id(_root(arr))][1]


class Engine:
    """One converted model, ready to run with weights streamed from ``provider``."""

    def __init__(self, graph: StreamGraph, provider: WeightsProvider | str = "prefetch", *,
                 attention_slicing: bool = True, attention_budget: int = ops.ATTENTION_BUDGET,
                 conv_budget: int = ops.CONV_BUDGET, uint8_intermediates: Iterable[str] | int = ()) -> None:
        """``uint8_intermediates``: names of intermediates to hold as uint8 while they wait, or a count
        of the longest-lived big ones to choose (a UNet's skip connections)."""
        release_memory_eagerly()
        self.graph = graph
        self.provider = make_provider(provider, graph) if isinstance(provider, str) else provider
        fused = fuse_silu(fuse_gelu(graph.ops, graph), graph)
        self.ops = fuse_attention(fused, graph, attention_budget) if attention_slicing else fused
        self.conv_budget = conv_budget
        if isinstance(uint8_intermediates, int):
            uint8_intermediates = longest_lived(self.ops, graph, uint8_intermediates)
        self.uint8_intermediates = set(uint8_intermediates)
        self.stats = RunStats()
        self.freed: dict[str, int] = {}  # last run: intermediate → index of the op after which it was freed
        self.profile: dict[str, float] | None = None  # set to {} to sum seconds per op type
        self.debug_peak = False  # set to keep what was alive at the peak in ``peak_live``
        self.peak_live: dict[str, tuple[Any, int]] = {}
        self._uses: dict[str, int] = {}
        for spec in self.ops:
            for n in spec.inputs:
                if n and n not in graph.weights and n not in graph.constants:
                    self._uses[n] = self._uses.get(n, 0) + 1
        self._rows = {spec.inputs[0] for spec in self.ops
                      if spec.type == "Gather" and spec.attrs.get("axis", 0) == 0 and spec.inputs[0] in graph.weights
                      and len(graph.weights[spec.inputs[0]].shape) == 2}
        order = [n for spec in self.ops for n in spec.inputs if n in graph.weights and n not in self._rows]
        self.provider.order(order)

    def close(self) -> None:
        self.provider.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = self.graph
        env: dict[str, Any] = {}
        for name, info in g.inputs.items():
            if name not in inputs:
                raise UnsupportedInput(f"input {name!r} is missing (the model takes {sorted(g.inputs)})")
            arr = np.asarray(inputs[name])
            if tuple(arr.shape) != info.shape:
                raise UnsupportedInput(f"input {name!r} has shape {tuple(arr.shape)}, but the model was converted "
                                       f"for {info.shape}; convert it again for this size")
            env[name] = arr.astype(info.dtype, copy=True)
        ledger = _Ledger()
        for value in env.values():
            ledger.hold(value)
        self.stats, self.freed = RunStats(), {}
        with threads.single_threaded_blas():
            self._walk(env, ledger)
        result = {}
        for public, name in g.outputs.items():
            v = env[name] if name in env else g.constants[name]
            result[public] = dequantize(v.q, v.scale, v.zero_point) if isinstance(v, _Quantized) else np.asarray(v)
        env.clear()
        gc.collect(0)
        return result

    def _walk(self, env: dict[str, Any], ledger: _Ledger) -> None:
        g, stats, freed = self.graph, self.stats, self.freed
        refs = dict(self._uses)
        keep = set(g.outputs.values())
        for index, spec in enumerate(self.ops):
            args: list[Any] = []
            weight_bytes = 0
            fetched: list[str] = []
            for n in spec.inputs:
                if not n:
                    args.append(None)
                elif n in g.constants:
                    args.append(g.constants[n])
                elif n in g.weights:
                    if n in self._rows and spec.type == "Gather" and spec.inputs[0] == n:
                        args.append(None)  # read below, only the rows the indices name
                        continue
                    w = self.provider.get(n, packed=spec.type in PACKED_OK and spec.inputs[1] == n)
                    fetched.append(n)
                    weight_bytes += w.nbytes
                    args.append(w)
                else:
                    v = env[n]
                    args.append(dequantize(v.q, v.scale, v.zero_point) if isinstance(v, _Quantized) else v)
            if spec.type == "Gather" and spec.inputs[0] in self._rows:
                table = self.provider.rows(spec.inputs[0], np.asarray(args[1]).astype(np.int64))
                weight_bytes += table.nbytes
                outs = [table]
            else:
                attrs = {**spec.attrs, "_n_outputs": len(spec.outputs), "_budget": self.conv_budget}
                if spec.type in IN_PLACE:
                    target = self._reusable(spec, args, env, refs, ledger)
                    if target is not None:
                        attrs["_out"] = target
                started = time.perf_counter()
                outs = ops.run_op(spec.type, args, attrs, spec.name)
                if self.profile is not None:
                    self.profile[spec.type] = self.profile.get(spec.type, 0.0) + time.perf_counter() - started
            for n in fetched:
                self.provider.release(n)
            stats.weight_bytes += weight_bytes
            for name, out in zip(spec.outputs, outs, strict=False):
                if not name:
                    continue
                info = g.values.get(name)
                if info is not None and out.dtype.name != info.dtype:
                    out = out.astype(info.dtype)
                if name in self.uint8_intermediates and out.dtype == np.float32:
                    out = _Quantized(*quantize(out, 0.0, 100.0))  # full range: clipping a skip hurts
                env[name] = out
                ledger.hold(out)
            stats.peak_activation_bytes = max(stats.peak_activation_bytes, ledger.live)
            if ledger.live + weight_bytes > stats.peak_bytes:
                stats.peak_bytes, stats.peak_op = ledger.live + weight_bytes, spec.name
                if self.debug_peak:
                    self.peak_live = {n: (getattr(v, "shape", None), v.nbytes) for n, v in env.items()}
            del args, outs
            for n in spec.inputs:
                if n in refs:
                    refs[n] -= 1
                    if refs[n] == 0 and n not in keep:
                        ledger.drop(env.pop(n))
                        freed[n] = index
            for name in spec.outputs:
                if name and refs.get(name, 0) == 0 and name not in keep and name in env:
                    ledger.drop(env.pop(name))
                    freed[name] = index

    def _reusable(self, spec: OpSpec, args: list[Any], env: dict[str, Any], refs: dict[str, int],
                  ledger: _Ledger) -> np.ndarray | None:
        """An input buffer this op may overwrite: its last use, nobody else sees its memory, same shape."""
        info = self.graph.values.get(spec.outputs[0])
        if info is None:
            return None
        for n, arr in zip(spec.inputs, args, strict=False):
            if not n or n not in env or isinstance(env[n], _Quantized) or refs.get(n) != 1:
                continue
            if spec.inputs.count(n) != 1 or n in self.graph.outputs.values() or n in self.graph.inputs:
                continue
            if arr.shape != info.shape or arr.dtype.name != info.dtype or not arr.flags.writeable:
                continue
            if ledger.sharing(arr) != 1:
                continue
            return arr
        return None


def longest_lived(op_list: list[OpSpec], graph: StreamGraph, count: int, min_bytes: int = 0) -> list[str]:
    """The ``count`` intermediates of ``op_list`` (after fusion) that hold the most bytes × ops alive:
    a UNet's skip connections."""
    born: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, spec in enumerate(op_list):
        for n in spec.outputs:
            born[n] = i
        for n in spec.inputs:
            if n in born:
                last[n] = i
    scored = [((last[n] - born[n]) * graph.values[n].nbytes, n) for n in last
              if graph.values[n].nbytes >= min_bytes and graph.values[n].dtype == "float32"]
    return [n for _, n in sorted(scored, reverse=True)[:count]]
