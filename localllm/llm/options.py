"""Ollama's model options: names, types, bounds, and how they merge.

A model's params layer gives defaults; a request's ``options`` override them.
Unknown names are ignored with a warning in the log (as Ollama does at
request time). Load-time options decide which llama.cpp instance serves a
request; sampling options apply per request.
"""

from __future__ import annotations

import logging
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InvalidRequest

log = logging.getLogger(__name__)

MAX_CONTEXT = 1 << 20  # beyond a million tokens is a typo, not a plan
DEFAULT_NUM_CTX = 4096
DEFAULT_KEEP_ALIVE = 300.0  # seconds


class Options(BaseModel):
    """Every option name Ollama accepts; ``None`` means "not set here"."""

    model_config = ConfigDict(extra="forbid")

    # sampling, per request
    num_keep: int | None = Field(None, ge=-1)
    seed: int | None = None
    num_predict: int | None = Field(None, ge=-1, description="-1: until a stop or the context is full")
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    typical_p: float | None = Field(None, ge=0.0, le=1.0)
    tfs_z: float | None = Field(None, ge=0.0)
    repeat_last_n: int | None = Field(None, ge=-1)
    temperature: float | None = Field(None, ge=0.0)
    repeat_penalty: float | None = Field(None, ge=0.0)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    mirostat: int | None = Field(None, ge=0, le=2)
    mirostat_tau: float | None = Field(None, ge=0.0)
    mirostat_eta: float | None = Field(None, ge=0.0)
    penalize_newline: bool | None = None
    stop: list[str] | None = None
    # runner, at load time
    numa: bool | None = None
    num_ctx: int | None = Field(None, ge=1, le=MAX_CONTEXT)
    num_batch: int | None = Field(None, ge=1, le=MAX_CONTEXT)
    num_gpu: int | None = None
    main_gpu: int | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    num_thread: int | None = Field(None, ge=0, le=1024)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def merged(self, override: Options) -> Options:
        """These options with ``override``'s set values on top."""
        data = self.model_dump(exclude_none=True)
        data.update(override.model_dump(exclude_none=True))
        return Options(**data)

    def get(self, name: str, default: Any) -> Any:
        current = getattr(self, name)
        return default if current is None else current


KNOWN = frozenset(Options.model_fields)


def parse_options(raw: Any, *, source: str = "options") -> Options:
    """Validate an ``options`` object; unknown names are logged and dropped."""
    if raw is None:
        return Options()
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{source} must be an object of option names and values")
    unknown = sorted(set(raw) - KNOWN)
    if unknown:
        log.warning("ignoring unknown option(s) in %s: %s", source, ", ".join(unknown))
    try:
        return Options(**{k: v for k, v in raw.items() if k in KNOWN})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"invalid option {name}: {first['msg']} (got {first.get('input')!r})") from exc


_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any, default: float = DEFAULT_KEEP_ALIVE) -> float:
    """Seconds to keep a model loaded: a number of seconds, or a Go duration ("5m", "1h30m", "-1").

    Negative means forever; 0 means unload as soon as the request is done.
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidRequest("keep_alive must be a duration like '5m' or a number of seconds")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            return sign * float(body)  # "300", "-1"
        except ValueError:
            pass
        parts = _DURATION.findall(body)
        if parts and "".join(v + u for v, u in parts) == body:
            return sign * sum(float(v) * _UNIT[u] for v, u in parts)
    raise InvalidRequest(f"invalid keep_alive {value!r}: use a duration like '5m', '1h' or '-1', or seconds")


_TRUE = {"1", "t", "true"}
_FALSE = {"0", "f", "false"}


def option_kinds() -> dict[str, type]:
    """Each option's scalar type (``stop``: ``list``, of strings), for typing the text of a Modelfile's
    ``PARAMETER`` or of the REPL's ``/set parameter``."""
    kinds: dict[str, type] = {}
    for name, info in Options.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
        kinds[name] = list if typing.get_origin(annotation) is list else annotation
    return kinds


def convert_option(name: str, value: Any, kind: type) -> Any:
    """``value`` (text, or JSON) as ``kind``; ``ValueError`` says what the option takes."""
    if kind is list:
        return str(value)
    if isinstance(value, str):
        text = value.strip()
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(f"{name} takes true or false, not {value!r}")
        if kind is int:
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"{name} takes a whole number, not {value!r}") from None
        if kind is float:
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"{name} takes a number, not {value!r}") from None
        return text
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"{name} takes true or false, not {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{name} takes a whole number, not {value!r}")
    if kind is float and not isinstance(value, float):
        raise ValueError(f"{name} takes a number, not {value!r}")
    return value


def parse_option(name: str, text: str) -> Any:
    """One option given as text (``/set parameter temperature 0.7``), typed and bounds-checked;
    ``ValueError`` speaks to the person."""
    kinds = option_kinds()
    if name not in kinds:
        raise ValueError(f"unknown parameter '{name}'")
    value = convert_option(name, text, kinds[name])
    value = [value] if kinds[name] is list else value
    try:
        Options(**{name: value})
    except ValidationError as exc:
        raise ValueError(f"{name}: {exc.errors()[0]['msg']} (got {text!r})") from None
    return value
