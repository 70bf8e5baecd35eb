"""Modelfiles: rendering a model back into one (parsing arrives with ``create``)."""

from .render import format_parameters, render_modelfile

__all__ = ["format_parameters", "render_modelfile"]
