"""The GGUF kind of pull: a catalog name (embedded, or a Hub repository), or any Hub repository of GGUF
files, whose tag chooses the quantization. The files are read and held to llama.cpp's limits before the
manifest is written; the layers the GGUF lacks (a catalog entry's template, parameters) are added."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidModelFile
from ..gguf_info import ModelSummary, read_gguf
from ..gguf_limits import check_hyperparameters
from ..names import ModelName
from . import bundled, catalog
from .choose import RepoFile, choose
from .hub import HubClient, Repo
from .manifests import FILENAME_ANNOTATION, Layer, Manifest, MediaType
from .pull import Emit, Fetcher, PlannedFile


@dataclass
class GGUFPlan:
    name: ModelName
    files: list[PlannedFile]
    repo: Repo | None  # None for an embedded model
    bundle: str | None = None  # the embedded model's key in bundled.BUNDLES
    extra_layers: list[tuple[str, bytes]] = field(default_factory=list)
    source: str = ""


class GGUFPulls:
    """Plans and executes GGUF pulls; the catch-all kind, so register it last."""

    def catalog_names(self) -> list[str]:
        return catalog.catalog_names()

    def plan_name(self, name: ModelName, hub: HubClient) -> GGUFPlan | None:
        source = catalog.lookup(name)
        if source is None:
            return None
        if source.bundled:
            assert source.flavor.bundle is not None
            model = bundled.bundled_model(source.flavor.bundle)
            return GGUFPlan(name=name, files=[PlannedFile(digest=model.digest, size=model.size,
                                                          filename=model.filename)],
                            repo=None, bundle=source.flavor.bundle, extra_layers=source.extra_layers(),
                            source=f"embedded:{model.filename}")
        repo_id = source.flavor.repo_id
        return self._plan_files(name, repo_id, hub.list_files(repo_id), source.quant, hub, source.extra_layers())

    def plan_repo(self, name: ModelName, repo_id: str, files: list[RepoFile], hub: HubClient) -> GGUFPlan:
        return self._plan_files(name, repo_id, files, name.tag if name.tag_given else None, hub, [])

    @staticmethod
    def _plan_files(name: ModelName, repo_id: str, files: list[RepoFile], selector: str | None, hub: HubClient,
                    extra: list[tuple[str, bytes]]) -> GGUFPlan:
        choice = choose(repo_id, files, selector)
        planned = [Fetcher.verified(repo_id, hub.with_sha256(repo_id, f)) for f in choice.files]
        return GGUFPlan(name=name, files=planned, repo=Repo(repo_id), extra_layers=extra, source=f"hf.co/{repo_id}")

    def execute(self, plan: GGUFPlan, fetcher: Fetcher, emit: Emit) -> None:
        store = fetcher.store
        with store.pinned(f.digest for f in plan.files):
            for planned in plan.files:
                if plan.bundle is not None:
                    fetcher.write(planned, bundled.bundled_model(plan.bundle).read(), emit)
                else:
                    assert plan.repo is not None
                    fetcher.fetch(plan.repo, planned, emit)
            emit({"status": "verifying sha256 digest"})
            summary = _summarize(fetcher, plan)
            layers = [Layer(mediaType=MediaType.MODEL, digest=f.digest, size=f.size,
                            annotations={FILENAME_ANNOTATION: f.filename}) for f in plan.files]
            # small layers are written fresh: no prune takes them before the commit
            layers += [store.add_bytes(data, media_type) for media_type, data in plan.extra_layers]
            config: dict[str, Any] = {
                "model_format": summary.format,
                "model_family": summary.family,
                "model_families": summary.families,
                "model_type": summary.parameter_size,
                "file_type": summary.quantization_level,
                "parameter_count": summary.parameter_count,
                "context_length": summary.context_length,
                "source": plan.source,
                "files": [f.repo_path or f.filename for f in plan.files],
            }
            emit({"status": "writing manifest"})
            store.commit(plan.name, Manifest(config=store.add_config(config), layers=layers))


def _summarize(fetcher: Fetcher, plan: GGUFPlan) -> ModelSummary:
    """Read the verified GGUF files and hold them to llama.cpp's limits (a file llama.cpp would abort on is
    refused here, before the manifest is written, and pruned)."""
    try:
        parts = [read_gguf(fetcher.store.blobs.path(f.digest)) for f in plan.files]
        check_hyperparameters(parts[0], [tensor for part in parts for tensor in part.tensors])
    except InvalidModelFile as exc:
        raise InvalidModelFile(f"{plan.name.display} is not a usable model: {exc.message}") from exc
    return ModelSummary.from_parts(parts)
