"""What a GGUF file says about itself, read without trusting it.

The ``gguf`` package's ``GGUFReader`` trusts the counts in a file (a forged
array length makes it loop for ever; a tensor offset past the end is only
noticed when the bytes are touched), so the header is walked here with every
length and offset checked against the real file size, using the ``gguf``
package's own type tables. A damaged file raises :class:`InvalidModelFile`.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, LlamaFileType

from .errors import InvalidModelFile

GGUF_MAGIC = b"GGUF"
MAX_STRING = 64 * 1024 * 1024
MAX_DIMS = 8
SMALL_ARRAY = 64  # arrays longer than this are summarized, not copied (e.g. 262k tokens)

_SCALARS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_name: str
    offset: int  # absolute, in the file
    n_bytes: int

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass(frozen=True)
class ArrayRef:
    """Where a long array's items are in the file (arrays longer than ``SMALL_ARRAY`` are not copied)."""

    item_type: GGUFValueType
    count: int
    offset: int  # absolute, of the first item


@dataclass
class GGUFInfo:
    path: Path
    version: int
    metadata: dict[str, Any]
    array_lengths: dict[str, int]
    tensors: list[TensorInfo] = field(default_factory=list)
    arrays: dict[str, ArrayRef] = field(default_factory=dict)  # the long arrays of ``array_lengths``

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture") or "unknown")

    @property
    def name(self) -> str | None:
        value = self.metadata.get("general.name")
        return str(value) if value is not None else None

    @property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if isinstance(value, int) else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def quantization(self) -> str:
        file_type = self.metadata.get("general.file_type")
        if isinstance(file_type, int):
            try:
                return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
            except ValueError:
                pass
        weighted = Counter[str]()
        for tensor in self.tensors:
            if len(tensor.shape) >= 2:
                weighted[tensor.type_name] += tensor.n_bytes
        return weighted.most_common(1)[0][0] if weighted else "unknown"

    @property
    def split_count(self) -> int:
        value = self.metadata.get("split.count")
        return int(value) if isinstance(value, int) and value > 0 else 1

    def array(self, key: str) -> list[Any] | None:
        """The items of a numeric array, short or long (a long one is read from the file now); None when
        ``key`` is not an array of numbers."""
        value = self.metadata.get(key)
        if isinstance(value, list):
            return value if not any(isinstance(item, str) for item in value) else None
        ref = self.arrays.get(key)
        if ref is None or ref.item_type not in _SCALARS:
            return None
        with self.path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return np.frombuffer(data, dtype=np.dtype(_SCALARS[ref.item_type]), count=ref.count,
                                 offset=ref.offset).tolist()

    def strings(self, key: str) -> list[bytes] | None:
        """The raw items of an array of strings, short or long (a long one is read from the file now, as
        bytes: a tokenizer's 262k tokens take about 0.2 s); None when ``key`` is not an array of strings."""
        value = self.metadata.get(key)
        if isinstance(value, list):
            return [item.encode() for item in value] if all(isinstance(item, str) for item in value) else None
        ref = self.arrays.get(key)
        if ref is None or ref.item_type != GGUFValueType.STRING:
            return None
        with self.path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            unpack, pos, size = struct.unpack_from, ref.offset, len(data)
            items = []
            append = items.append
            for _ in range(ref.count):
                if pos + 8 > size:
                    raise InvalidModelFile(f"{self.path.name} is not a valid GGUF file: {key} is truncated")
                length = unpack("<Q", data, pos)[0]
                pos += 8
                append(data[pos:pos + length])
                pos += length
            if pos > size:
                raise InvalidModelFile(f"{self.path.name} is not a valid GGUF file: {key} is truncated")
            return items

    def model_info(self) -> dict[str, Any]:
        """GGUF key/values as Ollama's ``/api/show`` lists them (long arrays as ``None``)."""
        info: dict[str, Any] = dict(self.metadata)
        for key in self.array_lengths:
            info.setdefault(key, None)
        info["general.parameter_count"] = self.parameter_count
        return dict(sorted(info.items()))


def format_parameter_size(count: int) -> str:
    """``7241732096`` → ``7.2B``, ``268098176`` → ``268.10M`` (as Ollama shows it)."""
    if count >= 1_000_000_000:
        return f"{count / 1e9:.1f}B"
    if count >= 1_000_000:
        return f"{count / 1e6:.2f}M"
    if count >= 1_000:
        return f"{count / 1e3:.2f}K"
    return str(count)


class _Cursor:
    def __init__(self, data: mmap.mmap | bytes, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.size = len(data)
        self.path = path

    def fail(self, what: str) -> InvalidModelFile:
        return InvalidModelFile(f"{self.path.name} is not a valid GGUF file: {what} (at byte {self.pos})")

    def take(self, count: int, what: str) -> bytes:
        if count < 0 or self.pos + count > self.size:
            raise self.fail(f"{what} runs past the end of the file ({self.size} bytes); the file is truncated")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return bytes(chunk)

    def skip(self, count: int, what: str) -> None:
        if count < 0 or self.pos + count > self.size:
            raise self.fail(f"{what} runs past the end of the file ({self.size} bytes); the file is truncated")
        self.pos += count

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", what))

    def string(self, what: str) -> str:
        length = self.u64(f"length of {what}")
        if length > MAX_STRING:
            raise self.fail(f"{what} claims {length} bytes")
        return self.take(length, what).decode("utf-8", errors="replace")

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.u32(f"type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.fail(f"unknown value type {raw} for {what}") from None


def _read_value(cur: _Cursor, vtype: GGUFValueType, key: str, lengths: dict[str, int],
                arrays: dict[str, ArrayRef]) -> Any:
    if vtype == GGUFValueType.STRING:
        return cur.string(f"value of {key}")
    if vtype in _SCALARS:
        return cur.scalar(_SCALARS[vtype], f"value of {key}")
    # array
    item_type = cur.value_type(f"items of {key}")
    count = cur.u64(f"length of {key}")
    if item_type == GGUFValueType.ARRAY:
        raise cur.fail(f"nested arrays in {key} are not supported")
    if item_type in _SCALARS:
        width = struct.calcsize(_SCALARS[item_type])
        if count * width > cur.size - cur.pos:
            raise cur.fail(f"array {key} claims {count} items, more than the file holds")
        if count > SMALL_ARRAY:
            lengths[key] = count
            arrays[key] = ArrayRef(item_type, count, cur.pos)
            cur.skip(count * width, f"array {key}")
            return None
        fmt = "<" + _SCALARS[item_type][1] * count
        # all the items (cur.scalar would keep only the first: a one-item array would be an int)
        return list(struct.unpack(fmt, cur.take(width * count, f"array {key}"))) if count else []
    # strings: each at least 8 bytes of length
    if count * 8 > cur.size - cur.pos:
        raise cur.fail(f"array {key} claims {count} strings, more than the file holds")
    if count > SMALL_ARRAY:
        lengths[key] = count
        arrays[key] = ArrayRef(item_type, count, cur.pos)
        _skip_strings(cur, count, key)
        return None
    return [cur.string(f"item of {key}") for _ in range(count)]


def _skip_strings(cur: _Cursor, count: int, key: str) -> None:
    """Skip ``count`` strings fast (a tokenizer holds hundreds of thousands)."""
    unpack, data, pos, size = struct.unpack_from, cur.data, cur.pos, cur.size
    for _ in range(count):
        if pos + 8 > size:
            cur.pos = pos
            raise cur.fail(f"item of {key} runs past the end of the file; the file is truncated")
        pos += 8 + unpack("<Q", data, pos)[0]
    if pos > size:
        raise cur.fail(f"item of {key} runs past the end of the file; the file is truncated")
    cur.pos = pos


def read_gguf(path: Path) -> GGUFInfo:
    """Read the metadata and tensor table of one GGUF file (one part of a split model)."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InvalidModelFile(f"cannot open {path.name}: {exc.strerror}") from exc
    with handle:
        size = path.stat().st_size
        if size < 24:
            raise InvalidModelFile(f"{path.name} is not a valid GGUF file: only {size} bytes")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _parse(_Cursor(data, path), path)


def _parse(cur: _Cursor, path: Path) -> GGUFInfo:
    if cur.take(4, "magic") != GGUF_MAGIC:
        raise cur.fail("it does not start with 'GGUF'")
    version = cur.u32("version")
    if version not in (2, 3):
        raise cur.fail(f"unsupported GGUF version {version}")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("metadata count")
    # every key/value takes at least 12 bytes, every tensor entry at least 24
    if n_kv * 12 + n_tensors * 24 > cur.size:
        raise cur.fail(f"it claims {n_kv} metadata entries and {n_tensors} tensors, more than the file holds")

    metadata: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    arrays: dict[str, ArrayRef] = {}
    for _ in range(n_kv):
        key = cur.string("metadata key")
        vtype = cur.value_type(key)
        metadata[key] = _read_value(cur, vtype, key, lengths, arrays)

    raw_tensors: list[tuple[str, tuple[int, ...], int, int]] = []
    for _ in range(n_tensors):
        name = cur.string("tensor name")
        n_dims = cur.u32(f"dimension count of {name}")
        if n_dims > MAX_DIMS:
            raise cur.fail(f"tensor {name} claims {n_dims} dimensions")
        shape = tuple(cur.u64(f"shape of {name}") for _ in range(n_dims))
        type_id = cur.u32(f"type of {name}")
        offset = cur.u64(f"offset of {name}")
        raw_tensors.append((name, shape, type_id, offset))

    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"invalid alignment {alignment!r}")
    data_start = (cur.pos + alignment - 1) // alignment * alignment

    tensors: list[TensorInfo] = []
    for name, shape, type_id, offset in raw_tensors:
        try:
            qtype = GGMLQuantizationType(type_id)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise cur.fail(f"tensor {name} has unknown type {type_id}") from None
        elements = 1
        for dim in shape:
            elements *= dim
        n_bytes = elements // block * type_size
        start = data_start + offset
        if start + n_bytes > cur.size:
            raise InvalidModelFile(
                f"{path.name} is not a valid GGUF file: tensor {name} ends at byte {start + n_bytes}, "
                f"past the end of the file ({cur.size} bytes); the file is truncated or damaged"
            )
        tensors.append(TensorInfo(name=name, shape=shape, type_name=qtype.name, offset=start, n_bytes=n_bytes))
    return GGUFInfo(path=path, version=version, metadata=metadata, array_lengths=lengths, tensors=tensors,
                    arrays=arrays)


@dataclass
class ModelSummary:
    """What the store records about a model's weights (the config blob)."""

    format: str
    family: str
    families: list[str]
    parameter_size: str
    parameter_count: int
    quantization_level: str
    context_length: int | None

    @classmethod
    def from_parts(cls, parts: list[GGUFInfo]) -> ModelSummary:
        first = parts[0]
        return cls(
            format="gguf",
            family=first.architecture,
            families=[first.architecture],
            parameter_count=sum(p.parameter_count for p in parts),
            parameter_size=format_parameter_size(sum(p.parameter_count for p in parts)),
            quantization_level=first.quantization,
            context_length=first.context_length,
        )
