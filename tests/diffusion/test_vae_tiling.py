"""Tiled VAE decoding: exact with one tile, close to untiled with several, and without visible seams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localllm.diffusion.convert import convert_model
from localllm.diffusion.engine import Engine
from localllm.diffusion.layout import StreamGraph
from localllm.diffusion.vae import decode_tiled, tile_starts

LATENT, TILE = 24, 8


@pytest.fixture(scope="module")
def decoders(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("vae")
    src = tiny_sd / "vae_decoder" / "model.onnx"
    full = convert_model(src, root / "full", {"latent_sample": (1, 4, LATENT, LATENT)})
    tile = convert_model(src, root / "tile", {"latent_sample": (1, 4, TILE, TILE)})
    with Engine(StreamGraph.load(full), "ram") as whole, Engine(StreamGraph.load(tile), "ram") as part:
        yield (lambda z: whole.run({"latent_sample": z})["sample"],
               lambda z: part.run({"latent_sample": z})["sample"])


def smooth_latent(seed: int = 0) -> np.ndarray:
    """A low-frequency latent, like a real image's: content that runs across tile borders."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)
    return np.repeat(np.repeat(coarse, LATENT // 4, axis=2), LATENT // 4, axis=3) * 0.5


def test_tile_positions() -> None:
    assert tile_starts(128, 32, 8) == [0, 24, 48, 72, 96]  # SDXL 1024²: 5 × 5 tiles of 32, stride 24
    assert tile_starts(64, 32, 8) == [0, 24, 32]  # SD 1.5 512²: 3 × 3, the last clamped
    assert tile_starts(16, 32, 8) == [0]


def test_one_tile_equals_untiled(decoders) -> None:
    whole, _ = decoders
    z = smooth_latent()
    np.testing.assert_array_equal(decode_tiled(whole, z, tile=LATENT), whole(z))


def seam_score(image: np.ndarray, seams: list[int]) -> float:
    """How much bigger the jump between neighbouring pixel columns is at tile borders than elsewhere."""
    jumps = np.abs(np.diff(image, axis=-1)).mean(axis=(0, 1, 2))  # per column boundary
    at = np.array([jumps[s - 1] for s in seams])
    return float(at.mean() / np.median(jumps))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiled_close_to_untiled_without_seams(decoders, seed: int) -> None:
    whole, part = decoders
    z = smooth_latent(seed)
    reference = whole(z)
    blended = decode_tiled(part, z, tile=TILE, overlap=TILE // 4)
    pasted = decode_tiled(part, z, tile=TILE, overlap=TILE // 4, blend=False)
    assert blended.shape == reference.shape == (1, 3, LATENT * 8, LATENT * 8)
    # where a pasted tile begins, its border pixels (decoded without their neighbours) meet the last tile's
    seams = [s * 8 for s in tile_starts(LATENT, TILE, TILE // 4)[1:]]
    assert seam_score(reference, seams) < 1.5
    assert seam_score(pasted, seams) > 2.0  # the measure sees seams...
    assert seam_score(blended, seams) < 1.5  # ...and blending leaves none
    assert np.abs(blended - reference).mean() < np.abs(pasted - reference).mean()
