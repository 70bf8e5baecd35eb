"""The whole text-to-image pipeline against an independent reference: onnxruntime sessions on the
same ONNX graphs, transformers' CLIPTokenizer and diffusers' schedulers, fed the same noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from localllm.diffusion.pipeline import StableDiffusion, to_uint8

PROMPT = "A photo of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"

# diffusers builds its sigmas from torch tensors with np.array(...): numpy 2 warns about it
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def reference_latents(tiny_sd: Path, prompt: str, negative: str, steps: int, guidance: float, seed: int,
                      monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    import torch
    from diffusers import EulerAncestralDiscreteScheduler
    from diffusers.schedulers import scheduling_euler_ancestral_discrete as module
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(tiny_sd / "tokenizer" / "vocab.json"), str(tiny_sd / "tokenizer" / "merges.txt"))
    text = ort.InferenceSession(str(tiny_sd / "text_encoder" / "model.onnx"), providers=["CPUExecutionProvider"])
    unet = ort.InferenceSession(str(tiny_sd / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])

    def encode(p: str) -> np.ndarray:
        ids = tok(p, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
        return text.run(None, {"input_ids": ids.astype(np.int32)})[0]

    cond, uncond = encode(prompt), encode(negative)
    config = json.loads((tiny_sd / "scheduler" / "scheduler_config.json").read_text())
    sched = EulerAncestralDiscreteScheduler.from_config(config)
    sched.set_timesteps(steps)
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((1, 4, 8, 8), dtype=np.float32) * np.float32(sched.init_noise_sigma)
    monkeypatch.setattr(module, "randn_tensor",
                        lambda shape, **kw: torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32)))
    x = torch.from_numpy(latents)
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t).numpy()
        eps = unet.run(None, {"sample": np.concatenate([xin, xin]), "timestep": np.array([t, t], dtype=np.float32),
                              "encoder_hidden_states": np.concatenate([uncond, cond])})[0]
        guided = eps[:1] + np.float32(guidance) * (eps[1:] - eps[:1])
        x = sched.step(torch.from_numpy(guided), t, x).prev_sample
    return x.numpy()


@pytest.fixture(scope="module")
def reference(tiny_sd: Path) -> np.ndarray:
    with pytest.MonkeyPatch.context() as mp:
        return reference_latents(tiny_sd, PROMPT, NEGATIVE, steps=4, guidance=7.5, seed=42, monkeypatch=mp)


@pytest.mark.parametrize("provider", ["disk", "prefetch", "ram"])
@pytest.mark.parametrize("slicing", [False, True])
def test_pipeline_matches_onnxruntime_reference(converted, reference: np.ndarray, provider: str,
                                                slicing: bool) -> None:
    sd = StableDiffusion(converted("fp32"), provider, attention_slicing=slicing)
    steps: list[tuple[int, int]] = []
    latents = sd.latents(PROMPT, NEGATIVE, steps=4, guidance_scale=7.5, seed=42,
                         progress=lambda i, n: steps.append((i, n)))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert np.abs(latents - reference).max() <= 1e-4 * max(1.0, float(np.abs(reference).max()))
    assert set(sd.peak_bytes) == {"text_encoder", "unet"}


def test_image_reproducible_from_seed(converted) -> None:
    sd = StableDiffusion(converted("fp16"), "ram")
    a = sd.generate(PROMPT, steps=2, seed=7)
    b = sd.generate(PROMPT, steps=2, seed=7)
    c = sd.generate(PROMPT, steps=2, seed=8)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1


def test_image_is_decoded_latents(tiny_sd: Path, converted) -> None:
    sd = StableDiffusion(converted("fp32"), "disk")
    latents = sd.latents(PROMPT, steps=2, seed=3)
    vae = ort.InferenceSession(str(tiny_sd / "vae_decoder" / "model.onnx"), providers=["CPUExecutionProvider"])
    want = vae.run(None, {"latent_sample": latents / np.float32(0.18215)})[0]
    got = sd.decode(latents)
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(to_uint8(got).astype(int) - to_uint8(want).astype(int)).max() <= 1


@pytest.mark.parametrize("batch", [1, 2])
def test_turbo_single_step_without_guidance(tiny_sd: Path, converted, batch: int) -> None:
    """Guidance off (Turbo, 1 step): the UNet sees the prompt only, whatever batch it was converted for."""
    sd = StableDiffusion(converted("fp32", unet_batch=batch), "disk")
    sd.scheduler_config = {**sd.scheduler_config, "timestep_spacing": "trailing"}
    latents = sd.latents(PROMPT, steps=1, guidance_scale=0.0, seed=5, scheduler="euler")
    # by hand: one Euler step from sigma_max to 0 is x0 = x - sigma * eps
    rng = np.random.default_rng(5)
    from localllm.diffusion.schedulers import make_scheduler

    sched = make_scheduler(sd.scheduler_config, "euler", 1)
    assert list(sched.timesteps) == [999.0]
    x = rng.standard_normal((1, 4, 8, 8), dtype=np.float32) * np.float32(sched.init_noise_sigma)
    cond, _ = sd.encode(PROMPT)
    unet = ort.InferenceSession(str(tiny_sd / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    eps = unet.run(None, {"sample": sched.scale_model_input(x, 0), "timestep": np.array([999.0], np.float32),
                          "encoder_hidden_states": cond})[0]
    assert np.abs(latents - (x - sched.sigmas[0] * eps)).max() <= 1e-3


def test_convert_command_line(tiny_sd: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "localllm.diffusion.convert", str(tiny_sd), str(tmp_path / "sd"),
                          "--precision", "uint8", "--size", "64x64", "--vae-tile", "4"],
                         capture_output=True, text=True, check=True)
    assert "unet: 1/1" in out.stdout
    sd = StableDiffusion(tmp_path / "sd", "disk")
    image = sd.generate(PROMPT, steps=1, seed=0)  # VAE in 3 x 3 tiles of 4 x 4 latents
    assert image.shape == (64, 64, 3)
    assert json.loads((tmp_path / "sd" / "unet" / "graph.json").read_text())["meta"]["precision"] == "uint8"


def test_uint8_skips_in_pipeline(converted) -> None:
    exact = StableDiffusion(converted("fp32"), "ram").latents(PROMPT, steps=2, seed=4)
    sd = StableDiffusion(converted("fp32"), "ram", uint8_skips=4)
    approx = sd.latents(PROMPT, steps=2, seed=4)
    err = np.abs(approx - exact).max() / np.abs(exact).max()
    assert 0 < err < 0.05
