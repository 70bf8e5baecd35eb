"""The template: :func:`parse`, and :class:`GoTemplate` with ``execute``, ``uses`` and ``cut_after``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .errors import _Fail
from .execute import _State
from .functions import FUNCTIONS
from .lexer import _lex, _Source
from .limits import DEFAULT_MAX_OUTPUT, DEFAULT_MAX_STEPS
from .nodes import _Action, _Branch, _Call, _Command, _Field, _Node, _Pipe, _Variable
from .parser import _Parser


class GoTemplate:
    """A parsed Go template; build one with :func:`parse`."""

    def __init__(self, source: str, src: _Source, root: list[_Node], templates: dict[str, list[_Node]]) -> None:
        self.source = source
        self._src = src
        self._root = root
        self._templates = templates
        self._funcs = FUNCTIONS

    def execute(self, data: Any, *, max_output: int = DEFAULT_MAX_OUTPUT, max_steps: int = DEFAULT_MAX_STEPS) -> str:
        """The template's output for ``data`` (``.`` and ``$``).

        Raises :class:`GoTemplateExecError` on an execution error, when the output would exceed ``max_output``
        characters, or when more than ``max_steps`` nodes (and range iterations) run."""
        state = _State(self._src, self._templates, self._funcs, max_output, max_steps)
        state.vars.append(["$", data])
        try:
            state.walk(data, self._root)
        except _Fail as exc:  # an error outside any command: place it at the node being run
            raise state.fail(str(exc)) from None
        except RecursionError:
            raise state.fail("template nested too deeply") from None
        return "".join(state.out)

    def uses(self, name: str) -> bool:
        """Whether a field or variable named ``name`` appears anywhere (case-insensitive), in any defined
        template too: Ollama's ``Template.Vars()``, which decides how a template gets its data."""
        wanted = name.lower()
        trees = [self._root, *self._templates.values()]
        return any(ident.lower() == wanted for tree in trees for ident in _identifiers(tree))

    def cut_after(self, field: str) -> GoTemplate:
        """A copy without everything after the first ``.field`` in tree order, keeping the control structure
        around it: Ollama's ``deleteNode``, which ends a legacy prompt where the model starts answering.

        Conditions are kept (they are not walked), an action in which the field appears keeps the arguments
        before it and the field; any node visited after it is dropped."""
        cut = [False]
        root = _cut_list(self._root, field, cut)
        return GoTemplate(self.source, self._src, root, self._templates)


def _identifiers(nodes: list[_Node]) -> Iterator[str]:
    """Ollama's ``Identifiers``: the names in fields and variables of actions, branches and template calls
    (it does not look inside chained terms like ``(x).Field``)."""
    stack: list[Any] = list(reversed(nodes))
    while stack:
        node = stack.pop()
        if isinstance(node, _Action):
            stack.append(node.pipe)
        elif isinstance(node, _Call):
            if node.pipe is not None:
                stack.append(node.pipe)
        elif isinstance(node, _Branch):
            stack.append(node.pipe)
            stack.extend(node.body)
            stack.extend(node.else_body or ())
        elif isinstance(node, _Pipe):
            for cmd in node.cmds:
                stack.extend(cmd.args)
        elif isinstance(node, _Field | _Variable):
            yield from node.idents


def _cut_list(nodes: list[_Node], field: str, cut: list[bool]) -> list[_Node]:
    kept: list[_Node] = []
    for node in nodes:
        if cut[0]:
            continue  # visited after the cut: deleted
        if isinstance(node, _Action):
            pipe = _cut_pipe(node.pipe, field, cut)
            if pipe is not None:
                kept.append(_Action(node.pos, pipe))
        elif isinstance(node, _Branch):
            body = _cut_list(node.body, field, cut)
            else_body = None
            if node.else_body is not None:
                # Go's deleteNode would panic on an else list visited after the cut; it is left empty here
                else_body = [] if cut[0] else _cut_list(node.else_body, field, cut)
            kept.append(_Branch(node.pos, node.kind, node.pipe, body, else_body))
        else:
            kept.append(node)
    return kept


def _cut_pipe(pipe: _Pipe, field: str, cut: list[bool]) -> _Pipe | None:
    if cut[0]:
        return None
    cmds: list[_Command] = []
    for cmd in pipe.cmds:
        args: list[_Node] = []
        for arg in cmd.args:
            if isinstance(arg, _Field) and field in arg.idents:
                cut[0] = True
                args.append(arg)
            elif cut[0]:
                continue
            elif isinstance(arg, _Pipe):
                inner = _cut_pipe(arg, field, cut)
                if inner is not None:
                    args.append(inner)
            else:
                args.append(arg)
        if not args:
            return None
        cmds.append(_Command(cmd.pos, args))
    if not cmds:
        return None
    return _Pipe(pipe.pos, pipe.decl, pipe.is_assign, cmds)


def parse(source: str) -> GoTemplate:
    """Parse ``source`` as Go's ``template.New("").Funcs(ollamaFuncs).Parse(source)`` would.

    Raises :class:`GoTemplateSyntaxError` with Go's message and the line and column."""
    src = _Source(source)
    tokens = _lex(src)
    parser = _Parser(src, tokens, FUNCTIONS)
    try:
        root = parser.parse()
    except RecursionError:
        token = parser.tokens[min(parser.index, len(parser.tokens) - 1)]
        raise parser.fail("template nested too deeply", token) from None
    return GoTemplate(source, src, root, parser.templates)
