"""The syntax tree's nodes, as the parser builds them and execution walks them."""

from __future__ import annotations

from typing import Any


class _Node:
    __slots__ = ("pos",)


class _Text(_Node):
    __slots__ = ("text",)

    def __init__(self, pos: int, text: str) -> None:
        self.pos, self.text = pos, text


class _Field(_Node):
    __slots__ = ("idents",)

    def __init__(self, pos: int, idents: list[str]) -> None:
        self.pos, self.idents = pos, idents


class _Variable(_Node):
    __slots__ = ("idents",)  # idents[0] is the variable's name, with its $

    def __init__(self, pos: int, idents: list[str]) -> None:
        self.pos, self.idents = pos, idents


class _Dot(_Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos


class _Nil(_Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos


class _Identifier(_Node):
    __slots__ = ("name",)

    def __init__(self, pos: int, name: str) -> None:
        self.pos, self.name = pos, name


class _Const(_Node):
    __slots__ = ("value", "text")

    def __init__(self, pos: int, value: Any, text: str) -> None:
        self.pos, self.value, self.text = pos, value, text


class _Chain(_Node):
    __slots__ = ("node", "fields")

    def __init__(self, pos: int, node: _Node, fields: list[str]) -> None:
        self.pos, self.node, self.fields = pos, node, fields


class _Command(_Node):
    __slots__ = ("args",)

    def __init__(self, pos: int, args: list[_Node]) -> None:
        self.pos, self.args = pos, args


class _Pipe(_Node):
    __slots__ = ("decl", "is_assign", "cmds")

    def __init__(self, pos: int, decl: list[str], is_assign: bool, cmds: list[_Command]) -> None:
        self.pos, self.decl, self.is_assign, self.cmds = pos, decl, is_assign, cmds


class _Action(_Node):
    __slots__ = ("pipe",)

    def __init__(self, pos: int, pipe: _Pipe) -> None:
        self.pos, self.pipe = pos, pipe


class _Branch(_Node):
    __slots__ = ("kind", "pipe", "body", "else_body")

    def __init__(self, pos: int, kind: str, pipe: _Pipe, body: list[_Node], else_body: list[_Node] | None) -> None:
        self.pos, self.kind, self.pipe, self.body, self.else_body = pos, kind, pipe, body, else_body


class _Loop(_Node):  # break / continue
    __slots__ = ("kind",)

    def __init__(self, pos: int, kind: str) -> None:
        self.pos, self.kind = pos, kind


class _Call(_Node):  # {{ template "name" pipeline }}
    __slots__ = ("name", "pipe")

    def __init__(self, pos: int, name: str, pipe: _Pipe | None) -> None:
        self.pos, self.name, self.pipe = pos, name, pipe
