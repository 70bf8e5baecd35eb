"""A faithful subset of Go's ``text/template``, as Ollama's Modelfile templates use it.

Parsing follows Go's lexer and parser (trim markers, comments, pipelines, variables and their scopes, the
``if``/``range``/``with``/``define``/``template``/``block`` actions, ``break``/``continue``), so a template that
Go rejects is rejected here, at the same line and column, with a message worded like Go's. Execution follows
Go's rules for truth, comparison, printing and the builtin functions, plus the functions Ollama registers
(``json``, ``currentDate``, ``yesterdayDate``, ``toTypeScriptType``).

Data is plain Python: ``dict`` is a Go map (``.Key`` looks a key up; a missing key is Go's zero interface,
printed ``<no value>``, false in ``if``), ``list``/``tuple`` a slice, ``str``/``int``/``float``/``bool``/``None``
the basic kinds. :class:`GoStruct` is a Go struct: fixed field names, an error on any other, and a JSON form
used when it is printed or passed to ``json`` (as Ollama's types print themselves through ``String()``).
Maps and slices print as JSON too.

A template is someone else's code: execution is bounded by ``max_output`` characters and ``max_steps`` nodes,
and nesting by :data:`MAX_DEPTH`, so no template can hang, exhaust memory or overflow the Python stack.

It imports nothing else of localllm (whether a template is Go or Jinja is ``localllm.llm.templates``'s call).
One module per job, each importing only those before it:

- ``limits``: the output, step and depth bounds (``DEFAULT_MAX_OUTPUT``, ``DEFAULT_MAX_STEPS``, ``MAX_DEPTH``).
- ``errors``: ``GoTemplateError`` and its syntax and execution kinds.
- ``values``: ``GoStruct``, Go's truth and type names, printing, and ``go_json``.
- ``lexer``: template text to tokens; Go's string quoting and unquoting.
- ``nodes``: the syntax tree's node classes.
- ``parser``: tokens to a syntax tree.
- ``execute``: walking a tree over data, within the budgets.
- ``functions``: the builtin functions, Go's and Ollama's (``FUNCTIONS``).
- ``template``: ``GoTemplate`` (``execute``, ``uses``, ``cut_after``), and ``parse``.
"""

from __future__ import annotations

from .errors import GoTemplateError, GoTemplateExecError, GoTemplateSyntaxError
from .limits import DEFAULT_MAX_OUTPUT, DEFAULT_MAX_STEPS, MAX_DEPTH
from .template import GoTemplate, parse
from .values import GoStruct, go_json

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_MAX_STEPS",
    "MAX_DEPTH",
    "GoStruct",
    "GoTemplate",
    "GoTemplateError",
    "GoTemplateExecError",
    "GoTemplateSyntaxError",
    "go_json",
    "parse",
]
