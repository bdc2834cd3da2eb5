"""The condition AST: plain, immutable nodes that every front end produces and every back end reads.

Falco's rule text (`sentinel.rules.grammar`) and Sigma rules both produce these nodes; the Python
code generator (`sentinel.rules.compiler`) and the SQL back end (`sentinel.rules.sql`) consume
them. Nodes are frozen dataclasses, so trees can be shared, hashed and compared.

Shape of a condition:

    And(children) / Or(children)          two or more children
    Not(child)
    MacroRef(name)                       a macro, replaced by its condition at compile time
    Constant(value)                      True / False (produced by simplification)
    UnaryCheck(field, op)                op is "exists"
    BinaryCheck(field, op, value)        value is Value, ValueList, ListRef or FieldRef

    FieldRef(name, arg, transformers)    `proc.aname[2]`, `tolower(proc.name)`
    Value(text)                          one literal, as text (typed when compiled)
    ValueList(items)                     `(a, b, "c d")`; items are texts; list names are
                                         expanded into their items when the ruleset is resolved
    ListRef(name)                        a bare list name after `in`/`intersects`/`pmatch`

Sigma front ends build trees with the helper constructors at the bottom (`field`, `check`,
`all_of`, `any_of`) and compile them with `sentinel.rules.ruleset.compile_condition`.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from typing import Union

# Operators, as written in Falco's language.
COMPARISON_OPS = ("=", "==", "!=", "<", "<=", ">", ">=")
STRING_OPS = ("contains", "icontains", "bcontains", "startswith", "bstartswith", "endswith", "glob", "iglob", "regex")
LIST_OPS = ("in", "intersects", "pmatch")
UNARY_OPS = ("exists",)
BINARY_OPS = COMPARISON_OPS + STRING_OPS + LIST_OPS
TRANSFORMERS = ("tolower", "toupper", "b64", "basename", "len")


@dataclass(frozen=True)
class Position:
    """Where a node starts in its condition text: 0-based offset, 1-based line and column."""

    offset: int = 0
    line: int = 1
    col: int = 1


@dataclass(frozen=True)
class FieldRef:
    """A field, with its optional `[arg]` and the transformers applied, innermost last."""

    name: str
    arg: str | None = None
    transformers: tuple[str, ...] = ()  # ("tolower",) for tolower(proc.name)
    pos: Position = dataclass_field(default=Position(), compare=False)

    @property
    def key(self) -> str:
        """The field as written without transformers: `proc.aname[2]`."""
        return self.name if self.arg is None else "%s[%s]" % (self.name, self.arg)


@dataclass(frozen=True)
class Value:
    text: str
    pos: Position = dataclass_field(default=Position(), compare=False)


@dataclass(frozen=True)
class ValueList:
    items: tuple[str, ...]
    pos: Position = dataclass_field(default=Position(), compare=False)


@dataclass(frozen=True)
class ListRef:
    name: str
    pos: Position = dataclass_field(default=Position(), compare=False)


Operand = Union[Value, ValueList, ListRef, FieldRef]


@dataclass(frozen=True)
class BinaryCheck:
    field: FieldRef
    op: str
    value: Operand
    pos: Position = dataclass_field(default=Position(), compare=False)


@dataclass(frozen=True)
class UnaryCheck:
    field: FieldRef
    op: str = "exists"
    pos: Position = dataclass_field(default=Position(), compare=False)


@dataclass(frozen=True)
class MacroRef:
    name: str
    pos: Position = dataclass_field(default=Position(), compare=False)


@dataclass(frozen=True)
class Constant:
    value: bool


@dataclass(frozen=True)
class Not:
    child: Expr


@dataclass(frozen=True)
class And:
    children: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Expr, ...]


Expr = Union[And, Or, Not, BinaryCheck, UnaryCheck, MacroRef, Constant]


# ---------------------------------------------------------------------------------------------
# Rendering back to Falco's text (used by tests that assert expanded conditions, and by errors).

_BARE_SAFE = set("()\"' \t\r\n\b=,")


def quote(text: str) -> str:
    """A literal as it must be written so the parser reads it back unchanged."""
    if text and not any(ch in _BARE_SAFE for ch in text) and text not in ("and", "or", "not"):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t").replace("\b", "\\b")
    return '"%s"' % escaped


def render_field(ref: FieldRef) -> str:
    text = ref.key
    if ref.arg is not None and any(ch in ref.arg for ch in "[]\"' \t"):
        text = "%s[%s]" % (ref.name, quote(ref.arg))
    for transformer in reversed(ref.transformers):
        text = "%s(%s)" % (transformer, text)
    return text


def render_operand(value: Operand) -> str:
    if isinstance(value, Value):
        return quote(value.text)
    if isinstance(value, ValueList):
        return "(%s)" % ", ".join(quote(item) for item in value.items)
    if isinstance(value, ListRef):
        return value.name
    return "val(%s)" % render_field(value)


def render(node: Expr) -> str:
    """Falco text for a node; And/Or children are parenthesised when they are themselves And/Or."""
    if isinstance(node, BinaryCheck):
        return "%s %s %s" % (render_field(node.field), node.op, render_operand(node.value))
    if isinstance(node, UnaryCheck):
        return "%s %s" % (render_field(node.field), node.op)
    if isinstance(node, MacroRef):
        return node.name
    if isinstance(node, Constant):
        return "true" if node.value else "false"
    if isinstance(node, Not):
        return "not %s" % _render_child(node.child, parent=Not)
    if isinstance(node, And):
        return " and ".join(_render_child(child, parent=And) for child in node.children)
    if isinstance(node, Or):
        return " or ".join(_render_child(child, parent=Or) for child in node.children)
    raise TypeError("not a condition node: %r" % (node,))


def _render_child(child: Expr, parent: type) -> str:
    text = render(child)
    if isinstance(child, (And, Or)) or (parent is Not and isinstance(child, Not)):
        return "(%s)" % text
    return text


# ---------------------------------------------------------------------------------------------
# Helpers to build trees in code (Sigma translation, tests).


def field(name: str, arg: str | None = None, *transformers: str) -> FieldRef:
    return FieldRef(name, arg, tuple(transformers))


def check(field_ref: FieldRef | str, op: str, value: str | list[str] | tuple[str, ...] | FieldRef | None = None) -> Expr:
    """One check: `check("proc.name", "in", ["bash", "sh"])`, `check("fd.name", "exists")`."""
    ref = field_ref if isinstance(field_ref, FieldRef) else FieldRef(field_ref)
    if op in UNARY_OPS:
        return UnaryCheck(ref, op)
    if op not in BINARY_OPS:
        raise ValueError("unknown operator %r" % op)
    operand: Operand
    if isinstance(value, FieldRef):
        operand = value
    elif isinstance(value, (list, tuple)):
        operand = ValueList(tuple(str(item) for item in value))
    elif value is None:
        raise ValueError("operator %r needs a value" % op)
    else:
        operand = Value(str(value))
    return BinaryCheck(ref, op, operand)


def all_of(*children: Expr) -> Expr:
    return children[0] if len(children) == 1 else And(tuple(children))


def any_of(*children: Expr) -> Expr:
    return children[0] if len(children) == 1 else Or(tuple(children))


def walk(node: Expr):
    """Every node of a condition, parents first."""
    yield node
    if isinstance(node, (And, Or)):
        for child in node.children:
            yield from walk(child)
    elif isinstance(node, Not):
        yield from walk(node.child)
