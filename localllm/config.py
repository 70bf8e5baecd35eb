"""Settings, read from the environment each time they are asked for.

Nothing here is read at import: tests and the CLI set ``LOCALLLM_*`` and the
next :func:`get_settings` call sees it.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .units import default_budget, parse_size

DEFAULT_PORT = 11434


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOCALLLM_", extra="ignore", populate_by_name=True)

    home: Path = Field(
        default_factory=lambda: Path.home() / ".localllm",
        description="Where all state lives: models, partial downloads, logs.",
    )
    host: str = Field(
        default=f"127.0.0.1:{DEFAULT_PORT}",
        description="Address the daemon binds and the CLI talks to, as host:port.",
    )
    origins: str = Field(
        default="",
        description="Extra CORS origins allowed besides local ones, comma-separated ('*' for any).",
    )
    default_model: str = Field(
        default="smollm2:135m",
        description="The model `localllm run` chats with when no model is named (the embedded instruct model).",
    )
    keep_alive: str = Field(
        default="5m",
        description="How long a model stays loaded after a request: a duration ('5m', '1h'), seconds, or -1 for ever.",
    )
    max_loaded_models: int = Field(default=3, ge=1, description="How many model instances may be loaded at once.")
    context_length: int = Field(
        default=4096, ge=1, le=1 << 20, description="num_ctx of requests that set none (per sequence)."
    )
    num_parallel: int = Field(
        default=4, ge=1, le=64, description="Requests one loaded model decodes together (continuous batching)."
    )
    max_memory: str = Field(
        default="", description="Memory the loaded models may take together ('16GiB'); default 3/4 of the RAM."
    )
    max_queue: int = Field(
        default=512, ge=0, description="Requests that may wait for a busy model; beyond this they get 503."
    )
    image_max_size: int = Field(
        default=2048, ge=64, le=8192, description="Largest image width or height a request may ask for (pixels)."
    )
    image_url_ttl: int = Field(
        default=3600, ge=1, description="Seconds an image URL of /v1/images/generations stays valid."
    )
    max_body: str = Field(
        default="64MiB",
        description="Largest request body (blob uploads, which stream to disk, excepted); beyond it, 413.",
    )
    max_messages: int = Field(
        default=4096, ge=1, description="Most messages (or embedding inputs) one request may carry."
    )
    max_prompt: int = Field(
        default=8_000_000, ge=1,
        description="Most characters of text (messages, prompt, system, inputs) one request may carry.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="When set, every request but the health check needs 'Authorization: Bearer <key>'.",
    )
    hf_endpoint: str = Field(
        default="https://huggingface.co",
        validation_alias=AliasChoices("HF_ENDPOINT", "LOCALLLM_HF_ENDPOINT"),
        description="The Hugging Face Hub to pull from.",
    )
    hf_token: str | None = Field(
        default=None,
        validation_alias=AliasChoices("HF_TOKEN", "LOCALLLM_HF_TOKEN"),
        description="Token for gated or private Hub repositories.",
    )

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("host", mode="after")
    @classmethod
    def _valid_host(cls, value: str) -> str:
        parse_host(value)
        return value

    @field_validator("hf_endpoint", mode="after")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("max_memory", "max_body", mode="after")
    @classmethod
    def _valid_size(cls, value: str) -> str:
        parse_size(value)
        return value

    @property
    def memory_budget(self) -> int:
        return parse_size(self.max_memory) or default_budget()

    @property
    def max_body_bytes(self) -> int:
        return parse_size(self.max_body) or 64 * 2**20

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def bind(self) -> tuple[str, int]:
        return parse_host(self.host)

    @property
    def base_url(self) -> str:
        host, port = self.bind
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def extra_origins(self) -> list[str]:
        return [o.strip() for o in self.origins.split(",") if o.strip()]


def parse_host(value: str) -> tuple[str, int]:
    """Split ``host:port`` (also ``[::1]:port``, ``host``, ``:port``, ``http://host:port``)."""
    text = value.strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    text = text.rstrip("/")
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            raise ValueError(f"invalid host {value!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest.startswith(":"):
            port = _port(rest[1:], value)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, value)
    return host or "127.0.0.1", port


def _port(text: str, value: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"invalid port in {value!r}")
    return int(text)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def get_settings() -> Settings:
    """Fresh settings from the current environment."""
    return Settings()
