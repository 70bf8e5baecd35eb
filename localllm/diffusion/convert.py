"""diffusers' ONNX layout → the streaming layout, one folder per component.

``convert_model`` turns one ``model.onnx`` into ``graph.json`` + ``weights.bin`` for fixed input
shapes; ``convert_pipeline`` does a whole diffusers ONNX folder (``model_index.json``,
``text_encoder/``, ``text_encoder_2/``, ``unet/``, ``vae_decoder/``, ``tokenizer/``,
``scheduler/``) for one image size. Weights are stored as fp32, fp16, or uint8 (matrices and
kernels; 1-d biases and norms stay fp32 in uint8 mode). This is the only module with ``graph.py``
that imports ``onnx``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from localllm.diffusion import graph as onnx_graph
from localllm.diffusion.layout import WeightsWriter, save
from localllm.diffusion.quant import to_stored
from localllm.errors import InvalidModelFile

PRECISIONS = ("fp32", "fp16", "uint8")
Progress = Callable[[str, int, int], None]  # (component, done, total)


def convert_model(src: Path | str, dst: Path | str, input_shapes: Mapping[str, tuple[int, ...]],
                  precision: str = "fp32", progress: Progress | None = None, component: str = "") -> Path:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {PRECISIONS}")
    dst = Path(dst)
    model = onnx_graph.load(src)
    step = (lambda i, n: progress(component, i, n)) if progress else None
    graph, big = onnx_graph.convert(model, input_shapes, step)
    del model
    writer = WeightsWriter(dst)
    try:
        for name in _in_order(graph.ops, big):
            value = big.pop(name)
            mode = precision if (precision != "uint8" or value.ndim >= 2) else "fp32"
            stored, scale, zero_point = to_stored(value, mode)
            writer.add(name, stored, value.shape, scale, zero_point)
    finally:
        writer.close()
    graph.weights = writer.specs
    graph.meta = {"precision": precision, "source": str(src)}
    save(graph, dst)
    if progress:
        progress(component, 1, 1)
    return dst


def _in_order(op_list: list, big: dict[str, np.ndarray]) -> list[str]:
    """Weights in the order the ops read them, so that a run reads weights.bin front to back."""
    seen: dict[str, None] = {}
    for spec in op_list:
        for n in spec.inputs:
            if n in big:
                seen[n] = None
    return list(seen)


def convert_pipeline(src: Path | str, dst: Path | str, precision: str = "fp16", height: int = 512,
                     width: int = 512, unet_batch: int = 2, vae_tile: int | None = None,
                     progress: Progress | None = None) -> Path:
    """Convert a diffusers ONNX pipeline folder for ``height`` × ``width`` images.

    ``unet_batch`` 2 runs guidance's two halves in one UNet call, 1 in two (less memory);
    ``vae_tile`` (latents, e.g. 32) converts the VAE decoder for tiled decoding.
    """
    src, dst = Path(src), Path(dst)
    index_path = src / "model_index.json"
    if not index_path.exists():
        raise InvalidModelFile(f"{src} has no model_index.json: not a diffusers ONNX pipeline folder")
    if height % 8 or width % 8:
        raise ValueError(f"image size {width}x{height} must be a multiple of 8")
    dst.mkdir(parents=True, exist_ok=True)
    index = json.loads(index_path.read_text())
    lh, lw = height // 8, width // 8
    encoders = [n for n in ("text_encoder", "text_encoder_2") if (src / n / "model.onnx").exists()]
    if not encoders or not (src / "unet" / "model.onnx").exists() or not (src / "vae_decoder" / "model.onnx").exists():
        raise InvalidModelFile(f"{src} lacks text_encoder/, unet/ or vae_decoder/ model.onnx")
    for name in encoders:
        convert_model(src / name / "model.onnx", dst / name, {"input_ids": (1, 77)}, precision, progress, name)
    unet_inputs, text_dim, pooled_dim = _unet_inputs(src / "unet" / "model.onnx", unet_batch, lh, lw, dst, encoders)
    convert_model(src / "unet" / "model.onnx", dst / "unet", unet_inputs, precision, progress, "unet")
    latent_channels = 4
    vae_src = src / "vae_decoder" / "model.onnx"
    # fp16 is a storage format here: the ops compute in fp32, so SDXL's VAE does not overflow
    th, tw = (min(vae_tile, lh), min(vae_tile, lw)) if vae_tile else (lh, lw)
    convert_model(vae_src, dst / "vae_decoder", {"latent_sample": (1, latent_channels, th, tw)}, precision,
                  progress, "vae_decoder")
    vae_config = src / "vae_decoder" / "config.json"
    scaling = json.loads(vae_config.read_text()).get("scaling_factor") if vae_config.exists() else None
    for folder in ("tokenizer", "tokenizer_2", "scheduler"):
        if (src / folder).is_dir():
            shutil.copytree(src / folder, dst / folder, dirs_exist_ok=True)
    (dst / "pipeline.json").write_text(json.dumps({
        "source_index": index, "height": height, "width": width, "precision": precision, "unet_batch": unet_batch,
        "text_dim": text_dim, "pooled_dim": pooled_dim, "sdxl": "text_encoder_2" in encoders,
        "vae_scaling_factor": scaling, "vae_tile": vae_tile,
    }, indent=2))
    return dst


def _unet_inputs(path: Path, batch: int, lh: int, lw: int, dst: Path,
                 encoders: list[str]) -> tuple[dict[str, tuple[int, ...]], int, int]:
    """The UNet's input shapes, read off its declared inputs and the converted text encoders' outputs."""
    import onnx

    from localllm.diffusion.layout import StreamGraph

    model = onnx.load(str(path), load_external_data=False)
    declared = {i.name: i.type.tensor_type.shape.dim for i in model.graph.input}
    text_dim = 0
    pooled_dim = 0
    for name in encoders:
        g = StreamGraph.load(dst / name)
        hidden = [v for k, v in g.outputs.items() if "hidden" in k or k == "last_hidden_state"]
        shape = g.values[hidden[0]].shape if hidden and hidden[0] in g.values else (1, 77, 0)
        text_dim += shape[-1]
        pooled = [v for k, v in g.outputs.items() if "embeds" in k or "pool" in k]
        if pooled and pooled[0] in g.values:
            pooled_dim = g.values[pooled[0]].shape[-1]
    channels = declared["sample"][1].dim_value or 4
    shapes: dict[str, tuple[int, ...]] = {
        "sample": (batch, channels, lh, lw),
        "timestep": (batch,) if len(declared["timestep"]) == 1 else (),
        "encoder_hidden_states": (batch, 77, declared["encoder_hidden_states"][2].dim_value or text_dim),
    }
    if "text_embeds" in declared:
        shapes["text_embeds"] = (batch, declared["text_embeds"][1].dim_value or pooled_dim)
    if "time_ids" in declared:
        shapes["time_ids"] = (batch, declared["time_ids"][1].dim_value or 6)
    return shapes, text_dim, pooled_dim


def main(argv: list[str] | None = None) -> None:
    """``python -m localllm.diffusion.convert SRC DST [--precision fp16] [--size 512x512] ...``"""
    import argparse

    parser = argparse.ArgumentParser(description="Convert a diffusers ONNX pipeline folder to the streaming layout.")
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    parser.add_argument("--size", default="512x512", help="WIDTHxHEIGHT of the images to make")
    parser.add_argument("--unet-batch", type=int, choices=(1, 2), default=1)
    parser.add_argument("--vae-tile", type=int, default=None, help="latent tile size for tiled VAE decoding")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    def report(component: str, done: int, total: int) -> None:
        if done == total or done % 200 == 0:
            print(f"\r{component}: {done}/{total}", end="\n" if done == total else "", flush=True)

    convert_pipeline(args.src, args.dst, args.precision, height, width, args.unet_batch, args.vae_tile, report)


if __name__ == "__main__":
    main()
