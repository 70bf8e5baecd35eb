"""Creating a model from another one, from uploaded GGUF blobs, and from a Modelfile.

A new model is a new manifest: the base's layers, with the layers the request sets (template, system,
parameters, messages, licenses, adapters) in place of the base's. Layers are content-addressed, so a
model made from another shares its weights blob, and a text layer seen before is reused. Everything is
checked before the manifest is written (blobs present and what they claim, template renders, parameters
known), so a failed create leaves no model behind. The weights are checked against what llama.cpp
accepts (:func:`localllm.gguf_limits.check_hyperparameters`: a file llama.cpp would abort on is a 422
here, not a dead runner later), and so is the chat template a GGUF carries when the model will use it
(no TEMPLATE of its own).

The daemon never opens a path a client names: local files reach it as uploaded blobs
(``POST /api/blobs/sha256:...``), named in ``files``/``adapters`` or as ``FROM @sha256:...``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BlobNotFound, InvalidModelFile, InvalidRequest
from ..gguf_info import GGUFInfo, ModelSummary, read_gguf
from ..gguf_limits import check_hyperparameters
from ..images.params import PARAMETERS as IMAGE_PARAMETERS
from ..llm.prompts import check_template
from ..modelfile.parameters import typed_parameters
from ..modelfile.parser import MESSAGE_ROLES, Modelfile, parse_modelfile
from ..names import ModelName
from ..store.blobs import parse_digest
from ..store.manifests import FILENAME_ANNOTATION, Layer, Manifest, MediaType
from ..store.models import ModelStore
from ..store.pull import Pull, Puller

__all__ = ["CreateSpec", "ModelCreator", "Prepared", "spec_from_modelfile"]

Emit = Callable[[dict[str, Any]], None]
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)



def image_parameter_kinds(layers: list[Layer] | None) -> dict[str, type] | None:
    """The PARAMETER names an image model adds to a Modelfile's, given the base's layers (None: the base
    is not here yet, so any kind's names may come)."""
    if layers is None or any(layer.media_type == MediaType.IMAGE_FILE for layer in layers):
        return dict(IMAGE_PARAMETERS)
    return None


@dataclass
class CreateSpec:
    """What ``/api/create`` asks for, whichever form it came in."""

    name: ModelName
    model_from: str | None = None  # a model name
    files: dict[str, str] = field(default_factory=dict)  # file name -> digest of an uploaded blob
    adapters: dict[str, str] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    licenses: list[str] | None = None
    parameters: dict[str, Any] | list = field(default_factory=dict)  # object, or a Modelfile's lines
    messages: list[dict[str, Any]] | None = None


def _blob_reference(value: str) -> str | None:
    """The digest in ``@sha256:<hex>`` (what Ollama's CLI writes in place of a local path), else None."""
    text = value.strip()
    if text.startswith("@"):
        return parse_digest(text[1:])
    return None


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~", "\\")) or value.lower().endswith((".gguf", ".bin",
                                                                                      ".safetensors"))


def spec_from_modelfile(name: ModelName, text: str) -> CreateSpec:
    """A spec from the older ``modelfile`` form of ``/api/create``."""
    modelfile: Modelfile = parse_modelfile(text)
    spec = CreateSpec(name=name, template=modelfile.template, system=modelfile.system,
                      licenses=modelfile.licenses or None, parameters=modelfile.parameters,
                      messages=modelfile.messages or None)
    source = modelfile.model_from or ""
    digest = _blob_reference(source)
    if digest is not None:
        spec.files = {"model.gguf": digest}
    elif _looks_like_path(source):
        raise InvalidRequest(
            f"Modelfile line {modelfile.from_line}: FROM {source} is a file path, and the daemon does not open "
            "paths a client names; `localllm create -f Modelfile` uploads the file for you (or upload it with "
            "POST /api/blobs/sha256:<digest> and write FROM @sha256:<digest>)", param="modelfile",
        )
    else:
        spec.model_from = source
    for index, adapter in enumerate(modelfile.adapters):
        digest = _blob_reference(adapter)
        if digest is None:
            raise InvalidRequest(
                f"ADAPTER {adapter}: upload the adapter file as a blob and write ADAPTER @sha256:<digest> "
                "(`localllm create -f Modelfile` does this for you)", param="modelfile",
            )
        spec.adapters[f"adapter-{index}.gguf"] = digest
    return spec


@dataclass(frozen=True)
class Prepared:
    spec: CreateSpec
    pull: Pull | None  # the base model's pull, when it is not here yet


class ModelCreator:
    def __init__(self, store: ModelStore, puller: Puller,
                 parameter_kinds: Callable[[list[Layer] | None], dict[str, type] | None] = lambda _layers: None
                 ) -> None:
        self.store = store
        self.puller = puller
        # the parameters a kind of model adds to the text options (image models' steps, size, ...), given
        # the base's layers; given None, those of every kind
        self.parameter_kinds = parameter_kinds

    def prepare(self, spec: CreateSpec) -> Prepared:
        """Check what can be checked before any download, and plan the base's pull if it is not here, so a
        bad request is a 4xx before any progress is streamed."""
        if not spec.files and not spec.model_from:
            raise InvalidRequest("neither 'from' nor 'files' was given: say which model to start from",
                                 param="from")
        for filename, digest in {**spec.files, **spec.adapters}.items():
            if not self.store.blobs.exists(parse_digest(digest)):
                raise BlobNotFound(f"blob {digest} for {filename!r} was not uploaded: POST it to /api/blobs/{digest}")
        if spec.template is not None:
            check_template(spec.template)
        if spec.messages is not None:
            _checked_messages(spec.messages)
        base_name = None  # a model the new one starts from (not uploaded files)
        if spec.model_from and not spec.files and _blob_reference(spec.model_from) is None:
            base_name = ModelName.parse(spec.model_from)
        base_here = base_name is not None and self.store.exists(base_name)
        # the weights, and the chat template they carry, are checked here so a bad file is a 422 before
        # any progress is streamed (a base still to be pulled is checked by the pull)
        files = _model_files(spec)
        if files:
            parts = self._parts(files, check=True)
            if not spec.template:  # an empty TEMPLATE falls back to the GGUF's, as none does
                _check_embedded_template(parts[0][2], parts[0][0])
        elif base_here:
            self._check_base(base_name, spec)
        if spec.parameters:
            if base_here:
                kinds = self.parameter_kinds(self.store.get(base_name).manifest.layers)
            else:  # a base pulled later is checked again once its kind is known: any kind's names pass here
                kinds = self.parameter_kinds(None) if base_name is not None else None
            typed_parameters(spec.parameters, extra=kinds)
        # an unknown name fails here, before anything is written
        pull = self.puller.plan(base_name) if base_name is not None and not base_here else None
        return Prepared(spec, pull)

    def create(self, prepared: Prepared, emit: Emit) -> None:
        """Build and commit the model; ``emit`` receives Ollama's status events."""
        spec = prepared.spec
        emit({"status": "gathering model components"})
        base_layers, config = self._base(spec, prepared.pull, emit)
        if prepared.pull is not None and not spec.template:  # a base pulled just now: its template
            self._check_template_of(base_layers, spec.model_from or "the base model")
        layers = list(base_layers)
        for filename, digest in spec.adapters.items():
            layers.append(self._adapter_layer(filename, digest, base_layers))
        created: set[str] = set()
        layers = self._apply_texts(spec, layers, created)
        for layer in layers:
            verb = "creating new" if layer.digest in created else "using existing"
            emit({"status": f"{verb} layer {layer.digest}"})
        config_layer = self.store.add_config(config)
        emit({"status": "writing manifest"})
        self.store.commit(spec.name, Manifest(config=config_layer, layers=layers))
        emit({"status": "success"})

    # --- the base: a model, or uploaded GGUF blobs ------------------------------------------------------
    def _base(self, spec: CreateSpec, pull: Pull | None, emit: Emit) -> tuple[list[Layer], dict[str, Any]]:
        if spec.files:
            return self._from_files(spec.files)
        assert spec.model_from  # prepare() refused a spec with neither
        digest = _blob_reference(spec.model_from)
        if digest is not None:
            return self._from_files({"model.gguf": digest})
        base_name = ModelName.parse(spec.model_from)
        if pull is not None and not self.store.exists(base_name):
            emit({"status": f"pulling {base_name.display}"})
            self.puller.execute(pull, lambda event: emit(event) if event.get("status") != "success" else None)
        entry = self.store.get(base_name)
        config = dict(self.store.config(entry))
        config["parent_model"] = entry.name.display
        return list(entry.manifest.layers), config

    def _parts(self, files: dict[str, str], *, check: bool) -> list[tuple[str, str, GGUFInfo]]:
        """The uploaded model files (filename, digest, header), in split order; ``check`` holds them to
        llama.cpp's limits too (prepare() does, so create() need not read the tokenizer again)."""
        parts: list[tuple[str, str, GGUFInfo]] = []
        for filename, raw_digest in files.items():
            digest = parse_digest(raw_digest)
            if not self.store.blobs.exists(digest):
                raise BlobNotFound(f"blob {digest} for {filename!r} was not uploaded: POST it to /api/blobs/{digest}")
            info = self._gguf(digest, filename)
            if info.metadata.get("general.type") == "adapter":
                raise InvalidModelFile(f"{filename} is a LoRA adapter, not a model: give it as an ADAPTER")
            parts.append((filename, digest, info))
        parts.sort(key=lambda part: _split_index(part[0]))
        _check_split(parts)
        if check:
            _check_limits(parts[0][0] if len(parts) == 1 else "the split model", [info for _f, _d, info in parts])
        return parts

    def _check_base(self, base_name: ModelName, spec: CreateSpec) -> None:
        """An existing model the new one starts from: its GGUF weights (a model stored before these checks
        existed may not pass) and, when the new model will use it, the chat template inside them."""
        entry = self.store.get(base_name)
        model_layers = entry.manifest.layers_of(MediaType.MODEL)
        if not model_layers:
            return  # not a GGUF model (an image model, say)
        parts = [self._gguf(layer.digest, base_name.display) for layer in model_layers]
        _check_limits(base_name.display, parts)
        if not spec.template:
            self._check_template_of(list(entry.manifest.layers), base_name.display, parts[0])

    def _check_template_of(self, layers: list[Layer], name: str, info: GGUFInfo | None = None) -> None:
        """The GGUF's chat template, when the model's layers give none of their own (it is then the one used)."""
        template = next((layer for layer in layers if layer.media_type == MediaType.TEMPLATE), None)
        if template is not None and self.store.blobs.read_text(template.digest):
            return
        if info is None:
            model = next((layer for layer in layers if layer.media_type == MediaType.MODEL), None)
            if model is None:
                return
            info = self._gguf(model.digest, name)
        _check_embedded_template(info, name)

    def _from_files(self, files: dict[str, str]) -> tuple[list[Layer], dict[str, Any]]:
        parts = self._parts(files, check=False)  # prepare() checked them
        layers = [
            Layer(mediaType=MediaType.MODEL, digest=digest, size=self.store.blobs.size(digest),
                  annotations={FILENAME_ANNOTATION: filename.rsplit("/", 1)[-1]})
            for filename, digest, _info in parts
        ]
        summary = ModelSummary.from_parts([info for _f, _d, info in parts])
        config = {
            "model_format": summary.format, "model_family": summary.family, "model_families": summary.families,
            "model_type": summary.parameter_size, "file_type": summary.quantization_level,
            "parameter_count": summary.parameter_count, "context_length": summary.context_length,
            "source": "created", "files": [filename for filename, _d, _i in parts],
        }
        return layers, config

    def _gguf(self, digest: str, filename: str) -> GGUFInfo:
        try:
            return read_gguf(self.store.blobs.path(digest))
        except InvalidModelFile as exc:
            raise InvalidModelFile(f"{filename} is not a usable GGUF file: {exc.message}") from exc

    def _adapter_layer(self, filename: str, raw_digest: str, base_layers: list[Layer]) -> Layer:
        digest = parse_digest(raw_digest)
        if not self.store.blobs.exists(digest):
            raise BlobNotFound(f"adapter blob {digest} was not uploaded: POST it to /api/blobs/{digest}")
        info = self._gguf(digest, filename)
        if info.metadata.get("general.type") != "adapter" or info.metadata.get("adapter.type") != "lora":
            raise InvalidModelFile(f"{filename} is not a GGUF LoRA adapter (general.type = adapter, "
                                   "adapter.type = lora)")
        model = next((layer for layer in base_layers if layer.media_type == MediaType.MODEL), None)
        if model is not None:
            base_arch = self._gguf(model.digest, "the base model").architecture
            if info.architecture != base_arch:
                raise InvalidModelFile(f"the adapter {filename} is for {info.architecture} models, "
                                       f"but the base model is {base_arch}")
        return Layer(mediaType=MediaType.ADAPTER, digest=digest, size=self.store.blobs.size(digest),
                     annotations={FILENAME_ANNOTATION: filename.rsplit("/", 1)[-1]})

    # --- text layers -------------------------------------------------------------------------------------
    def _apply_texts(self, spec: CreateSpec, layers: list[Layer], created: set[str]) -> list[Layer]:
        """``layers`` with the request's text layers in place of the base's; ``created`` gets the new digests."""

        def text_layer(data: bytes, media_type: str) -> Layer:
            existed = self.store.blobs.exists(_digest_of(data))
            layer = self.store.add_bytes(data, media_type)
            if not existed:
                created.add(layer.digest)
            return layer

        new: dict[str, list[Layer]] = {}
        if spec.template is not None:
            check_template(spec.template)
            new[MediaType.TEMPLATE] = [text_layer(spec.template.encode(), MediaType.TEMPLATE)]
        if spec.system is not None:
            new[MediaType.SYSTEM] = [text_layer(spec.system.encode(), MediaType.SYSTEM)]
        if spec.licenses:
            new[MediaType.LICENSE] = [text_layer(text.encode(), MediaType.LICENSE) for text in spec.licenses]
        if spec.messages is not None:
            messages = _checked_messages(spec.messages)
            new[MediaType.MESSAGES] = [text_layer(json.dumps(messages).encode(), MediaType.MESSAGES)]
        if spec.parameters:
            typed = typed_parameters(spec.parameters, extra=self.parameter_kinds(layers))
            inherited = next((layer for layer in layers if layer.media_type == MediaType.PARAMS), None)
            base = json.loads(self.store.blobs.read_text(inherited.digest)) if inherited else {}
            merged = {**base, **typed}  # as Ollama: the new values win, the base's others stay
            new[MediaType.PARAMS] = [text_layer(json.dumps(merged, sort_keys=True).encode(), MediaType.PARAMS)]
        kept = [layer for layer in layers if layer.media_type not in new]
        return kept + [layer for group in new.values() for layer in group]


def _model_files(spec: CreateSpec) -> dict[str, str]:
    """The uploaded GGUF files the model is made of (``files``, or ``from: @sha256:...``), else {}."""
    if spec.files:
        return spec.files
    digest = _blob_reference(spec.model_from) if spec.model_from else None
    return {"model.gguf": digest} if digest is not None else {}


def _check_limits(name: str, parts: list[GGUFInfo]) -> None:
    """The model's hyperparameters against llama.cpp's limits; the first part holds the metadata."""
    try:
        check_hyperparameters(parts[0], [tensor for part in parts for tensor in part.tensors])
    except InvalidModelFile as exc:
        raise InvalidModelFile(f"{name} is not a usable model: {exc.message}") from exc


def _check_embedded_template(info: GGUFInfo, name: str) -> None:
    """A GGUF's own chat template (``tokenizer.chat_template``) is checked as a TEMPLATE is: a model whose
    template cannot render a conversation would fail every chat, so the create is refused."""
    source = info.chat_template
    if not source:
        return
    try:
        check_template(source)
    except InvalidRequest as exc:
        raise InvalidModelFile(
            f"the chat template inside {name} (tokenizer.chat_template) does not work: {exc.message}; give the "
            "model a TEMPLATE of its own to use instead"
        ) from exc


def _digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _checked_messages(messages: list[Any]) -> list[dict[str, Any]]:
    result = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content", ""), str):
            raise InvalidRequest(f"messages[{index}] must be an object with a role and a text content",
                                 param=f"messages[{index}]")
        role = message.get("role")
        if role not in MESSAGE_ROLES:
            raise InvalidRequest(f"messages[{index}].role must be one of {', '.join(MESSAGE_ROLES)}, not {role!r}",
                                 param=f"messages[{index}].role")
        result.append({"role": role, "content": message.get("content", "")})
    return result


def _split_index(filename: str) -> tuple[int, str]:
    match = _SPLIT.search(filename)
    return (int(match[1]) if match else 0, filename)


def _check_split(parts: list[tuple[str, str, GGUFInfo]]) -> None:
    """A model in several files must be one complete split (llama.cpp's ``-0000i-of-0000n.gguf``)."""
    if len(parts) == 1:
        return
    counts = {_SPLIT.search(filename)[2] if _SPLIT.search(filename) else None for filename, _d, _i in parts}
    if None in counts or len(counts) != 1:
        names = ", ".join(filename for filename, _d, _i in parts)
        raise InvalidRequest(f"several model files ({names}) must be the parts of one split GGUF, named "
                             "name-00001-of-0000N.gguf", param="files")
    total = int(counts.pop())
    indexes = [_split_index(filename)[0] for filename, _d, _i in parts]
    if indexes != list(range(1, total + 1)):
        raise InvalidRequest(f"the split model needs parts 1 to {total}; got {indexes}", param="files")
