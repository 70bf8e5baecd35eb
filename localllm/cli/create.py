"""``localllm create NAME -f Modelfile``: read the Modelfile here, upload local files, ask the daemon.

The Modelfile is parsed on this side first, so its mistakes are reported with their line before anything
is sent. A ``FROM`` or ``ADAPTER`` naming a local file (relative to the Modelfile's folder) or a folder of
GGUF split files is hashed and uploaded as a blob (skipped when the daemon already has it); the daemon is
then asked to create the model from those digests, through Ollama's JSON form of ``/api/create``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from ..client import Client
from ..errors import ApiError, InvalidRequest
from ..modelfile.parameters import typed_parameters
from ..modelfile.parser import Modelfile, ModelfileError, parse_modelfile
from .progress import show_pull

CHUNK = 1024 * 1024


def read_modelfile(path: Path) -> Modelfile:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from a Windows editor is not an instruction
    except FileNotFoundError:
        raise InvalidRequest(f"no Modelfile at {path} (give one with -f)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read the Modelfile {path}: {exc}") from None
    return parse_modelfile(text)


def _local(value: str, folder: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path


def _names_a_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~", ".\\")) or value.lower().endswith(".gguf")


def _gguf_files(path: Path, what: str, line: int | None) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
        if not files:
            raise ModelfileError(f"{what} {path}: the folder has no .gguf files", line)
        return files
    return [path]


def _hash(path: Path, progress: Progress) -> str:
    task = progress.add_task(f"hashing {path.name}", total=path.stat().st_size)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            progress.advance(task, len(chunk))
    return "sha256:" + digest.hexdigest()


def _chunks(path: Path, progress: Progress, task: Any) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            progress.advance(task, len(chunk))
            yield chunk


def upload(client: Client, path: Path, console: Console) -> str:
    """The file's digest, once the daemon has its bytes."""
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as progress:
        digest = _hash(path, progress)
        if not client.blob_exists(digest):
            task = progress.add_task(f"copying {path.name}", total=path.stat().st_size)
            client.upload_blob(digest, _chunks(path, progress, task))
    return digest


def _parameter_kinds(client: Client, base: str | None) -> dict[str, type] | None:
    """Image models take their own parameters (steps, size, ...); ask the daemon what the base is."""
    if base is None:
        return None
    try:
        capabilities = client.show(base).get("capabilities") or []
    except ApiError:
        return None  # not here yet: the daemon pulls it and checks the parameters itself
    if "image" in capabilities:
        from ..images.params import PARAMETERS

        return dict(PARAMETERS)
    return None


def request_fields(client: Client, modelfile: Modelfile, folder: Path, console: Console) -> dict[str, Any]:
    """``/api/create`` fields for a parsed Modelfile, uploading what it names on this machine."""
    fields: dict[str, Any] = {}
    source = modelfile.model_from or ""
    local = _local(source, folder)
    if local.exists():
        files = _gguf_files(local, "FROM", modelfile.from_line)
        fields["files"] = {path.name: upload(client, path, console) for path in files}
    elif _names_a_path(source):
        raise ModelfileError(f"FROM {source}: no such file or folder ({local})", modelfile.from_line)
    else:
        fields["from"] = source
    adapters = {}
    for value, line in zip(modelfile.adapters, modelfile.adapter_lines, strict=True):
        path = _local(value, folder)
        if not path.is_file():
            raise ModelfileError(f"ADAPTER {value}: no such file ({path}); an adapter is a GGUF LoRA file", line)
        adapters[path.name] = upload(client, path, console)
    if adapters:
        fields["adapters"] = adapters
    if modelfile.parameters:
        fields["parameters"] = typed_parameters(modelfile.parameters,
                                                extra=_parameter_kinds(client, fields.get("from")))
    for key, value in (("template", modelfile.template), ("system", modelfile.system),
                       ("license", modelfile.licenses or None), ("messages", modelfile.messages or None)):
        if value is not None:
            fields[key] = value
    return fields


def create(client: Client, name: str, modelfile_path: Path, console: Console) -> None:
    modelfile = read_modelfile(modelfile_path)
    fields = request_fields(client, modelfile, modelfile_path.resolve().parent, console)
    show_pull(client.create(name, **fields), console)  # status lines, and bars if the base is pulled
