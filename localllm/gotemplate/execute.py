"""Execution: walking the syntax tree over data, with Go's rules and the template's budgets."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .errors import GoTemplateError, GoTemplateExecError, _Fail
from .lexer import _Source, repr_go
from .limits import MAX_DEPTH
from .nodes import (
    _Action,
    _Branch,
    _Call,
    _Chain,
    _Command,
    _Const,
    _Dot,
    _Field,
    _Identifier,
    _Loop,
    _Nil,
    _Node,
    _Pipe,
    _Text,
    _Variable,
)
from .values import GoStruct, _print, _truth, _type_name


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _State:
    """One execution: what the tree needs of its template (where a node is in the source, the ``define``d
    templates, the functions), the output so far, the budgets and the variables in scope."""

    def __init__(self, src: _Source, templates: dict[str, list[_Node]], functions: dict[str, Any],
                 max_output: int, max_steps: int) -> None:
        self.src = src
        self.templates = templates
        self.functions = functions
        self.out: list[str] = []
        self.size = 0
        self.steps = 0
        self.max_output = max_output
        self.max_steps = max_steps
        self.vars: list[list[Any]] = []  # [name, value] pairs, innermost last
        self.depth = 0
        self.node: _Node | None = None

    def fail(self, message: str, node: _Node | None = None) -> GoTemplateExecError:
        node = node or self.node
        line, column = self.src.where(node.pos) if node is not None else (1, 1)
        return GoTemplateExecError(message, line, column)

    def step(self, node: _Node) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise self.fail(f"execution exceeds the budget of {self.max_steps} steps", node)

    def write(self, text: str, node: _Node) -> None:
        self.size += len(text)
        if self.size > self.max_output:
            raise self.fail(f"output exceeds the limit of {self.max_output} characters", node)
        self.out.append(text)

    def check_size(self, value: Any, node: _Node) -> Any:
        if isinstance(value, str) and len(value) > self.max_output:
            raise self.fail(f"a value exceeds the limit of {self.max_output} characters", node)
        return value

    # variables
    def var(self, name: str) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise _Fail(f"undefined variable: {name}")

    def set_var(self, name: str, value: Any) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        raise _Fail(f"undefined variable: {name}")

    # walking
    def walk(self, dot: Any, nodes: list[_Node]) -> None:
        for node in nodes:
            self.step(node)
            self.node = node
            if isinstance(node, _Text):
                self.write(node.text, node)
            elif isinstance(node, _Action):
                value = self.pipeline(dot, node.pipe)
                if not node.pipe.decl:
                    self.write(_print(value), node)
            elif isinstance(node, _Branch):
                self.branch(dot, node)
            elif isinstance(node, _Loop):
                raise _Break() if node.kind == "break" else _Continue()
            elif isinstance(node, _Call):
                self.call_template(dot, node)

    def branch(self, dot: Any, node: _Branch) -> None:
        mark = len(self.vars)
        try:
            value = self.pipeline(dot, node.pipe)
            if node.kind == "range":
                self.range(dot, node, value)
            elif _truth(value):
                self.walk(value if node.kind == "with" else dot, node.body)
            elif node.else_body is not None:
                self.walk(dot, node.else_body)
        finally:
            del self.vars[mark:]

    def range(self, dot: Any, node: _Branch, value: Any) -> None:
        items: Iterator[tuple[Any, Any]]
        if value is None:
            items = iter(())
        elif isinstance(value, bool):
            raise self.fail(f"range can't iterate over {_print(value)}", node)
        elif isinstance(value, int):
            if len(node.pipe.decl) > 1:
                raise self.fail(f"can't use {value} to iterate over more than one variable", node)
            items = ((i, i) for i in range(value))
        elif isinstance(value, list | tuple):
            items = enumerate(value)
        elif isinstance(value, Mapping):
            try:
                keys = sorted(value)
            except TypeError:
                keys = list(value)
            items = ((key, value[key]) for key in keys)
        else:
            raise self.fail(f"range can't iterate over {_print(value)}", node)
        mark = len(self.vars)
        ran = False
        for key, element in items:
            ran = True
            self.step(node)
            decl = node.pipe.decl
            if len(decl) == 1:
                self.assign(decl[0], element, node.pipe.is_assign)
            elif len(decl) == 2:
                self.assign(decl[0], key, node.pipe.is_assign)
                self.assign(decl[1], element, node.pipe.is_assign)
            try:
                self.walk(element, node.body)
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del self.vars[mark:]
        if not ran and node.else_body is not None:
            self.walk(dot, node.else_body)

    def assign(self, name: str, value: Any, is_assign: bool) -> None:
        if is_assign:
            self.set_var(name, value)
        else:
            self.vars.append([name, value])

    def call_template(self, dot: Any, node: _Call) -> None:
        body = self.templates.get(node.name)
        if body is None:
            raise self.fail(f'template: no template {repr_go(node.name)} associated with template ""', node)
        value = self.pipeline(dot, node.pipe) if node.pipe is not None else None
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"exceeded maximum template depth ({MAX_DEPTH})", node)
        saved, self.vars = self.vars, [["$", value]]
        try:
            self.walk(value, body)
        finally:
            self.vars = saved
            self.depth -= 1

    def pipeline(self, dot: Any, pipe: _Pipe) -> Any:
        value: Any = _NO_FINAL
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
        if value is _NO_FINAL:
            value = None
        for name in pipe.decl:
            if len(pipe.decl) == 1:  # in range, the variables are set per element instead
                self.assign(name, value, pipe.is_assign)
        return value

    def command(self, dot: Any, cmd: _Command, final: Any) -> Any:
        self.step(cmd)
        first = cmd.args[0]
        if isinstance(first, _Nil):
            raise self.fail("nil is not a command", first)
        try:
            if isinstance(first, _Identifier):
                return self.check_size(self.function(dot, first, cmd.args[1:], final), first)
            if len(cmd.args) > 1 or final is not _NO_FINAL:
                raise self.fail(f"can't give argument to non-function {_describe(first)}", first)
            return self.arg(dot, first)
        except _Fail as exc:
            raise self.fail(f"executing at <{_describe(first)}>: {exc}", first) from None

    def arg(self, dot: Any, node: _Node) -> Any:
        try:
            return self._arg(dot, node)
        except _Fail as exc:
            raise self.fail(f"executing at <{_describe(node)}>: {exc}", node) from None

    def _arg(self, dot: Any, node: _Node) -> Any:
        if isinstance(node, _Field):
            return self.fields(dot, node.idents, node)
        if isinstance(node, _Variable):
            value = self.var(node.idents[0])
            return self.fields(value, node.idents[1:], node)
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Nil):
            return None  # an argument; as a command it is refused in command()
        if isinstance(node, _Const):
            return node.value
        if isinstance(node, _Pipe):
            mark = len(self.vars)
            try:
                return self.pipeline(dot, node)
            finally:
                del self.vars[mark:]
        if isinstance(node, _Chain):
            return self.fields(self.arg(dot, node.node), node.fields, node)
        if isinstance(node, _Identifier):
            return self.check_size(self.function(dot, node, [], _NO_FINAL), node)
        raise self.fail("unexpected node", node)

    def fields(self, value: Any, idents: list[str], node: _Node) -> Any:
        for name in idents:
            if isinstance(value, GoStruct):
                if name not in value.fields:
                    raise _Fail(f"can't evaluate field {name} in type {value.type_name}")
                value = value.fields[name]
            elif isinstance(value, Mapping):
                value = value.get(name)
            elif value is None:
                raise _Fail(f"nil pointer evaluating interface {{}}.{name}")
            else:
                raise _Fail(f"can't evaluate field {name} in type {_type_name(value)}")
        return value

    def function(self, dot: Any, ident: _Identifier, args: list[_Node], final: Any) -> Any:
        name = ident.name
        if name in ("and", "or"):
            nodes: list[Any] = list(args)
            if final is not _NO_FINAL:
                nodes.append(_Value(final))
            if not nodes:
                raise _Fail(f"wrong number of args for {name}: want at least 1 got 0")
            value: Any = None
            for item in nodes:
                value = item.value if isinstance(item, _Value) else self.arg(dot, item)
                if _truth(value) == (name == "or"):
                    return value
            return value
        values = [self.arg(dot, arg) for arg in args]
        if final is not _NO_FINAL:
            values.append(final)
        func = self.functions[name]
        try:
            return func(*values) if not getattr(func, "_needs_state", False) else func(self, *values)
        except _Fail as exc:
            raise _Fail(f"error calling {name}: {exc}") from None
        except GoTemplateError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise _Fail(f"error calling {name}: {exc}") from None


class _Value:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_NO_FINAL = object()


def _describe(node: _Node) -> str:
    if isinstance(node, _Field):
        return "." + ".".join(node.idents)
    if isinstance(node, _Variable):
        return ".".join(node.idents)
    if isinstance(node, _Dot):
        return "."
    if isinstance(node, _Nil):
        return "nil"
    if isinstance(node, _Identifier):
        return node.name
    if isinstance(node, _Const):
        return node.text
    if isinstance(node, _Chain):
        return "(" + _describe(node.node) + ")." + ".".join(node.fields)
    if isinstance(node, _Pipe):
        return "(...)"
    return "?"
