"""The bounds on a template's cost: output size, steps run, and nesting depth."""

from __future__ import annotations

DEFAULT_MAX_OUTPUT = 16_000_000  # characters: the Jinja templates' budget too (llm/templates.py MAX_OUTPUT)
DEFAULT_MAX_STEPS = 1_000_000
MAX_DEPTH = 100  # nesting of actions and parentheses; Go allows more, no real template comes close
