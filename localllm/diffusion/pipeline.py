"""Text to image over converted components: tokenizer → text encoder(s) → UNet loop → VAE decoder.

Classifier-free guidance with a negative prompt (``guidance_scale`` ≤ 1 turns it off, as Turbo
models want), the four schedulers of ``schedulers.py``, a seed that fixes the image, and a
progress callback per step. Each component's engine exists only while it is needed, so the process
holds one model's working set at a time; the UNet's batch (1: two runs per step for guidance; 2:
one) is the one it was converted for. SDXL: both encoders' penultimate states concatenated, the
pooled embedding of the second, and ``time_ids``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from localllm.diffusion.engine import Engine
from localllm.diffusion.layout import StreamGraph
from localllm.diffusion.schedulers import make_scheduler
from localllm.diffusion.tokenizer import ClipTokenizer
from localllm.diffusion.vae import decode_tiled
from localllm.diffusion.weights import WeightsProvider, make_provider
from localllm.errors import InvalidModelFile

Progress = Callable[[int, int], None]
ProviderFactory = Callable[[StreamGraph], WeightsProvider]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) decoder output in [-1, 1] → (H, W, 3) uint8."""
    x = np.clip(image[0] / 2 + 0.5, 0.0, 1.0).transpose(1, 2, 0)
    return (x * 255).round().astype(np.uint8)


def save_png(pixels: np.ndarray, path: Path | str) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path)


class StableDiffusion:
    def __init__(self, folder: Path | str, provider: str | ProviderFactory = "prefetch", *,
                 attention_slicing: bool = True, uint8_skips: int = 0) -> None:
        self.folder = Path(folder)
        info_path = self.folder / "pipeline.json"
        if not info_path.exists():
            raise InvalidModelFile(f"{self.folder} has no pipeline.json: convert the model first")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        self.sdxl = bool(self.info.get("sdxl"))
        self.provider = provider
        self.attention_slicing = attention_slicing
        self.uint8_skips = uint8_skips
        self.tokenizers = [ClipTokenizer(self.folder / "tokenizer")]
        if self.sdxl:
            self.tokenizers.append(ClipTokenizer(self.folder / "tokenizer_2"))
        self.scheduler_config = json.loads((self.folder / "scheduler" / "scheduler_config.json").read_text())
        self.vae_scale = float(self.info.get("vae_scaling_factor") or (0.13025 if self.sdxl else 0.18215))
        self.peak_bytes: dict[str, int] = {}

    def engine(self, name: str) -> Engine:
        graph = StreamGraph.load(self.folder / name)
        provider = make_provider(self.provider, graph) if isinstance(self.provider, str) else self.provider(graph)
        return Engine(graph, provider, attention_slicing=self.attention_slicing,
                      uint8_intermediates=self.uint8_skips if name == "unet" else ())

    def encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray | None]:
        """(1, 77, D) text states for the UNet, and SDXL's pooled embedding."""
        states, pooled = [], None
        for i, name in enumerate(["text_encoder", "text_encoder_2"][: len(self.tokenizers)]):
            with self.engine(name) as engine:
                out = engine.run({"input_ids": self.tokenizers[i](prompt)})
                self._peak(name, engine)
            hidden = sorted((k for k in out if k.startswith("hidden_states.")), key=lambda k: int(k.split(".")[1]))
            states.append(out[hidden[-2]] if self.sdxl and len(hidden) >= 2 else out["last_hidden_state"])
            if "text_embeds" in out:
                pooled = out["text_embeds"]
        return np.concatenate(states, axis=-1), pooled

    def _peak(self, name: str, engine: Engine) -> None:
        self.peak_bytes[name] = max(self.peak_bytes.get(name, 0), engine.stats.peak_bytes)

    def generate(self, prompt: str, negative_prompt: str = "", steps: int = 20, guidance_scale: float = 7.5,
                 seed: int | None = None, scheduler: str = "euler_a", progress: Progress | None = None) -> np.ndarray:
        """The image as (H, W, 3) uint8."""
        latents = self.latents(prompt, negative_prompt, steps, guidance_scale, seed, scheduler, progress)
        return to_uint8(self.decode(latents))

    def latents(self, prompt: str, negative_prompt: str = "", steps: int = 20, guidance_scale: float = 7.5,
                seed: int | None = None, scheduler: str = "euler_a", progress: Progress | None = None) -> np.ndarray:
        guided = guidance_scale > 1.0
        cond, pooled = self.encode(prompt)
        if guided:
            if self.sdxl and not negative_prompt:
                uncond, uncond_pooled = np.zeros_like(cond), None if pooled is None else np.zeros_like(pooled)
            else:
                uncond, uncond_pooled = self.encode(negative_prompt)
        sched = make_scheduler(self.scheduler_config, scheduler, steps)
        rng = np.random.default_rng(seed)
        h, w = self.info["height"] // 8, self.info["width"] // 8
        x = rng.standard_normal((1, 4, h, w), dtype=np.float32) * np.float32(sched.init_noise_sigma)
        with self.engine("unet") as unet:
            batch = unet.graph.inputs["sample"].shape[0]
            t_info = unet.graph.inputs["timestep"]

            def run(sample: np.ndarray, text: np.ndarray, pool: np.ndarray | None, t: float) -> np.ndarray:
                n = sample.shape[0]
                feeds = {"sample": sample, "encoder_hidden_states": text,
                         "timestep": np.full(t_info.shape or (), t, dtype=t_info.dtype) if t_info.shape
                         else np.array(t, dtype=t_info.dtype)}
                if "text_embeds" in unet.graph.inputs:
                    feeds["text_embeds"] = pool
                    ids = [self.info["height"], self.info["width"], 0, 0, self.info["height"], self.info["width"]]
                    feeds["time_ids"] = np.tile(np.array(ids, dtype=np.float32), (n, 1))
                out = unet.run(feeds)["out_sample"]
                self._peak("unet", unet)
                return out

            for i, t in enumerate(sched.timesteps):
                xin = sched.scale_model_input(x, i)
                if guided and batch == 2:
                    pools = None if pooled is None else np.concatenate([uncond_pooled, pooled])
                    eps_u, eps_c = np.split(run(np.concatenate([xin, xin]), np.concatenate([uncond, cond]),
                                                pools, float(t)), 2)
                elif guided:
                    eps_u = run(xin, uncond, uncond_pooled, float(t))
                    eps_c = run(xin, cond, pooled, float(t))
                else:
                    reps = (batch, 1, 1, 1)  # a batch-2 UNet without guidance: the same input twice
                    pools = None if pooled is None else np.tile(pooled, (batch, 1))
                    eps_c = run(np.tile(xin, reps), np.tile(cond, reps[:3]), pools, float(t))[:1]
                eps = eps_u + np.float32(guidance_scale) * (eps_c - eps_u) if guided else eps_c
                x = sched.step(eps, i, x, rng)
                if progress:
                    progress(i + 1, len(sched.timesteps))
        return x

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """(1, 4, h, w) latents → (1, 3, 8h, 8w) pixels in [-1, 1], tiled when the decoder was converted smaller."""
        z = (latents / np.float32(self.vae_scale)).astype(np.float32)
        with self.engine("vae_decoder") as vae:
            tile = vae.graph.inputs["latent_sample"].shape[-1]

            def one(t: np.ndarray) -> np.ndarray:
                out = vae.run({"latent_sample": t})["sample"]
                self._peak("vae_decoder", vae)
                return out

            if tile >= max(z.shape[-2:]):
                return one(z)
            return decode_tiled(one, z, tile)
