"""The one Hugging Face Hub client of the store: list a repository's files, learn a file's sha256, say
where its bytes are (with the headers a request needs), and turn the Hub client's exceptions into ours.

Every pull, whatever kind of model it brings, talks to the Hub through :class:`HubClient`; nothing else
builds Hub headers or catches ``huggingface_hub``'s errors.
"""

from __future__ import annotations

import logging
import re
import socket
from dataclasses import dataclass
from typing import BinaryIO
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
from huggingface_hub.file_download import http_get
from huggingface_hub.hf_api import RepoFile as HubRepoFile
from huggingface_hub.utils import build_hf_headers

from .. import __version__
from ..config import Settings
from ..errors import LocalLLMError, RegistryError, RemoteNotFound
from .choose import RepoFile

log = logging.getLogger(__name__)
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass
class Repo:
    """A repository being pulled from; ``revision`` is pinned to a commit by the first file fetched, so
    every later file comes from the same commit."""

    id: str
    revision: str = "main"


@dataclass(frozen=True)
class HubSource:
    """Where one file's bytes are, and the headers that fetch them."""

    url: str
    headers: dict[str, str]
    filename: str


class HubClient:
    def __init__(self, settings: Settings) -> None:
        self.endpoint = settings.hf_endpoint
        self.token: str | bool = settings.hf_token or False

    # --- listing ---------------------------------------------------------------------------------
    def list_files(self, repo_id: str) -> list[RepoFile]:
        """Every file of the repository, with its size and, for LFS files, its sha256."""
        self._check_reachable()
        with hub_errors(repo_id, self.endpoint):
            try:
                return self._list_tree(repo_id)
            except (RepositoryNotFoundError, RevisionNotFoundError):
                raise
            except HfHubHTTPError:
                # a Hub (or mirror) without the tree API: the repo info lists files too
                log.info("tree listing of %s failed; using the repo info instead", repo_id)
                return self._list_siblings(repo_id)

    def with_sha256(self, repo_id: str, file: RepoFile) -> RepoFile:
        """A listing without LFS details: ask the file's HEAD, whose ETag is the sha256 for LFS files."""
        if file.sha256 is not None:
            return file
        url = hf_hub_url(repo_id, file.path, endpoint=self.endpoint)
        with hub_errors(repo_id, self.endpoint, file.path):
            meta = get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint)
        etag = (meta.etag or "").lower()
        return RepoFile(path=file.path, size=meta.size if meta.size is not None else file.size,
                        sha256=etag if SHA256_HEX.fullmatch(etag) else None)

    # --- fetching --------------------------------------------------------------------------------
    def locate(self, repo: Repo, path: str, filename: str) -> HubSource:
        """Where ``path`` of ``repo`` is (the Hub may redirect to a CDN); pins ``repo.revision``."""
        url = hf_hub_url(repo.id, path, revision=repo.revision, endpoint=self.endpoint)
        with hub_errors(repo.id, self.endpoint, path):
            meta = get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint)
        if meta.commit_hash and repo.revision == "main":
            repo.revision = meta.commit_hash
        location = meta.location or url
        return HubSource(url=location, headers=self.headers(location), filename=filename)

    def download(self, repo: Repo, path: str, size: int, into: BinaryIO) -> None:
        """The bytes of a small file the Hub gives no sha256 for (git files), written to ``into``; the
        caller hashes what arrived."""
        url = hf_hub_url(repo.id, path, revision=repo.revision, endpoint=self.endpoint)
        with hub_errors(repo.id, self.endpoint, path):
            http_get(url, into, headers=self.headers(url), expected_size=size or None, displayed_filename=path)

    def headers(self, url: str) -> dict[str, str]:
        """The headers of a request for ``url``: the token only for the Hub itself, never for another host
        (a CDN's signed URL needs none), and no compression (sizes and resumes count raw bytes)."""
        headers = build_hf_headers(token=self.token, library_name="localllm", library_version=__version__)
        headers["Accept-Encoding"] = "identity"
        if urlsplit(url).netloc != urlsplit(self.endpoint).netloc:
            headers.pop("authorization", None)
            headers.pop("Authorization", None)
        return headers

    # --- inside ----------------------------------------------------------------------------------
    def _api(self) -> HfApi:
        return HfApi(endpoint=self.endpoint, token=self.token, library_name="localllm", library_version=__version__)

    def _check_reachable(self) -> None:
        """Fail at once when nothing answers at the Hub's address.

        The Hub client retries a refused connection with back-off for about 25 s,
        which is right for a flaky network and wrong for a machine that is offline."""
        parts = urlsplit(self.endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname or "", port), timeout=10).close()
        except OSError as exc:
            raise RegistryError(f"cannot reach the Hub at {self.endpoint}: {exc.strerror or exc}") from exc

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
            found.append(RepoFile(path=entry.path, size=int(lfs.size if lfs else entry.size),
                                  sha256=(lfs.sha256.lower() if lfs else None)))
        return found


class hub_errors:
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
