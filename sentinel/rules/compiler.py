"""Compiling conditions: names resolved, fields bound, one generated Python function per event type.

Per event nothing is looked up by name: fields are extractor functions (or inline attribute
reads), lists are frozenset constants, regexes and globs are compiled. For each event type
the rules that can match it are specialised (`evt.type` checks become constants) and emitted
into ONE function whose sub-conditions shared by several rules (macros such as
`spawned_process`, repeated field reads) are computed at most once per event, lazily, and
whose rules short-circuit.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable

from sentinel.events.interest import ACCMODES_ALL, ACCMODES_READ, ACCMODES_WRITE, FILE_TYPES_ALL
from sentinel.rules import ast
from sentinel.rules.fields import TRANSFORMERS, FieldDef, lookup, transformed_type

NUMERIC_TYPES = ("int", "port", "reltime", "abstime")
_STRINGISH = ("string", "ipaddr", "bytes")


class CompileError(Exception):
    """A problem in one condition; `pos` is the offending node's position in its text."""

    def __init__(self, message: str, pos: ast.Position | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


# ---------------------------------------------------------------------------------------------
# fields


def resolve_field(ref: ast.FieldRef) -> tuple[FieldDef, str | None]:
    """The registry entry for a field reference and its argument (`evt.arg.flags` -> evt.arg, flags)."""
    definition = lookup(ref.name)
    arg = ref.arg
    if definition is None:
        for prefix in ("evt.arg.", "evt.rawarg.", "proc.env."):
            if ref.name.startswith(prefix) and arg is None:
                definition = lookup(prefix[:-1])
                arg = ref.name[len(prefix):]
                break
    if definition is None:
        raise CompileError("unknown field '%s'" % ref.name, ref.pos)
    return definition, arg


@dataclass(frozen=True)
class BoundField:
    """A field reference with its extractor, type and multiplicity fixed."""

    key: str  # rendered reference, transformers included: unique per distinct value
    extract: Callable[[Any], Any]
    type: str
    kind: str  # single | any | list
    inline: str


def bind_field(ref: ast.FieldRef) -> BoundField:
    definition, arg = resolve_field(ref)
    try:
        extractor = definition.bind(arg)
    except ValueError as exc:
        raise CompileError(str(exc), ref.pos) from None
    kind = definition.kind_with(arg)
    inline = definition.inline if not ref.transformers and arg is None else ""
    for transformer in reversed(ref.transformers):
        if kind != "single":
            raise CompileError("transformer %s() cannot be applied to multi-valued field '%s'" % (transformer, ref.key), ref.pos)
        if transformer in ("tolower", "toupper", "b64", "basename") and definition.type not in ("string", "bytes"):
            raise CompileError("transformer %s() needs a string field, '%s' is %s" % (transformer, ref.key, definition.type), ref.pos)
        extractor = _compose(TRANSFORMERS[transformer], extractor)
    return BoundField(ast.render_field(ref), extractor, transformed_type(definition.type, ref.transformers), kind, inline)


def _compose(outer: Callable[[Any], Any], inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda event: outer(inner(event))


# ---------------------------------------------------------------------------------------------
# literals


def convert(text: str, field_type: str, op: str) -> Any:
    """A literal as the Python value it is compared with; ValueError if it cannot be one."""
    if op in ("bcontains", "bstartswith"):
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise ValueError("'%s' is not a hex byte string" % text) from None
    if op in ("contains", "icontains", "startswith", "endswith", "glob", "iglob", "regex", "pmatch"):
        return text
    if field_type in NUMERIC_TYPES:
        try:
            return int(text, 0)
        except ValueError:
            try:
                return int(float(text))
            except ValueError:
                raise ValueError("'%s' is not a number" % text) from None
    if field_type == "bool":
        lowered = text.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError("'%s' is not a boolean (true or false)" % text)
    if field_type == "ipaddr":
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise ValueError("'%s' is not an IP address" % text) from None
    if field_type == "ipnet":
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError("'%s' is not an IP network" % text) from None
    return text


@lru_cache(maxsize=65536)
def _parse_ip(value: str) -> Any:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def ip_in_networks(value: Any, networks: tuple) -> bool:
    """True when the address (or any of a tuple of addresses) lies in one of the networks."""
    if value is None:
        return False
    candidates = value if isinstance(value, tuple) else (value,)
    for candidate in candidates:
        address = _parse_ip(candidate) if isinstance(candidate, str) else None
        if address is None:
            continue
        for network in networks:
            if address.version == network.version and address in network:
                return True
    return False


class NetworkMatcher:
    """`ip in (networks)` for one list of networks in a condition: the answer for an address
    string is remembered (a host talks to few addresses; parsing and testing one in Python's
    ipaddress costs microseconds)."""

    __slots__ = ("networks", "_answers")
    MAX_REMEMBERED = 4096

    def __init__(self, networks: tuple) -> None:
        self.networks = networks
        self._answers: dict[str, bool] = {}

    def __call__(self, value: Any) -> bool:
        if value.__class__ is not str:
            return ip_in_networks(value, self.networks)
        answer = self._answers.get(value)
        if answer is None:
            if len(self._answers) >= self.MAX_REMEMBERED:
                self._answers.clear()
            answer = self._answers[value] = ip_in_networks(value, self.networks)
        return answer


def path_prefix_match(value: Any, prefixes: tuple[str, ...]) -> bool:
    """Falco's pmatch: the path is one of the prefixes or lies below one of them."""
    if not isinstance(value, str):
        return False
    for prefix in prefixes:
        if value == prefix:
            return True
        base = prefix if prefix.endswith("/") else prefix + "/"
        if value.startswith(base):
            return True
    return False


def any_of(values: Any, predicate: Callable[[Any], bool]) -> bool:
    """A check on a multi-valued field: true when it holds for one of the values."""
    if not values:
        return False
    for value in values:
        if predicate(value):
            return True
    return False


def glob_matcher(pattern: str, ignore_case: bool) -> Callable[[str], Any]:
    """Falco's glob is fnmatch without FNM_PATHNAME: `*` also matches '/'."""
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE if ignore_case else 0).match


# ---------------------------------------------------------------------------------------------
# interning and specialisation (trees become DAGs where equal sub-conditions are one object)


class Interner:
    def __init__(self) -> None:
        self._nodes: dict[tuple, ast.Expr] = {}
        self.true = self._put(("const", True), ast.Constant(True))
        self.false = self._put(("const", False), ast.Constant(False))

    def _put(self, key: tuple, node: ast.Expr) -> ast.Expr:
        existing = self._nodes.get(key)
        if existing is None:
            self._nodes[key] = node
            return node
        return existing

    def leaf(self, node: ast.Expr) -> ast.Expr:
        if isinstance(node, ast.Constant):
            return self.true if node.value else self.false
        if isinstance(node, ast.UnaryCheck):
            return self._put(("u", node.field.name, node.field.arg, node.field.transformers, node.op), node)
        assert isinstance(node, ast.BinaryCheck)
        value = node.value
        if isinstance(value, ast.Value):
            operand: tuple = ("v", value.text)
        elif isinstance(value, ast.ValueList):
            operand = ("l",) + value.items
        elif isinstance(value, ast.FieldRef):
            operand = ("f", value.name, value.arg, value.transformers)
        else:
            operand = ("r", value.name)
        return self._put(("b", node.field.name, node.field.arg, node.field.transformers, node.op, operand), node)

    def and_(self, children: Iterable[ast.Expr]) -> ast.Expr:
        flat: list[ast.Expr] = []
        for child in children:
            if child is self.false:
                return self.false
            if child is self.true:
                continue
            if not any(child is kept for kept in flat):
                flat.append(child)
        if not flat:
            return self.true
        if len(flat) == 1:
            return flat[0]
        return self._put(("and",) + tuple(id(c) for c in flat), ast.And(tuple(flat)))

    def or_(self, children: Iterable[ast.Expr]) -> ast.Expr:
        flat: list[ast.Expr] = []
        for child in children:
            if child is self.true:
                return self.true
            if child is self.false:
                continue
            if not any(child is kept for kept in flat):
                flat.append(child)
        if not flat:
            return self.false
        if len(flat) == 1:
            return flat[0]
        return self._put(("or",) + tuple(id(c) for c in flat), ast.Or(tuple(flat)))

    def not_(self, child: ast.Expr) -> ast.Expr:
        if child is self.true:
            return self.false
        if child is self.false:
            return self.true
        if isinstance(child, ast.Not):
            return child.child
        return self._put(("not", id(child)), ast.Not(child))

    def intern(self, node: ast.Expr) -> ast.Expr:
        """An interned copy of a (macro-expanded) tree."""
        if isinstance(node, ast.And):
            return self.and_(self.intern(c) for c in node.children)
        if isinstance(node, ast.Or):
            return self.or_(self.intern(c) for c in node.children)
        if isinstance(node, ast.Not):
            return self.not_(self.intern(node.child))
        return self.leaf(node)


def _is_event_type_check(node: ast.Expr) -> bool:
    return (
        isinstance(node, ast.BinaryCheck)
        and node.field.name == "evt.type"
        and node.field.arg is None
        and not node.field.transformers
        and isinstance(node.value, (ast.Value, ast.ValueList))
    )


def _operand_items(value: ast.Operand) -> tuple[str, ...]:
    if isinstance(value, ast.Value):
        return (value.text,)
    assert isinstance(value, ast.ValueList)
    return value.items


_MERGEABLE = {"startswith": "startswith", "endswith": "endswith", "=": "in", "==": "in", "in": "in", "intersects": "in"}


def merge_alternatives(node: ast.Expr, interner: Interner, bind: Callable[[ast.FieldRef], BoundField],
                       memo: dict[int, ast.Expr]) -> ast.Expr:
    """`a startswith x or a startswith y` -> one check with both prefixes; `a = x or a in (y, z)`
    -> `a in (x, y, z)`: one field read and one C-level call instead of a chain."""
    cached = memo.get(id(node))
    if cached is not None:
        return cached
    if isinstance(node, ast.And):
        result = interner.and_(merge_alternatives(c, interner, bind, memo) for c in node.children)
    elif isinstance(node, ast.Not):
        result = interner.not_(merge_alternatives(node.child, interner, bind, memo))
    elif isinstance(node, ast.Or):
        children = [merge_alternatives(c, interner, bind, memo) for c in node.children]
        groups: dict[tuple, list[ast.BinaryCheck]] = {}
        for child in children:
            key = _merge_key(child, bind)
            if key is not None:
                groups.setdefault(key, []).append(child)  # type: ignore[arg-type]
        merged: list[ast.Expr] = []
        done: set[tuple] = set()
        for child in children:
            key = _merge_key(child, bind)
            if key is None or len(groups[key]) < 2:
                merged.append(child)
                continue
            if key in done:
                continue
            done.add(key)
            items: list[str] = []
            for check in groups[key]:
                items.extend(item for item in _operand_items(check.value) if item not in items)
            first = groups[key][0]
            merged.append(interner.leaf(ast.BinaryCheck(first.field, key[1], ast.ValueList(tuple(items)), first.pos)))
        result = interner.or_(merged)
    else:
        result = node
    memo[id(node)] = result
    return result


def _merge_key(node: ast.Expr, bind: Callable[[ast.FieldRef], BoundField]) -> tuple | None:
    if not isinstance(node, ast.BinaryCheck) or node.field.transformers:
        return None
    merged_op = _MERGEABLE.get(node.op)
    if merged_op is None or not isinstance(node.value, (ast.Value, ast.ValueList)):
        return None
    try:
        bound = bind(node.field)
    except CompileError:
        return None
    if bound.kind != "single" or (merged_op != "in" and bound.type != "string"):
        return None
    return (bound.key, merged_op)


def mentioned_event_types(node: ast.Expr) -> set[str]:
    return {item for n in ast.walk(node) if _is_event_type_check(n) for item in _operand_items(n.value)}


def _event_type_truth(node: ast.BinaryCheck, event_type: str | None) -> bool | None:
    """Static value of an evt.type check for one type (None: any type no rule names)."""
    items = _operand_items(node.value)
    op = node.op
    if op in ("=", "=="):
        return False if event_type is None else event_type == items[0]
    if op == "!=":
        return True if event_type is None else event_type != items[0]
    if op in ("in", "intersects"):
        return False if event_type is None else event_type in items
    if event_type is None:
        return None
    text = items[0]
    if op == "startswith":
        return event_type.startswith(text)
    if op == "endswith":
        return event_type.endswith(text)
    if op == "contains":
        return text in event_type
    if op == "icontains":
        return text.lower() in event_type.lower()
    if op in ("glob", "iglob"):
        return glob_matcher(text, op == "iglob")(event_type) is not None
    if op == "pmatch":
        return path_prefix_match(event_type, items)
    return None


def specialize(node: ast.Expr, event_type: str | None, interner: Interner, memo: dict[int, ast.Expr]) -> ast.Expr:
    """The condition with its evt.type checks decided for `event_type`, simplified."""
    cached = memo.get(id(node))
    if cached is not None:
        return cached
    if isinstance(node, ast.And):
        result = interner.and_(specialize(c, event_type, interner, memo) for c in node.children)
    elif isinstance(node, ast.Or):
        result = interner.or_(specialize(c, event_type, interner, memo) for c in node.children)
    elif isinstance(node, ast.Not):
        result = interner.not_(specialize(node.child, event_type, interner, memo))
    elif isinstance(node, ast.UnaryCheck) and node.field.name == "evt.type":
        result = interner.true
    elif _is_event_type_check(node):
        truth = _event_type_truth(node, event_type)  # type: ignore[arg-type]
        result = node if truth is None else (interner.true if truth else interner.false)
    else:
        result = node
    memo[id(node)] = result
    return result


# ---------------------------------------------------------------------------------------------
# code generation


class _Namespace:
    """Constants and helpers the generated code reads as globals."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {
            "_U": _UNSET,
            "_pmatch": path_prefix_match,
            "_any": any_of,
            "_prefix_dispatch": prefix_dispatch,
            "_rule_order": lambda rule: rule.index,
        }
        self._by_id: dict[tuple, str] = {}

    def add(self, value: Any, hint: str = "c") -> str:
        key = (hint, id(value)) if not isinstance(value, (str, int, bytes, tuple, frozenset)) else (hint, type(value), value)
        name = self._by_id.get(key)
        if name is None:
            name = "_%s%d" % (hint, len(self.values))
            self.values[name] = value
            self._by_id[key] = name
        return name


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


def _literal(value: Any) -> str:
    """Python source for a constant (str, int, bool, bytes, frozenset of those)."""
    if isinstance(value, frozenset):
        if not value:
            return "frozenset()"
        return "{%s}" % ", ".join(sorted(repr(item) for item in value))
    return repr(value)


class BucketCodegen:
    """Generates the matching function of one event type's rules."""

    def __init__(self, namespace: _Namespace, fields: dict[str, BoundField]) -> None:
        self.ns = namespace
        self.fields = fields  # key -> bound field, shared cache across buckets
        self.field_uses: Counter[str] = Counter()
        self.node_uses: Counter[int] = Counter()
        self.memo_names: dict[int, str] = {}
        self.value_names: dict[str, str] = {}
        self.emitted_memo: set[int] = set()

    # -- counting --------------------------------------------------------------------------
    def count(self, node: ast.Expr) -> None:
        self.node_uses[id(node)] += 1
        if isinstance(node, (ast.And, ast.Or, ast.Not)):
            if self.node_uses[id(node)] > 1:
                return
            for child in (node.children if not isinstance(node, ast.Not) else (node.child,)):
                self.count(child)
        elif isinstance(node, (ast.BinaryCheck, ast.UnaryCheck)):
            if self.node_uses[id(node)] > 1 and self._memoizable_leaf(node):
                return
            self.field_uses[self.bound(node.field).key] += 1
            if isinstance(node, ast.BinaryCheck) and isinstance(node.value, ast.FieldRef):
                self.field_uses[self.bound(node.value).key] += 1

    def _memoizable_leaf(self, node: ast.Expr) -> bool:
        """Leaves worth caching: regexes, globs, networks, multi-valued or transformed fields."""
        if not isinstance(node, ast.BinaryCheck):
            return False
        bound = self.bound(node.field)
        return (
            node.op in ("glob", "iglob", "regex", "pmatch", "icontains")
            or bound.kind != "single"
            or bound.type == "ipnet"
            or bool(node.field.transformers)
        )

    def bound(self, ref: ast.FieldRef) -> BoundField:
        key = ast.render_field(ref)
        bound = self.fields.get(key)
        if bound is None:
            bound = bind_field(ref)
            self.fields[key] = bound
        return bound

    # -- values ----------------------------------------------------------------------------
    def fetch(self, bound: BoundField) -> tuple[str, str]:
        """(code that evaluates the value the first time, code for later reads in the same check)."""
        extract_code = bound.inline or "%s(e)" % self.ns.add(bound.extract, "x")
        if self.field_uses[bound.key] < 2:
            name = "_t"  # a scratch local, valid within one check
            return "(_t := %s)" % extract_code, name
        name = self.value_names.get(bound.key)
        if name is None:
            name = "_v%d" % len(self.value_names)
            self.value_names[bound.key] = name
        return "(%s if %s is not _U else (%s := %s))" % (name, name, name, extract_code), name

    # -- expressions -----------------------------------------------------------------------
    def expr(self, node: ast.Expr) -> str:
        if isinstance(node, ast.Constant):
            return "True" if node.value else "False"
        memo = self.node_uses[id(node)] > 1 and (
            isinstance(node, (ast.And, ast.Or, ast.Not)) or self._memoizable_leaf(node)
        )
        if memo:
            name = self.memo_names.get(id(node))
            if name is None:
                name = "_m%d" % len(self.memo_names)
                self.memo_names[id(node)] = name
            return "(%s if %s is not None else (%s := %s))" % (name, name, name, self._expr(node))
        return self._expr(node)

    def _expr(self, node: ast.Expr) -> str:
        if isinstance(node, ast.And):
            return "(%s)" % " and ".join(self.expr(c) for c in node.children)
        if isinstance(node, ast.Or):
            return "(%s)" % " or ".join(self.expr(c) for c in node.children)
        if isinstance(node, ast.Not):
            return "(not %s)" % self.expr(node.child)
        if isinstance(node, ast.UnaryCheck):
            bound = self.bound(node.field)
            first, _ = self.fetch(bound)
            if bound.kind == "single":
                return "(%s is not None)" % first
            return "bool(%s)" % first
        assert isinstance(node, ast.BinaryCheck)
        return self.check(node)

    def check(self, node: ast.BinaryCheck) -> str:
        bound = self.bound(node.field)
        op = "=" if node.op == "==" else node.op
        first, later = self.fetch(bound)
        value = node.value
        if isinstance(value, ast.FieldRef):
            return self.field_compare(node, bound, first, later)
        if isinstance(value, ast.ListRef):  # unresolved bare word: a one-item list
            value = ast.ValueList((value.name,))
        if op in ("startswith", "endswith") and isinstance(value, ast.ValueList) and bound.kind == "single":
            # several prefixes of one field merged by `merge_alternatives`: one str method call
            self.check_operator(node, op, bound)
            return "(%s is not None and %s.%s(%s))" % (first, later, op, repr(tuple(value.items)))
        if op in ast.LIST_OPS or isinstance(value, ast.ValueList):
            items = _operand_items(value)
            try:
                converted = tuple(convert(item, bound.type, op) for item in items)
            except ValueError as exc:
                raise CompileError("field '%s': %s" % (bound.key, exc), node.pos) from None
            return self.list_check(node, op, bound, first, later, converted)
        try:
            constant = convert(value.text, bound.type, op)
        except ValueError as exc:
            raise CompileError("field '%s': %s" % (bound.key, exc), node.pos) from None
        self.check_operator(node, op, bound)
        if bound.kind == "single":
            return self.single_check(op, bound, first, later, constant)
        # multi-valued: true if the check holds for any element
        if bound.type == "ipnet" and op == "=":
            return "%s(%s)" % (self.ns.add(NetworkMatcher((constant,)), "n"), first)
        if op == "=":
            return "(%s in %s)" % (_literal(constant), first)
        inner = self.single_check(op, bound, "_a", "_a", constant)
        return "_any(%s, lambda _a: %s)" % (first, inner)

    def check_operator(self, node: ast.BinaryCheck, op: str, bound: BoundField) -> None:
        if op in ("<", "<=", ">", ">=") and bound.type not in NUMERIC_TYPES:
            raise CompileError("operator '%s' needs a numeric field, '%s' is %s" % (op, bound.key, bound.type), node.pos)
        if op in ("contains", "icontains", "startswith", "endswith", "glob", "iglob", "regex") and bound.type not in _STRINGISH:
            raise CompileError("operator '%s' needs a string field, '%s' is %s" % (op, bound.key, bound.type), node.pos)
        if op in ("bcontains", "bstartswith") and bound.type not in ("bytes", "string"):
            raise CompileError("operator '%s' needs a buffer field, '%s' is %s" % (op, bound.key, bound.type), node.pos)

    def single_check(self, op: str, bound: BoundField, first: str, later: str, constant: Any) -> str:
        if bound.type == "ipnet":
            matcher = self.ns.add(NetworkMatcher((constant,)), "n")
            if op == "=":
                return "%s(%s)" % (matcher, first)
            if op == "!=":
                return "(%s is not None and not %s(%s))" % (first, matcher, later)
        if op == "=":
            return "(%s == %s)" % (first, _literal(constant))
        if op in ("!=", "<", "<=", ">", ">="):
            return "(%s is not None and %s %s %s)" % (first, later, op, _literal(constant))
        if op == "contains":
            return "(%s is not None and %s in %s)" % (first, _literal(constant), later)
        if op == "icontains":
            return "(%s is not None and %s in %s.lower())" % (first, _literal(constant.lower()), later)
        if op == "startswith":
            return "(%s is not None and %s.startswith(%s))" % (first, later, _literal(constant))
        if op == "endswith":
            return "(%s is not None and %s.endswith(%s))" % (first, later, _literal(constant))
        if op in ("glob", "iglob"):
            matcher = self.ns.add(glob_matcher(constant, op == "iglob"), "g")
            return "(%s is not None and %s(%s) is not None)" % (first, matcher, later)
        if op == "regex":
            try:
                # Falco anchors regexes at both ends (RE2 ANCHOR_BOTH)
                matcher = self.ns.add(re.compile(constant).fullmatch, "g")
            except re.error as exc:
                raise CompileError("invalid regular expression %r: %s" % (constant, exc)) from None
            return "(%s is not None and %s(%s) is not None)" % (first, matcher, later)
        if op in ("bcontains", "bstartswith"):
            needle = _literal(constant)
            text_needle = _literal(constant.decode("latin-1"))
            method = "startswith" if op == "bstartswith" else "__contains__"
            return "(%s is not None and (%s.%s(%s) if isinstance(%s, bytes) else %s.%s(%s)))" % (
                first, later, method, needle, later, later, method, text_needle)
        raise CompileError("operator '%s' is not supported" % op)

    def list_check(self, node: ast.BinaryCheck, op: str, bound: BoundField, first: str, later: str, items: tuple) -> str:
        if op == "pmatch":
            prefixes = self.ns.add(tuple(items), "p")
            if bound.kind == "single":
                # the path is a prefix itself, or lies below one: a set lookup and one startswith
                below = tuple(item if item.endswith("/") else item + "/" for item in items)
                return "(%s in %s or (%s is not None and %s.startswith(%s)))" % (
                    first, _literal(frozenset(items)), later, later, repr(below))
            return "_any(%s, lambda _a: _pmatch(_a, %s))" % (first, prefixes)
        if op not in ("in", "intersects"):
            raise CompileError("operator '%s' takes one value, not a list" % op, node.pos)
        if bound.type == "ipnet":
            return "%s(%s)" % (self.ns.add(NetworkMatcher(tuple(items)), "n"), first)
        constant = frozenset(items)
        if bound.kind == "single":
            return "(%s in %s)" % (first, _literal(constant))
        if bound.kind == "list" and op == "in":
            return "(bool(%s) and %s.issuperset(%s))" % (first, _literal(constant), later)
        return "(not %s.isdisjoint(%s))" % (_literal(constant), first)

    def field_compare(self, node: ast.BinaryCheck, bound: BoundField, first: str, later: str) -> str:
        other = self.bound(node.value)  # type: ignore[arg-type]
        op = "=" if node.op == "==" else node.op
        if bound.kind != "single" or other.kind != "single":
            raise CompileError("val() comparisons need single-valued fields", node.pos)
        # the right-hand value gets its own local so both sides are read once
        extract = other.inline or "%s(e)" % self.ns.add(other.extract, "x")
        right = "_w"
        pyop = {"=": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}.get(op)
        guard = "(%s is not None and (%s := %s) is not None and " % (first, right, extract)
        if pyop:
            return guard + "%s %s %s)" % (later, pyop, right)
        if op == "contains":
            return guard + "%s in %s)" % (right, later)
        if op == "startswith":
            return guard + "%s.startswith(%s))" % (later, right)
        if op == "endswith":
            return guard + "%s.endswith(%s))" % (later, right)
        raise CompileError("operator '%s' does not take val()" % op, node.pos)

    # -- the function ----------------------------------------------------------------------
    def function(self, name: str, rules: list[tuple[str, ast.Expr]], dispatch: list[str] | None = None,
                 group: bool = False) -> str:
        """Source of `def name(e)` returning the matching rule objects (named by their constants),
        or, with `group`, of `def name(e, hits)` appending to the caller's list."""
        for _, condition in rules:
            self.count(condition)
        body = []
        for rule_const, condition in rules:
            body.append("    if %s:\n        hits.append(%s)" % (self.expr(condition), rule_const))
        head = ["def %s(e, hits):" % name if group else "def %s(e):" % name]
        locals_ = list(self.value_names.values())
        if locals_:
            head.append("    %s = _U" % " = ".join(locals_))
        if self.memo_names:
            head.append("    %s = None" % " = ".join(self.memo_names.values()))
        if group:
            return "\n".join(head + body + ["    return None", ""])
        head.append("    hits = []")
        tail = []
        if dispatch:
            tail = dispatch + ["    if len(hits) > 1:", "        hits.sort(key=_rule_order)"]
        return "\n".join(head + body + tail + ["    return hits", ""])


# ---------------------------------------------------------------------------------------------
# indexes: many rules that each require `field = constant` (or a path prefix) are grouped so one
# dictionary lookup per event selects the few that can match


MIN_INDEXED_RULES = 8


@dataclass
class IndexPlan:
    field: ast.FieldRef
    mode: str  # "eq": field = constant; "prefix": field startswith a constant ending in '/'
    groups: dict[Any, list[tuple[str, ast.Expr]]]


def _index_keys(conjunct: ast.Expr, bind: Callable[[ast.FieldRef], BoundField]) -> tuple[str, str, tuple] | None:
    """(field key, mode, keys) if the conjunct can index its rule."""
    if not isinstance(conjunct, ast.BinaryCheck) or conjunct.field.transformers:
        return None
    if isinstance(conjunct.value, (ast.FieldRef, ast.ListRef)):
        return None
    try:
        bound = bind(conjunct.field)
    except CompileError:
        return None
    if bound.kind != "single" or bound.type not in ("string", "int", "port"):
        return None
    op = "=" if conjunct.op == "==" else conjunct.op
    items = _operand_items(conjunct.value)
    try:
        if op == "=" and isinstance(conjunct.value, ast.Value):
            return bound.key, "eq", (convert(items[0], bound.type, op),)
        if op in ("in", "intersects") and items:
            return bound.key, "eq", tuple(convert(item, bound.type, op) for item in items)
    except ValueError:
        return None
    if op == "startswith" and bound.type == "string" and isinstance(conjunct.value, ast.Value) and items[0].endswith("/"):
        return bound.key, "prefix", (items[0],)
    return None


def plan_indexes(
    entries: list[tuple[str, ast.Expr]],
    bind: Callable[[ast.FieldRef], BoundField],
    interner: Interner,
) -> tuple[list[tuple[str, ast.Expr]], list[IndexPlan]]:
    """Split a bucket's rules into those evaluated one by one and indexed groups."""
    candidates: list[dict[tuple[str, str], tuple[ast.Expr, tuple]]] = []
    for _, condition in entries:
        conjuncts = condition.children if isinstance(condition, ast.And) else (condition,)
        options: dict[tuple[str, str], tuple[ast.Expr, tuple]] = {}
        for conjunct in conjuncts:
            found = _index_keys(conjunct, bind)
            if found is not None and (found[0], found[1]) not in options:
                options[(found[0], found[1])] = (conjunct, found[2])
        candidates.append(options)
    assigned: dict[int, tuple[str, str]] = {}
    plans: list[IndexPlan] = []
    while True:
        tally = Counter(key for i, options in enumerate(candidates) if i not in assigned for key in options)
        if not tally:
            break
        (field_key, mode), count = tally.most_common(1)[0]
        if count < MIN_INDEXED_RULES:
            break
        groups: dict[Any, list[tuple[str, ast.Expr]]] = {}
        field_ref: ast.FieldRef | None = None
        for i, options in enumerate(candidates):
            if i in assigned or (field_key, mode) not in options:
                continue
            assigned[i] = (field_key, mode)
            conjunct, keys = options[(field_key, mode)]
            field_ref = conjunct.field  # type: ignore[union-attr]
            rule_const, condition = entries[i]
            rest = [c for c in condition.children if c is not conjunct] if isinstance(condition, ast.And) else []
            residual = interner.and_(rest)
            for key in keys:
                groups.setdefault(key, []).append((rule_const, residual))
        assert field_ref is not None
        plans.append(IndexPlan(field_ref, mode, groups))
    remaining = [entry for i, entry in enumerate(entries) if i not in assigned]
    return remaining, plans


def prefix_dispatch(value: Any, index: dict[str, Callable[[Any, list], None]], event: Any, hits: list) -> None:
    """Call the group of every '/'-terminated prefix of a path."""
    if not isinstance(value, str):
        return
    position = value.find("/")
    while position >= 0:
        group = index.get(value[: position + 1])
        if group is not None:
            group(event, hits)
        position = value.find("/", position + 1)


# ---------------------------------------------------------------------------------------------
# open-path narrowing for the kernel filter


@dataclass(frozen=True)
class Narrowing:
    """What an open must satisfy to possibly match.

    The path part: a path prefix OR a file name OR a comm OR having created its file;
    `any_path` when the path is not restricted. The selectors (None: any) restrict every open
    further: the access mode (flags & O_ACCMODE), the inode type (mode >> 12, fd.typechar),
    the caller's real uid, whether it runs in a container ("container"/"host"), and whether
    the path as the program passed it (fd.nameraw) contains "../" (`raw_dotdot`)."""

    prefixes: frozenset[str] = frozenset()
    comms: frozenset[str] = frozenset()
    created: bool = False
    basenames: frozenset[str] = frozenset()
    any_path: bool = False
    accmodes: frozenset[int] | None = None
    file_types: frozenset[int] | None = None
    uids: frozenset[int] | None = None
    container: str | None = None
    raw_dotdot: bool = False

    def size(self) -> int:
        return len(self.prefixes) + len(self.comms) + self.created + len(self.basenames)

    @property
    def impossible(self) -> bool:
        """No open can satisfy it (an empty path part, or a selector that allows nothing)."""
        if not self.any_path and not self.size():
            return True
        return any(value is not None and not value for value in (self.accmodes, self.file_types, self.uids, self.container))

    @property
    def unrestricted(self) -> bool:
        return self.any_path and not self.selectors

    @property
    def selectors(self) -> dict[str, Any]:
        """The selectors in effect, by name."""
        values = {"access": self.accmodes, "file type": self.file_types, "uid": self.uids, "container": self.container,
                  "../ in the path": self.raw_dotdot or None}
        return {name: value for name, value in values.items() if value is not None}


ANY_OPEN = Narrowing(any_path=True)
_PATH_FIELDS = ("fd.name", "fs.path.name")
_ACCMODES = {"evt.is_open_read": ACCMODES_READ, "evt.is_open_write": ACCMODES_WRITE}
# inode types (mode >> 12) by fd.typechar / fd.type: only those a path open can return
_S_IFIFO, _S_IFDIR = 0o01, 0o04
_FILE_TYPES = {
    "f": FILE_TYPES_ALL - {_S_IFIFO, _S_IFDIR, 0o14},  # regular, devices, anon inodes: sysdecode.fd_type "file"
    "file": FILE_TYPES_ALL - {_S_IFIFO, _S_IFDIR, 0o14},
    "d": frozenset({_S_IFDIR}),
    "directory": frozenset({_S_IFDIR}),
    "p": frozenset({_S_IFIFO}),
    "pipe": frozenset({_S_IFIFO}),
}
_CONTAINER_ID_FIELDS = ("container.id", "container.name")


def _both(first: frozenset | None, second: frozenset | None) -> frozenset | None:
    """A conjunction's selector: what both allow."""
    if first is None:
        return second
    return first if second is None else first & second


def _either(values: list) -> Any:
    """A disjunction's selector: what any allows (None when one of them allows anything)."""
    if any(value is None for value in values):
        return None
    return frozenset().union(*values)


def _and(parts: list[Narrowing]) -> Narrowing:
    paths = [part for part in parts if not part.any_path]
    best = min(paths, key=Narrowing.size) if paths else ANY_OPEN
    accmodes = file_types = uids = None
    containers = {part.container for part in parts if part.container is not None}
    for part in parts:
        accmodes = _both(accmodes, part.accmodes)
        file_types = _both(file_types, part.file_types)
        uids = _both(uids, part.uids)
    container = containers.pop() if len(containers) == 1 else ("" if containers else None)  # "": contradictory
    return Narrowing(best.prefixes, best.comms, best.created, best.basenames, best.any_path, accmodes, file_types, uids,
                     container, any(part.raw_dotdot for part in parts))


def union_narrowings(parts: list[Narrowing]) -> Narrowing:
    """What any of the parts allows (a disjunction, or the rules of one event type together)."""
    parts = [part for part in parts if not part.impossible]
    if not parts:
        return Narrowing()
    any_path = any(part.any_path for part in parts)
    containers = {part.container for part in parts}
    return Narrowing(
        frozenset() if any_path else frozenset().union(*(p.prefixes for p in parts)),
        frozenset() if any_path else frozenset().union(*(p.comms for p in parts)),
        not any_path and any(p.created for p in parts),
        frozenset() if any_path else frozenset().union(*(p.basenames for p in parts)),
        any_path,
        _either([p.accmodes for p in parts]),
        _either([p.file_types for p in parts]),
        _either([p.uids for p in parts]),
        containers.pop() if len(containers) == 1 else None,
        all(p.raw_dotdot for p in parts),
    )


def narrowing(node: ast.Expr) -> Narrowing:
    """An over-approximation of the opens a (specialised) condition can match."""
    if isinstance(node, ast.Constant):
        return ANY_OPEN if node.value else Narrowing()
    if isinstance(node, ast.And):
        return _and([narrowing(c) for c in node.children])
    if isinstance(node, ast.Or):
        return union_narrowings([narrowing(c) for c in node.children])
    if isinstance(node, ast.Not):
        return _negated_narrowing(node.child)
    if not isinstance(node, ast.BinaryCheck) or node.field.transformers or node.field.arg is not None:
        return ANY_OPEN
    if isinstance(node.value, ast.FieldRef):
        return ANY_OPEN
    items = _operand_items(node.value) if not isinstance(node.value, ast.ListRef) else (node.value.name,)
    op = "=" if node.op == "==" else node.op
    name = node.field.name
    if name in _PATH_FIELDS:
        if op in ("=", "in", "intersects", "startswith", "pmatch"):
            return Narrowing(prefixes=frozenset(items))
        if op == "glob":
            prefix = re.split(r"[*?\[]", items[0], maxsplit=1)[0]
            return Narrowing(prefixes=frozenset({prefix})) if prefix else ANY_OPEN
        return ANY_OPEN
    if name == "fd.directory" and op in ("=", "in", "intersects", "startswith"):
        if op == "startswith":
            return Narrowing(prefixes=frozenset(items))
        return Narrowing(prefixes=frozenset(item.rstrip("/") + "/" for item in items))
    if name == "fd.nameraw" and _requires_dotdot(op, items):
        return Narrowing(any_path=True, raw_dotdot=True)
    if name == "fd.filename" and op in ("=", "in", "intersects"):
        return Narrowing(basenames=frozenset(items))
    if name == "proc.name" and op in ("=", "in", "intersects"):
        return Narrowing(comms=frozenset(items))
    if isinstance(node.value, ast.ListRef):
        return ANY_OPEN  # a list left unresolved: its items are unknown here
    truth = [item.lower() for item in items]
    if name == "evt.is_open_create" and op == "=" and truth in (["true"], ["1"]):
        return Narrowing(created=True)  # Sigma file_event rules: created files, any path, any case
    if name in _ACCMODES and op == "=" and truth in (["true"], ["1"]):
        # "= false" would not narrow: creat has no flags argument, so it is never an open for read or write
        return Narrowing(any_path=True, accmodes=_ACCMODES[name])
    if name in ("fd.typechar", "fd.type") and op in ("=", "in", "intersects"):
        kinds = [_FILE_TYPES.get(item) for item in items]
        if any(kind is None for kind in kinds):
            return ANY_OPEN
        return Narrowing(any_path=True, file_types=frozenset().union(*kinds))  # type: ignore[arg-type]
    if name == "user.uid" and op in ("=", "in", "intersects") and all(item.isdigit() for item in items):
        return Narrowing(any_path=True, uids=frozenset(int(item) for item in items))
    if name in _CONTAINER_ID_FIELDS and op in ("=", "!=", "in", "intersects"):
        return _container_narrowing(items, op != "!=")
    return ANY_OPEN


def _requires_dotdot(op: str, items: tuple[str, ...]) -> bool:
    """Whether every string the check accepts contains "../" (Falco's directory_traversal)."""
    if op in ("contains", "icontains"):
        return "../" in items[0]
    if op == "glob":
        return "[" not in items[0] and any("../" in literal for literal in re.split(r"[*?]", items[0]))
    return False


def _container_narrowing(items: tuple[str, ...], equal: bool) -> Narrowing:
    """container.id / container.name compared with `host` (or with container ids)."""
    if equal and all(item == "host" for item in items):
        return Narrowing(any_path=True, container="host")
    if (equal and "host" not in items) or (not equal and items == ("host",)):
        return Narrowing(any_path=True, container="container")
    return ANY_OPEN


def _negated_narrowing(node: ast.Expr) -> Narrowing:
    """`not container.id = host` and the like; any other negation does not narrow."""
    if isinstance(node, ast.BinaryCheck) and node.field.name in _CONTAINER_ID_FIELDS and not node.field.transformers \
            and isinstance(node.value, ast.Value) and node.value.text == "host" and node.op in ("=", "==", "!="):
        return Narrowing(any_path=True, container="container" if node.op != "!=" else "host")
    return ANY_OPEN


def prefix_access_modes(paths: list[Narrowing]) -> dict[str, frozenset[int] | None]:
    """The path prefixes of `paths` (narrowings with a path part, one per rule), each with
    the access modes (flags & O_ACCMODE) an open under it may have and still match one of
    them (None: any). The kernel takes a path's longest prefix: a prefix under another is
    kept only where it allows more (a read rule on /etc/pam.d/ under a write rule on /etc/)."""
    kept: dict[str, frozenset[int] | None] = {}
    for prefix in sorted({p for part in paths for p in part.prefixes}):
        modes = _either([part.accmodes for part in paths if any(prefix.startswith(q) for q in part.prefixes)])
        if modes is not None and modes >= ACCMODES_ALL:
            modes = None
        if not any(prefix.startswith(k) and (allowed is None or (modes is not None and modes <= allowed))
                   for k, allowed in kept.items()):
            kept[prefix] = modes
    return kept
