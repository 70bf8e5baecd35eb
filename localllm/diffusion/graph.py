"""ONNX → a flat, topologically ordered op list, for fixed input shapes (conversion time only).

Every value is followed through the graph as either a constant (initializers, ``Constant`` nodes,
and anything computed from constants and shapes alone, e.g. ``Shape → Gather → Concat → Reshape``)
or a dynamic tensor of known shape. Ops whose inputs are all constant are evaluated here with the
engine's own operators and disappear; what is left is the real compute. Output shapes of dynamic
ops come from shape rules for the heavy ops and, for cheap data movement, from running the op on
zero-filled arrays of the right shapes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from localllm.diffusion import ops
from localllm.diffusion.layout import ONNX_DTYPES, OpSpec, StreamGraph, ValueInfo
from localllm.errors import InvalidModelFile, UnsupportedInput, UnsupportedOperator

INLINE_MAX = 256  # float constants up to this many elements stay in graph.json; bigger ones are weights

ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "And", "Or",
               "LessOrEqual", "GreaterOrEqual", "Mod"}
SAME_SHAPE = {"Sqrt", "Exp", "Log", "Sin", "Cos", "Tanh", "Neg", "Abs", "Reciprocal", "Floor", "Ceil", "Not",
              "Sigmoid", "Relu", "Erf", "Softmax", "InstanceNormalization", "LayerNormalization", "Identity",
              "Dropout", "Clip", "Cast"}
BOOL_OUT = {"Equal", "Less", "Greater", "And", "Or", "Not", "LessOrEqual", "GreaterOrEqual"}


@dataclass
class Value:
    shape: tuple[int, ...]
    dtype: np.dtype
    const: np.ndarray | None = None


def load(path: Path | str) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise InvalidModelFile(f"{Path(path).name} does not exist") from None  # no server paths in messages
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidModelFile(f"{Path(path).name} is not a readable ONNX model: {exc}") from None
    load_external_data(model, Path(path).parent)
    return model


def load_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Read tensors kept beside the model (``weights.pb``, ``model.onnx_data``) into it.

    onnx's own loader refuses data files behind links, and the store shows a model as a folder of
    links to its blobs; here the file must sit in ``folder`` itself under a plain name (no
    separators, no ``..``), which is what keeps a model from reading outside its folder."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    handles: dict[str, Any] = {}
    try:
        for tensor in _get_all_tensors(model):
            if not uses_external_data(tensor):
                continue
            info = {entry.key: entry.value for entry in tensor.external_data}
            location = info.get("location", "")
            if not location or "/" in location or "\\" in location or location.startswith("."):
                raise InvalidModelFile(f"tensor {tensor.name} names external data {location!r} outside its folder")
            if location not in handles:
                try:
                    handles[location] = (folder / location).open("rb")
                except OSError as exc:
                    raise InvalidModelFile(f"external data {location} of {folder.name}: {exc.strerror}") from None
            handle = handles[location]
            handle.seek(int(info.get("offset") or 0))
            length = int(info["length"]) if "length" in info else -1
            data = handle.read(length)
            if length >= 0 and len(data) != length:
                raise InvalidModelFile(f"external data {location} of {folder.name} is shorter than its tensors")
            tensor.raw_data = data
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    finally:
        for handle in handles.values():
            handle.close()


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[attr.name] = value
    return out


def _infer(node_type: str, inputs: list[Value | None], attrs: dict[str, Any], n_out: int,
           name: str) -> list[tuple[tuple[int, ...], np.dtype]]:
    """Output shapes and dtypes of an op whose inputs are not all constant."""
    first = inputs[0]
    assert first is not None
    if node_type in ELEMENTWISE:
        present = [v for v in inputs if v is not None]
        shp = np.broadcast_shapes(*(v.shape for v in present))
        dtype = np.dtype(np.bool_) if node_type in BOOL_OUT else (present[1] if node_type == "Where" else first).dtype
        return [(shp, dtype)]
    if node_type in SAME_SHAPE:
        if node_type == "Cast":
            return [(first.shape, ONNX_DTYPES[attrs["to"]])]
        dtype = np.dtype(np.bool_) if node_type in BOOL_OUT else first.dtype
        return [(first.shape, dtype)]
    if node_type == "MatMul":
        a, b = first.shape, inputs[1].shape  # type: ignore[union-attr]
        lead = np.broadcast_shapes(a[:-2], b[:-2]) if len(a) > 1 and len(b) > 1 else ()
        if len(b) == 1:
            return [(a[:-1], first.dtype)]
        if len(a) == 1:
            return [(b[:-2] + b[-1:], first.dtype)]
        return [((*lead, a[-2], b[-1]), first.dtype)]
    if node_type == "Gemm":
        a, b = first.shape, inputs[1].shape  # type: ignore[union-attr]
        m = a[1] if attrs.get("transA", 0) else a[0]
        n = b[0] if attrs.get("transB", 0) else b[1]
        return [((m, n), first.dtype)]
    if node_type == "Conv":
        n, _, h, w = first.shape
        cout, _, kh, kw = inputs[1].shape  # type: ignore[union-attr]
        sh, sw = attrs.get("strides", [1, 1])
        pt, pl, pb, pr = attrs.get("pads", [0, 0, 0, 0])
        dh, dw = attrs.get("dilations", [1, 1])
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            raise UnsupportedOperator(f"Conv node {name!r}: auto_pad is not supported; export with explicit pads")
        return [((n, cout, (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1),
                 first.dtype)]
    # cheap data movement and small ops: run them on zeros of the right shapes
    args = [None if v is None else (v.const if v.const is not None else np.zeros(v.shape, v.dtype)) for v in inputs]
    outs = ops.run_op(node_type, args, {**attrs, "_n_outputs": n_out}, name)
    return [(tuple(o.shape), o.dtype) for o in outs]


def convert(model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]],
            progress: Callable[[int, int], None] | None = None) -> tuple[StreamGraph, dict[str, np.ndarray]]:
    """The op list of ``model`` for the given input shapes, and the constants its ops still read.

    Returns a StreamGraph whose ``weights`` table is still empty: the caller decides how each big
    constant is stored (``convert.py``); small ones are already in ``graph.constants``.
    """
    g = model.graph
    values: dict[str, Value] = {}
    alias: dict[str, str] = {}
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        values[init.name] = Value(arr.shape, arr.dtype, arr)
    inputs: dict[str, ValueInfo] = {}
    for inp in g.input:
        if inp.name in values:
            continue
        if inp.name not in input_shapes:
            raise UnsupportedInput(f"the model needs input {inp.name!r}; give its shape (have {sorted(input_shapes)})")
        dtype = ONNX_DTYPES[inp.type.tensor_type.elem_type]
        shape = tuple(int(d) for d in input_shapes[inp.name])
        declared = inp.type.tensor_type.shape.dim
        if len(declared) != len(shape) or any(d.HasField("dim_value") and d.dim_value != s
                                               for d, s in zip(declared, shape, strict=False)):
            raise UnsupportedInput(f"input {inp.name!r} has shape {shape}, which the model does not accept "
                                   f"({[d.dim_value or d.dim_param for d in declared]})")
        values[inp.name] = Value(shape, dtype)
        inputs[inp.name] = ValueInfo(shape, dtype.name)

    kept: list[OpSpec] = []
    nodes = list(g.node)
    for i, node in enumerate(nodes):
        if progress:
            progress(i, len(nodes))
        attrs = attributes(node)
        name = node.name or f"{node.op_type}_{i}"
        if node.op_type == "Constant":
            const = _constant(attrs, name)
            values[node.output[0]] = Value(const.shape, const.dtype, const)
            continue
        in_names = [alias.get(n, n) for n in node.input]
        try:
            args = [values[n] if n else None for n in in_names]
        except KeyError as exc:
            raise InvalidModelFile(f"node {name!r} ({node.op_type}) reads {exc.args[0]!r}, which no earlier node "
                                   "makes: the graph is not in topological order") from None
        if node.op_type in ("Identity", "Dropout") and args[0] is not None and args[0].const is None:
            alias[node.output[0]] = in_names[0]
            continue
        if node.op_type not in ops.OPS:
            raise UnsupportedOperator(f"operator {node.op_type} (node {name!r}) is not supported by the image engine")
        if node.op_type == "Shape" and args[0] is not None:
            dims = np.array(args[0].shape, dtype=np.int64)[attrs.get("start", 0):attrs.get("end")]
            values[node.output[0]] = Value(dims.shape, dims.dtype, dims)
            continue
        if all(a is None or a.const is not None for a in args):
            outs = ops.run_op(node.op_type, [None if a is None else a.const for a in args],
                              {**attrs, "_n_outputs": len(node.output)}, name)
            for o_name, o in zip(node.output, outs, strict=False):
                o = np.array(o, order="C")  # (ascontiguousarray would turn a 0-d result into 1-d)
                values[o_name] = Value(o.shape, o.dtype, o)
            continue
        shapes = _infer(node.op_type, args, attrs, len(node.output), name)
        for o_name, (shp, dt) in zip(node.output, shapes, strict=False):
            values[o_name] = Value(tuple(int(d) for d in shp), np.dtype(dt))
        kept.append(OpSpec(node.op_type, name, in_names, list(node.output), _jsonable(attrs)))

    outputs = {o.name: alias.get(o.name, o.name) for o in g.output}
    kept = _prune(kept, set(outputs.values()))
    constants: dict[str, np.ndarray] = {}
    big: dict[str, np.ndarray] = {}
    produced: dict[str, ValueInfo] = {}
    same: dict[tuple, str] = {}  # folding makes copies (one causal mask per layer): store each once
    for spec in kept:
        for k, n in enumerate(spec.inputs):
            if n and values[n].const is not None:
                c = values[n].const
                assert c is not None
                if c.dtype.kind == "f" and c.size > INLINE_MAX:
                    key = (c.shape, c.dtype.str, hashlib.sha256(c.tobytes()).digest())
                    n = spec.inputs[k] = same.setdefault(key, n)
                    big[n] = c
                else:
                    constants[n] = c
        for n in spec.outputs:
            if n:
                produced[n] = ValueInfo(values[n].shape, values[n].dtype.name)
    for n in outputs.values():
        if values[n].const is not None and n not in produced:
            constants[n] = values[n].const  # type: ignore[assignment]
    graph = StreamGraph(kept, inputs, outputs, produced, constants, {})
    return graph, big


def _constant(attrs: Mapping[str, Any], name: str) -> np.ndarray:
    if "value" in attrs:
        return np.asarray(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise UnsupportedInput(f"Constant node {name!r} has no value this engine reads ({sorted(attrs)})")


def _jsonable(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        out[k] = v
    return out


def _prune(spec: list[OpSpec], needed: set[str]) -> list[OpSpec]:
    """Drop ops whose outputs nothing reads (dead after folding)."""
    keep: list[OpSpec] = []
    for s in reversed(spec):
        if any(o in needed for o in s.outputs):
            keep.append(s)
            needed.update(n for n in s.inputs if n)
    return keep[::-1]
