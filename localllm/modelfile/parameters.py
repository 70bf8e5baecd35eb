"""``PARAMETER`` values checked and typed against the options the runner knows."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from ..llm.options import Options, convert_option, option_kinds
from .parser import ModelfileError, Parameter

__all__ = ["LEGACY", "typed_parameters"]
log = logging.getLogger(__name__)

# Names older Modelfiles still carry that no runner reads any more (llama.cpp takes these from the GGUF):
# accepted and dropped, so those Modelfiles create as written.
LEGACY = frozenset({"num_gqa", "rope_frequency_base", "rope_frequency_scale", "gqa", "embedding_only",
                    "num_gpu_layers", "n_gpu_layers"})
def typed_parameters(
    parameters: Iterable[Parameter] | Mapping[str, Any], *, extra: Mapping[str, type] | None = None
) -> dict[str, Any]:
    """Parameters as the params layer stores them: known names only, typed, ``stop`` as a list.

    ``parameters`` are a Modelfile's ``PARAMETER`` lines, or ``/api/create``'s ``parameters`` object (where a
    list value repeats the name). ``extra`` adds names the model kind knows beyond the text options (image
    models' ``steps``, ``width``, ...). Raises :class:`ModelfileError` naming the line and the valid names."""
    kinds = {**option_kinds(), **(extra or {})}
    items: list[Parameter | tuple[str, Any, None]] = []
    if isinstance(parameters, Mapping):
        for name, value in parameters.items():
            for item in value if isinstance(value, list) else [value]:
                items.append((name, item, None))
    else:
        items = [(p.name, p.value, p.line) for p in parameters]  # type: ignore[misc]
    result: dict[str, Any] = {}
    for name, value, line in items:  # type: ignore[misc]
        key = name.lower()
        if key in LEGACY:
            log.info("ignoring the legacy parameter %s", key)
            continue
        if key not in kinds:
            close = difflib.get_close_matches(key, kinds, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ModelfileError(
                f"unknown parameter {name!r}{hint}; valid parameters are: {', '.join(sorted(kinds))}", line
            )
        try:
            converted = convert_option(key, value, kinds[key])
        except ValueError as exc:
            raise ModelfileError(f"invalid PARAMETER value: {exc}", line) from None
        if kinds[key] is list:
            result.setdefault(key, []).append(converted)
        else:
            result[key] = converted
    option_values = {key: value for key, value in result.items() if key in Options.model_fields}
    try:
        Options(**option_values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = str(first["loc"][0])
        line = next((line for name, _v, line in items if name.lower() == key), None)  # type: ignore[misc]
        raise ModelfileError(f"invalid PARAMETER {key}: {first['msg']} (got {first.get('input')!r})",
                             line) from None
    return result
