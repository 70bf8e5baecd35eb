"""Tiny Stable Diffusion pipelines for the image engine's tests, built once per session.

The diffusers ONNX folder is built from ``tiny_sd.py`` with the CPU torch wheel and cached in
pytest's cache directory under a hash of the builder's sources, so a later session reuses it; the
conversions into the streaming layout are made fresh in each session's temporary folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUILDER_SOURCES = [HERE / "tiny_sd.py", ROOT / "localllm" / "diffusion" / "export.py"]


@pytest.fixture(scope="session")
def tiny_models(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``sd/``, ``sdxl/``, ``sd-opset17/``: diffusers ONNX folders of tiny pipelines, built once per builder version
    (kept in pytest's cache between runs; in a temporary folder when the cache is switched off)."""
    return build_tiny_models(pytestconfig, tmp_path_factory)


def build_tiny_models(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of ``tiny_models`` (also for the daemon's image tests, outside this folder)."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in BUILDER_SOURCES)).hexdigest()[:16]
    if digest in _BUILT:  # once per session, whichever fixture asks first
        return _BUILT[digest]
    cache = getattr(pytestconfig, "cache", None)
    folder = cache.mkdir(f"tiny-sd-{digest}") if cache else tmp_path_factory.mktemp(f"tiny-sd-{digest}")
    # parallel test workers share pytest's cache: one builds, the others wait for it
    with (folder.parent / f"tiny-sd-{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build_once(folder)
    _BUILT[digest] = folder
    return folder


def _build_once(folder: Path) -> None:
    done = folder / "built"
    if not done.exists():
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        # a child process: torch and diffusers stay out of the test process's memory
        subprocess.run([sys.executable, str(HERE / "tiny_sd.py"), str(staging)], check=True, cwd=ROOT,
                       capture_output=True)
        shutil.rmtree(folder)
        staging.rename(folder)
        (folder / "built").touch()


_BUILT: dict[str, Path] = {}


@pytest.fixture(scope="session")
def tiny_sd(tiny_models: Path) -> Path:
    """Tiny SD 1.5-shaped pipeline: CLIP text encoder, UNet, VAE decoder, BPE vocabulary."""
    return tiny_models / "sd"


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_models: Path) -> Path:
    """Tiny SDXL-shaped pipeline: two text encoders, a UNet with text_embeds and time_ids."""
    return tiny_models / "sdxl"


@pytest.fixture(scope="session")
def converted(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory):
    """converted(precision, **options) → a streaming-layout pipeline folder, each made once per session."""
    from localllm.diffusion.convert import convert_pipeline

    made: dict[tuple, Path] = {}

    def get(precision: str = "fp32", **options: object) -> Path:
        key = (precision, *sorted(options.items()))
        if key not in made:
            out = tmp_path_factory.mktemp(f"sd-{precision}")
            made[key] = convert_pipeline(tiny_sd, out, precision, height=64, width=64, **options)
        return made[key]

    return get


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
