"""What a request needs to know about a stored model, read from its manifest and GGUF header."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import InvalidModelFile, UnsupportedInput
from ..gguf_info import GGUFInfo, read_gguf
from ..names import ModelName
from ..store.manifests import ManifestEntry, MediaType
from ..store.models import ModelStore
from .options import Options, parse_options


@dataclass
class ModelFacts:
    """A stored text model as the request paths see it, before and after loading."""

    entry: ManifestEntry
    info: GGUFInfo
    params: Options
    template: str | None  # the manifest's template layer
    system: str | None
    messages: list[dict[str, Any]]
    has_vision: bool

    @property
    def name(self) -> ModelName:
        return self.entry.name

    @property
    def weights_size(self) -> int:
        """Bytes of weights llama.cpp maps: the model's files and its adapters."""
        manifest = self.entry.manifest
        return sum(layer.size for layer in manifest.layers_of(MediaType.MODEL) + manifest.layers_of(MediaType.ADAPTER))


@lru_cache(maxsize=64)
def _gguf_info(digest: str, path: Path) -> GGUFInfo:
    """Blobs never change under their digest, so their header is read once (it costs tens of ms)."""
    return read_gguf(path)


def read_facts(store: ModelStore, name: ModelName) -> ModelFacts:
    """The facts of a stored text model; image models and models without weights are refused."""
    entry = store.get(name)
    if entry.manifest.layer(MediaType.IMAGE_FILE) is not None:
        raise UnsupportedInput(f"{entry.name.display} is an image model: it makes images (/api/generate with a "
                               "prompt, or /v1/images/generations), not text or embeddings", param="model")
    paths = store.model_paths(entry.manifest)
    if not paths:
        raise InvalidModelFile(f"'{entry.name.display}' has no model layer")
    return ModelFacts(
        entry=entry,
        info=_gguf_info(entry.manifest.layers_of(MediaType.MODEL)[0].digest, paths[0]),
        params=parse_options(store.layer_json(entry.manifest, MediaType.PARAMS) or {}, source="params"),
        template=store.layer_text(entry.manifest, MediaType.TEMPLATE),
        system=store.layer_text(entry.manifest, MediaType.SYSTEM),
        messages=store.layer_json(entry.manifest, MediaType.MESSAGES) or [],
        has_vision=entry.manifest.layer(MediaType.PROJECTOR) is not None,
    )


def model_file(store: ModelStore, facts: ModelFacts) -> Path:
    """The file llama.cpp opens. Split models need their parts side by side under their own
    names, so they get a folder of links next to the blobs."""
    layers = facts.entry.manifest.layers_of(MediaType.MODEL)
    if len(layers) == 1:
        return store.blobs.path(layers[0].digest)
    folder = store.root / "links" / facts.entry.digest.split(":", 1)[1][:16]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, layer in enumerate(layers, start=1):
        name = Path(layer.filename or f"model-{index:05d}-of-{len(layers):05d}.gguf").name
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(store.blobs.path(layer.digest))
        paths.append(link)
    return paths[0]


def adapter_files(store: ModelStore, facts: ModelFacts) -> tuple[Path, ...]:
    return tuple(store.blobs.path(layer.digest) for layer in facts.entry.manifest.layers_of(MediaType.ADAPTER))
