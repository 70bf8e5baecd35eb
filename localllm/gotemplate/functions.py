"""The builtin functions: Go's (``eq``, ``index``, ``printf``, ...) and those Ollama registers."""

from __future__ import annotations

import datetime
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from .errors import _Fail
from .lexer import repr_go
from .values import GoStruct, _go_float, _sprint, _truth, _type_name, go_json


def _arity(name: str, values: tuple[Any, ...], count: int) -> None:
    if len(values) != count:
        raise _Fail(f"wrong number of args for {name}: want {count} got {len(values)}")


def _kind(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def _eq(*values: Any) -> bool:
    if not values:
        raise _Fail("wrong number of args for eq: want at least 1 got 0")
    if len(values) == 1:
        raise _Fail("missing argument for comparison")
    first, others = values[0], values[1:]
    k1 = _kind(first)
    for other in others:
        k2 = _kind(other)
        if k1 != k2:
            if first is not None and other is not None:
                raise _Fail("incompatible types for comparison")
            continue
        if k1 == "other":
            if isinstance(first, GoStruct) and isinstance(other, GoStruct):
                if first is other or first.json_value == other.json_value:
                    return True
                continue
            raise _Fail(f"non-comparable types {_type_name(first)}: {_type_name(other)}")
        if first == other:
            return True
    return False


def _ne(*values: Any) -> bool:
    if len(values) != 2:
        raise _Fail(f"wrong number of args for ne: want 2 got {len(values)}")
    return not _eq(*values)


def _ordered(name: str, test: Callable[[Any, Any], bool]) -> Callable[..., bool]:
    def compare(*values: Any) -> bool:
        _arity(name, values, 2)
        a, b = values
        ka, kb = _kind(a), _kind(b)
        if ka in ("bool", "other", "nil") or kb in ("bool", "other", "nil"):
            raise _Fail("invalid type for comparison")
        if ka != kb:
            raise _Fail("incompatible types for comparison")
        return test(a, b)

    return compare


def _not(*values: Any) -> bool:
    _arity("not", values, 1)
    return not _truth(values[0])


def _len(*values: Any) -> int:
    _arity("len", values, 1)
    value = values[0]
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, list | tuple | Mapping):
        return len(value)
    if value is None:
        raise _Fail("len of nil pointer")
    raise _Fail(f"len of type {_type_name(value)}")


def _int_arg(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Fail(f"cannot index slice/array with type {_type_name(value)}")
    return value


def _index(*values: Any) -> Any:
    if not values:
        raise _Fail("wrong number of args for index: want at least 1 got 0")
    item = values[0]
    if item is None:
        raise _Fail("index of untyped nil")
    for key in values[1:]:
        if isinstance(item, str):
            data = item.encode("utf-8")
            position = _int_arg(key)
            if not 0 <= position < len(data):
                raise _Fail(f"index out of range: {position}")
            item = data[position]
        elif isinstance(item, list | tuple):
            position = _int_arg(key)
            if not 0 <= position < len(item):
                raise _Fail(f"index out of range: {position}")
            item = item[position]
        elif isinstance(item, Mapping):
            item = item.get(key)
        elif item is None:
            raise _Fail("index of nil pointer")
        else:
            raise _Fail(f"can't index item of type {_type_name(item)}")
    return item


def _slice(*values: Any) -> Any:
    if not values:
        raise _Fail("wrong number of args for slice: want at least 1 got 0")
    item, indexes = values[0], [_int_arg(v) for v in values[1:]]
    if item is None:
        raise _Fail("slice of untyped nil")
    if len(indexes) > 3:
        raise _Fail(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise _Fail("cannot 3-index slice a string")
        data = item.encode("utf-8")
    elif isinstance(item, list | tuple):
        data = item
    else:
        raise _Fail(f"can't slice item of type {_type_name(item)}")
    size = len(data)
    bounds = [0, size]
    for position, index in enumerate(indexes[:2]):
        if not 0 <= index <= size:
            raise _Fail(f"index out of range: {index}")
        bounds[position] = index
    if len(indexes) == 3:
        if not 0 <= indexes[2] <= size:
            raise _Fail(f"index out of range: {indexes[2]}")
        if bounds[1] > indexes[2]:
            raise _Fail(f"invalid slice index: {bounds[1]} > {indexes[2]}")
    if bounds[0] > bounds[1]:
        raise _Fail(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    result = data[bounds[0] : bounds[1]]
    if isinstance(result, bytes):
        return result.decode("utf-8", errors="replace")
    return list(result)


def _sprint_args(values: tuple[Any, ...]) -> str:
    """Go's ``fmt.Sprint``: a space between operands when neither is a string."""
    out: list[str] = []
    for index, value in enumerate(values):
        if index and not isinstance(value, str) and not isinstance(values[index - 1], str):
            out.append(" ")
        out.append(_sprint(value))
    return "".join(out)


def _print_fn(*values: Any) -> str:
    return _sprint_args(values)


def _println_fn(*values: Any) -> str:
    return " ".join(_sprint(value) for value in values) + "\n"


_VERB = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d*))?([a-zA-Z%])?")


def _printf(*values: Any) -> str:
    """Go's ``fmt.Sprintf`` for the common verbs: %s %d %v %q %t %f %g %e %x %X %c %%, flags, width, precision."""
    if not values:
        raise _Fail("wrong number of args for printf: want at least 1 got 0")
    fmt, args = values[0], list(values[1:])
    if not isinstance(fmt, str):
        raise _Fail(f"wrong type for value; expected string; got {_type_name(fmt)}")
    out: list[str] = []
    used = 0
    pos = 0
    while pos < len(fmt):
        percent = fmt.find("%", pos)
        if percent < 0:
            out.append(fmt[pos:])
            break
        out.append(fmt[pos:percent])
        match = _VERB.match(fmt, percent)
        assert match is not None
        flags, width_text, precision_text, verb = match.groups()
        pos = match.end()
        if verb is None:
            out.append("%!(NOVERB)")
            continue
        if verb == "%":
            out.append("%")
            continue

        def star(text: str | None) -> int | None:
            nonlocal used
            if text is None:
                return None
            if text != "*":
                return int(text) if text else 0
            used += 1
            value = args[used - 1] if used <= len(args) else None
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        width = star(width_text)
        precision = star(precision_text)
        if width is not None and abs(width) > 1_000_000:  # Go's fmt refuses these too
            out.append("%!(BADWIDTH)")
            width = None
        if precision is not None and abs(precision) > 1_000_000:
            out.append("%!(BADPREC)")
            precision = None
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        value = args[used]
        used += 1
        out.append(_pad(_format_verb(verb, value, flags, precision), width, flags))
    if used < len(args):
        extra = ", ".join(f"{_type_name(v)}={_sprint(v)}" for v in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _pad(text: str, width: int | None, flags: str) -> str:
    if width is None or len(text) >= width:
        return text
    if "-" in flags:
        return text + " " * (width - len(text))
    if "0" in flags and text[:1] in "+-" and text[1:].replace(".", "").isdigit():
        return text[0] + "0" * (width - len(text)) + text[1:]
    if "0" in flags and text.replace(".", "").isdigit():
        return "0" * (width - len(text)) + text
    return " " * (width - len(text)) + text


def _format_verb(verb: str, value: Any, flags: str, precision: int | None) -> str:
    kind = _kind(value)
    bad = f"%!{verb}({_type_name(value)}={_sprint(value)})"
    if verb == "v":
        text = _sprint(value)
        if "+" in flags and kind in ("int", "float") and not text.startswith("-"):
            text = "+" + text
        return text
    if verb == "s":
        if kind in ("int", "float", "bool"):
            return bad
        text = _sprint(value)
        return text[:precision] if precision is not None else text
    if verb == "q":
        if kind == "string":
            return repr_go(value)
        if kind == "int":
            return "'" + repr_go(chr(value))[1:-1].replace("'", "\\'") + "'"
        return bad
    if verb == "t":
        return ("true" if value else "false") if kind == "bool" else bad
    if verb == "d":
        if kind != "int":
            return bad
        text = str(value)
        return "+" + text if "+" in flags and value >= 0 else text
    if verb in "xX":
        if kind == "int":
            text = format(value, "x")
        elif kind == "string":
            text = value.encode("utf-8").hex()
        else:
            return bad
        return text.upper() if verb == "X" else text
    if verb == "c":
        return chr(value) if kind == "int" else bad
    if verb in "feEgG":
        if kind != "float":
            return bad
        if verb == "g" and precision is None:
            return _go_float(value)
        text = format(value, f".{6 if precision is None else precision}{verb}")
        return "+" + text if "+" in flags and value >= 0 else text
    return bad


def _html(*values: Any) -> str:
    text = _sprint_args(values)
    for old, new in (("&", "&amp;"), ("'", "&#39;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;"), ("\0", "\ufffd")):
        text = text.replace(old, new)
    return text


def _js(*values: Any) -> str:
    out = []
    for char in _sprint_args(values):
        if char in "\\'\"":
            out.append("\\" + char)
        elif char in "<>&=":
            out.append(f"\\u{ord(char):04X}")
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return "".join(out)


def _urlquery(*values: Any) -> str:
    return urllib.parse.quote_plus(_sprint_args(values), safe="-_.~")


def _json_fn(*values: Any) -> str:
    _arity("json", values, 1)
    return go_json(values[0])


def _current_date(*values: Any) -> str:
    for value in values:
        if not isinstance(value, str):
            raise _Fail(f"wrong type for value; expected string; got {_type_name(value)}")
    return datetime.date.today().strftime("%Y-%m-%d")


def _yesterday_date(*values: Any) -> str:
    _current_date(*values)
    return (datetime.date.today() - datetime.timedelta(days=1)).strftime("%Y-%m-%d")


_TS_TYPES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean", "array": "any[]"}
_TS_TYPES.update({"object": "Record<string, any>", "null": "null"})


def _ts_type(schema: Any) -> str:
    if not isinstance(schema, Mapping):
        return "any"
    any_of = schema.get("anyOf")
    if isinstance(any_of, list) and any_of:
        return " | ".join(_ts_type(item) for item in any_of)
    types = schema.get("type")
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, list) or not types:
        return "any"
    return " | ".join(_TS_TYPES.get(t, "any") if isinstance(t, str) else "any" for t in types)


def _to_typescript_type(*values: Any) -> str:
    """Ollama's ``toTypeScriptType``: the TypeScript type of a tool parameter (an ``api.ToolProperty``)."""
    _arity("toTypeScriptType", values, 1)
    value = values[0]
    if isinstance(value, GoStruct) and value.type_name.endswith("ToolProperty"):
        return _ts_type(value.json_value)
    return "any"


def _stub(name: str) -> Callable[..., Any]:
    def function(*values: Any) -> Any:  # only for and/or, which the executor handles itself
        raise _Fail(f"{name} evaluated out of order")

    return function


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "and": _stub("and"),
    "or": _stub("or"),
    "not": _not,
    "eq": _eq,
    "ne": _ne,
    "lt": _ordered("lt", lambda a, b: a < b),
    "le": _ordered("le", lambda a, b: a <= b),
    "gt": _ordered("gt", lambda a, b: a > b),
    "ge": _ordered("ge", lambda a, b: a >= b),
    "len": _len,
    "index": _index,
    "slice": _slice,
    "print": _print_fn,
    "printf": _printf,
    "println": _println_fn,
    "html": _html,
    "js": _js,
    "urlquery": _urlquery,
    # Ollama's own (template/template.go)
    "json": _json_fn,
    "currentDate": _current_date,
    "yesterdayDate": _yesterday_date,
    "toTypeScriptType": _to_typescript_type,
}
