from pathlib import Path

import pytest

from localllm.config import get_settings, is_loopback_host, parse_host


def test_settings_are_read_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "a"))
    assert get_settings().models_dir == tmp_path / "a" / "models"
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "b"))
    assert get_settings().home == tmp_path / "b"


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCALLLM_HOME")
    monkeypatch.delenv("LOCALLLM_HOST", raising=False)
    monkeypatch.delenv("HF_ENDPOINT")
    settings = get_settings()
    assert settings.home == Path.home() / ".localllm"
    assert settings.bind == ("127.0.0.1", 11434)
    assert settings.hf_endpoint == "https://huggingface.co"


def test_hub_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:5000/")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    settings = get_settings()
    assert settings.hf_endpoint == "http://127.0.0.1:5000" and settings.hf_token == "hf_secret"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0", ("0.0.0.0", 11434)),
        (":9000", ("127.0.0.1", 9000)),
        ("[::1]:7000", ("::1", 7000)),
        ("http://localhost:1234/", ("localhost", 1234)),
    ],
)
def test_parse_host(text: str, expected: tuple[str, int]) -> None:
    assert parse_host(text) == expected


@pytest.mark.parametrize("text", ["host:port", "host:99999", "[::1"])
def test_bad_hosts(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host(text)


def test_loopback() -> None:
    assert is_loopback_host("127.0.0.2") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("example.com")
