"""Go values over Python data: :class:`GoStruct`, type names, truth, and printing (``fmt`` and JSON)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .errors import _Fail


class GoStruct:
    """A Go struct over data: ``.Field`` reads ``fields[Field]``; any other name is an error, as in Go.

    ``json_value`` is what ``json`` marshals and what printing shows (as JSON): the struct's JSON form."""

    __slots__ = ("type_name", "fields", "json_value")

    def __init__(self, type_name: str, fields: Mapping[str, Any], json_value: Any) -> None:
        self.type_name = type_name
        self.fields = dict(fields)
        self.json_value = json_value

    def __repr__(self) -> str:
        return f"GoStruct({self.type_name}, {self.fields!r})"


def _type_name(value: Any) -> str:
    if value is None:
        return "<nil>"
    if isinstance(value, GoStruct):
        return value.type_name
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    if isinstance(value, list | tuple):
        return "[]interface {}"
    return type(value).__name__


def _truth(value: Any) -> bool:
    """Go's truth: false, 0, nil, and empty strings, slices and maps are false; structs are true."""
    if value is None:
        return False
    if isinstance(value, GoStruct):
        return True
    if isinstance(value, bool | int | float | str | list | tuple | Mapping):
        return bool(value)
    return True


def _go_float(value: float) -> str:
    """A float as Go's ``%v`` prints it (``strconv.FormatFloat(f, 'g', -1, 64)``): 1 → "1", 1e6 → "1e+06"."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    point = len(text) + int(exponent)  # the decimal point's position in the digits
    exp = point - 1
    prefix = "-" if sign else ""
    if exp < -4 or exp >= 6:  # %v uses the shortest digits, and %e from an exponent of 6 (Go's eprec)
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{text}"
    if point >= len(text):
        return prefix + text + "0" * (point - len(text))
    return f"{prefix}{text[:point]}.{text[point:]}"


def _json_float(value: float) -> str:
    """A float as Go's ``encoding/json`` writes it: no exponent between 1e-6 and 1e21."""
    if math.isnan(value) or math.isinf(value):
        raise _Fail(f"json: unsupported value: {_go_float(value)}")
    if value == 0:
        return "0" if math.copysign(1, value) > 0 else "-0"
    magnitude = abs(value)
    if 1e-6 <= magnitude < 1e21:
        sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
        text = "".join(map(str, digits))
        point = len(text) + int(exponent)
        prefix = "-" if sign else ""
        if point <= 0:
            return f"{prefix}0.{'0' * -point}{text}"
        if point >= len(text):
            return prefix + text + "0" * (point - len(text))
        return f"{prefix}{text[:point]}.{text[point:]}"
    text = repr(value)  # e.g. 1e+21, 1e-07
    mantissa, _, exp = text.partition("e")
    if mantissa.endswith(".0"):
        mantissa = mantissa[:-2]
    number = int(exp)
    return f"{mantissa}e{'-' if number < 0 else '+'}{abs(number)}"


_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "<": "\\u003c", ">": "\\u003e"}
_JSON_ESCAPES.update({"&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})
_JSON_SPECIAL = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029]')


def _json_string(text: str) -> str:
    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return _JSON_ESCAPES.get(char) or f"\\u{ord(char):04x}"

    return '"' + _JSON_SPECIAL.sub(escape, text) + '"'


def go_json(value: Any) -> str:
    """``json.Marshal`` as Go writes it: compact, ``<``, ``>``, ``&`` escaped, map keys in the given order."""
    parts: list[str] = []
    stack: list[Any] = [value]
    while stack:  # iterative: deeply nested data cannot overflow the Python stack
        item = stack.pop()
        if isinstance(item, _Raw):
            parts.append(item.text)
        elif isinstance(item, GoStruct):
            stack.append(item.json_value)
        elif item is None:
            parts.append("null")
        elif item is True:
            parts.append("true")
        elif item is False:
            parts.append("false")
        elif isinstance(item, int):
            parts.append(str(item))
        elif isinstance(item, float):
            parts.append(_json_float(item))
        elif isinstance(item, str):
            parts.append(_json_string(item))
        elif isinstance(item, Mapping):
            pending: list[Any] = [_Raw("{")]
            for index, (key, val) in enumerate(item.items()):
                pending += [_Raw(("," if index else "") + _json_string(str(key)) + ":"), val]
            pending.append(_Raw("}"))
            stack.extend(reversed(pending))
        elif isinstance(item, list | tuple):
            pending = [_Raw("[")]
            for index, val in enumerate(item):
                pending += [_Raw(","), val] if index else [val]
            pending.append(_Raw("]"))
            stack.extend(reversed(pending))
        else:
            raise _Fail(f"json: unsupported type: {_type_name(item)}")
    return "".join(parts)


class _Raw:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _print(value: Any) -> str:
    """A value as ``{{ . }}`` (Go's ``fmt.Fprint``) writes it; maps, slices and structs as their JSON."""
    if value is None:
        return "<no value>"
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, GoStruct | Mapping | list | tuple):
        return go_json(value)
    return str(value)


def _sprint(value: Any) -> str:
    """A value inside ``print``/``printf``: nil is ``<nil>`` there, as in Go's fmt."""
    return "<nil>" if value is None else _print(value)
