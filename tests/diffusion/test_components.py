"""Each converted component against onnxruntime on the same ONNX graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from localllm.diffusion.engine import Engine
from localllm.diffusion.layout import StreamGraph

PROVIDERS = ["disk", "prefetch", "ram"]


def feeds_for(component: str, graph: StreamGraph, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    vocab = len(json.loads((Path(graph.meta["source"]).parent.parent / "tokenizer" / "vocab.json").read_text()))
    for name, info in graph.inputs.items():
        if name == "input_ids":
            ids = rng.integers(0, vocab - 2, info.shape)
            ids[:, 0], ids[:, 20:] = vocab - 2, vocab - 1  # BOS, then EOS padding (the pooled output is at EOS)
            out[name] = ids.astype(info.dtype)
        elif name == "timestep":
            out[name] = np.full(info.shape, 421.0, dtype=info.dtype)
        else:
            out[name] = rng.standard_normal(info.shape).astype(info.dtype)
    return out


def reference(tiny_sd: Path, component: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(tiny_sd / component / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


@pytest.mark.parametrize("component", ["text_encoder", "unet", "vae_decoder"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("slicing", [False, True])
def test_fp32_matches_onnxruntime(tiny_sd: Path, converted, component: str, provider: str, slicing: bool,
                                  rng: np.random.Generator) -> None:
    graph = StreamGraph.load(converted("fp32") / component)
    feeds = feeds_for(component, graph, rng)
    want = reference(tiny_sd, component, feeds)
    # small budgets: several row bands per convolution, several query slices per attention
    with Engine(graph, provider, attention_slicing=slicing, attention_budget=1024, conv_budget=4096) as engine:
        got = engine.run(feeds)
        again = engine.run(feeds)  # a second run (prefetch wraps around its order) gives the same
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape
        assert np.abs(got[name] - want[name]).max() <= 1e-4, name
        np.testing.assert_array_equal(got[name], again[name])
    if slicing and component != "text_encoder":
        assert any(op.type == "Attention" for op in engine.ops)


def test_no_shape_arithmetic_left(converted) -> None:
    """Folding leaves only real compute: no Shape, ConstantOfShape, Range, Where, Equal-on-shapes."""
    for component in ("text_encoder", "unet", "vae_decoder"):
        types = {op.type for op in StreamGraph.load(converted("fp32") / component).ops}
        assert not types & {"Shape", "ConstantOfShape", "Range", "Where", "Identity", "Size"}, (component, types)
        assert "Conv" in types or component == "text_encoder"


@pytest.mark.parametrize(("precision", "tolerance"), [("fp16", 2e-3), ("uint8", 0.15)])
@pytest.mark.parametrize("component", ["text_encoder", "unet", "vae_decoder"])
def test_quantized_close(tiny_sd: Path, converted, precision: str, tolerance: float, component: str,
                         rng: np.random.Generator) -> None:
    graph = StreamGraph.load(converted(precision) / component)
    full = StreamGraph.load(converted("fp32") / component)
    kind = "float16" if precision == "fp16" else "uint8"
    matrices = [w.dtype for w in graph.weights.values() if len(w.shape) >= 2]
    assert matrices.count(kind) >= len(matrices) - 1  # not the causal mask: -inf stays fp32
    assert graph.weight_bytes() < full.weight_bytes() * (0.7 if precision == "fp16" else 0.5)  # (padding, biases)
    feeds = feeds_for(component, graph, rng)
    want = reference(tiny_sd, component, feeds)
    with Engine(graph, "disk") as engine:
        got = engine.run(feeds)
    for name in want:
        err = np.abs(got[name] - want[name]).max() / np.abs(want[name]).max()
        assert err <= tolerance, (name, err)
        assert err > 0  # really quantized


def test_uint8_skip_connections(tiny_sd: Path, converted, rng: np.random.Generator) -> None:
    from localllm.diffusion.engine import longest_lived

    graph = StreamGraph.load(converted("fp32") / "unet")
    feeds = feeds_for("unet", graph, rng)
    want = reference(tiny_sd, "unet", feeds)["out_sample"]
    with Engine(graph, "ram") as plain:
        skips = longest_lived(plain.ops, graph, 4, min_bytes=0)
    assert len(skips) == 4 and all(n in graph.values for n in skips)
    assert not any("Softmax" in n for n in skips)  # with slicing, score matrices never exist
    with Engine(graph, "ram") as plain, Engine(graph, "ram", uint8_intermediates=skips) as packed:
        exact = plain.run(feeds)["out_sample"]
        approx = packed.run(feeds)["out_sample"]
    assert np.abs(exact - want).max() <= 1e-4
    err = np.abs(approx - want).max() / np.abs(want).max()
    assert 0 < err < 0.05
    assert packed.stats.peak_activation_bytes < plain.stats.peak_activation_bytes


@pytest.mark.parametrize("component", ["text_encoder", "unet", "vae_decoder"])
def test_opset17_export_matches_onnxruntime(tiny_models: Path, component: str, rng: np.random.Generator,
                                            tmp_path: Path) -> None:
    """Opset 17 exports LayerNorm as LayerNormalization: the same components still match."""
    from localllm.diffusion.convert import convert_model

    src = tiny_models / "sd-opset17"
    shapes = {"text_encoder": {"input_ids": (1, 77)}, "vae_decoder": {"latent_sample": (1, 4, 8, 8)},
              "unet": {"sample": (2, 4, 8, 8), "timestep": (2,), "encoder_hidden_states": (2, 77, 32)}}
    graph = StreamGraph.load(convert_model(src / component / "model.onnx", tmp_path / component, shapes[component]))
    if component != "vae_decoder":
        assert "LayerNormalization" in {op.type for op in graph.ops}
    feeds = feeds_for(component, graph, rng)
    want = reference(src, component, feeds)
    with Engine(graph, "prefetch") as engine:
        got = engine.run(feeds)
    for name in want:
        assert np.abs(got[name] - want[name]).max() <= 1e-4, name
