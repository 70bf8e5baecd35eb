"""Image models in the store: which manifests are ones, and their folders on disk.

An image model's manifest has ``IMAGE_FILE`` layers (the streaming layout, converted at pull
time for one size and precision) and ``IMAGE_SOURCE`` layers (the diffusers ONNX files it came
from, so another size or precision can be converted on demand), each annotated with its path in
the folder. The engine wants a folder, so the store shows one: ``images/<manifest>/default`` of
links to the blobs, and ``images/<manifest>/<W>x<H>-<precision>`` for conversions made later
(a cache, removed with the model). Every annotated path is checked before it becomes a path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidModelFile
from ..store.manifests import Manifest, ManifestEntry, MediaType
from ..store.models import ModelStore

# a file, or a file in one folder; no leading dot anywhere, so no "..", no hidden files, no absolute paths
_REL_PATH = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,63}/)?[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
FORMAT = "onnx-stream"


def safe_relpath(path: str | None) -> str:
    if not path or not _REL_PATH.fullmatch(path):
        raise InvalidModelFile(f"an image model layer has an invalid path {path!r}")
    return path


def is_image(manifest: Manifest) -> bool:
    return manifest.layer(MediaType.IMAGE_FILE) is not None


@dataclass(frozen=True)
class ImageModel:
    """What a request needs of a stored image model."""

    entry: ManifestEntry
    config: dict[str, Any]  # the config blob: width, height, precision, family, ...
    params: dict[str, Any]  # the params layer: request defaults

    @property
    def key(self) -> str:
        """The manifest's digest, short: names its worker and its folders."""
        return self.entry.digest.split(":", 1)[1][:16]

    @property
    def sdxl(self) -> bool:
        return bool(self.config.get("sdxl"))

    def files(self, media_type: str) -> dict[str, str]:
        return {safe_relpath(layer.filename): layer.digest for layer in self.entry.manifest.layers_of(media_type)}


def load(store: ModelStore, entry: ManifestEntry) -> ImageModel:
    params = store.layer_json(entry.manifest, MediaType.PARAMS) or {}
    return ImageModel(entry=entry, config=store.config(entry), params=params if isinstance(params, dict) else {})


def images_root(store: ModelStore) -> Path:
    return store.root / "images"


def staging_root(store: ModelStore) -> Path:
    return store.root / "tmp-images"


def new_staging(store: ModelStore) -> Path:
    """A private folder for work in progress, named by the owning process (see :func:`clean`)."""
    folder = staging_root(store) / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    return folder


def link_folder(store: ModelStore, files: dict[str, str], target: Path) -> Path:
    """``target`` as a folder of links to the blobs (made next to it, then renamed into place)."""
    if target.is_dir():
        return target
    tmp = target.with_name(f".tmp-{uuid.uuid4().hex[:12]}")
    try:
        for rel, digest in files.items():
            link = tmp / safe_relpath(rel)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(store.blobs.path(digest))
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a concurrent maker that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_folder(store: ModelStore, model: ImageModel) -> Path:
    return link_folder(store, model.files(MediaType.IMAGE_FILE), images_root(store) / model.key / "default")


def source_folder(store: ModelStore, model: ImageModel) -> Path:
    sources = model.files(MediaType.IMAGE_SOURCE)
    if "model_index.json" not in sources:
        raise InvalidModelFile(f"'{model.entry.name.display}' keeps no ONNX sources to convert another size from")
    return link_folder(store, sources, images_root(store) / model.key / "source")


def variant_folder(store: ModelStore, model: ImageModel, width: int, height: int, precision: str) -> Path:
    """Where the conversion for this size and precision lives (it may not exist yet)."""
    return images_root(store) / model.key / f"{width}x{height}-{precision}"


def clean(store: ModelStore) -> int:
    """At start: remove staging folders of processes that are gone, and folders of models no manifest names."""
    removed = 0
    staging = staging_root(store)
    if staging.is_dir():
        for folder in staging.iterdir():
            pid = folder.name.split("-", 1)[0]
            if not pid.isdigit() or not _alive(int(pid)) or int(pid) == os.getpid():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    return removed + remove_orphan_folders(store, temps=True)


def remove_orphan_folders(store: ModelStore, temps: bool = False) -> int:
    """Remove the folders (links, conversions for other sizes) of image models no manifest names any more;
    ``temps``: also half-made folders (at start only: at run time they may be in the making)."""
    removed = 0
    root = images_root(store)
    if root.is_dir():
        keys = {entry.digest.split(":", 1)[1][:16] for entry in store.list()}
        for folder in root.iterdir():
            if folder.name not in keys:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
            elif temps:
                for part in folder.glob(".tmp-*"):
                    shutil.rmtree(part, ignore_errors=True)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def config_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True).encode()
