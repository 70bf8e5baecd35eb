"""Pulling image models: a Hub repository in diffusers' ONNX layout → a converted, stored image model.

Plan (errors before any write): list the repository, keep the files a pipeline needs
(``model_index.json``, text encoder(s), UNet, VAE decoder, tokenizer(s), scheduler). Execute:
fetch each into the blob store (LFS files verified against the Hub's sha256 and resumable, as
for GGUF pulls; git files, which come without one, hashed as they arrive), show them as a folder of links, convert it
in a child process for the model's default size (progress: ``converting <component>``), store
every converted file as a blob and commit one manifest naming both. A pull killed at any point
leaves blobs no manifest names (pruned at the next start) and a staging folder (removed then).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RemoteNotFound
from ..names import DEFAULT_HOST, DEFAULT_NAMESPACE, ModelName
from ..store.choose import RepoFile
from ..store.hub import HubClient, Repo
from ..store.manifests import FILENAME_ANNOTATION, Layer, Manifest, MediaType
from ..store.models import ModelStore
from ..store.pull import Emit, Fetcher, PlannedFile
from . import models as image_models
from .convert_process import convert_in_child

FOLDERS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "tokenizer", "tokenizer_2", "scheduler")
REQUIRED = ("model_index.json", "text_encoder/model.onnx", "unet/model.onnx", "vae_decoder/model.onnx")
PRECISION = "fp16"


@dataclass(frozen=True)
class ImageCatalogEntry:
    name: str
    description: str
    repo_id: str
    family: str  # sd15, sd-turbo, sdxl
    params: dict[str, Any]  # request defaults: steps, width, height, guidance, scheduler


IMAGE_CATALOG: dict[str, ImageCatalogEntry] = {
    e.name: e for e in (
        ImageCatalogEntry("sd15", "Stable Diffusion 1.5", "onnx-community/stable-diffusion-v1-5-ONNX", "sd15",
                          {"steps": 20, "guidance": 7.5, "scheduler": "dpmpp_2m", "width": 512, "height": 512}),
        ImageCatalogEntry("sd-turbo", "SD Turbo (1 to 4 steps)", "onnxruntime/sd-turbo", "sd-turbo",
                          {"steps": 1, "guidance": 0.0, "scheduler": "euler_a", "width": 512, "height": 512}),
        ImageCatalogEntry("sdxl-turbo", "SDXL Turbo (1 to 4 steps)", "onnxruntime/sdxl-turbo", "sdxl",
                          {"steps": 1, "guidance": 0.0, "scheduler": "euler_a", "width": 512, "height": 512}),
        ImageCatalogEntry("sdxl", "Stable Diffusion XL 1.0", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl",
                          {"steps": 25, "guidance": 7.0, "scheduler": "euler", "width": 1024, "height": 1024}),
    )
}


def image_catalog_entry(name: ModelName) -> ImageCatalogEntry | None:
    """The image catalog entry of a short name (``sd-turbo``, ``sd15:latest``), None if it is none."""
    if name.host.lower() != DEFAULT_HOST or name.namespace.lower() != DEFAULT_NAMESPACE:
        return None
    entry = IMAGE_CATALOG.get(name.model.lower())
    if entry is not None and name.tag.lower() != "latest":
        raise RemoteNotFound(f"model '{name.display}' not found: {entry.name} has only the tag 'latest'")
    return entry


def is_diffusers_onnx(files: list[RepoFile]) -> bool:
    paths = {f.path for f in files}
    return all(p in paths for p in REQUIRED)


@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int
    digest: str | None  # None: a small git file, hashed as it arrives


@dataclass
class ImagePullPlan:
    name: ModelName
    repo: Repo
    files: list[SourceFile]
    params: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    source: str = ""


class ImagePulls:
    """The image kind of pull, registered before the GGUF kind: the image catalog's names, and any Hub
    repository in diffusers' ONNX layout."""

    def catalog_names(self) -> list[str]:
        return sorted(IMAGE_CATALOG)

    def plan_name(self, name: ModelName, hub: HubClient) -> ImagePullPlan | None:
        entry = image_catalog_entry(name)
        return None if entry is None else plan(hub, name, entry.repo_id, hub.list_files(entry.repo_id), entry)

    def plan_repo(self, name: ModelName, repo_id: str, files: list[RepoFile], hub: HubClient) -> ImagePullPlan | None:
        return plan(hub, name, repo_id, files, None) if is_diffusers_onnx(files) else None

    def execute(self, plan: ImagePullPlan, fetcher: Fetcher, emit: Emit) -> None:
        execute(fetcher, plan, emit)


def plan(hub: HubClient, name: ModelName, repo_id: str, files: list[RepoFile],
         catalog: ImageCatalogEntry | None) -> ImagePullPlan:
    chosen = [f for f in files if f.path == "model_index.json"
              or (f.path.count("/") == 1 and f.path.split("/")[0] in FOLDERS)]
    missing = [p for p in REQUIRED if p not in {f.path for f in chosen}]
    if missing:
        raise RemoteNotFound(f"'{repo_id}' is not a diffusers ONNX pipeline: it lacks {', '.join(missing)}")
    planned = []
    for f in chosen:
        image_models.safe_relpath(f.path)
        if f.sha256 is None and f.path.endswith((".onnx", ".pb", ".onnx_data", ".bin")):
            f = hub.with_sha256(repo_id, f)  # an LFS file listed without its sha256: ask its HEAD
        if f.sha256 is not None:
            planned.append(SourceFile(f.path, f.size, Fetcher.verified(repo_id, f).digest))
        else:
            planned.append(SourceFile(f.path, f.size, None))
    params = dict(catalog.params) if catalog else {}
    return ImagePullPlan(name=name, repo=Repo(repo_id), files=planned, params=params,
                         family=catalog.family if catalog else "", source=f"hf.co/{repo_id}")


def execute(fetcher: Fetcher, plan: ImagePullPlan, emit: Emit) -> None:
    store = fetcher.store
    staging = image_models.new_staging(store)
    try:
        with store.pinned(f.digest for f in plan.files if f.digest):
            sources = {f.path: _fetch(fetcher, plan, f, emit, staging) for f in plan.files}
            with store.pinned(sources.values()):
                if _unchanged(store, plan, sources):
                    emit({"status": "verifying sha256 digest"})  # the same files: the conversion stands
                    return
                src = image_models.link_folder(store, sources, staging / "src")
                defaults = _defaults(plan)
                out = staging / "out"
                last = [0.0]

                def progress(component: str, done: int, total: int) -> None:
                    if done == total or time.monotonic() - last[0] >= 0.2:
                        last[0] = time.monotonic()
                        emit({"status": f"converting {component}", "total": total, "completed": done})

                convert_in_child(src, out, PRECISION, defaults.get("width", 0), defaults.get("height", 0), progress)
                emit({"status": "verifying sha256 digest"})
                layers = [Layer(mediaType=MediaType.IMAGE_SOURCE, digest=d, size=store.blobs.size(d),
                                annotations={FILENAME_ANNOTATION: p}) for p, d in sources.items()]
                info = json.loads((out / "pipeline.json").read_text())
                parameter_size = _parameter_size(out)
                defaults.setdefault("width", info["width"])
                defaults.setdefault("height", info["height"])
                layers += _store_converted(store, out)  # moves the files into the blob store
                layers.append(store.add_bytes(json.dumps(defaults, sort_keys=True).encode(), MediaType.PARAMS))
                config = store.add_config({
                    "model_format": image_models.FORMAT,
                    "model_family": plan.family or ("sdxl" if info.get("sdxl") else "sd"),
                    "model_type": parameter_size,
                    "file_type": PRECISION.upper(),
                    "capabilities": ["image"],
                    "sdxl": bool(info.get("sdxl")),
                    "width": info["width"], "height": info["height"], "precision": info["precision"],
                    "components": [c for c in ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
                                   if (out / c).is_dir()],
                    "source": plan.source,
                })
                emit({"status": "writing manifest"})
                store.commit(plan.name, Manifest(config=config, layers=layers))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch(fetcher: Fetcher, plan: ImagePullPlan, f: SourceFile, emit: Emit, staging: Path) -> str:
    """The file's blob digest, fetching it when the store lacks it. A file the Hub gives no sha256 for
    (git files: configs, tokenizer; ONNX files of a Hub without LFS) is hashed as it arrives."""
    if f.digest is None:
        return fetcher.unverified(plan.repo, f.path, f.size, staging, emit)
    fetcher.fetch(plan.repo, PlannedFile(digest=f.digest, size=f.size, filename=f.path.replace("/", "-"),
                                         repo_path=f.path), emit)
    return f.digest


def _unchanged(store: ModelStore, plan: ImagePullPlan, sources: dict[str, str]) -> bool:
    """The model is stored already, converted from exactly these files (a repeated pull)."""
    if not store.exists(plan.name):
        return False
    manifest = store.get(plan.name).manifest
    stored = {layer.filename: layer.digest for layer in manifest.layers_of(MediaType.IMAGE_SOURCE)}
    converted = manifest.layers_of(MediaType.IMAGE_FILE)
    return stored == sources and bool(converted) and all(store.blobs.exists(layer.digest) for layer in manifest.layers)


def _defaults(plan: ImagePullPlan) -> dict[str, Any]:
    """The params layer: the catalog's defaults; without them, the size comes from the conversion."""
    params = dict(plan.params)
    params.setdefault("steps", 20)
    params.setdefault("guidance", 7.5)
    params.setdefault("scheduler", "euler_a")
    return params


def _store_converted(store: ModelStore, out: Path) -> list[Layer]:
    """Every converted file as a blob (moved into place: the staging folder is on the store's disk)."""
    layers = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = image_models.safe_relpath(path.relative_to(out).as_posix())
        size = path.stat().st_size
        digest = store.adopt_file(path)
        layers.append(Layer(mediaType=MediaType.IMAGE_FILE, digest=digest, size=size,
                            annotations={FILENAME_ANNOTATION: rel}))
    return layers


def _parameter_size(out: Path) -> str:
    """Weights of every converted component, counted from their graphs: ``1.1B``, ``983M``, ``4.2M``."""
    count = 0
    for graph in out.glob("*/graph.json"):
        for spec in json.loads(graph.read_text()).get("weights", {}).values():
            n = 1
            for dim in spec.get("shape", []):
                n *= int(dim)
            count += n
    if count >= 1e9:
        return f"{count / 1e9:.1f}B"
    return f"{count / 1e6:.0f}M" if count >= 1e7 else f"{count / 1e6:.1f}M"
