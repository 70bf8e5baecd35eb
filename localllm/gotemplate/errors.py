"""The errors a template raises: syntax and execution, with Go's line and column."""

from __future__ import annotations


class GoTemplateError(Exception):
    """A template that cannot be parsed or executed; ``line`` and ``column`` (1-based) say where."""

    def __init__(self, message: str, line: int, column: int) -> None:
        self.message = message
        self.line = line
        self.column = column
        super().__init__(f"template: {line}:{column}: {message}")


class GoTemplateSyntaxError(GoTemplateError):
    """The template does not parse (Go's ``template.Parse`` would fail)."""


class GoTemplateExecError(GoTemplateError):
    """Executing the template failed: a bad operation on the data, or a budget exceeded."""


class _Fail(Exception):
    """An execution error without a position yet; the node being executed adds it."""
