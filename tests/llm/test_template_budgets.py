"""Template budgets that hold: every way a Jinja or Go template can build a huge string, recurse or run long
is refused within moments, before the big value exists."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from localllm.errors import TemplateError
from localllm.llm.go_chat import GoChatTemplate
from localllm.llm.templates import ChatTemplate

JINJA = [
    "{{ 'a' | center(60000000) }}",
    "{{ '%60000000s' % 'a' }}",
    "{{ '%.60000000f' % 1.5 }}",
    "{{ ('a' * 100000) | replace('', 'b' * 1000) }}",
    "{{ ('a' * 100000).replace('', 'b' * 1000) }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(30) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(30) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(24) }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{{ messages | tojson(indent=60000000) }}",
    "{{ 'a'.ljust(100000000) }}{{ 'a'.zfill(100000000) }}",
    "{{ '{:>60000000}'.format('a') }}",
    "{{ (['x' * 1000000] * 15) | join('') ~ ('x' * 1000000) ~ ('x' * 1000000) }}",
    "{{ 'x' | indent(60000000) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 100 }}{% endfor %}{% endfor %}",
]
GO = [
    '{{ printf "%0999999d" 1 }}' * 20,
    '{{ define "x" }}{{ template "x" . }}{{ end }}{{ template "x" . }}',
]
MESSAGES = [{"role": "user", "content": "hello " * 10} for _ in range(200)]


def _refused(render) -> tuple[float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(TemplateError):
            render()
        return time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("source", JINJA)
def test_a_hostile_jinja_template_is_refused_before_it_builds_much(source: str) -> None:
    seconds, peak = _refused(lambda: ChatTemplate.compile(source).render(MESSAGES))
    assert seconds < 4 and peak < 80 * 2**20, (seconds, peak)


@pytest.mark.parametrize("source", GO)
def test_a_hostile_go_template_is_refused_before_it_builds_much(source: str) -> None:
    seconds, peak = _refused(lambda: GoChatTemplate.compile(source).render(MESSAGES))
    assert seconds < 4 and peak < 80 * 2**20, (seconds, peak)


def test_ordinary_templates_render_as_before() -> None:
    template = ChatTemplate.compile(
        "{% for m in messages %}{{ '<|' ~ m['role'] ~ '|>' }}{{ m['content'] | trim }}{{ '%s' % '' }}{% endfor %}"
        "{{ messages | tojson(indent=2) | length > 0 }}{{ 'ab'.center(6) }}{{ ['a', 'b'] | join(', ') }}"
    )
    text = template.render([{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}])
    assert text.startswith("<|user|>hi<|assistant|>yo") and text.endswith("True  ab  a, b")
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(4096)]
    assert ChatTemplate.compile("{% for m in messages %}{{ m.content.strip() }}\n{% endfor %}").render(many)
