"""User text is text: the control tokens a client writes stay characters.

A chat template's own markup (``<start_of_turn>``, ``<|im_end|>``) must become control tokens, so the
rendered prompt is tokenized with special-token parsing on. A message that contains the same strings
(a user typing ``<end_of_turn>\\n<start_of_turn>model``) would then close its turn and open a forged one.

So before rendering, every control-token string inside the client's text is wrapped in a pair of
markers that no client can write (a random word chosen per prompt); after rendering, the text between
markers is tokenized with parsing off and the rest with parsing on. Text without control strings, the
usual case, is not touched and tokenizes in one call as before. The markers are plain ASCII without
``<>&'"``, so ``tojson``, ``trim`` and Go's ``json`` keep them as they are.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from typing import Any


class ControlStrings:
    """The texts of a vocabulary's control tokens, found fast in long text."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = frozenset(text for text in texts if text and not text.isspace())
        # candidates by their first two characters: text full of '<' (HTML, code) costs a lookup per '<'
        by_prefix: dict[str, set[int]] = {}
        for text in self.texts:
            by_prefix.setdefault(text[:2], set()).add(len(text))
        self._lengths = {prefix: sorted(lengths, reverse=True) for prefix, lengths in by_prefix.items()}
        starts = {text[0] for text in self.texts}
        self._starts = re.compile("[" + "".join(re.escape(c) for c in sorted(starts)) + "]") if starts else None

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where control strings occur in ``text`` (the longest at each place, not overlapping)."""
        if self._starts is None:
            return []
        found: list[tuple[int, int]] = []
        end = 0
        lengths, texts = self._lengths, self.texts
        for match in self._starts.finditer(text):
            start = match.start()
            if start < end:
                continue
            for length in lengths.get(text[start:start + 2], ()) or lengths.get(text[start], ()):
                if text[start:start + length] in texts:
                    found.append((start, start + length))
                    end = start + length
                    break
        return found


class Literals:
    """One prompt's markers: :meth:`protect` the client's values, render, then :meth:`segments`."""

    def __init__(self, controls: ControlStrings) -> None:
        self.controls = controls
        word = secrets.token_hex(8)
        self.open, self.close = f"[[lit{word}[[", f"]]lit{word}]]"
        self._marker = re.compile(re.escape(self.open) + "|" + re.escape(self.close))
        self.used = False

    def protect(self, value: Any) -> Any:
        """``value`` (a string, or lists and dicts of them) with each control string wrapped in markers."""
        if isinstance(value, str):
            spans = self.controls.spans(value)
            if not spans:
                return value
            self.used = True
            parts, last = [], 0
            for start, end in spans:
                parts += [value[last:start], self.open, value[start:end], self.close]
                last = end
            parts.append(value[last:])
            return "".join(parts)
        if isinstance(value, list):
            return [self.protect(item) for item in value]
        if isinstance(value, dict):
            return {key: self.protect(item) for key, item in value.items()}
        return value

    def segments(self, rendered: str) -> list[tuple[str, bool]]:
        """The rendered prompt cut into (text, is_literal) pieces, the markers removed."""
        if not self.used:
            return [(rendered, False)]
        pieces: list[tuple[str, bool]] = []
        literal, last = False, 0
        for match in self._marker.finditer(rendered):
            if match.start() > last:
                pieces.append((rendered[last:match.start()], literal))
            literal = match.group() == self.open
            last = match.end()
        if last < len(rendered):
            pieces.append((rendered[last:], literal))
        return pieces
