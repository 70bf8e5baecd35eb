"""The parser: tokens to a syntax tree, with Go's checks and error messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import GoTemplateSyntaxError
from .lexer import (
    ASSIGN,
    BOOL,
    CHAR,
    COMMA,
    DECLARE,
    DOT,
    EOF,
    ERROR,
    FIELD,
    IDENT,
    KEYWORD,
    LEFT,
    LPAREN,
    NUMBER,
    PIPE,
    RIGHT,
    RPAREN,
    SPACE,
    STRING,
    TEXT,
    VAR,
    _Source,
    _Token,
    repr_go,
)
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


class _Parser:
    def __init__(self, src: _Source, tokens: list[_Token], funcs: Mapping[str, Any]) -> None:
        self.src = src
        self.tokens = tokens
        self.index = 0
        self.funcs = funcs
        self.templates: dict[str, list[_Node]] = {}
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.depth = 0

    # token helpers
    def next(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind == ERROR:
            raise token.value
        if token.kind != EOF:
            self.index += 1
        return token

    def peek(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind == ERROR:
            raise token.value
        return token

    def next_non_space(self) -> _Token:
        token = self.next()
        while token.kind == SPACE:
            token = self.next()
        return token

    def peek_non_space(self) -> _Token:
        index = self.index
        while self.tokens[index].kind == SPACE:
            index += 1
        if self.tokens[index].kind == ERROR:
            raise self.tokens[index].value
        return self.tokens[index]

    def fail(self, message: str, token: _Token | int) -> GoTemplateSyntaxError:
        pos = token if isinstance(token, int) else token.pos
        return GoTemplateSyntaxError(message, *self.src.where(pos))

    def expect(self, kind: int, context: str) -> _Token:
        token = self.next_non_space()
        if token.kind != kind:
            raise self.fail(f"unexpected {token.describe()} in {context}", token)
        return token

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"template nested too deeply (more than {MAX_DEPTH} levels)", token)

    # structure
    def parse(self) -> list[_Node]:
        root: list[_Node] = []
        while self.peek().kind != EOF:
            token = self.peek()
            if token.kind == LEFT and self._peek_keyword_after_left() == "define":
                self.next()  # {{
                self.next_non_space()  # define
                self.parse_define(token)
                continue
            node, stop = self.parse_item()
            if stop is not None:
                raise self.fail(f"unexpected {{{{{stop[0]}}}}}", stop[1])
            if node is not None:
                root.append(node)
        return root

    def _peek_keyword_after_left(self) -> str | None:
        index = self.index + 1
        while self.tokens[index].kind == SPACE:
            index += 1
        token = self.tokens[index]
        return token.value if token.kind == KEYWORD else None

    def parse_define(self, start: _Token) -> None:
        name_token = self.next_non_space()
        if name_token.kind != STRING:
            raise self.fail(f"unexpected {name_token.describe()} in define clause", name_token)
        self.expect(RIGHT, "define clause")
        saved_vars, self.vars = self.vars, ["$"]
        body, stop = self.parse_list()
        self.vars = saved_vars
        if stop[0] != "end":
            raise self.fail(f"unexpected {{{{{stop[0]}}}}} in define clause", stop[1])
        self.add_template(name_token.value, body, name_token)

    def add_template(self, name: str, body: list[_Node], token: _Token) -> None:
        existing = self.templates.get(name)
        if existing is not None and _non_empty(existing) and _non_empty(body):
            raise self.fail(f"template: multiple definition of template {repr_go(name)}", token)
        if existing is None or _non_empty(body):
            self.templates[name] = body

    def parse_list(self) -> tuple[list[_Node], tuple[str, _Token]]:
        """Nodes up to an {{end}} or {{else}}, which is consumed up to (not including) its pipeline/}}."""
        nodes: list[_Node] = []
        while True:
            token = self.peek()
            if token.kind == EOF:
                raise self.fail("unexpected EOF", token)
            node, stop = self.parse_item()
            if stop is not None:
                return nodes, stop
            if node is not None:
                nodes.append(node)

    def parse_item(self) -> tuple[_Node | None, tuple[str, _Token] | None]:
        token = self.next()
        if token.kind == TEXT:
            return _Text(token.pos, token.value), None
        if token.kind != LEFT:
            raise self.fail(f"unexpected {token.describe()} in input", token)
        inner = self.peek_non_space()
        if inner.kind == KEYWORD and inner.value != "nil":
            self.next_non_space()
            word = inner.value
            if word in ("end", "else"):
                if word == "end":
                    self.expect(RIGHT, "end")
                return None, (word, inner)
            if word in ("if", "with", "range"):
                return self.parse_control(word, token), None
            if word in ("break", "continue"):
                if not self.range_depth:
                    raise self.fail(f"{{{{{word}}}}} outside {{{{range}}}}", inner)
                self.expect(RIGHT, word)
                return _Loop(inner.pos, word), None
            if word == "template":
                return self.parse_template(inner), None
            if word == "block":
                return self.parse_block(inner), None
            if word == "define":
                raise self.fail("unexpected define", inner)  # only at the top level
        pipe = self.parse_pipeline("command", RIGHT, allow_decl=True)
        return _Action(token.pos, pipe), None

    def parse_control(self, kind: str, start: _Token) -> _Branch:
        self.enter(start)
        mark = len(self.vars)
        pipe = self.parse_pipeline(kind, RIGHT, allow_decl=True)
        if kind == "range":
            self.range_depth += 1
        body, stop = self.parse_list()
        if kind == "range":
            self.range_depth -= 1
        else_body: list[_Node] | None = None
        if stop[0] == "else":
            after = self.peek_non_space()
            if (kind == "if" and after.kind == KEYWORD and after.value == "if") or (
                kind == "with" and after.kind == KEYWORD and after.value == "with"
            ):
                self.next_non_space()
                # {{else if}}: a nested if sharing this one's {{end}}
                else_body = [self.parse_control(kind, after)]
            else:
                self.expect(RIGHT, "else")
                else_body, stop = self.parse_list()
                if stop[0] != "end":
                    raise self.fail("expected end; found {{else}}", stop[1])
        del self.vars[mark:]
        self.depth -= 1
        return _Branch(start.pos, kind, pipe, body, else_body)

    def _named_call_head(self, clause: str) -> tuple[_Token, _Pipe | None]:
        """``"name" [pipeline]}}`` of a template or block clause: the name's token and the optional pipeline."""
        name_token = self.next_non_space()
        if name_token.kind != STRING:
            raise self.fail(f"unexpected {name_token.describe()} in {clause} clause", name_token)
        pipe = None
        if self.peek_non_space().kind != RIGHT:
            pipe = self.parse_pipeline(f"{clause} clause", RIGHT, allow_decl=False)
        else:
            self.next_non_space()
        return name_token, pipe

    def parse_template(self, start: _Token) -> _Call:
        name_token, pipe = self._named_call_head("template")
        return _Call(start.pos, name_token.value, pipe)

    def parse_block(self, start: _Token) -> _Call:
        name_token, pipe = self._named_call_head("block")
        self.enter(start)
        saved_vars, self.vars = self.vars, ["$"]
        saved_range, self.range_depth = self.range_depth, 0
        body, stop = self.parse_list()
        self.vars, self.range_depth = saved_vars, saved_range
        self.depth -= 1
        if stop[0] != "end":
            raise self.fail(f"unexpected {{{{{stop[0]}}}}} in block clause", stop[1])
        self.add_template(name_token.value, body, name_token)
        return _Call(start.pos, name_token.value, pipe)

    def parse_pipeline(self, context: str, end: int, *, allow_decl: bool) -> _Pipe:
        start = self.peek_non_space()
        decl: list[str] = []
        is_assign = False
        if allow_decl and start.kind == VAR:
            # $x := ..., $x = ..., and in range: $i, $e := ...
            save = self.index
            self.next_non_space()
            after = self.peek_non_space()
            if after.kind in (DECLARE, ASSIGN):
                self.next_non_space()
                decl, is_assign = [start.value], after.kind == ASSIGN
            elif after.kind == COMMA and context == "range":
                self.next_non_space()
                second = self.next_non_space()
                if second.kind != VAR:
                    raise self.fail(f"range can only initialize variables; found {second.describe()}", second)
                op = self.next_non_space()
                if op.kind not in (DECLARE, ASSIGN):
                    raise self.fail(f"unexpected {op.describe()} in range", op)
                decl, is_assign = [start.value, second.value], op.kind == ASSIGN
            else:
                self.index = save
        if is_assign:
            for name in decl:
                if name not in self.vars:
                    raise self.fail(f"undefined variable {repr_go(name)}", start)
        cmds: list[_Command] = []
        while True:
            token = self.peek_non_space()
            if token.kind == end:
                closing = self.next_non_space()
                if not cmds:
                    raise self.fail(f"missing value for {context}", closing)
                break
            cmds.append(self.parse_command(context, end))
            token = self.peek_non_space()
            if token.kind == PIPE:
                self.next_non_space()
                if self.peek_non_space().kind == end:
                    raise self.fail("missing command", self.peek_non_space())
                continue
            if token.kind != end:
                raise self.fail(f"unexpected {token.describe()} in {context}", token)
        if not is_assign:
            self.vars.extend(decl)
        for stage, cmd in enumerate(cmds[1:], start=2):
            first = cmd.args[0]
            if isinstance(first, _Const | _Nil | _Dot):
                raise self.fail(f"non executable command in pipeline stage {stage}", first.pos)
        return _Pipe(start.pos, decl, is_assign, cmds)

    def parse_command(self, context: str, end: int) -> _Command:
        args: list[_Node] = []
        start = self.peek_non_space()
        while True:
            token = self.peek_non_space()
            if token.kind in (end, PIPE) or (token.kind == RPAREN and end != RPAREN):
                break
            if token.kind == RPAREN:
                break
            if args and self.peek().kind != SPACE:
                raise self.fail(f"unexpected {token.describe()} in operand", token)
            args.append(self.parse_operand(context))
        if not args:
            raise self.fail("empty command", start)
        return _Command(start.pos, args)

    def parse_operand(self, context: str) -> _Node:
        token = self.next_non_space()
        kind = token.kind
        node: _Node
        if kind == FIELD:
            idents = [token.value]
            while self.peek().kind == FIELD:
                idents.append(self.next().value)
            return _Field(token.pos, idents)
        if kind == VAR:
            if token.value not in self.vars:
                raise self.fail(f"undefined variable {repr_go(token.value)}", token)
            idents = [token.value]
            while self.peek().kind == FIELD:
                idents.append(self.next().value)
            return _Variable(token.pos, idents)
        if kind == DOT:
            node = _Dot(token.pos)
        elif kind == KEYWORD and token.value == "nil":
            node = _Nil(token.pos)
        elif kind == IDENT:
            if token.value not in self.funcs:
                raise self.fail(f"function {repr_go(token.value)} not defined", token)
            node = _Identifier(token.pos, token.value)
        elif kind == STRING:
            node = _Const(token.pos, token.value, token.text)
        elif kind == BOOL:
            node = _Const(token.pos, token.value, token.text)
        elif kind == CHAR:
            node = _Const(token.pos, token.value, token.text)
        elif kind == NUMBER:
            node = _Const(token.pos, self.number(token), token.text)
        elif kind == LPAREN:
            self.enter(token)
            node = self.parse_pipeline("parenthesized pipeline", RPAREN, allow_decl=False)
            self.depth -= 1
        else:
            raise self.fail(f"unexpected {token.describe()} in operand", token)
        if self.peek().kind == FIELD:
            fields = []
            while self.peek().kind == FIELD:
                fields.append(self.next().value)
            if isinstance(node, _Const | _Nil | _Dot):
                raise self.fail(f"unexpected . after term {repr_go(token.text)}", token)
            node = _Chain(token.pos, node, fields)
        return node

    def number(self, token: _Token) -> int | float:
        text = token.text.replace("_", "")
        if text.endswith("i"):
            raise self.fail(f"complex numbers are not supported: {token.text}", token)
        try:
            lower = text.lower().lstrip("+-")
            negative = text.startswith("-")
            if lower.startswith("0x") and ("p" in lower or "." in lower):
                value: int | float = float.fromhex(text)
            elif lower.startswith(("0x", "0b", "0o")):
                value = int(lower, 0)
                value = -value if negative else value
            elif "." in lower or "e" in lower:
                value = float(text)
            elif len(lower) > 1 and lower.startswith("0"):
                value = int(lower, 8)
                value = -value if negative else value
            else:
                value = int(text)
        except ValueError:
            raise self.fail(f"illegal number syntax: {repr_go(token.text)}", token) from None
        return value


def _non_empty(nodes: list[_Node]) -> bool:
    return any(not (isinstance(node, _Text) and not node.text.strip()) for node in nodes)
