import struct
import time
from pathlib import Path

import gguf
import pytest

from ggufs import write_split_llama, write_tiny_llama
from localllm.errors import InvalidModelFile
from localllm.gguf_info import ModelSummary, format_parameter_size, read_gguf


def test_reads_the_real_gemma_file(gemma_path: Path) -> None:
    info = read_gguf(gemma_path)
    assert info.architecture == "gemma3"
    assert info.quantization == "Q4_K_M"
    assert info.context_length == 32768
    assert info.parameter_count == 268_098_176
    assert info.chat_template is None  # the base model ships without one
    assert info.array_lengths["tokenizer.ggml.tokens"] == 262_144
    assert format_parameter_size(info.parameter_count) == "268.10M"


def test_reads_a_tiny_llama(tmp_path: Path) -> None:
    path = write_tiny_llama(
        tmp_path / "t.gguf", file_type=gguf.LlamaFileType.MOSTLY_Q8_0, context_length=512, chat_template="{{x}}"
    )
    info = read_gguf(path)
    assert info.architecture == "llama"
    assert info.quantization == "Q8_0"
    assert info.context_length == 512
    assert info.chat_template == "{{x}}"
    assert info.parameter_count == sum(t.n_elements for t in info.tensors) > 0


def test_split_parts_sum_up(tmp_path: Path) -> None:
    parts = write_split_llama(tmp_path, "tiny", 3)
    infos = [read_gguf(p) for p in parts]
    whole = read_gguf(write_tiny_llama(tmp_path / "whole.gguf"))
    assert infos[0].split_count == 3
    assert ModelSummary.from_parts(infos).parameter_count == whole.parameter_count


def test_every_truncation_is_a_clear_error(tmp_path: Path) -> None:
    data = write_tiny_llama(tmp_path / "t.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    # every prefix of the header region, then a sample through the tensor data
    header_end = read_gguf(tmp_path / "t.gguf").tensors[0].offset
    lengths = list(range(0, header_end + 64, 7)) + list(range(header_end, len(data), max(1, len(data) // 50)))
    for length in lengths:
        cut.write_bytes(data[:length])
        with pytest.raises(InvalidModelFile):
            read_gguf(cut)


def _header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


@pytest.mark.parametrize(
    "payload",
    [
        b"not a gguf at all, just text" * 4,
        _header(0, 2**62),  # absurd metadata count
        _header(2**60, 1) + b"\0" * 64,  # absurd tensor count
        _header(0, 1) + _string("k") + struct.pack("<IIQ", 9, 0, 2**61) + b"\0" * 64,  # huge u8 array
        _header(0, 1) + _string("k") + struct.pack("<IIQ", 9, 8, 2**40) + b"\0" * 64,  # huge string array
        _header(0, 1) + _string("k") + struct.pack("<IQ", 8, 2**50) + b"\0" * 64,  # huge string
        _header(0, 1) + _string("k") + struct.pack("<I", 99) + b"\0" * 64,  # unknown type
        b"GGUF" + struct.pack("<IQQ", 7, 0, 0) + b"\0" * 16,  # unknown version
    ],
)
def test_forged_headers_fail_fast(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(payload)
    start = time.monotonic()
    with pytest.raises(InvalidModelFile):
        read_gguf(path)
    assert time.monotonic() - start < 1


def test_tensor_past_the_end_is_refused(tmp_path: Path) -> None:
    # one F32 tensor of 1024 elements whose data is not in the file
    body = _header(1, 0) + _string("w") + struct.pack("<IQIQ", 1, 1024, 0, 0)
    path = tmp_path / "short.gguf"
    path.write_bytes(body + b"\0" * 64)
    with pytest.raises(InvalidModelFile, match="past the end"):
        read_gguf(path)
