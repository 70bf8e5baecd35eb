"""Tiled VAE decoding: overlapping latent tiles decoded one at a time and blended linearly.

Tiles are ``tile`` latents square with stride ``tile - overlap`` (the last one clamped to
``size - tile``) and painted in raster order; each ramps from the image already painted to itself
across its overlap with the tile above and the tile to the left (``f = min(y/oy, 1) · min(x/ox, 1)``).
A single tile covering the whole latent is exactly the untiled decode.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def decode_tiled(decode: Callable[[np.ndarray], np.ndarray], latent: np.ndarray, tile: int,
                 overlap: int | None = None, blend: bool = True) -> np.ndarray:
    """``decode`` maps a (1, C, t, t) latent tile to (1, 3, t·f, t·f) pixels; returns the whole image."""
    _, _, h, w = latent.shape
    overlap = tile // 4 if overlap is None else overlap
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out: np.ndarray | None = None
    factor = 0
    for iy, ty in enumerate(ys):
        for ix, tx in enumerate(xs):
            th, tw = min(tile, h), min(tile, w)
            pixels = decode(np.ascontiguousarray(latent[:, :, ty:ty + th, tx:tx + tw]))
            if out is None:
                factor = pixels.shape[-1] // tw
                out = np.zeros((latent.shape[0], pixels.shape[1], h * factor, w * factor), dtype=np.float32)
            py, px = ty * factor, tx * factor
            fy = np.ones(pixels.shape[-2], dtype=np.float32)
            fx = np.ones(pixels.shape[-1], dtype=np.float32)
            if blend and iy > 0:
                oy = (ys[iy - 1] + th - ty) * factor
                fy = np.minimum(np.arange(pixels.shape[-2], dtype=np.float32) / oy, 1.0)
            if blend and ix > 0:
                ox = (xs[ix - 1] + tw - tx) * factor
                fx = np.minimum(np.arange(pixels.shape[-1], dtype=np.float32) / ox, 1.0)
            f = fy[:, None] * fx[None, :]
            region = out[:, :, py:py + pixels.shape[-2], px:px + pixels.shape[-1]]
            region *= 1.0 - f
            region += pixels * f
    assert out is not None
    return out
