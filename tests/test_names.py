from pathlib import Path

import pytest

from localllm.errors import InvalidName
from localllm.names import ModelName


@pytest.mark.parametrize(
    ("text", "full", "display"),
    [
        ("mistral", "registry.ollama.ai/library/mistral:latest", "mistral:latest"),
        ("llama2:13b", "registry.ollama.ai/library/llama2:13b", "llama2:13b"),
        ("me/mymodel:v1", "registry.ollama.ai/me/mymodel:v1", "me/mymodel:v1"),
        ("hf.co/TheBloke/M-GGUF:Q4_K_M", "hf.co/TheBloke/M-GGUF:Q4_K_M", "hf.co/TheBloke/M-GGUF:Q4_K_M"),
        ("https://huggingface.co/u/r", "huggingface.co/u/r:latest", "huggingface.co/u/r:latest"),
        ("localhost:5000/ns/m:t", "localhost:5000/ns/m:t", "localhost:5000/ns/m:t"),
        ("hf.co/u/r:model.Q8_0.gguf", "hf.co/u/r:model.Q8_0.gguf", "hf.co/u/r:model.Q8_0.gguf"),
    ],
)
def test_parse_fills_defaults(text: str, full: str, display: str) -> None:
    name = ModelName.parse(text)
    assert name.full == full
    assert name.display == display


def test_matching_is_case_insensitive() -> None:
    assert ModelName.parse("Mistral:Latest").same(ModelName.parse("mistral"))
    assert not ModelName.parse("mistral:7b").same(ModelName.parse("mistral"))


def test_hub_names() -> None:
    name = ModelName.parse("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:iq4_xs")
    assert name.is_huggingface and name.repo_id == "bartowski/Llama-3.2-1B-Instruct-GGUF"
    assert name.tag == "iq4_xs" and name.tag_given
    assert not ModelName.parse("hf.co/u/r").tag_given


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "../../x",
        "a/b/c/d/e",
        "a/b/c/d",
        "x:../y",
        "model:a/b",
        "model:",
        ".hidden",
        "-dash",
        "bad name",
        "ns/..:latest",
        "m" * 81,
        "model:" + "t" * 81,
        "hf.co/u/r:sub/dir/file.gguf",
        "mod\x00el",
        "model:tag:extra",
    ],
)
def test_hostile_names_are_refused(text: str) -> None:
    with pytest.raises(InvalidName):
        ModelName.parse(text)


def test_manifest_path_stays_inside(tmp_path: Path) -> None:
    path = ModelName.parse("hf.co/u/r:Q4_K_M").manifest_path(tmp_path)
    assert path == tmp_path / "hf.co" / "u" / "r" / "Q4_K_M"
    assert path.resolve().is_relative_to(tmp_path.resolve())
