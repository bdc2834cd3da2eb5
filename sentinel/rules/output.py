"""Output templates: `%proc.name`, `%proc.aname[2]`, `%evt.arg.flags`, `%container.info` per alert.

A template is split once into literal text and bound fields; rendering is a join. Values come
from monitored processes, so control characters are escaped before they reach a terminal, a
log line or a SIEM record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
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
    # pieces as one generated function: (event) -> (text, output_fields)
    _render: Callable[[Any], tuple[str, dict[str, Any]]] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_render", _compile_renderer(self.pieces))

    @property
    def field_keys(self) -> tuple[str, ...]:
        return tuple(piece[0] for piece in self.pieces if not isinstance(piece, str))

    def render(self, event: Any) -> str:
        return self._render(event)[0]

    def fields(self, event: Any) -> dict[str, Any]:
        """Falco's `output_fields`: each field of the template with its value (None when absent)."""
        return self._render(event)[1]

    def render_with_fields(self, event: Any) -> tuple[str, dict[str, Any]]:
        """The output text and `output_fields` together, each field extracted once: an alert
        needs both."""
        return self._render(event)


# Classes whose values display() shows with str() and _field_value() passes unchanged.
_PLAIN = frozenset({int, float, type(None)})


def _compile_renderer(pieces: tuple[Any, ...]) -> Callable[[Any], tuple[str, dict[str, Any]]]:
    """One function per template: each field extracted once into a local (None if its
    extractor fails), plain strings shown without a call (measured: half the CPU of
    rendering the text and the fields separately). Literals, keys and extractors are
    globals of the function, never source text."""
    scope: dict[str, Any] = {"_display": display, "_field_value": _field_value, "_control": _CONTROL.search,
                             "_plain": _PLAIN}
    local_of: dict[str, str] = {}
    lines = ["def render(e):"]
    parts = []
    for number, piece in enumerate(pieces):
        if piece.__class__ is str:
            scope["_l%d" % number] = piece
            parts.append("_l%d" % number)
            continue
        key, _, extract = piece
        value = local_of.get(key)
        if value is None:
            value = local_of[key] = "v%d" % len(local_of)
            scope["_x" + value] = extract
            scope["_k" + value] = key
            lines += ["    try:", "        %s = _x%s(e)" % (value, value), "    except Exception:",
                      "        %s = None" % value]  # an output never breaks alerting: absent
        parts.append("(%s if %s.__class__ is str and _control(%s) is None else _display(%s))" % ((value,) * 4))
    fields = ", ".join("_k%s: (%s if %s.__class__ in _plain or %s.__class__ is str else _field_value(%s))"
                       % ((value,) * 5) for value in local_of.values())
    lines.append("    return ''.join((%s%s)), {%s}" % (", ".join(parts), "," if len(parts) == 1 else "", fields))
    exec(compile("\n".join(lines), "<output template>", "exec"), scope)
    return scope["render"]


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
