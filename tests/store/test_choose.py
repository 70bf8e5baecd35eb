import pytest

from localllm.errors import AmbiguousFile, RemoteNotFound
from localllm.store.choose import RepoFile, choose, quant_of


def files(*paths: str) -> list[RepoFile]:
    return [RepoFile(path=p, size=1, sha256="0" * 64) for p in paths]


@pytest.mark.parametrize(
    ("filename", "quant"),
    [
        ("mistral-7b-instruct-v0.2.Q4_K_M.gguf", "Q4_K_M"),
        ("gemma-3-4b-it-q8_0.gguf", "Q8_0"),
        ("Llama-3.2-1B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
        ("ggml-model-f16.gguf", "F16"),
        ("Q4_K_M/big-Q4_K_M-00002-of-00003.gguf", "Q4_K_M"),
        ("tinyllama.gguf", None),
    ],
)
def test_quant_of(filename: str, quant: str | None) -> None:
    assert quant_of(filename) == quant


REPO = files("m.Q2_K.gguf", "m.Q4_K_M.gguf", "m.Q8_0.gguf", "README.md", "mmproj-m-f16.gguf")


def test_default_is_q4_k_m() -> None:
    assert choose("u/r", REPO, None).files[0].path == "m.Q4_K_M.gguf"


def test_tag_picks_quant_case_insensitively() -> None:
    assert choose("u/r", REPO, "q8_0").files[0].path == "m.Q8_0.gguf"


def test_tag_picks_exact_file_name() -> None:
    assert choose("u/r", REPO, "M.Q2_K.GGUF").files[0].path == "m.Q2_K.gguf"


def test_single_file_is_the_default() -> None:
    assert choose("u/r", files("only.gguf", "README.md"), None).files[0].path == "only.gguf"


def test_without_q4_k_m_a_sensible_quant_is_chosen() -> None:
    assert choose("u/r", files("m.Q8_0.gguf", "m.Q5_K_M.gguf", "m.F16.gguf"), None).quant == "Q5_K_M"


def test_no_default_lists_the_choices() -> None:
    with pytest.raises(AmbiguousFile, match="a.gguf, b.gguf"):
        choose("u/r", files("a.gguf", "b.gguf"), None)


def test_unknown_quant_lists_the_choices() -> None:
    with pytest.raises(RemoteNotFound, match="Q2_K, Q4_K_M, Q8_0"):
        choose("u/r", REPO, "Q6_K")


def test_no_gguf_at_all() -> None:
    with pytest.raises(RemoteNotFound, match="no GGUF"):
        choose("u/r", files("README.md", "model.safetensors"), None)


def test_split_models_come_whole_and_in_order() -> None:
    repo = files(
        "big-Q4_K_M-00002-of-00002.gguf",
        "big-Q4_K_M-00001-of-00002.gguf",
        "big-Q8_0-00001-of-00002.gguf",  # incomplete: not offered
        "small-Q8_0.gguf",
    )
    choice = choose("u/r", repo, None)
    assert [f.path for f in choice.files] == ["big-Q4_K_M-00001-of-00002.gguf", "big-Q4_K_M-00002-of-00002.gguf"]
    assert choose("u/r", repo, "big-Q4_K_M-00002-of-00002.gguf") == choice
    assert choose("u/r", repo, "Q8_0").files[0].path == "small-Q8_0.gguf"


def test_same_quant_twice_needs_a_file_name() -> None:
    with pytest.raises(AmbiguousFile, match="choose one by file name"):
        choose("u/r", files("a-Q4_K_M.gguf", "b-Q4_K_M.gguf"), "q4_k_m")
