"""Build a tiny Stable Diffusion pipeline in diffusers' ONNX layout: real architectures, random weights.

A CLIP BPE vocabulary trained on a few sentences (bytes, ``</w>`` forms, a few hundred merges,
the two special tokens), a CLIP text encoder, an SD-1.5-shaped UNet and VAE decoder with small
channel counts, exported with ``torch.onnx.export(..., dynamo=False)``; the same in SDXL's shape.
Run as a script to build them all under a folder: ``python tests/diffusion/tiny_sd.py OUT``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from localllm.diffusion import export

CORPUS = """a photo of an astronaut riding a horse on the moon, a red cat sitting on a blue sofa,
the quick brown fox jumps over the lazy dog, a painting of a lighthouse at sunset, highly detailed,
blurry, low quality, ugly, watermark, text, a castle in the mountains with snow and trees"""

TEXT = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
        "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 32}
UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
        "block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 32,
        "attention_head_dim": 2, "norm_num_groups": 16}
VAE = {"block_out_channels": [8, 16, 16, 16], "in_channels": 3, "out_channels": 3, "latent_channels": 4,
       "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
       "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64}  # 4 blocks: latents are images / 8
SCHEDULER = {**export.SD15_SCHEDULER, "_class_name": "EulerAncestralDiscreteScheduler"}
LATENT = 8  # the UNet runs on 8×8 latents: 64×64 images


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def train_bpe(text: str, merges: int = 200) -> tuple[dict[str, int], list[str]]:
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    words = Counter(text.lower().replace(",", " ").split())
    split = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    rules: list[str] = []
    for _ in range(merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for w, parts in split.items():
            for a, b in zip(parts, parts[1:], strict=False):
                pairs[a, b] += words[w]
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        rules.append(f"{a} {b}")
        vocab.append(a + b)
        for w, parts in split.items():
            out, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            split[w] = out
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, rules


def build(out: Path, opset: int = 14) -> Path:
    vocab, merges = train_bpe(CORPUS)
    merges_txt = "#version: 0.2\n" + "\n".join(merges) + "\n"
    export.write_layout(out, SCHEDULER, {"vocab.json": json.dumps(vocab).encode(), "merges.txt": merges_txt.encode()})
    text = {**TEXT, "vocab_size": len(vocab), "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": vocab["<|endoftext|>"]}
    export.export_text_encoder(text, out / "text_encoder", seed=1, opset=opset)
    export.export_unet(UNET, out / "unet", seed=2, latent=LATENT, opset=opset)
    export.export_vae_decoder(VAE, out / "vae_decoder", seed=3, latent=LATENT, opset=opset)
    return out


SDXL_UNET = {**UNET, "cross_attention_dim": 64, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
             "projection_class_embeddings_input_dim": 32 + 6 * 8, "use_linear_projection": True,
             "transformer_layers_per_block": [1, 2], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}
SDXL_TEXT = {**TEXT, "hidden_act": "gelu"}  # the second encoder (OpenCLIP bigG) uses exact GELU


def build_sdxl(out: Path) -> Path:
    """SDXL's shape: two text encoders (states concatenated: 32 + 32), pooled text embeds and time ids."""
    vocab, merges = train_bpe(CORPUS)
    merges_txt = "#version: 0.2\n" + "\n".join(merges) + "\n"
    files = {"vocab.json": json.dumps(vocab).encode(), "merges.txt": merges_txt.encode()}
    export.write_layout(out, {**SCHEDULER, "timestep_spacing": "trailing"}, files)
    (out / "tokenizer_2").mkdir(exist_ok=True)
    for name, data in {**files, "special_tokens_map.json": b'{"pad_token": "!"}'}.items():
        (out / "tokenizer_2" / name).write_bytes(data)
    text = {**TEXT, "vocab_size": len(vocab), "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": vocab["<|endoftext|>"]}
    export.export_text_encoder(text, out / "text_encoder", seed=4, sdxl="first")
    export.export_text_encoder({**text, **SDXL_TEXT, "vocab_size": len(vocab)}, out / "text_encoder_2", seed=5,
                               sdxl="second")
    export.export_unet(SDXL_UNET, out / "unet", seed=6, latent=LATENT)
    export.export_vae_decoder(VAE, out / "vae_decoder", seed=7, latent=LATENT)
    return out


if __name__ == "__main__":  # tiny_sd.py ROOT: ROOT/sd, ROOT/sdxl, ROOT/sd-opset17
    root = Path(sys.argv[1])
    build(root / "sd")
    build_sdxl(root / "sdxl")
    build(root / "sd-opset17", opset=17)  # LayerNormalization instead of its decomposition
