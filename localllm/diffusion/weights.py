"""Where weights come from: the engine asks a WeightsProvider for each op's weights as the op runs.

``DiskNoCache`` reads a tensor from ``weights.bin`` on every use and keeps nothing; ``DiskPrefetch``
learns the order of uses and reads ahead on a background thread within a byte budget; ``Ram`` reads
the whole file once and keeps it. All hand out float32, dequantizing fp16/uint8 storage on use.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Sequence

import numpy as np

from localllm.diffusion.layout import StreamGraph, WeightSpec
from localllm.diffusion.quant import Packed, from_stored
from localllm.errors import InvalidModelFile

PACK_MIN = 16 << 20  # weights over this many float32 bytes can be handed out packed


def _read(fd: int, spec: WeightSpec) -> np.ndarray:
    buf = np.empty(spec.nbytes, dtype=np.uint8)
    got = os.preadv(fd, [memoryview(buf)], spec.offset)
    if got != spec.nbytes:
        raise InvalidModelFile(f"weight {spec.name!r}: read {got} of {spec.nbytes} bytes (file truncated?)")
    return buf.view(spec.dtype).reshape(spec.shape)


class WeightsProvider:
    """Hands out weights by name; ``release`` says the op that asked is done with them."""

    def __init__(self, graph: StreamGraph) -> None:
        self.graph = graph
        self.bytes_read = 0

    def order(self, uses: Sequence[str]) -> None:
        """The names the engine will ask for, in order, once per run (prefetching providers use it)."""

    def get(self, name: str, packed: bool = False) -> np.ndarray | Packed:
        """The weight as float32, or (``packed`` asked, stored smaller, and big) as a Packed."""
        raise NotImplementedError

    def _out(self, spec: WeightSpec, stored: np.ndarray, packed: bool) -> np.ndarray | Packed:
        if packed and stored.dtype != np.float32 and stored.size * 4 >= PACK_MIN:
            return Packed(stored, spec.scale, spec.zero_point)
        return from_stored(stored, spec.scale, spec.zero_point)

    def rows(self, name: str, indices: np.ndarray) -> np.ndarray:
        """Rows of a 2-d weight (an embedding table): only those are read and dequantized."""
        table = self.get(name)
        assert isinstance(table, np.ndarray)
        return np.take(table, indices, axis=0)

    def release(self, name: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> WeightsProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DiskNoCache(WeightsProvider):
    def __init__(self, graph: StreamGraph) -> None:
        super().__init__(graph)
        self._fd = os.open(graph.weights_path, os.O_RDONLY)

    def get(self, name: str, packed: bool = False) -> np.ndarray | Packed:
        spec = self.graph.weights[name]
        self.bytes_read += spec.nbytes
        return self._out(spec, _read(self._fd, spec), packed)

    def rows(self, name: str, indices: np.ndarray) -> np.ndarray:
        spec = self.graph.weights[name]
        if len(spec.shape) != 2:
            return super().rows(name, indices)
        item = np.dtype(spec.dtype).itemsize
        row_bytes = spec.shape[1] * item
        flat = indices.reshape(-1) % spec.shape[0]
        out = np.empty((flat.size, spec.shape[1]), dtype=spec.dtype)
        for i, r in enumerate(flat.tolist()):
            os.preadv(self._fd, [memoryview(out[i]).cast("B")], spec.offset + r * row_bytes)
        self.bytes_read += out.nbytes
        return from_stored(out, spec.scale, spec.zero_point).reshape(*indices.shape, spec.shape[1])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Ram(WeightsProvider):
    """Everything in memory in its stored form (fp16/uint8 stay small), dequantized on use."""

    def __init__(self, graph: StreamGraph) -> None:
        super().__init__(graph)
        self._blob = np.fromfile(graph.weights_path, dtype=np.uint8) if graph.weights else np.empty(0, np.uint8)
        self.bytes_read = self._blob.nbytes

    def _stored(self, spec: WeightSpec) -> np.ndarray:
        return self._blob[spec.offset: spec.offset + spec.nbytes].view(spec.dtype).reshape(spec.shape)

    def get(self, name: str, packed: bool = False) -> np.ndarray | Packed:
        spec = self.graph.weights[name]
        return self._out(spec, self._stored(spec), packed)

    def rows(self, name: str, indices: np.ndarray) -> np.ndarray:
        spec = self.graph.weights[name]
        taken = np.take(self._stored(spec), indices, axis=0)
        return from_stored(taken, spec.scale, spec.zero_point)


class DiskPrefetch(WeightsProvider):
    """A reader thread walks the order of uses ahead of the engine, holding at most ``budget`` stored bytes.

    The order repeats run after run (the next UNet step wants the same weights in the same order),
    so after the last use the thread starts again from the first. A request that does not match
    the expected next use (another order, or an embedding read by rows) is read directly.
    """

    def __init__(self, graph: StreamGraph, budget: int = 32 << 20) -> None:
        super().__init__(graph)
        self.budget = budget
        self._fd = os.open(graph.weights_path, os.O_RDONLY)
        self._uses: list[str] = []
        self._ready: deque[tuple[int, np.ndarray]] = deque()
        self._held = 0
        self._next_read = 0
        self._next_use = 0
        self._cond = threading.Condition()
        self._stop = False
        self._generation = 0  # a new order() makes reads already in flight stale
        self._thread: threading.Thread | None = None

    def order(self, uses: Sequence[str]) -> None:
        with self._cond:
            self._generation += 1
            self._uses = list(uses)
            self._ready.clear()
            self._held = 0
            self._next_read = self._next_use = 0
            self._cond.notify_all()
        if self._thread is None and self._uses:
            self._thread = threading.Thread(target=self._reader, name="weights-prefetch", daemon=True)
            self._thread.start()

    def _reader(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (
                    not self._uses
                    or (self._held > 0 and self._held + self._size(self._next_read) > self.budget)
                    or self._next_read - self._next_use >= len(self._uses)
                ):
                    self._cond.wait()
                if self._stop:
                    return
                index, generation = self._next_read, self._generation
                spec = self.graph.weights[self._uses[index % len(self._uses)]]
                self._next_read += 1
                self._held += spec.nbytes
            data = _read(self._fd, spec)
            with self._cond:
                if generation == self._generation:
                    self._ready.append((index, data))
                    self._cond.notify_all()

    def _size(self, index: int) -> int:
        return self.graph.weights[self._uses[index % len(self._uses)]].nbytes

    def get(self, name: str, packed: bool = False) -> np.ndarray | Packed:
        spec = self.graph.weights[name]
        self.bytes_read += spec.nbytes
        with self._cond:
            expected = self._uses[self._next_use % len(self._uses)] if self._uses else None
            if expected != name:
                data = None
            else:
                index = self._next_use
                while not (self._ready and self._ready[0][0] == index):
                    self._cond.wait()
                _, data = self._ready.popleft()
                self._held -= spec.nbytes
                self._next_use += 1
                self._cond.notify_all()
        if data is None:
            data = _read(self._fd, spec)
        return self._out(spec, data, packed)

    rows = DiskNoCache.rows

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


PROVIDERS = {"disk": DiskNoCache, "prefetch": DiskPrefetch, "ram": Ram}


def make_provider(kind: str, graph: StreamGraph) -> WeightsProvider:
    try:
        return PROVIDERS[kind](graph)
    except KeyError:
        raise ValueError(f"unknown weights provider {kind!r}: use one of {sorted(PROVIDERS)}") from None
