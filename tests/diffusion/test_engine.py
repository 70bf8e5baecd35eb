"""Engine behaviour: lifetimes, peak accounting, attention fusion, and errors that name the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from localllm.diffusion import ops
from localllm.diffusion.convert import convert_model
from localllm.diffusion.engine import Engine, fuse_attention
from localllm.diffusion.layout import StreamGraph
from localllm.errors import InvalidModelFile, UnsupportedInput, UnsupportedOperator


def unet(converted) -> StreamGraph:
    return StreamGraph.load(converted("fp32") / "unet")


def feeds(graph: StreamGraph, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in graph.inputs.items()}


def test_each_intermediate_freed_after_its_last_consumer(converted, rng: np.random.Generator) -> None:
    graph = unet(converted)
    with Engine(graph, "disk") as engine:
        engine.run(feeds(graph, rng))
        last: dict[str, int] = {}
        for i, spec in enumerate(engine.ops):
            for n in spec.inputs:
                if n in graph.values or n in graph.inputs:  # the engine's copies of inputs go too
                    last[n] = i
        outputs = set(graph.outputs.values())
        expected = {n: i for n, i in last.items() if n not in outputs}
        assert engine.freed == expected
    total = sum(graph.values[n].nbytes for n in graph.values)
    biggest = max(graph.values[n].nbytes for n in graph.values)
    assert biggest <= engine.stats.peak_activation_bytes < total / 4
    assert engine.stats.peak_bytes > engine.stats.peak_activation_bytes  # weights are counted too


def test_attention_fused_and_sliced(converted, rng: np.random.Generator) -> None:
    graph = unet(converted)
    fused = fuse_attention(graph.ops, graph)
    n_softmax = sum(op.type == "Softmax" for op in graph.ops)
    assert sum(op.type == "Attention" for op in fused) == n_softmax > 0
    assert len(fused) == len(graph.ops) - 2 * n_softmax
    # slicing is exact: 1-row slices and whole matrices agree with the plain ops
    x = feeds(graph, rng)
    with Engine(graph, "ram", attention_slicing=False) as plain, \
            Engine(graph, "ram", attention_budget=1) as sliced:
        np.testing.assert_allclose(sliced.run(x)["out_sample"], plain.run(x)["out_sample"], atol=1e-5)


def test_attention_op_matches_softmax_formula(rng: np.random.Generator) -> None:
    q = rng.standard_normal((2, 3, 50, 8)).astype(np.float32)
    kt = rng.standard_normal((2, 3, 8, 40)).astype(np.float32)
    v = rng.standard_normal((2, 3, 40, 5)).astype(np.float32)
    s = q @ kt * 0.3
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ v
    for budget in (1, 700, 1 << 20):
        np.testing.assert_allclose(ops.attention(q, kt, v, 0.3, False, budget), want, atol=1e-5)


def test_conv_bands_match_whole(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 6, 13, 11)).astype(np.float32)
    w = rng.standard_normal((4, 6, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    whole = ops.conv2d(x, w, b, [2, 1], [1, 1, 1, 1], [1, 1], budget=1 << 30)
    banded = ops.conv2d(x, w, b, [2, 1], [1, 1, 1, 1], [1, 1], budget=1)
    np.testing.assert_allclose(banded, whole, rtol=1e-5, atol=1e-5)
    # against a direct sum over the kernel
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros_like(whole)
    for dy in range(3):
        for dx in range(3):
            patch = xp[:, :, dy:dy + 2 * whole.shape[2]:2, dx:dx + whole.shape[3]]
            ref += np.einsum("oc,nchw->nohw", w[:, :, dy, dx], patch)
    np.testing.assert_allclose(whole, ref + b[None, :, None, None], rtol=1e-4, atol=1e-4)


def tiny_model(tmp_path: Path, op_type: str) -> Path:
    node = helper.make_node(op_type, ["x"], ["y"], name="my_odd_node")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    return path


def test_unsupported_op_names_op_and_node(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOperator, match=r"Hardmax.*my_odd_node"):
        convert_model(tiny_model(tmp_path, "Hardmax"), tmp_path / "out", {"x": (2, 4)})


def test_input_shapes_checked(tmp_path: Path) -> None:
    out = convert_model(tiny_model(tmp_path, "Sigmoid"), tmp_path / "out", {"x": (2, 4)})
    with Engine(StreamGraph.load(out), "disk") as engine:
        y = engine.run({"x": np.zeros((2, 4), np.float32)})["y"]
        np.testing.assert_allclose(y, 0.5)
        with pytest.raises(UnsupportedInput, match=r"converted for \(2, 4\)"):
            engine.run({"x": np.zeros((3, 4), np.float32)})
    with pytest.raises(UnsupportedInput, match="needs input 'x'"):
        convert_model(tiny_model(tmp_path, "Sigmoid"), tmp_path / "out2", {"y": (2, 4)})


def test_broken_files_are_invalid_model_files(tmp_path: Path, converted) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(InvalidModelFile):
        convert_model(tmp_path / "model.onnx", tmp_path / "out", {"x": (1,)})
    with pytest.raises(InvalidModelFile, match="not a converted model"):
        StreamGraph.load(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    src = converted("fp32") / "vae_decoder"
    (copy / "graph.json").write_bytes((src / "graph.json").read_bytes())
    (copy / "weights.bin").write_bytes((src / "weights.bin").read_bytes()[:1000])
    with pytest.raises(InvalidModelFile, match="truncated"):
        StreamGraph.load(copy)


def test_runtime_does_not_import_onnx(converted) -> None:
    """A worker that only runs models never loads onnx (nor torch)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from localllm.diffusion.pipeline import StableDiffusion\n"
        f"sd = StableDiffusion({str(converted('fp16'))!r}, 'prefetch')\n"
        "img = sd.generate('a red cat', steps=1, seed=1)\n"
        "assert img.shape == (64, 64, 3)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'torch', 'onnxruntime')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("component", ["unet", "vae_decoder", "text_encoder"])
def test_packed_weights_dequantized_in_blocks_match(converted, component: str, rng: np.random.Generator,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Big fp16/uint8 kernels reach Conv and MatMul packed, dequantized a block of channels at a time."""
    from localllm.diffusion import weights

    graph = StreamGraph.load(converted("uint8") / component)
    x = {k: (rng.integers(0, 300, v.shape) if k == "input_ids" else rng.standard_normal(v.shape)).astype(v.dtype)
         for k, v in graph.inputs.items()}
    with Engine(graph, "ram") as whole:
        want = whole.run(x)
    monkeypatch.setattr(weights, "PACK_MIN", 0)
    calls = []
    block = weights.Packed.block
    monkeypatch.setattr(weights.Packed, "block", lambda self, index: calls.append(index) or block(self, index))
    with Engine(graph, "ram", conv_budget=2048) as blocks:  # several blocks per kernel
        got = blocks.run(x)
    kernels = sum(op.type in ("Conv", "MatMul") and op.inputs[1] in graph.weights for op in blocks.ops)
    assert kernels > 0 and len(calls) > 2 * kernels
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
