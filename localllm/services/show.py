"""What ``/api/tags`` and ``/api/show`` say about a stored model: list entries and ``show`` documents,
for GGUF and image models alike (the store keeps bytes; describing them is the server's job)."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidModelFile
from ..gguf_info import read_gguf
from ..images import models as image_models
from ..images.models import ImageModel
from ..modelfile import format_parameters, render_modelfile
from ..store.manifests import ManifestEntry, MediaType
from ..store.models import ModelStore


def details(store: ModelStore, entry: ManifestEntry) -> dict[str, Any]:
    config = store.config(entry)
    family = config.get("model_family") or ""
    return {
        "parent_model": config.get("parent_model", ""),
        "format": config.get("model_format", "gguf"),
        "family": family,
        "families": config.get("model_families") or ([family] if family else None),
        "parameter_size": config.get("model_type", ""),
        "quantization_level": config.get("file_type", ""),
    }


def list_entry(store: ModelStore, entry: ManifestEntry) -> dict[str, Any]:
    return {
        "name": entry.name.display,
        "model": entry.name.display,
        "modified_at": entry.modified_at.isoformat(),
        "size": entry.manifest.total_size,
        "digest": entry.digest.split(":", 1)[1],
        "details": details(store, entry),
    }


def capabilities(arch: str, template: str | None, model_info: dict[str, Any]) -> list[str]:
    caps = []
    if model_info.get(f"{arch}.pooling_type") is not None or arch in ("bert", "nomic-bert", "jina-bert-v2"):
        caps.append("embedding")
    else:
        caps.append("completion")
    if template and "tools" in template.lower():  # Jinja's `tools`, Go's `.Tools`
        caps.append("tools")
    return caps


def show(store: ModelStore, entry: ManifestEntry, verbose: bool = False) -> dict[str, Any]:
    manifest = entry.manifest
    if image_models.is_image(manifest):
        return show_image_model(store, image_models.load(store, entry))
    paths = store.model_paths(manifest)
    if not paths:
        raise InvalidModelFile(f"'{entry.name.display}' has no model layer")
    info = read_gguf(paths[0])
    model_info = info.model_info()
    if verbose:
        model_info.update(_long_arrays(paths[0], info.array_lengths))
    template = store.layer_text(manifest, MediaType.TEMPLATE) or info.chat_template or ""
    system = store.layer_text(manifest, MediaType.SYSTEM) or ""
    params = store.layer_json(manifest, MediaType.PARAMS) or {}
    messages = store.layer_json(manifest, MediaType.MESSAGES) or []
    licenses = [store.blobs.read_text(layer.digest) for layer in manifest.layers_of(MediaType.LICENSE)]
    adapters = [str(store.blobs.path(layer.digest)) for layer in manifest.layers_of(MediaType.ADAPTER)]
    result: dict[str, Any] = {
        "license": "\n".join(licenses),
        "modelfile": render_modelfile(
            display_name=entry.name.display,
            model_from=str(paths[0]),
            template=template or None,
            system=system or None,
            params=params,
            licenses=licenses,
            adapters=adapters,
            messages=messages,
        ),
        "parameters": format_parameters(params),
        "template": template,
        "details": details(store, entry),
        "model_info": model_info,
        "capabilities": capabilities(info.architecture, template, model_info),
        "modified_at": entry.modified_at.isoformat(),
    }
    if system:
        result["system"] = system
    if messages:
        result["messages"] = messages
    return result


def show_image_model(store: ModelStore, model: ImageModel) -> dict[str, Any]:
    """The ``/api/show`` document of an image model."""
    entry, config = model.entry, model.config
    licenses = [store.blobs.read_text(layer.digest) for layer in entry.manifest.layers_of(MediaType.LICENSE)]
    info = {
        "general.architecture": "stable-diffusion-xl" if model.sdxl else "stable-diffusion",
        "general.source": config.get("source", ""),
        "image.width": config.get("width"),
        "image.height": config.get("height"),
        "image.precision": config.get("precision"),
        "image.components": config.get("components", []),
    }
    return {
        "license": "\n".join(licenses),
        "modelfile": render_modelfile(display_name=entry.name.display, model_from=entry.name.display, template=None,
                                      system=None, params=model.params, licenses=licenses, adapters=[], messages=[]),
        "parameters": format_parameters(model.params),
        "template": "",
        "details": {
            "parent_model": "", "format": image_models.FORMAT, "family": config.get("model_family", ""),
            "families": [config.get("model_family", "")], "parameter_size": config.get("model_type", ""),
            "quantization_level": str(config.get("precision", "")).upper(),
        },
        "model_info": info,
        "capabilities": ["image"],
        "modified_at": entry.modified_at.isoformat(),
    }


def _long_arrays(path: Any, lengths: dict[str, int]) -> dict[str, Any]:
    """With ``verbose``, Ollama returns the long arrays too (tokens, scores)."""
    if not lengths:
        return {}
    from gguf import GGUFReader  # only on this rare path: it maps the whole tensor table

    reader = GGUFReader(path)
    out: dict[str, Any] = {}
    for key in lengths:
        field = reader.get_field(key)
        if field is not None:
            out[key] = field.contents()
    return out
