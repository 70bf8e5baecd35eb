"""From a request to a :class:`~localllm.llm.protocol.PromptSpec`: which template, which messages.

The template comes from the model's template layer if it has one, else from the GGUF's
``tokenizer.chat_template``, else a plain-text fallback (a base model continues the text). The spec
is rendered and tokenized in the model's runner process (``prompt_build``), not here.
"""

from __future__ import annotations

from typing import Any

from .facts import ModelFacts
from .go_chat import GoChatTemplate
from .protocol import PromptSpec
from .templates import ChatTemplate, looks_like_go_template


def template_source(facts: ModelFacts) -> str | None:
    return facts.template or facts.info.chat_template


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


def chat_spec(facts: ModelFacts, messages: list[dict[str, Any]], tools: list[dict] | None) -> PromptSpec:
    return PromptSpec("chat", facts.name.display, template=template_source(facts),
                      messages=with_defaults(facts, messages), tools=tools or None)


def generate_spec(
    facts: ModelFacts,
    *,
    prompt: str,
    system: str | None,
    template_override: str | None,
    context: list[int] | None,
    raw: bool,
    suffix: str | None,
) -> PromptSpec:
    """The prompt of ``/api/generate`` (``raw`` skips the template; ``context`` continues a session)."""
    name = facts.name.display
    if suffix:
        return PromptSpec("fim", name, prompt=prompt, suffix=suffix)
    if raw:
        return PromptSpec("text", name, prompt=prompt, context=context or None)
    source = template_override if template_override is not None else template_source(facts)
    messages = with_defaults(facts, [{"role": "user", "content": prompt}], system)
    return PromptSpec("chat", name, template=source or None, messages=messages, context=context or None)
