"""Prompt tokens from a :class:`~localllm.llm.protocol.PromptSpec`, in the runner process.

Rendering a template and tokenizing its output can take long for a large request (or a hostile
template, within its budgets), so it happens here, in the runner, on a thread of its own: never on the
daemon's event loop, and never in the thread that decodes the other requests' tokens.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Protocol

from ..errors import ContextLengthExceeded, UnsupportedInput
from .go_chat import GoChatTemplate
from .literal import ControlStrings, Literals
from .protocol import PromptSpec
from .templates import ChatTemplate, fallback_template, looks_like_go_template

Template = ChatTemplate | GoChatTemplate


class Tokenizer(Protocol):
    """What prompt building needs of a loaded model (``runner.LlamaRunner``)."""

    bos_token: int
    adds_bos: bool
    bos_text: str
    eos_text: str
    controls: ControlStrings
    max_piece: int  # the most bytes one token stands for

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]: ...

    def detokenize(self, tokens: list[int]) -> str: ...

    def check_tokens(self, tokens: list[int], param: str) -> None: ...

    def fim_tokens(self) -> tuple[int, int, int] | None: ...


@lru_cache(maxsize=32)
def compiled(source: str, bos_token: str, eos_token: str) -> Template:
    """Ollama's Go templates and Hugging Face's Jinja ones; the dialect is told from the source."""
    if looks_like_go_template(source):
        return GoChatTemplate.compile(source)
    return ChatTemplate.compile(source, bos_token=bos_token, eos_token=eos_token)


def build(spec: PromptSpec, tok: Tokenizer, limit: int) -> tuple[list[int], Template | None]:
    """The prompt's tokens, and the template that wrote them (its end-of-turn markers are stop words).

    ``limit`` is the context the prompt must fit in: a text too long to fit whatever its tokens is refused
    before it is tokenized (tokenizing megabytes takes seconds)."""
    if spec.context:
        tok.check_tokens(spec.context, "context")
    if spec.kind == "tokens":
        tokens = list(spec.tokens or [])
        tok.check_tokens(tokens, "prompt")
        return tokens, None
    if spec.kind == "fim":
        return _fill_in_middle(spec, tok, limit), None
    if spec.kind == "text":
        return _with_context(spec, tok, [(spec.prompt, False)], limit), None
    if spec.kind != "chat":
        raise ValueError(f"unknown prompt kind {spec.kind!r}")
    template = compiled(spec.template, tok.bos_text, tok.eos_text) if spec.template else fallback_template()
    if spec.tools and not template.supports_tools:
        raise UnsupportedInput(f"{spec.model} does not support tools")
    literals = Literals(tok.controls)
    messages = [_protected(message, literals) for message in spec.messages]
    tools = literals.protect(spec.tools) if spec.tools else None
    text = template.render(messages, tools=tools, add_generation_prompt=True)
    return _with_context(spec, tok, literals.segments(text), limit), template


def _protected(message: dict[str, Any], literals: Literals) -> dict[str, Any]:
    """A message with its text (content, tool calls' arguments) protected; its role and keys as they are."""
    copy = dict(message)
    for key in ("content", "tool_calls", "thinking"):
        if key in copy:
            copy[key] = literals.protect(copy[key])
    return copy


def _with_context(spec: PromptSpec, tok: Tokenizer, segments: list[tuple[str, bool]], limit: int) -> list[int]:
    """Tokenize the segments (literal ones without control-token parsing); after an earlier answer's
    ``context`` no BOS, else a BOS unless the template wrote one itself."""
    _refuse_if_too_long(sum(len(text) for text, _literal in segments), len(spec.context or ()), tok, limit)
    tokens: list[int] = []
    for text, literal in segments:
        if text:
            tokens += tok.tokenize(text, add_bos=False, special=not literal)
    if spec.context:
        return list(spec.context) + tokens
    if tok.adds_bos and (not tokens or tokens[0] != tok.bos_token):
        tokens.insert(0, tok.bos_token)
    return tokens


def _refuse_if_too_long(characters: int, tokens: int, tok: Tokenizer, limit: int) -> None:
    """A text of n characters is at least n / max_piece tokens: one sure not to fit is refused untokenized."""
    at_least = characters // tok.max_piece + tokens
    if at_least >= limit:
        raise ContextLengthExceeded(
            f"the prompt is at least {at_least} tokens, more than this model's context of {limit} tokens holds; "
            "shorten it or raise the num_ctx option"
        )


def _fill_in_middle(spec: PromptSpec, tok: Tokenizer, limit: int) -> list[int]:
    fim = tok.fim_tokens()
    if fim is None:
        raise UnsupportedInput(f"{spec.model} does not support insert (suffix): it has no fill-in-middle tokens")
    pre, suf, mid = fim
    _refuse_if_too_long(len(spec.prompt) + len(spec.suffix or ""), 0, tok, limit)
    body = [pre, *tok.tokenize(spec.prompt), suf, *tok.tokenize(spec.suffix or ""), mid]
    return ([tok.bos_token] if tok.adds_bos else []) + body
