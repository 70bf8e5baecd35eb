"""Downloading one Hub file into the blob store, resumable and verified.

The bytes travel through ``huggingface_hub``'s own ``http_get`` (its retries
resume a dropped connection with a ``Range`` request), into
``blobs/sha256-<hex>-partial``, a file named after the digest the Hub
announced. A later pull, even after the process was killed, continues from
the bytes already there. The sha256 is computed while the bytes are written
(``huggingface_hub`` itself checks only the size), so verification costs no
second read; a mismatch deletes the bytes.

Concurrent pulls that need the same blob share one :class:`Download`.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx2
from huggingface_hub import file_download
from huggingface_hub.errors import HfHubHTTPError

from ..errors import LocalLLMError, RegistryError, VerificationFailed
from .blobs import BlobStore, storage_error
from .hub import HubSource

log = logging.getLogger(__name__)
READ_CHUNK = 8 * 1024 * 1024


class _HashingWriter:
    """A file wrapper that hashes what is written, for ``http_get``.

    Hashing runs in a thread of its own (``hashlib`` releases the GIL on
    large buffers), so it overlaps with receiving and writing. ``http_get``
    writes chunks and, on a server that ignores ``Range``, seeks back and
    truncates; both keep the hash in step with the file's bytes.
    """

    def __init__(self, handle, on_progress: Callable[[int], None]) -> None:
        self._handle = handle
        self._on_progress = on_progress
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._hasher = hashlib.sha256()
        self._thread: threading.Thread | None = None
        self._rehash(handle.seek(0, os.SEEK_END))

    def _hash_worker(self, hasher: hashlib._Hash) -> None:
        while (chunk := self._queue.get()) is not None:
            hasher.update(chunk)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._hash_worker, args=(self._hasher,), daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _rehash(self, upto: int) -> None:
        """Restart the hash over the first ``upto`` bytes already in the file."""
        self._drain()
        self._hasher = hashlib.sha256()
        self._handle.seek(0)
        remaining = upto
        while remaining > 0:
            block = self._handle.read(min(READ_CHUNK, remaining))
            if not block:
                break
            self._hasher.update(block)
            remaining -= len(block)
        self._handle.seek(upto)
        self._on_progress(upto)
        self._start()

    def write(self, data: bytes) -> int:
        self._queue.put(data)
        written = self._handle.write(data)
        self._on_progress(self._handle.tell())
        return written

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._handle.seek(offset, whence)
        self._handle.truncate(position)
        self._rehash(position)
        return position

    def truncate(self, size: int | None = None) -> int:
        return self._handle.truncate(size)

    def flush(self) -> None:
        self._handle.flush()

    def hexdigest(self) -> str:
        """The sha256 of everything written (waits for the hashing thread)."""
        self._drain()
        return self._hasher.hexdigest()

    def close(self) -> None:
        self._drain()


@dataclass
class Download:
    """One blob being fetched; any number of pulls may wait on it."""

    digest: str
    total: int
    completed: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: LocalLLMError | None = None


class Downloads:
    """Fetches blobs; two requests for the same digest share one transfer."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._lock = threading.Lock()
        self._active: dict[str, Download] = {}

    def fetch(self, digest: str, size: int, source: HubSource) -> Download:
        """Start (or join) the download of ``digest``; returns at once."""
        with self._lock:
            current = self._active.get(digest)
            if current is not None:
                return current
            download = Download(digest=digest, total=size)
            self._active[digest] = download
        thread = threading.Thread(
            target=self._run, args=(download, source), name=f"download-{digest[7:19]}", daemon=True
        )
        thread.start()
        return download

    def _run(self, download: Download, source: HubSource) -> None:
        try:
            self._transfer(download, source)
        except LocalLLMError as exc:
            download.error = exc
        except Exception as exc:  # keep the daemon alive, tell the waiting pulls
            log.exception("download of %s failed", source.filename)
            download.error = RegistryError(f"downloading {source.filename} failed: {exc}")
        finally:
            with self._lock:
                self._active.pop(download.digest, None)
            download.done.set()

    def _transfer(self, download: Download, source: HubSource) -> None:
        blobs = self._blobs
        blobs.ensure()
        partial = blobs.partial_path(download.digest)
        expected_hex = download.digest.split(":", 1)[1]

        def progress(completed: int) -> None:
            download.completed = completed

        try:
            fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise storage_error(exc, f"downloading {source.filename}") from exc
        with os.fdopen(fd, "r+b") as handle, ExitStack() as stack:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RegistryError(
                    f"{source.filename} is being downloaded by another localllm process; try again when it is done"
                ) from None
            try:
                have = handle.seek(0, os.SEEK_END)
                if have > download.total:  # not a prefix of this file: start over
                    handle.truncate(0)
                    have = 0
                writer = _HashingWriter(handle, progress)
                stack.callback(writer.close)
                if have < download.total or download.total == 0:
                    file_download.http_get(
                        source.url,
                        writer,  # type: ignore[arg-type]
                        resume_size=have,
                        headers=source.headers,
                        expected_size=download.total,
                        displayed_filename=source.filename,
                    )
                # No fsync: like Ollama, a blob is as durable as the page cache; a killed
                # process loses nothing, and forcing 250 MB+ to disk costs a tenth of the pull.
                handle.flush()
            except OSError as exc:
                if isinstance(exc, HfHubHTTPError):
                    raise RegistryError(f"the Hub refused {source.filename}: {exc}") from exc
                if "Consistency check failed" in str(exc):
                    raise RegistryError(f"downloading {source.filename} ended early: {exc}") from exc
                raise storage_error(exc, f"downloading {source.filename}") from exc
            except httpx2.HTTPError as exc:
                raise RegistryError(
                    f"downloading {source.filename} failed ({exc}); pull again to resume where it stopped"
                ) from exc

            actual = writer.hexdigest()
            if actual != expected_hex:
                partial.unlink(missing_ok=True)
                raise VerificationFailed(
                    f"sha256 mismatch for {source.filename}: the Hub announced sha256:{expected_hex} "
                    f"but the downloaded bytes hash to sha256:{actual}; the download was deleted"
                )
            blobs.adopt(partial, download.digest)
