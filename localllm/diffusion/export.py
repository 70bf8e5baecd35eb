"""Build Stable Diffusion components with random weights and export them in diffusers' ONNX layout.

For tests and benchmarks: it needs ``torch``, ``diffusers`` and ``transformers`` (the ``test`` extra),
which the engine itself never imports. The export mirrors diffusers'
``convert_stable_diffusion_checkpoint_to_onnx.py``: the legacy TorchScript exporter
(``dynamo=False``), dynamic batch/height/width axes, int32 ``input_ids``, a float ``timestep``,
the VAE decoder's ``decode`` (with ``post_quant_conv``), and one external ``weights.pb`` for a
UNet over 2 GB.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# SD 1.5's shapes (diffusers' runwayml/stable-diffusion-v1-5 configs)
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
}
SD15_VAE: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}
SD15_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}
SD15_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def _export(module: Any, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic_axes: Mapping[str, Mapping[int, str]], opset: int) -> None:
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / "tmp"
    tmp.mkdir(exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(module, args, str(tmp / "model.onnx"), input_names=inputs, output_names=outputs,
                          dynamic_axes=dict(dynamic_axes), opset_version=opset, do_constant_folding=True,
                          dynamo=False)
    model = onnx.load(str(tmp / "model.onnx"))
    if sum(t.ByteSize() for t in model.graph.initializer) > 2**30:  # protobuf's 2 GB limit, with room
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="weights.pb", convert_attribute=False)
    else:
        onnx.save_model(model, str(path))
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()


def export_text_encoder(config: Mapping[str, Any], out: Path, seed: int = 0, opset: int = 14,
                        sdxl: str | None = None) -> None:
    """CLIP's text encoder; ``sdxl="first"|"second"`` exports SDXL's (all hidden states; the second
    with its projection, ``text_embeds``), as optimum names their outputs."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(**config)
    ids = torch.zeros((1, 77), dtype=torch.int32)
    if sdxl is None:
        model = CLIPTextModel(cfg).eval()
        _export(model, (ids,), out / "model.onnx", ["input_ids"], ["last_hidden_state", "pooler_output"],
                {"input_ids": {0: "batch", 1: "sequence"}}, opset)
        return
    base = (CLIPTextModelWithProjection if sdxl == "second" else CLIPTextModel)(cfg).eval()
    first = "text_embeds" if sdxl == "second" else "pooler_output"

    class AllStates(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any) -> Any:
            out = self.inner(input_ids, output_hidden_states=True)
            pooled = out.text_embeds if sdxl == "second" else out.pooler_output
            return (out.last_hidden_state, pooled, *out.hidden_states)

    names = ["last_hidden_state", first] + [f"hidden_states.{i}" for i in range(cfg.num_hidden_layers + 1)]
    _export(AllStates(base), (ids,), out / "model.onnx", ["input_ids"], names,
            {"input_ids": {0: "batch", 1: "sequence"}}, opset)


def export_unet(config: Mapping[str, Any], out: Path, seed: int = 0, opset: int = 14,
                latent: int = 8, text_len: int = 77) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    model = UNet2DConditionModel(**config).eval()
    _randomize_zero_init(model, seed)
    c = model.config
    sample = torch.randn(2, c.in_channels, latent, latent)
    timestep = torch.tensor([1.0, 1.0])
    text = torch.randn(2, text_len, c.cross_attention_dim)
    axes = {"sample": {0: "batch", 1: "channels", 2: "height", 3: "width"}, "timestep": {0: "batch"},
            "encoder_hidden_states": {0: "batch", 1: "sequence"}}

    class Wrapped(torch.nn.Module):
        def __init__(self, unet: Any) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample: Any, timestep: Any, encoder_hidden_states: Any, text_embeds: Any = None,
                    time_ids: Any = None) -> Any:
            extra = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
            return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=extra, return_dict=False)[0]

    if c.addition_embed_type == "text_time":  # SDXL: pooled text embedding and size/crop conditioning
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        size = 8.0 * latent
        extra = (torch.randn(2, pooled), torch.tensor([[size, size, 0, 0, size, size]] * 2))
        _export(Wrapped(model), (sample, timestep, text, *extra), out / "model.onnx",
                ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"], ["out_sample"],
                {**axes, "text_embeds": {0: "batch"}, "time_ids": {0: "batch"}}, opset)
        return
    _export(Wrapped(model), (sample, timestep, text), out / "model.onnx",
            ["sample", "timestep", "encoder_hidden_states"], ["out_sample"], axes, opset)


def export_vae_decoder(config: Mapping[str, Any], out: Path, seed: int = 0, opset: int = 14, latent: int = 8) -> None:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**config).eval()
    _randomize_zero_init(vae, seed)

    class Decoder(torch.nn.Module):
        def __init__(self, vae: Any) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample: Any) -> Any:
            return self.vae.decode(latent_sample, return_dict=False)[0]

    z = torch.randn(1, vae.config.latent_channels, latent, latent)
    _export(Decoder(vae), (z,), out / "model.onnx", ["latent_sample"], ["sample"],
            {"latent_sample": {0: "batch", 1: "channels", 2: "height", 3: "width"}}, opset)


def _randomize_zero_init(model: Any, seed: int) -> None:
    """diffusers zero-initializes some output projections; random values make every path count in a test."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def write_layout(root: Path, scheduler: Mapping[str, Any], tokenizer_files: Mapping[str, bytes]) -> None:
    """The non-ONNX parts of diffusers' ONNX layout: model_index.json, scheduler and tokenizer folders."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "OnnxStableDiffusionPipeline",
        "text_encoder": ["diffusers", "OnnxRuntimeModel"],
        "unet": ["diffusers", "OnnxRuntimeModel"],
        "vae_decoder": ["diffusers", "OnnxRuntimeModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", scheduler.get("_class_name", "PNDMScheduler")],
    }, indent=2))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(dict(scheduler), indent=2))
    (root / "tokenizer").mkdir(exist_ok=True)
    for name, data in tokenizer_files.items():
        (root / "tokenizer" / name).write_bytes(data)
