"""Output templates: `%proc.name`, `%proc.aname[2]`, `%evt.arg.flags`, `%container.info` per alert.

A template is split once into literal text and bound fields; rendering is a join. Values come
from monitored processes, so control characters are escaped before they reach a terminal, a
log line or a SIEM record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from sentinel.rules import ast
from sentinel.rules.fields import OUTPUT_FORMATS

_FIELD = re.compile(r"%([a-zA-Z]+[a-zA-Z0-9_]*(?:\.[a-zA-Z]+[a-zA-Z0-9_]*)+)(?:\[([^\]]*)\])?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def display(value: Any) -> str:
    """A value as Falco prints it: `<NA>` when absent, true/false, numbers in decimal."""
    if type(value) is str:  # the common case first: one type check, one scan
        return _CONTROL.sub(_escape_control, value) if _CONTROL.search(value) else value
    if value is None:
        return "<NA>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(display(item) for item in value) if value else "<NA>"
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    text = str(value)
    if _CONTROL.search(text):
        text = _CONTROL.sub(_escape_control, text)
    return text


def _escape_control(match: re.Match[str]) -> str:
    return "\\x%02x" % ord(match.group(0))


def _field_value(value: Any) -> Any:
    """A raw value as `output_fields` carries it: bytes as text, tuples as lists."""
    if isinstance(value, bytes):
        return display(value)
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True)
class OutputTemplate:
    text: str
    pieces: tuple[tuple[str, str, Callable[[Any], Any]] | str, ...]  # literal, or (key, key, extractor)

    @property
    def field_keys(self) -> tuple[str, ...]:
        return tuple(piece[0] for piece in self.pieces if not isinstance(piece, str))

    def render(self, event: Any) -> str:
        return self.render_with_fields(event)[0]

    def fields(self, event: Any) -> dict[str, Any]:
        """Falco's `output_fields`: each field of the template with its value (None when absent)."""
        return self.render_with_fields(event)[1]

    def render_with_fields(self, event: Any) -> tuple[str, dict[str, Any]]:
        """The output text and `output_fields` together, each field extracted once: an alert
        needs both."""
        raw: dict[str, Any] = {}
        parts = []
        for piece in self.pieces:
            if piece.__class__ is str:
                parts.append(piece)
                continue
            key = piece[0]
            if key in raw:
                value = raw[key]
            else:
                value = raw[key] = _safe(piece[2], event)
            parts.append(display(value))
        return "".join(parts), {key: _field_value(value) for key, value in raw.items()}


def _safe(extract: Callable[[Any], Any], event: Any) -> Any:
    try:
        return extract(event)
    except Exception:  # an output never breaks alerting: a bad value shows as absent
        return None


def _formatted(formatter: Callable[[Any], Any], extract: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda event: formatter(extract(event))


def parse_output(text: str, bind: Callable[[ast.FieldRef], Any]) -> OutputTemplate:
    """Split a template; `bind` turns a FieldRef into an object with `.extract` (raises on unknown)."""
    pieces: list[Any] = []
    position = 0
    for match in _FIELD.finditer(text):
        if match.start() > position:
            pieces.append(text[position: match.start()])
        ref = ast.FieldRef(match.group(1), match.group(2), (), ast.Position(match.start(), 1, match.start() + 1))
        bound = bind(ref)
        extract = bound.extract
        formatter = OUTPUT_FORMATS.get(ref.name)
        if formatter is not None:
            extract = _formatted(formatter, extract)
        pieces.append((ref.key, ref.key, extract))
        position = match.end()
    if position < len(text):
        pieces.append(text[position:])
    return OutputTemplate(text, tuple(pieces))
