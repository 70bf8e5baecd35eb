"""The model store: manifests that name blobs, kept consistent under one lock.

Deleting a model prunes the blobs no other manifest uses. Two things keep a
prune from taking blobs that are about to be referenced: a blob written
through the store stays *fresh* (unprunable) until a manifest commits it or
an hour passes (a client uploads blobs, then calls create), and a pull pins
the digests it is fetching for as long as it runs.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import BlobNotFound, InvalidModelFile
from ..names import ModelName
from .blobs import BlobStore, BlobWriter, sha256_file
from .manifests import CONFIG_MEDIA_TYPE, Layer, Manifest, ManifestEntry, ManifestStore, MediaType

FRESH_SECONDS = 3600.0


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobStore(root / "blobs")
        self.manifests = ManifestStore(root / "manifests")
        self._lock = threading.RLock()
        self._pins: Counter[str] = Counter()
        self._fresh: dict[str, float] = {}
        self.on_commit: list[Callable[[ModelName, str], None]] = []  # told each name written, and its digest

    # --- reading -------------------------------------------------------------
    def get(self, name: ModelName) -> ManifestEntry:
        return self.manifests.get(name)

    def exists(self, name: ModelName) -> bool:
        return self.manifests.exists(name)

    def list(self) -> list[ManifestEntry]:
        return self.manifests.entries()

    def config(self, entry: ManifestEntry) -> dict[str, Any]:
        try:
            return json.loads(self.blobs.read_text(entry.manifest.config.digest))
        except (OSError, ValueError):
            return {}

    def model_paths(self, manifest: Manifest) -> list[Path]:
        """The GGUF file(s) of a model, in split order."""
        return [self.blobs.path(layer.digest) for layer in manifest.layers_of(MediaType.MODEL)]

    def layer_text(self, manifest: Manifest, media_type: str) -> str | None:
        layer = manifest.layer(media_type)
        if layer is None:
            return None
        try:
            return self.blobs.read_text(layer.digest)
        except OSError:
            return None

    def layer_json(self, manifest: Manifest, media_type: str) -> Any:
        text = self.layer_text(manifest, media_type)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise InvalidModelFile(f"the {media_type.rsplit('.', 1)[-1]} layer is not valid JSON") from exc

    # --- writing -------------------------------------------------------------
    def mark_fresh(self, digest: str) -> None:
        """Protect a just-written blob from pruning until a manifest uses it."""
        with self._lock:
            self._fresh[digest] = time.monotonic()

    def add_bytes(self, data: bytes, media_type: str, **annotations: str) -> Layer:
        with self._lock:  # no prune between the write and the mark
            digest, size = self.blobs.write_bytes(data)
            self.mark_fresh(digest)
        return Layer(mediaType=media_type, digest=digest, size=size, annotations=annotations or None)

    def adopt_file(self, path: Path) -> str:
        """Hash a finished file on the store's disk and move it in as a blob, fresh until a manifest uses it
        (a file the store already has is left where it is, for its owner to delete)."""
        digest = sha256_file(path)
        with self._lock:  # no prune between the move and the mark
            if not self.blobs.exists(digest):
                self.blobs.adopt(path, digest)
            self.mark_fresh(digest)
        return digest

    def finish_upload(self, writer: BlobWriter, expected: str) -> str:
        """Verify an uploaded blob against ``expected`` and keep it fresh for a create."""
        with self._lock:
            digest, _ = writer.commit(expected)
            self.mark_fresh(digest)
        return digest

    def add_config(self, config: dict[str, Any]) -> Layer:
        return self.add_bytes(json.dumps(config, sort_keys=True).encode(), CONFIG_MEDIA_TYPE)

    def commit(self, name: ModelName, manifest: Manifest) -> None:
        """Write ``name``'s manifest once every blob it names is in place."""
        with self._lock:
            for digest in manifest.digests:
                if not self.blobs.exists(digest):
                    raise BlobNotFound(f"blob {digest} is missing; the model was not written")
            self.manifests.write(name, manifest)
            for digest in manifest.digests:
                self._fresh.pop(digest, None)
        written = "sha256:" + hashlib.sha256(manifest.to_bytes()).hexdigest()
        for listener in self.on_commit:
            listener(name, written)

    def copy(self, source: ModelName, destination: ModelName) -> None:
        with self._lock:
            entry = self.get(source)
            self.manifests.write(destination, entry.manifest)

    def delete(self, name: ModelName) -> list[str]:
        with self._lock:
            self.manifests.delete(name)
            return self.prune()

    def prune(self) -> list[str]:
        """Remove blobs no manifest references and no unfinished work has pinned."""
        with self._lock:
            referenced: set[str] = set()
            for entry in self.manifests.entries():
                referenced |= entry.manifest.digests
            now = time.monotonic()
            self._fresh = {d: t for d, t in self._fresh.items() if now - t < FRESH_SECONDS}
            removed = []
            for digest in self.blobs.digests():
                if digest not in referenced and not self._pins[digest] and digest not in self._fresh:
                    self.blobs.remove(digest)
                    removed.append(digest)
            return removed

    @contextmanager
    def pinned(self, digests: Iterable[str]) -> Iterator[None]:
        """Keep ``digests`` from being pruned while the block runs (a pull fetching them)."""
        held = list(digests)
        with self._lock:
            self._pins.update(held)
        try:
            yield
        finally:
            with self._lock:
                self._pins.subtract(held)
                self._pins += Counter()  # drop zero counts
