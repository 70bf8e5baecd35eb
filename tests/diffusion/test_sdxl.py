"""SDXL's shape: two text encoders, pooled embedding and time ids, against onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from localllm.diffusion.convert import convert_pipeline
from localllm.diffusion.engine import Engine
from localllm.diffusion.layout import StreamGraph
from localllm.diffusion.pipeline import StableDiffusion

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
PROMPT = "a castle in the mountains with snow and trees"


@pytest.fixture(scope="module")
def converted_xl(tiny_sdxl: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_pipeline(tiny_sdxl, tmp_path_factory.mktemp("sdxl"), "fp32", 64, 64, unet_batch=2)


@pytest.mark.parametrize("component", ["text_encoder", "text_encoder_2", "unet"])
def test_components_match_onnxruntime(tiny_sdxl: Path, converted_xl: Path, component: str,
                                      rng: np.random.Generator) -> None:
    graph = StreamGraph.load(converted_xl / component)
    x = {k: (rng.integers(0, 600, v.shape) if k == "input_ids" else rng.standard_normal(v.shape)).astype(v.dtype)
         for k, v in graph.inputs.items()}
    session = ort.InferenceSession(str(tiny_sdxl / component / "model.onnx"), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, x), strict=True))
    with Engine(graph, "prefetch") as engine:
        got = engine.run(x)
    for name in want:
        assert np.abs(got[name] - want[name]).max() <= 1e-4, name


def test_pipeline_matches_onnxruntime_reference(tiny_sdxl: Path, converted_xl: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusers' SDXL recipe: penultimate states of both encoders concatenated, the second's projected
    pooled output, time ids (h, w, 0, 0, h, w), zeros for an empty negative prompt."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler
    from diffusers.schedulers import scheduling_euler_ancestral_discrete as module
    from transformers import CLIPTokenizer

    def session(name: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(tiny_sdxl / name / "model.onnx"), providers=["CPUExecutionProvider"])

    states, pooled = [], None
    for enc, tok_dir, pad in (("text_encoder", "tokenizer", None), ("text_encoder_2", "tokenizer_2", "!")):
        tok = CLIPTokenizer(str(tiny_sdxl / tok_dir / "vocab.json"), str(tiny_sdxl / tok_dir / "merges.txt"),
                            **({"pad_token": pad} if pad else {}))
        ids = tok(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
        s = session(enc)
        out = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"input_ids": ids.astype(np.int32)}),
                       strict=True))
        states.append(out["hidden_states.1"])  # two layers: index 1 is the penultimate
        pooled = out.get("text_embeds", pooled)
    cond = np.concatenate(states, axis=-1)
    config = json.loads((tiny_sdxl / "scheduler" / "scheduler_config.json").read_text())
    sched = EulerAncestralDiscreteScheduler.from_config(config)
    sched.set_timesteps(3)
    rng = np.random.default_rng(9)
    x = torch.from_numpy(rng.standard_normal((1, 4, 8, 8), dtype=np.float32) * np.float32(sched.init_noise_sigma))
    monkeypatch.setattr(module, "randn_tensor",
                        lambda shape, **kw: torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32)))
    unet = session("unet")
    time_ids = np.array([[64, 64, 0, 0, 64, 64]] * 2, dtype=np.float32)
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t).numpy()
        eps = unet.run(None, {"sample": np.concatenate([xin, xin]), "timestep": np.array([t, t], np.float32),
                              "encoder_hidden_states": np.concatenate([np.zeros_like(cond), cond]),
                              "text_embeds": np.concatenate([np.zeros_like(pooled), pooled]),
                              "time_ids": time_ids})[0]
        x = sched.step(torch.from_numpy(eps[:1] + np.float32(5.0) * (eps[1:] - eps[:1])), t, x).prev_sample
    sd = StableDiffusion(converted_xl, "prefetch")
    assert sd.sdxl and sd.tokenizers[1].pad == 0
    got = sd.latents(PROMPT, "", steps=3, guidance_scale=5.0, seed=9)
    assert np.abs(got - x.numpy()).max() <= 1e-4 * max(1.0, float(np.abs(x.numpy()).max()))
    assert sd.generate(PROMPT, steps=1, seed=1).shape == (64, 64, 3)
