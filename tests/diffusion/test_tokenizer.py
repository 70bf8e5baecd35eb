"""Our CLIP tokenizer (tokenizers' BPE) against transformers' reference CLIPTokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localllm.diffusion.tokenizer import ClipTokenizer

PROMPTS = [
    "A photo of an astronaut riding a horse on the moon",
    "  the QUICK brown fox,   jumps!! over 3 lazy dogs  ",
    "a painting of a lighthouse at sunset, highly detailed; trending on artstation's page",
    "",
    "émoji ☃ and ünïcode",
    " ".join(["castle"] * 100),  # longer than 75 tokens: truncated
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_matches_transformers(tiny_sd: Path, prompt: str) -> None:
    from transformers import CLIPTokenizer

    folder = tiny_sd / "tokenizer"
    ref = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    want = ref(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    got = ClipTokenizer(folder)(prompt)
    assert got.shape == (1, 77)
    np.testing.assert_array_equal(got, want)


def test_pad_token_from_special_tokens_map(tiny_sd: Path, tmp_path: Path) -> None:
    """SDXL's second tokenizer pads with "!" (id 0), named in special_tokens_map.json."""
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((tiny_sd / "tokenizer" / name).read_bytes())
    (tmp_path / "special_tokens_map.json").write_text('{"pad_token": {"content": "!"}}')
    ids = ClipTokenizer(tmp_path)("a cat")
    assert ids[0, -1] == 0 and ids[0, 0] != 0
