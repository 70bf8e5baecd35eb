"""Model names: ``[host/][namespace/]model[:tag]``.

A :class:`ModelName` is the only way a name becomes a path: every part is
checked against a strict pattern before :meth:`ModelName.manifest_path` joins
it, so ``../`` or a slash in a tag never reaches the file system.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
HF_HOSTS = ("hf.co", "huggingface.co")

_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}")
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,349}(:[0-9]{1,5})?")
MAX_NAME_LENGTH = 512
# The names parse() accepts, as one regex for API documents (parse() stays the validator and explains).
_P = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}"
MODEL_NAME_PATTERN = (
    rf"^(https?://)?(([A-Za-z0-9_][A-Za-z0-9_.\-]{{0,349}}(:[0-9]{{1,5}})?/{_P}/)|({_P}/))?{_P}(:{_P})?$"
)


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse a user-given name, filling in defaults; raise :class:`InvalidName`."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidName("model name is required")
        raw = text.strip()
        if len(raw) > MAX_NAME_LENGTH:
            raise InvalidName(f"model name is longer than {MAX_NAME_LENGTH} characters")
        for scheme in ("https://", "http://"):
            if raw.lower().startswith(scheme):
                raw = raw[len(scheme):]
        path, tag = raw, DEFAULT_TAG
        slash = raw.rfind("/")
        colon = raw.rfind(":")
        if colon > slash:
            path, tag = raw[:colon], raw[colon + 1:]
            if not tag:
                raise InvalidName(f"invalid model name {text!r}: empty tag after ':'")
        parts = path.split("/")
        if len(parts) > 3:
            raise InvalidName(
                f"invalid model name {text!r}: expected [host/][namespace/]model[:tag], got {len(parts)} path parts"
            )
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        if len(parts) == 3:
            host, namespace, model = parts
        elif len(parts) == 2:
            namespace, model = parts
        else:
            (model,) = parts
        name = cls(host=host, namespace=namespace, model=model, tag=tag)
        name._validate(text)
        return name

    def _validate(self, original: str) -> None:
        checks = (
            ("host", self.host, _HOST),
            ("namespace", self.namespace, _PART),
            ("model", self.model, _PART),
            ("tag", self.tag, _PART),
        )
        for label, value, pattern in checks:
            if not pattern.fullmatch(value):
                raise InvalidName(
                    f"invalid model name {original!r}: the {label} {value!r} must be 1-80 letters, digits, "
                    "'_', '-' or '.', not starting with '.' or '-'"
                )

    # --- forms -------------------------------------------------------------
    def __str__(self) -> str:
        return self.display

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def display(self) -> str:
        """The short form Ollama shows: ``mistral:latest``, ``user/m:tag``, ``hf.co/u/r:Q4_K_M``."""
        if self.host.lower() == DEFAULT_HOST:
            if self.namespace.lower() == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return self.full

    @property
    def short(self) -> str:
        """The display form without a default ``:latest``: what a person typed, most often."""
        return self.display.removesuffix(":" + DEFAULT_TAG)

    @property
    def key(self) -> str:
        """Case-insensitive identity, as Ollama matches names."""
        return self.full.lower()

    @property
    def is_huggingface(self) -> bool:
        return self.host.lower() in HF_HOSTS

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.model}"

    @property
    def tag_given(self) -> bool:
        return self.tag != DEFAULT_TAG

    def with_tag(self, tag: str) -> ModelName:
        return ModelName.parse(f"{self.host}/{self.namespace}/{self.model}:{tag}")

    def manifest_path(self, manifests_dir: Path) -> Path:
        return manifests_dir / self.host / self.namespace / self.model / self.tag

    def same(self, other: ModelName) -> bool:
        return self.key == other.key
