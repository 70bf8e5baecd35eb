"""An image request's settings: names, types, bounds and defaults, checked in one place.

``PARAMETERS`` is what a Modelfile may set for an image model (stored in its params layer, read as
defaults at generation time); a request's own values win over them. Every error names its parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..diffusion.schedulers import NAMES as SCHEDULERS
from ..errors import InvalidRequest

PARAMETERS: dict[str, type] = {
    "steps": int,
    "width": int,
    "height": int,
    "scheduler": str,
    "guidance": float,
    "negative_prompt": str,
    "precision": str,
}
SIZE_MULTIPLE = 64
MAX_STEPS = 150
MAX_GUIDANCE = 50.0
PRECISIONS = ("fp32", "fp16", "uint8")  # convert.PRECISIONS, without importing onnx here


def parameter_names() -> list[str]:
    """The PARAMETER names a Modelfile may give an image model."""
    return list(PARAMETERS)


@dataclass(frozen=True)
class ImageSettings:
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str
    negative_prompt: str
    precision: str
    seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_value(name: str, value: Any) -> Any:
    """``value`` as the parameter's type; InvalidRequest naming ``name`` if it is not one."""
    kind = PARAMETERS[name]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise InvalidRequest(f"{name} must be an integer, not {value!r}", param=name)
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f"{name} must be a number, not {value!r}", param=name)
        return float(value)
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string, not {value!r}", param=name)
    return value


def parse_parameter(name: str, text: str) -> Any:
    """A Modelfile's ``PARAMETER name text`` for an image model, typed (the params layer stores JSON)."""
    if name not in PARAMETERS:
        raise InvalidRequest(f"unknown parameter {name!r} for an image model: use one of {', '.join(PARAMETERS)}",
                             param=name)
    kind = PARAMETERS[name]
    if kind is str:
        return text
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number, not {text!r}", param=name) from None
    return check_value(name, value)


def resolve(request: Mapping[str, Any], defaults: Mapping[str, Any], model_info: Mapping[str, Any],
            max_size: int) -> ImageSettings:
    """Request values over the model's params layer over the model's own defaults, validated.

    ``model_info``: the pulled model's ``width``/``height``/``precision`` and recommended
    ``steps``/``guidance``/``scheduler``. ``None`` in ``request`` means "not given".
    """
    merged: dict[str, Any] = {
        "steps": 20, "guidance": 7.5, "scheduler": "euler_a", "negative_prompt": "", "precision": "fp16",
        **{k: v for k, v in model_info.items() if k in PARAMETERS},
    }
    for source in (defaults, request):
        for key, value in source.items():
            if key in PARAMETERS and value is not None:
                merged[key] = check_value(key, value)
    width, height = merged["width"], merged["height"]
    for key, value in (("width", width), ("height", height)):
        if value <= 0 or value % SIZE_MULTIPLE:
            raise InvalidRequest(f"{key} must be a positive multiple of {SIZE_MULTIPLE}, not {value}", param=key)
        if value > max_size:
            raise InvalidRequest(f"{key} {value} is beyond the maximum of {max_size} (LOCALLLM_IMAGE_MAX_SIZE)",
                                 param=key)
    steps = merged["steps"]
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidRequest(f"steps must be between 1 and {MAX_STEPS}, not {steps}", param="steps")
    guidance = merged["guidance"]
    if not 0.0 <= guidance <= MAX_GUIDANCE:
        raise InvalidRequest(f"guidance must be between 0 and {MAX_GUIDANCE}, not {guidance}", param="guidance")
    if merged["scheduler"] not in SCHEDULERS:
        raise InvalidRequest(f"unknown scheduler {merged['scheduler']!r}: use one of {', '.join(SCHEDULERS)}",
                             param="scheduler")
    if merged["precision"] not in PRECISIONS:
        raise InvalidRequest(f"unknown precision {merged['precision']!r}: use one of {', '.join(PRECISIONS)}",
                             param="precision")
    seed = request.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InvalidRequest(f"seed must be a non-negative integer, not {seed!r}", param="seed")
    return ImageSettings(width=width, height=height, steps=steps, guidance=guidance, scheduler=merged["scheduler"],
                         negative_prompt=merged["negative_prompt"], precision=merged["precision"], seed=seed)


def parse_size(text: Any, param: str = "size") -> tuple[int, int]:
    """OpenAI's ``WIDTHxHEIGHT`` → (width, height)."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{param} must be a string WIDTHxHEIGHT, e.g. 512x512", param=param)
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InvalidRequest(f"{param} must be WIDTHxHEIGHT, e.g. 512x512, not {text!r}", param=param)
    return int(parts[0]), int(parts[1])
