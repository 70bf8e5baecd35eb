"""Content-addressed blob files: ``blobs/sha256-<hex>``.

A digest is checked against :data:`DIGEST_PATTERN` before it becomes a path,
and a blob only ever appears under its name by an atomic rename after its bytes
were hashed, so a reader never sees a half-written or mislabelled blob.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from ..errors import DigestMismatch, InvalidDigest, StorageError

DIGEST_PATTERN = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_BLOB_FILE = re.compile(r"sha256-[0-9a-f]{64}")
CHUNK = 4 * 1024 * 1024


def parse_digest(value: str) -> str:
    """Return the canonical ``sha256:<lowercase hex>`` or raise :class:`InvalidDigest`."""
    match = DIGEST_PATTERN.fullmatch(value or "") if isinstance(value, str) else None
    if not match:
        raise InvalidDigest(f"invalid digest {value!r}: expected 'sha256:' followed by 64 hex digits")
    return f"sha256:{match.group(1).lower()}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def storage_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"no space left on device while {what}")
    return StorageError(f"cannot write to the model store while {what}: {exc.strerror or exc}")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / parse_digest(digest).replace(":", "-")

    def partial_path(self, digest: str) -> Path:
        """Where an unfinished download of ``digest`` lives, so a later pull resumes it."""
        return self.root / (parse_digest(digest).replace(":", "-") + "-partial")

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def temp_path(self) -> Path:
        self.ensure()
        return self.root / f".tmp-{uuid.uuid4().hex}"

    def digests(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [
            "sha256:" + entry.name[len("sha256-"):]
            for entry in self.root.iterdir()
            if _BLOB_FILE.fullmatch(entry.name)
        ]

    def remove_stale_temps(self, older_than: float = 3600.0) -> int:
        """Delete temp files that a killed process left (never a partial download: those resume)."""
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than
        removed = 0
        for entry in self.root.glob(".tmp-*"):
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except OSError:
                continue
        return removed

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def adopt(self, source: Path, digest: str) -> Path:
        """Move an already verified file into place under ``digest`` (same file system: a rename)."""
        target = self.path(digest)
        self.ensure()
        try:
            os.replace(source, target)
        except OSError as exc:
            raise storage_error(exc, f"storing blob {digest}") from exc
        return target

    def writer(self) -> BlobWriter:
        """A new blob being written; hash, then :meth:`BlobWriter.commit` or :meth:`BlobWriter.abort`."""
        return BlobWriter(self)

    def write_chunks(self, chunks: Iterable[bytes], expected: str | None = None) -> tuple[str, int]:
        """Hash and store a stream of bytes; check it against ``expected`` if given.

        Returns ``(digest, size)``. Nothing is left behind when the bytes do not
        match, the stream fails or the disk fills up.
        """
        writer = self.writer()
        try:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit(expected)
        finally:
            writer.abort()

    def write_bytes(self, data: bytes) -> tuple[str, int]:
        return self.write_chunks([data])

    def read_text(self, digest: str, limit: int = 16 * 1024 * 1024) -> str:
        path = self.path(digest)
        with path.open("rb") as handle:
            return handle.read(limit).decode("utf-8", errors="replace")


class BlobWriter:
    """Bytes on their way into the store: in a temp file until their digest is known."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._tmp = blobs.temp_path()
        self._hasher = hashlib.sha256()
        self.size = 0
        try:
            self._handle = self._tmp.open("wb")
        except OSError as exc:
            raise storage_error(exc, "writing a blob") from exc

    def write(self, chunk: bytes) -> None:
        self._hasher.update(chunk)
        try:
            self._handle.write(chunk)
        except OSError as exc:
            self.abort()
            raise storage_error(exc, "writing a blob") from exc
        self.size += len(chunk)

    def commit(self, expected: str | None = None) -> tuple[str, int]:
        """Check the digest and move the bytes into place; returns ``(digest, size)``."""
        if expected is not None:
            expected = parse_digest(expected)
        try:
            try:
                self._handle.close()
            except OSError as exc:
                raise storage_error(exc, "writing a blob") from exc
            digest = f"sha256:{self._hasher.hexdigest()}"
            if expected is not None and digest != expected:
                raise DigestMismatch(f"digest mismatch: the content hashes to {digest}, not {expected}")
            if not self._blobs.exists(digest):
                self._blobs.adopt(self._tmp, digest)
            return digest, self.size
        finally:
            self.abort()

    def abort(self) -> None:
        self._handle.close()
        self._tmp.unlink(missing_ok=True)
