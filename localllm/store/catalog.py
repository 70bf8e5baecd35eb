"""Short names (``mistral``, ``llama2:13b``, ``gemma3:270m``) and what they stand for.

A catalog entry maps a short name to a Hub repository per size, and carries
what the GGUF files lack: the chat template, stop words and default
parameters, and the license, written into the model as layers. Tags read
``[size][-variant...][-quant]``: ``7b``, ``7b-instruct``, ``7b-instruct-q8_0``,
``13b-chat-q4_0``, or just a quant like ``q8_0``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib.resources import files

from ..errors import RemoteNotFound
from ..names import DEFAULT_HOST, DEFAULT_NAMESPACE, ModelName
from .manifests import MediaType

_QUANT_TOKEN = re.compile(r"^(i?q\d[a-z0-9_]*|f16|f32|bf16)$", re.IGNORECASE)
BUNDLED = "bundled"


@dataclass(frozen=True)
class Flavor:
    size: str
    repo_id: str  # a Hub repository, or BUNDLED for a model shipped on PyPI
    words: frozenset[str] = frozenset()
    quants: tuple[str, ...] = ()  # only for bundled flavors: what is shipped
    params: tuple[tuple[str, object], ...] = ()  # on top of the entry's parameters
    bundle: str | None = None  # for bundled flavors: which embedded model (a key of bundled.BUNDLES)


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    template_file: str
    license_file: str
    params: dict[str, object]
    flavors: tuple[Flavor, ...]
    default_size: str
    system: str | None = None

    def flavor(self, size: str) -> Flavor:
        return next(f for f in self.flavors if f.size == size)

    def example_tags(self) -> list[str]:
        tags = ["latest"]
        for flavor in self.flavors:
            word = sorted(flavor.words)[0] if flavor.words else None
            tags.append(flavor.size)
            if word:
                tags.append(f"{flavor.size}-{word}")
                quant = flavor.quants[0].lower() if flavor.repo_id == BUNDLED else "q8_0"
                tags.append(f"{flavor.size}-{word}-{quant}")
            elif flavor.repo_id == BUNDLED:
                tags.append(f"{flavor.size}-{flavor.quants[0].lower()}")
        return tags


@dataclass(frozen=True)
class CatalogSource:
    """A resolved short name: where its weights come from and the layers it adds."""

    entry: CatalogEntry
    flavor: Flavor
    quant: str | None  # None: the default choice

    @property
    def bundled(self) -> bool:
        return self.flavor.repo_id == BUNDLED

    def extra_layers(self) -> list[tuple[str, bytes]]:
        data = files(__package__).joinpath("catalog_data")
        layers = [
            (MediaType.TEMPLATE, data.joinpath(self.entry.template_file).read_bytes()),
            (MediaType.PARAMS, json.dumps({**self.entry.params, **dict(self.flavor.params)}, sort_keys=True).encode()),
            (MediaType.LICENSE, data.joinpath(self.entry.license_file).read_bytes()),
        ]
        if self.entry.system:
            layers.append((MediaType.SYSTEM, self.entry.system.encode()))
        return layers


_INSTRUCT = frozenset({"instruct", "v0.2"})
CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="smollm2",
            description="SmolLM2 Instruct",
            # ChatML, as the GGUF's own template, plus Hermes-style <tool_call> blocks so tools work
            template_file="smollm2.jinja",
            license_file="apache-2.0.license",
            params={"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2, "top_p": 0.9},
            flavors=(
                # The embedded default: small enough to ship on PyPI, an instruct model that ends its turns.
                Flavor("135m", BUNDLED, frozenset({"instruct"}), quants=("Q4_1",), bundle="smollm2-135m",
                       params=(("repeat_penalty", 1.1),)),
                Flavor("360m", "HuggingFaceTB/SmolLM2-360M-Instruct-GGUF", frozenset({"instruct"})),
                Flavor("1.7b", "HuggingFaceTB/SmolLM2-1.7B-Instruct-GGUF", frozenset({"instruct"})),
            ),
            default_size="1.7b",
        ),
        CatalogEntry(
            name="mistral",
            description="Mistral 7B Instruct v0.2",
            template_file="mistral.jinja",
            license_file="apache-2.0.license",
            params={"stop": ["[INST]", "[/INST]"]},
            flavors=(Flavor("7b", "TheBloke/Mistral-7B-Instruct-v0.2-GGUF", _INSTRUCT),),
            default_size="7b",
        ),
        CatalogEntry(
            name="llama2",
            description="Llama 2 Chat",
            template_file="llama2.jinja",
            license_file="llama2.license",
            params={"stop": ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]},
            flavors=(
                Flavor("7b", "TheBloke/Llama-2-7B-Chat-GGUF", frozenset({"chat"})),
                Flavor("13b", "TheBloke/Llama-2-13B-Chat-GGUF", frozenset({"chat"})),
            ),
            default_size="7b",
        ),
        CatalogEntry(
            name="gemma3",
            description="Gemma 3",
            template_file="gemma.jinja",
            license_file="gemma.license",
            params={"stop": ["<end_of_turn>", "<start_of_turn>"], "temperature": 1.0, "top_k": 64, "top_p": 0.95},
            flavors=(
                # The embedded 270M is the pretrained (base) model: it rarely ends a turn by itself,
                # so it gets an answer length and a gentler sampling that keeps it on topic.
                Flavor(
                    "270m",
                    BUNDLED,
                    frozenset(),
                    quants=("Q4_K_M",),
                    bundle="gemma3-270m",
                    params=(("num_predict", 200), ("temperature", 0.7), ("repeat_penalty", 1.15)),
                ),
                Flavor("1b", "ggml-org/gemma-3-1b-it-GGUF", frozenset({"it"})),
                Flavor("4b", "ggml-org/gemma-3-4b-it-GGUF", frozenset({"it"})),
                Flavor("12b", "ggml-org/gemma-3-12b-it-GGUF", frozenset({"it"})),
                Flavor("27b", "ggml-org/gemma-3-27b-it-GGUF", frozenset({"it"})),
            ),
            default_size="4b",
        ),
    )
}

DEFAULT_MODEL = "smollm2:135m"  # the embedded instruct model; LOCALLLM_DEFAULT_MODEL picks another


def lookup(name: ModelName) -> CatalogSource | None:
    """The catalog source for ``name``, ``None`` if it is no catalog name."""
    if name.host.lower() != DEFAULT_HOST or name.namespace.lower() != DEFAULT_NAMESPACE:
        return None
    entry = CATALOG.get(name.model.lower())
    if entry is None:
        return None
    tag = name.tag.lower()
    if tag == "latest":
        return CatalogSource(entry, entry.flavor(entry.default_size), None)
    tokens = tag.split("-")
    quant = tokens.pop().upper() if _QUANT_TOKEN.match(tokens[-1]) else None
    sizes = {f.size: f for f in entry.flavors}
    size = entry.default_size
    for token in tokens:
        if token in sizes:
            size = token
    flavor = sizes[size]
    unknown = [t for t in tokens if t not in sizes and t not in flavor.words]
    if unknown or sum(t in sizes for t in tokens) > 1:
        raise RemoteNotFound(
            f"model '{name.display}' not found: {entry.name} has no tag '{name.tag}'. "
            f"Try one of: {', '.join(entry.example_tags())}"
        )
    if flavor.repo_id == BUNDLED and quant is not None and quant not in flavor.quants:
        raise RemoteNotFound(
            f"model '{name.display}' not found: "
            f"{entry.name}:{flavor.size} is embedded in {', '.join(flavor.quants)} only"
        )
    return CatalogSource(entry, flavor, quant)


def catalog_names() -> list[str]:
    return sorted(CATALOG)
