"""Chat templates: Hugging Face-style Jinja in a sandbox (Ollama's Go templates are in ``go_chat``).

A GGUF's ``tokenizer.chat_template`` is code written by whoever published the file. It renders the way
transformers' ``apply_chat_template`` renders it (the same immutable sandbox, globals and ``tojson``), so a
template behaves here as its author tested it, and cannot reach Python internals or change our data.
"""

from __future__ import annotations

import contextvars
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache, cached_property
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

from ..errors import TemplateError

# End-of-turn markers worth stopping at when a template writes them itself: the model ends its answer with the
# same marker, or — having missed it — starts the next turn's header, which is never part of an answer.
_TURN_MARKERS = (
    "<end_of_turn>",  # Gemma
    "<|im_end|>",  # ChatML: Qwen, Hermes, many fine-tunes
    "<|eot_id|>",  # Llama 3
    "<|end|>",  # Phi-3
    "<|endoftext|>",  # Phi, GPT-style formats
    "[INST]",  # Llama 2, Mistral: a new user turn begins
    "</s>",  # only when written literally (Zephyr, Vicuna styles); via eos_token the runner stops anyway
    "<|user|>",  # Zephyr, Phi-3, GLM: a new user turn begins
    "<|assistant|>",  # the same formats: a second answer header means the model runs on
)

# Probe text for the capability checks: plain ASCII, so tojson and trim leave it intact.
_PROBE = "localllm_probe_5b1e"


class _Raised(jinja2.TemplateError):
    """What ``raise_exception(...)`` throws: a refusal the template's author worded for the user."""


def _raise_exception(message: str) -> None:
    raise _Raised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """JSON as transformers writes it. Jinja's own ``tojson`` escapes ``<``, ``>``, ``&`` and ``'`` for HTML,
    which would change the tool schemas a model is shown."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _GenerationBlocks(Extension):
    """``{% generation %}...{% endgeneration %}``: transformers marks assistant text with it to build training
    masks. It changes nothing in the text, but without the tag a template that uses it would not parse."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


# A template is code from whoever published the model (or from a request's ``template``): everything it can do
# is bounded, so a hostile or broken one fails at once with an error instead of hanging the runner or eating
# its memory. One budget of characters holds for the output and for every string or list the template
# builds, checked before Python builds it where one call could build a huge one (center, ljust, %-widths,
# replace, join, tojson's indent, ~ and + and *); calls (macros included) are counted and nested at most
# MAX_DEPTH deep; loops are counted; and a render that still runs after RENDER_SECONDS is stopped.
MAX_OUTPUT = 16_000_000  # characters: twice LOCALLLM_MAX_PROMPT's default, more than any context holds
MAX_SEQUENCE = MAX_OUTPUT
MAX_LOOP_STEPS = 1_000_000
MAX_CALLS = 100_000
MAX_DEPTH = 64
RENDER_SECONDS = 3.0


@dataclass
class _Budget:
    deadline: float
    loop_steps: int = 0
    calls: int = 0
    depth: int = 0

    def loop_step(self) -> None:
        self.loop_steps += 1
        self._within(self.loop_steps, MAX_LOOP_STEPS, "loop steps")

    def enter_call(self) -> None:
        self.calls += 1
        self._within(self.calls, MAX_CALLS, "calls")
        if self.depth >= MAX_DEPTH:
            raise SecurityError(f"the template nested calls more than {MAX_DEPTH} deep")
        self.depth += 1

    def _within(self, count: int, limit: int, what: str) -> None:
        if count > limit:
            raise SecurityError(f"the template ran more than {limit:,} {what}")
        if count % 256 == 0 and time.monotonic() > self.deadline:  # the clock, now and then
            raise SecurityError(f"the template ran for more than {RENDER_SECONDS:g} seconds")


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("template_budget", default=None)


def _too_long(size: int) -> None:
    if size > MAX_OUTPUT:
        raise SecurityError(f"the template built a string longer than {MAX_OUTPUT:,} characters")


def _checked(value: Any) -> Any:
    if isinstance(value, str | list | tuple):
        _too_long(len(value))
    return value


def _budgeted(iterable: Any) -> Iterator[Any]:
    """What every ``{% for %}`` iterates: the original items, counted against the render's budget."""
    budget = _budget.get()
    for item in iterable:
        if budget is not None:
            budget.loop_step()
        yield item


def _concat(*parts: Any) -> str:
    """``a ~ b``: the parts' length is checked before they are joined."""
    texts = [str(part) for part in parts]
    _too_long(sum(len(text) for text in texts))
    return "".join(texts)


class _Budgeting(NodeTransformer):
    """Every ``{% for %}`` iterates through ``_budgeted``; every ``~`` joins through ``_concat``."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.Name("_localllm_budgeted", "load"), [node.iter], [], None, None,
                               lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return nodes.Call(nodes.Name("_localllm_concat", "load"), list(node.nodes), [], None, None,
                          lineno=node.lineno)


def _budget_tree(tree: nodes.Template) -> nodes.Template:
    return _Budgeting().visit(tree)


_FORMAT_NUMBERS = re.compile(r"%[-+ #0]*(\d*)(?:\.(\d+))?")
_WIDTH_METHODS = {"ljust", "rjust", "center", "zfill", "expandtabs"}


def _precheck_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a call that would build a string beyond the budget in one go."""
    method = getattr(obj, "__wrapped__", obj)  # str.format reaches us wrapped by the sandbox
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    if isinstance(owner, str):
        if name in _WIDTH_METHODS:
            for value in (*args, *kwargs.values()):
                if isinstance(value, int) and value > MAX_OUTPUT:
                    _too_long(value if name != "expandtabs" else value * owner.count("\t"))
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            count = owner.count(args[0]) if args[0] else len(owner) + 1
            _too_long(len(owner) + count * max(0, len(args[1]) - len(args[0])))
        elif name == "join" and args and isinstance(args[0], list | tuple):
            _too_long(sum(len(item) for item in args[0] if isinstance(item, str)) + len(owner) * len(args[0]))
        elif name in ("format", "format_map"):
            for match in re.finditer(r"[<>^=]?(\d{7,})", owner):
                _too_long(int(match.group(1)))


def _bounded_filter(name: str, function: Any) -> Any:
    """A filter that checks its arguments (where one call could build a huge string) and its result."""

    def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        values = [v for v in args if not isinstance(v, jinja2.runtime.Context | jinja2.Environment |
                                                         jinja2.nodes.EvalContext)]
        if name in ("center", "indent", "wordwrap", "tojson", "format", "truncate"):
            for value in (*values[1:], *kwargs.values()):
                if isinstance(value, int) and not isinstance(value, bool) and value > 10_000:
                    base = len(str(values[0])) if values else 0
                    scale = max(1, base) if name in ("indent", "tojson") else 1
                    _too_long(value * scale)
        elif name == "replace" and len(values) >= 3:
            text, old, new = str(values[0]), str(values[1]), str(values[2])
            count = text.count(old) if old else len(text) + 1
            _too_long(len(text) + count * max(0, len(new) - len(old)))
        elif name == "join" and values and isinstance(values[0], list | tuple):
            _too_long(sum(len(str(item)) for item in values[0]))

    def bounded(*args: Any, **kwargs: Any) -> Any:
        check(args, kwargs)
        return _checked(function(*args, **kwargs))

    bounded.__name__ = getattr(function, "__name__", name)
    if hasattr(function, "jinja_pass_arg"):
        bounded.jinja_pass_arg = function.jinja_pass_arg  # type: ignore[attr-defined]
    return bounded


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                    if len(sequence) * times > MAX_SEQUENCE:
                        raise SecurityError(f"the template built a sequence longer than {MAX_SEQUENCE:,}")
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                _too_long(len(left) + len(right))
        elif operator == "%" and isinstance(left, str):
            for width, precision in _FORMAT_NUMBERS.findall(left):
                _too_long(max(int(width or 0), int(precision or 0)))
        elif operator == "**" and isinstance(right, int | float) and abs(right) > 100:
            raise SecurityError("the template raised a number to a power above 100")
        return _checked(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _budget.get()
        if budget is not None:
            budget.enter_call()
        try:
            _precheck_call(__obj, args, kwargs)
            return _checked(super().call(__context, __obj, *args, **kwargs))
        finally:
            if budget is not None:
                budget.depth -= 1


def _environment() -> ImmutableSandboxedEnvironment:
    env = _BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationBlocks]
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["_localllm_budgeted"] = _budgeted
    env.globals["_localllm_concat"] = _concat
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    for name, function in list(env.filters.items()):
        env.filters[name] = _bounded_filter(name, function)
    return env


_ENV = _environment()


class ProbedTemplate:
    """What both template dialects learn about themselves by rendering probes; a subclass gives ``source``,
    ``render`` and ``_reads_tools`` (whether the template reads the tools at all)."""

    source: str

    def render(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = True, **extra: Any) -> str:
        raise NotImplementedError

    def _reads_tools(self) -> bool:
        raise NotImplementedError

    @cached_property
    def supports_tools(self) -> bool:
        """Whether the template shows the model the tools it is given.

        Reading the tools is not enough (a template may read them only to refuse), so a test render must also
        show the tool's name."""
        if not self._reads_tools():
            return False
        tool = {
            "type": "function",
            "function": {"name": _PROBE, "description": "", "parameters": {"type": "object", "properties": {}}},
        }
        return self._shows_probe([{"role": "user", "content": "hi"}], tools=[tool])

    @cached_property
    def supports_system(self) -> bool:
        """Whether a system message reaches the prompt.

        Tested by rendering one: a template may mention 'system' only to refuse it (Gemma 1 raises), and a
        generic one (``'<|im_start|>' + message['role']``) handles it without naming it."""
        return self._shows_probe([{"role": "system", "content": _PROBE}, {"role": "user", "content": "hi"}])

    def stop_words(self) -> list[str]:
        """The end-of-turn markers the template writes literally."""
        return [marker for marker in _TURN_MARKERS if marker in self.source]

    def _shows_probe(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> bool:
        try:
            return _PROBE in self.render(messages, tools=tools)
        except TemplateError:
            return False


class ChatTemplate(ProbedTemplate):
    """A compiled Jinja chat template; build one with :meth:`compile`."""

    def __init__(self, source: str, template: jinja2.Template, *, bos_token: str, eos_token: str) -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template = template

    @classmethod
    def compile(cls, source: str, *, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
        try:
            template = _ENV.from_string(_budget_tree(_ENV.parse(source)))
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(_syntax_message(source, exc)) from exc
        except Exception as exc:  # e.g. RecursionError on absurdly nested source
            raise TemplateError(f"template error: {exc}") from exc
        return cls(source, template, bos_token=bos_token, eos_token=eos_token)

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """The prompt for ``messages``; ``extra`` reaches the template as variables (``enable_thinking``, ...)."""
        context = {
            **extra,
            "messages": _prepare(messages),
            "tools": tools or None,  # templates test `if tools` and `tools is not none`: never an empty list
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        token = _budget.set(_Budget(deadline=time.monotonic() + RENDER_SECONDS))
        try:
            size, parts = 0, []
            for part in self._template.generate(context):  # the output, within the budget as it grows
                size += len(part)
                _too_long(size)
                parts.append(part)
            return "".join(parts)
        except _Raised as exc:
            raise TemplateError(f"the chat template rejected the messages: {exc}") from exc
        except Exception as exc:  # anything a template does wrong (type errors, sandbox refusals) is a bad template
            raise TemplateError(_render_message(exc)) from exc
        finally:
            _budget.reset(token)

    def _reads_tools(self) -> bool:
        return "tools" in meta.find_undeclared_variables(_ENV.parse(self.source))


def _prepare(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the messages as templates expect them: ``content`` always a string (a call-only assistant turn
    may come without one, and templates concatenate it), and a tool result's ``tool_name`` (Ollama's key) also
    as ``name`` (the key HF templates read)."""
    prepared = []
    for message in messages:
        copy = dict(message)
        if copy.get("content") is None:
            copy["content"] = ""
        if copy.get("role") == "tool" and copy.get("tool_name") and "name" not in copy:
            copy["name"] = copy["tool_name"]
        prepared.append(copy)
    return prepared


_FALLBACK_SOURCE = """\
{%- set system = messages | selectattr('role', 'equalto', 'system') | list -%}
{%- set others = messages | rejectattr('role', 'equalto', 'system') | list -%}
{{- (system + others) | map(attribute='content') | select | join('\\n\\n') -}}
"""


@cache
def fallback_template() -> ChatTemplate:
    """For models with no template at all: the messages' text, system first, separated by blank lines.

    No special tokens and no generation prompt: a base model continues the text, which is what Ollama's
    default template ``{{ .Prompt }}`` amounts to."""
    return ChatTemplate.compile(_FALLBACK_SOURCE)


# --- error messages ---------------------------------------------------------------------------------------------

_NEWLINE = re.compile(r"\r\n|\r|\n")  # Jinja's line breaks, and so its line numbers
_LEXER_OFFSET = re.compile(r" at (\d+)$")
_LEXER_UNEXPECTED = re.compile(r"unexpected '(.+?)'")


def _syntax_message(source: str, exc: jinja2.TemplateSyntaxError) -> str:
    where = f"line {exc.lineno}"
    message = exc.message or "syntax error"
    column = _syntax_column(source, exc)
    if column is not None:
        where += f", column {column}"
        message = _LEXER_OFFSET.sub("", message)  # Jinja's offset into the whole source: the column says it better
    return f"template error at {where}: {message}"


def _syntax_column(source: str, exc: jinja2.TemplateSyntaxError) -> int | None:
    """The 1-based column of a syntax error, when it can be known for sure.

    Jinja reports only the line. A lexer error's message carries an offset into the source; for a parser error,
    the token the parser stopped at is looked up on the error's line, and only an unambiguous (single) match
    gives a column."""
    lines = _NEWLINE.split(source)
    text = "\n".join(lines)
    try:
        for _ in _ENV.lexer.tokeniter(text, None):
            pass
    except jinja2.TemplateSyntaxError as lex_error:
        if lex_error.message == exc.message and lex_error.lineno == exc.lineno:
            if match := _LEXER_OFFSET.search(exc.message or ""):
                offset = int(match.group(1))
                return offset - text.rfind("\n", 0, offset)
            if match := _LEXER_UNEXPECTED.match(exc.message or ""):  # an unbalanced bracket
                return _unique_column(lines, exc.lineno, match.group(1))
            return None
    parser = Parser(_ENV, source)
    try:
        parser.parse()
    except jinja2.TemplateSyntaxError as parse_error:
        token = parser.stream.current
        if parse_error.message == exc.message and token.lineno == exc.lineno and isinstance(token.value, str):
            return _unique_column(lines, exc.lineno, token.value)
    return None


def _unique_column(lines: list[str], lineno: int, needle: str) -> int | None:
    if not needle.strip() or not 1 <= lineno <= len(lines) or lines[lineno - 1].count(needle) != 1:
        return None
    return lines[lineno - 1].index(needle) + 1


def _render_message(exc: BaseException) -> str:
    """Jinja's own errors explain themselves; a Python error gets its type name too (a bare KeyError says
    only ``'x'``). The line is that of the innermost template frame in the traceback Jinja rewrites."""
    text = str(exc) if isinstance(exc, jinja2.TemplateError) else f"{type(exc).__name__}: {exc}"
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"template error at line {line}: {text}" if line is not None else f"template error: {text}"


# --- Go templates ---------------------------------------------------------------------------------------------

# {{ .Prompt }}, {{ if .System }}, {{ if eq .Role "user" }}, {{ $.System }}: data named with a leading dot
_GO_DOT_ACTION = re.compile(r"\{\{-?\s*(?:[A-Za-z_]\w*\s+)*[.$]")
_GO_KEYWORD_ACTION = re.compile(r"\{\{-?\s*(?:(?:end|else|define|template|block)\b|/\*)")

# An action with its optional trim markers: Go trims only for "{{- " and " -}}" (a dash then a space).
def looks_like_go_template(source: str) -> bool:
    """Whether ``source`` is Ollama's Go text/template rather than Jinja.

    Both write expressions in ``{{ }}``, but Go also puts its control flow there (``{{ if .System }}``,
    ``{{ end }}``) and names data with a leading dot, which is never valid Jinja. A template that parses as
    Jinja is Jinja, whatever its string literals contain."""
    if not (_GO_DOT_ACTION.search(source) or ("{%" not in source and _GO_KEYWORD_ACTION.search(source))):
        return False
    try:
        _ENV.parse(source)
    except jinja2.TemplateSyntaxError:
        return True
    return False
