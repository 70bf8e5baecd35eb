"""From a request to prompt tokens: which template, how messages render, which stop words.

The template comes from the model's template layer if it has one, else from
the GGUF's ``tokenizer.chat_template``, else a plain-text fallback (a base
model continues the text). Jinja templates render in a sandbox as Hugging
Face does; Ollama's Go templates as Ollama renders them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..errors import UnsupportedInput
from .go_chat import GoChatTemplate
from .options import Options
from .runner import LlamaRunner
from .scheduler import ModelFacts
from .templates import ChatTemplate, fallback_template, looks_like_go_template


def template_source(facts: ModelFacts) -> str | None:
    return facts.template or facts.info.chat_template


def chat_template(
    facts: ModelFacts, runner: LlamaRunner, override: str | None = None
) -> ChatTemplate | GoChatTemplate:
    source = override if override is not None else template_source(facts)
    if not source:
        return fallback_template()
    return _compiled(source, runner.bos_text, runner.eos_text)


@lru_cache(maxsize=32)
def _compiled(source: str, bos_token: str, eos_token: str) -> ChatTemplate | GoChatTemplate:
    """Ollama's Go templates and Hugging Face's Jinja ones; the dialect is told from the source."""
    if looks_like_go_template(source):
        return GoChatTemplate.compile(source)
    return ChatTemplate.compile(source, bos_token=bos_token, eos_token=eos_token)


def stop_words(options: Options, template: ChatTemplate | GoChatTemplate | None) -> list[str]:
    """The stop words of the options (a request's replace the params layer's), else the template's
    end-of-turn markers (llama.cpp also stops at the vocabulary's end-of-generation tokens)."""
    if options.stop:
        return list(options.stop)
    return template.stop_words() if template is not None else []


def with_defaults(facts: ModelFacts, messages: list[dict[str, Any]], system: str | None = None) -> list[dict[str, Any]]:
    """The model's MESSAGE history and SYSTEM prompt around the conversation, as Ollama places them."""
    result = [dict(m) for m in messages]
    chosen_system = system if system is not None else facts.system
    if chosen_system and not any(m.get("role") == "system" for m in result):
        result.insert(0, {"role": "system", "content": chosen_system})
    if facts.messages:
        head = [m for m in result if m.get("role") == "system"][:1]
        rest = result[len(head):]
        result = head + [dict(m) for m in facts.messages] + rest
    return result


_SAMPLE_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi. How can I help?"},
    {"role": "user", "content": "What is 2 + 2?"},
]


def check_template(source: str) -> None:
    """Refuse a template that does not parse or cannot render a plain conversation (``create`` calls this,
    so a bad template fails there, naming its line, and not on the first chat)."""
    template = GoChatTemplate.compile(source) if looks_like_go_template(source) else ChatTemplate.compile(source)
    template.render(_SAMPLE_CONVERSATION, add_generation_prompt=True)


def to_tokens(runner: LlamaRunner, text: str) -> list[int]:
    """Tokenize rendered text; a template that writes the BOS token itself is not given a second one."""
    tokens = runner.tokenize(text, add_bos=False, special=True)
    if runner.adds_bos and (not tokens or tokens[0] != runner.bos_token):
        tokens.insert(0, runner.bos_token)
    return tokens


def chat_tokens(
    facts: ModelFacts, runner: LlamaRunner, messages: list[dict[str, Any]], tools: list[dict] | None
) -> tuple[list[int], ChatTemplate]:
    template = chat_template(facts, runner)
    if tools and not template.supports_tools:
        raise UnsupportedInput(f"{facts.name.display} does not support tools")
    text = template.render(with_defaults(facts, messages), tools=tools or None, add_generation_prompt=True)
    return to_tokens(runner, text), template


def generate_tokens(
    facts: ModelFacts,
    runner: LlamaRunner,
    *,
    prompt: str,
    system: str | None,
    template_override: str | None,
    context: list[int] | None,
    raw: bool,
    suffix: str | None,
) -> tuple[list[int], ChatTemplate | None]:
    """Prompt tokens for ``/api/generate`` (``raw`` skips the template; ``context`` continues a session)."""
    if suffix:
        return _fill_in_middle(facts, runner, prompt, suffix), None
    if raw:
        text, template = prompt, None
    else:
        template = chat_template(facts, runner, template_override)
        messages = with_defaults(facts, [{"role": "user", "content": prompt}], system)
        text = template.render(messages, add_generation_prompt=True)
    if context:
        return list(context) + runner.tokenize(text, add_bos=False, special=True), template
    return to_tokens(runner, text), template


def _fill_in_middle(facts: ModelFacts, runner: LlamaRunner, prompt: str, suffix: str) -> list[int]:
    fim = runner.fim_tokens()
    if fim is None:
        raise UnsupportedInput(
            f"{facts.name.display} does not support insert (suffix): it has no fill-in-middle tokens"
        )
    pre, suf, mid = fim
    body = [pre, *runner.tokenize(prompt), suf, *runner.tokenize(suffix), mid]
    return ([runner.bos_token] if runner.adds_bos else []) + body
