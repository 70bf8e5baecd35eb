"""The streaming layout on disk: ``graph.json`` (the op list) and ``weights.bin`` (one container).

``graph.json`` holds the ops in execution order with their attributes, the shape and dtype of every
value the run produces, small constants inline (shape vectors, scalars, position ids), and a table of
weights: each one's place in ``weights.bin`` (64-byte aligned), stored dtype (float32, float16 or
uint8) and, for uint8, its scale and zero point. Reading it needs numpy only; ``onnx`` is for
conversion (``graph.py``), so a worker that runs models never loads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from localllm.errors import InvalidModelFile

FORMAT = "localllm-stream/1"
GRAPH_FILE = "graph.json"
WEIGHTS_FILE = "weights.bin"
ALIGN = 64

# ONNX TensorProto element types → numpy (the ones SD graphs use)
ONNX_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int8),
    5: np.dtype(np.int16),
    6: np.dtype(np.int32),
    7: np.dtype(np.int64),
    9: np.dtype(np.bool_),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
    12: np.dtype(np.uint32),
    13: np.dtype(np.uint64),
}


@dataclass
class OpSpec:
    type: str
    name: str
    inputs: list[str]  # "" marks an absent optional input
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "inputs": self.inputs, "outputs": self.outputs,
                "attrs": self.attrs}


@dataclass
class WeightSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # stored dtype: float32 | float16 | uint8
    offset: int
    nbytes: int
    scale: float = 1.0
    zero_point: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shape": list(self.shape), "dtype": self.dtype, "offset": self.offset,
                               "nbytes": self.nbytes}
        if self.dtype == "uint8":
            out |= {"scale": self.scale, "zero_point": self.zero_point}
        return out


@dataclass
class ValueInfo:
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class StreamGraph:
    """A converted model: everything but the weights' bytes."""

    ops: list[OpSpec]
    inputs: dict[str, ValueInfo]
    outputs: dict[str, str]  # public output name → value name
    values: dict[str, ValueInfo]  # every value an op produces
    constants: dict[str, np.ndarray]
    weights: dict[str, WeightSpec]
    directory: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        if self.directory is None:
            raise InvalidModelFile("this graph was not loaded from a directory, so it has no weights file")
        return self.directory / WEIGHTS_FILE

    def weight_bytes(self) -> int:
        return sum(w.nbytes for w in self.weights.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "meta": self.meta,
            "inputs": {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in self.inputs.items()},
            "outputs": self.outputs,
            "values": {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in self.values.items()},
            "constants": {k: encode_array(v) for k, v in self.constants.items()},
            "weights": {k: w.to_json() for k, w in self.weights.items()},
            "ops": [op.to_json() for op in self.ops],
        }

    @classmethod
    def load(cls, directory: Path | str) -> StreamGraph:
        directory = Path(directory)
        path = directory / GRAPH_FILE
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise InvalidModelFile(f"{_shown(path)} is missing: not a converted model folder") from None
        except json.JSONDecodeError as exc:
            raise InvalidModelFile(f"{_shown(path)} is not valid JSON: {exc}") from None
        if doc.get("format") != FORMAT:
            raise InvalidModelFile(f"{_shown(path)} has format {doc.get('format')!r}; this localllm reads {FORMAT}")
        weights = {
            k: WeightSpec(k, tuple(w["shape"]), w["dtype"], w["offset"], w["nbytes"], w.get("scale", 1.0),
                          w.get("zero_point", 0))
            for k, w in doc["weights"].items()
        }
        graph = cls(
            ops=[OpSpec(o["type"], o["name"], o["inputs"], o["outputs"], o["attrs"]) for o in doc["ops"]],
            inputs={k: ValueInfo(tuple(v["shape"]), v["dtype"]) for k, v in doc["inputs"].items()},
            outputs=doc["outputs"],
            values={k: ValueInfo(tuple(v["shape"]), v["dtype"]) for k, v in doc["values"].items()},
            constants={k: decode_array(v) for k, v in doc["constants"].items()},
            weights=weights,
            directory=directory,
            meta=doc.get("meta", {}),
        )
        size = (directory / WEIGHTS_FILE).stat().st_size if weights else 0
        for w in weights.values():
            if w.offset + w.nbytes > size:
                raise InvalidModelFile(f"{directory / WEIGHTS_FILE} is truncated: weight {w.name!r} ends past it")
        return graph


def encode_array(a: np.ndarray) -> dict[str, Any]:
    if a.dtype == np.float32 or a.dtype == np.float64 or a.dtype == np.float16:
        data = [float(x) if np.isfinite(x) else str(x) for x in a.ravel().tolist()]
    else:
        data = a.ravel().tolist()
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": data}


def decode_array(d: dict[str, Any]) -> np.ndarray:
    data = [float(x) if isinstance(x, str) else x for x in d["data"]]
    return np.array(data, dtype=d["dtype"]).reshape(d["shape"])


class WeightsWriter:
    """Appends tensors to ``weights.bin``, each at an aligned offset."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = (directory / WEIGHTS_FILE).open("wb")
        self._offset = 0
        self.specs: dict[str, WeightSpec] = {}

    def add(self, name: str, stored: np.ndarray, shape: tuple[int, ...], scale: float = 1.0,
            zero_point: int = 0) -> None:
        pad = -self._offset % ALIGN
        if pad:
            self._file.write(b"\0" * pad)
            self._offset += pad
        data = np.ascontiguousarray(stored)
        self._file.write(data.tobytes())
        self.specs[name] = WeightSpec(name, tuple(shape), data.dtype.name, self._offset, data.nbytes, scale,
                                      zero_point)
        self._offset += data.nbytes

    def close(self) -> None:
        self._file.close()


def save(graph: StreamGraph, directory: Path) -> None:
    """Write graph.json (the weights were written by a WeightsWriter into the same folder)."""
    tmp = directory / (GRAPH_FILE + ".tmp")
    tmp.write_text(json.dumps(graph.to_json(), separators=(",", ":")))
    tmp.replace(directory / GRAPH_FILE)
    graph.directory = directory


def _shown(path: Path) -> str:
    """A path as an error message may show it: its folder and name, not where the store lives."""
    return f"{path.parent.name}/{path.name}"
