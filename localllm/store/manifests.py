"""Manifests: ``manifests/<host>/<namespace>/<model>/<tag>``, OCI-shaped JSON with typed layers."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidModelFile, ModelNotFound, StorageError
from ..names import ModelName
from .blobs import parse_digest, storage_error

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
_PREFIX = "application/vnd.ollama.image."


class MediaType:
    """Layer kinds. New kinds (image-model weights, say) are new strings here."""

    MODEL = _PREFIX + "model"
    ADAPTER = _PREFIX + "adapter"
    PROJECTOR = _PREFIX + "projector"
    TEMPLATE = _PREFIX + "template"
    SYSTEM = _PREFIX + "system"
    PARAMS = _PREFIX + "params"
    MESSAGES = _PREFIX + "messages"
    LICENSE = _PREFIX + "license"
    # image models: the streaming layout's files and the diffusers ONNX files they were converted from,
    # each named by its path in the folder (FILENAME_ANNOTATION)
    IMAGE_FILE = "application/vnd.localllm.image.file"
    IMAGE_SOURCE = "application/vnd.localllm.image.source"


FILENAME_ANNOTATION = "org.opencontainers.image.title"


class Layer(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    media_type: str = Field(alias="mediaType")
    digest: str
    size: int = Field(ge=0)
    annotations: dict[str, str] | None = None

    def model_post_init(self, _context: object) -> None:
        self.digest = parse_digest(self.digest)

    @property
    def filename(self) -> str | None:
        return (self.annotations or {}).get(FILENAME_ANNOTATION)


class Manifest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    schema_version: int = Field(default=2, alias="schemaVersion")
    media_type: str = Field(default=MANIFEST_MEDIA_TYPE, alias="mediaType")
    config: Layer
    layers: list[Layer]

    def layers_of(self, media_type: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type == media_type]

    def layer(self, media_type: str) -> Layer | None:
        found = self.layers_of(media_type)
        return found[0] if found else None

    @property
    def digests(self) -> set[str]:
        return {self.config.digest, *(layer.digest for layer in self.layers)}

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.layers)

    def to_bytes(self) -> bytes:
        return json.dumps(self.model_dump(by_alias=True, exclude_none=True), indent=None).encode()


@dataclass(frozen=True)
class ManifestEntry:
    name: ModelName
    manifest: Manifest
    digest: str  # sha256 of the manifest bytes, as Ollama lists it
    modified_at: datetime
    path: Path


class ManifestStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _find_path(self, name: ModelName) -> Path | None:
        exact = name.manifest_path(self.root)
        if exact.is_file():
            return exact
        for entry_name, path in self._walk():
            if entry_name.same(name):
                return path
        return None

    def _walk(self) -> list[tuple[ModelName, Path]]:
        found: list[tuple[ModelName, Path]] = []
        if not self.root.is_dir():
            return found
        for path in self.root.glob("*/*/*/*"):
            if not path.is_file() or path.name.startswith(".tmp-"):
                continue
            host, namespace, model = path.parts[-4:-1]
            try:
                found.append((ModelName.parse(f"{host}/{namespace}/{model}:{path.name}"), path))
            except Exception:  # a stray file that is no manifest of ours
                continue
        return found

    def exists(self, name: ModelName) -> bool:
        return self._find_path(name) is not None

    def get(self, name: ModelName) -> ManifestEntry:
        path = self._find_path(name)
        if path is None:
            raise ModelNotFound(f"model '{name.short}' not found")
        return self._load(path)

    def _load(self, path: Path) -> ManifestEntry:
        host, namespace, model = path.parts[-4:-1]
        name = ModelName.parse(f"{host}/{namespace}/{model}:{path.name}")
        data = path.read_bytes()
        try:
            manifest = Manifest.model_validate_json(data)
        except ValidationError as exc:
            raise InvalidModelFile(f"the manifest of '{name.display}' is damaged: {exc.errors()[0]['msg']}") from exc
        stat = path.stat()
        return ManifestEntry(
            name=name,
            manifest=manifest,
            digest="sha256:" + hashlib.sha256(data).hexdigest(),
            modified_at=datetime.fromtimestamp(stat.st_mtime, tz=UTC),
            path=path,
        )

    def entries(self) -> list[ManifestEntry]:
        result = []
        for _, path in self._walk():
            try:
                result.append(self._load(path))
            except (InvalidModelFile, OSError):
                continue
        return sorted(result, key=lambda e: e.modified_at, reverse=True)

    def write(self, name: ModelName, manifest: Manifest) -> None:
        """Atomically write (or replace) the manifest of ``name``."""
        old = self._find_path(name)
        target = name.manifest_path(self.root)
        tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as handle:
                handle.write(manifest.to_bytes())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise storage_error(exc, f"writing the manifest of '{name.display}'") from exc
        if old is not None and old != target:
            old.unlink(missing_ok=True)
            self._remove_empty_dirs(old.parent)

    def delete(self, name: ModelName) -> None:
        path = self._find_path(name)
        if path is None:
            raise ModelNotFound(f"model '{name.short}' not found")
        try:
            path.unlink()
        except OSError as exc:
            raise StorageError(f"cannot delete '{name.display}': {exc.strerror}") from exc
        self._remove_empty_dirs(path.parent)

    def _remove_empty_dirs(self, directory: Path) -> None:
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent
