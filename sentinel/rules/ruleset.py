"""The compiled rule set: load rule files (or ASTs), compile them once, match events fast.

    ruleset = load_rules(["falco_rules.yaml", "my_rules.yaml"])
    for rule in ruleset.match(event):          # every matching rule (or the first: match="first")
        print(rule.priority, rule.render_output(event))
    ruleset.interest                           # what the sensors must capture

Sigma (or any other front end) builds `RuleSpec`s whose condition is an `ast.Expr` and passes
them to `compile_rules` or `load_rules(..., extra=...)`; they may use the Falco macros and
lists loaded with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

from sentinel.errors import SourceLocation
from sentinel.events.interest import ACCMODES_ALL, Interest, OpenSelectors
from sentinel.events.model import Event
from sentinel.log import get_logger
from sentinel.rules import ast, grammar
from sentinel.rules.compiler import (
    BoundField,
    BucketCodegen,
    CompileError,
    Interner,
    _Namespace,
    plan_indexes,
    bind_field,
    mentioned_event_types,
    merge_alternatives,
    ANY_OPEN,
    Narrowing,
    prefix_access_modes,
    narrowing,
    union_narrowings,
    specialize,
)
from sentinel.rules.fields import OPEN_EVENT_TYPES
from sentinel.rules.loader import (
    PRIORITIES,
    Collection,
    ExceptionDef,
    Problem,
    RuleDef,
    RuleLoadError,
    Text,
    collect,
    collect_files,
)
from sentinel.rules.output import OutputTemplate, parse_output

log = get_logger(__name__)

# The syscalls the sensors can report: what a rule that does not restrict evt.type needs.
KNOWN_EVENT_TYPES = frozenset({
    "execve", "execveat", "clone", "clone3", "fork", "vfork", "procexit", "open", "openat", "openat2",
    "creat", "connect", "accept", "accept4", "listen", "bind", "sendto", "sendmsg", "recvfrom",
    "recvmsg", "socket", "unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat",
    "rmdir", "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "chown",
    "fchown", "fchownat", "setuid", "setgid", "setresuid", "setresgid", "setns", "unshare", "ptrace",
    "bpf", "mount", "umount", "umount2", "init_module", "finit_module", "delete_module", "memfd_create",
    "chdir", "fchdir", "dup", "dup2", "dup3", "prctl", "mmap", "mprotect", "userfaultfd", "io_uring_setup",
    "pivot_root", "chroot", "kill", "tkill", "tgkill", "capset", "sethostname", "setdomainname",
})

_OTHER = "*"  # the bucket of event types no rule names


def _rule_index(rule: Rule) -> int:
    return rule.index


@dataclass(frozen=True)
class RuleSpec:
    """A rule before compilation: what any front end (Falco YAML, Sigma) hands to the compiler."""

    name: str
    condition: ast.Expr | str
    output: str = ""
    priority: str = "warning"
    desc: str = ""
    tags: tuple[str, ...] = ()
    enabled: bool = True
    source: str = "syscall"
    action: str | None = None  # kill | deny: sentinel extension, enforced by the actions layer
    mode: str | None = None  # enforce | audit
    location: SourceLocation = SourceLocation("<memory>")
    warn_evttypes: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # front-end keys for alerts (Sigma: id, references)


@dataclass(eq=False)
class Rule:
    """A compiled rule, as matching returns it."""

    name: str
    desc: str
    condition: str  # as written (with exceptions appended)
    expanded: ast.Expr  # macros and lists expanded: what is evaluated
    output: OutputTemplate
    priority: str
    tags: tuple[str, ...]
    enabled: bool
    source: str
    action: str | None
    mode: str | None
    location: SourceLocation
    index: int
    event_types: frozenset[str] | None  # None: every event type
    extra: dict[str, Any] = field(default_factory=dict)  # added to every alert record of the rule
    warn_evttypes: bool = True  # False: no warning when the condition does not restrict evt.type

    @property
    def priority_level(self) -> int:
        """0 for emergency ... 7 for debug (syslog severities)."""
        return PRIORITIES.index(self.priority)

    @property
    def expanded_condition(self) -> str:
        return ast.render(self.expanded)

    def render_output(self, event: Event) -> str:
        return self.output.render(event)

    def output_fields(self, event: Event) -> dict[str, Any]:
        return self.output.fields(event)

    def render_with_fields(self, event: Event) -> tuple[str, dict[str, Any]]:
        """render_output() and output_fields() at once, each field extracted once."""
        return self.output.render_with_fields(event)

    def __repr__(self) -> str:
        return "Rule(%r)" % self.name


@dataclass
class Ruleset:
    rules: tuple[Rule, ...]  # every compiled rule, enabled or not, in definition order
    lists: dict[str, tuple[str, ...]]
    macros: dict[str, ast.Expr]
    interest: Interest
    warnings: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    first_match: bool = False
    errors_at_runtime: int = 0
    _buckets: dict[str, Callable[[Event], list[Rule]]] = field(default_factory=dict, repr=False)
    _sources: dict[str, str] = field(default_factory=dict, repr=False)

    def match(self, event: Event) -> list[Rule]:
        """The enabled rules matching the event (all, or only the first with match="first")."""
        bucket = self._buckets.get(event.type) or self._buckets[_OTHER]
        try:
            hits = bucket(event)
            if self.first_match and len(hits) > 1:
                return [min(hits, key=_rule_index)]
            return hits
        except Exception as exc:  # a malformed event must never stop the pipeline
            self.errors_at_runtime += 1
            log.debug("rules.match_failed", **{"event.type": event.type, "error": repr(exc)})
            return []

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)

    @property
    def enabled_rules(self) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.enabled)

    def generated_source(self, event_type: str) -> str:
        """The Python source generated for one event type (for inspection and tests)."""
        return self._sources.get(event_type) or self._sources[_OTHER]


# ---------------------------------------------------------------------------------------------
# compile stage


class _Problems:
    def __init__(self) -> None:
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []


def unquote_item(item: str) -> str:
    """List items written with their own quotes ('"10.0.0.0/8"') are unescaped, as Falco does."""
    if len(item) >= 2 and item[0] == item[-1] and item[0] in "\"'":
        try:
            return grammar.unescape(item)
        except ValueError:
            return item[1:-1]
    return item


def resolve_lists(collection: Collection, problems: _Problems) -> dict[str, tuple[str, ...]]:
    """Each list's items with list names expanded (definition order does not matter)."""
    resolved: dict[str, tuple[str, ...]] = {}

    def expand(name: str, stack: tuple[str, ...]) -> tuple[str, ...]:
        if name in resolved:
            return resolved[name]
        definition = collection.lists[name]
        if name in stack:
            problems.errors.append(Problem("list refers to itself through %s" % " -> ".join(stack + (name,)),
                                           definition.location, "list '%s'" % name))
            return ()
        items: list[str] = []
        for item in definition.items:
            if item in collection.lists and item != name:
                items.extend(expand(item, stack + (name,)))
            else:
                items.append(unquote_item(item))
        resolved[name] = tuple(dict.fromkeys(items))
        return resolved[name]

    for name in collection.lists:
        expand(name, ())
    return resolved


def _resolve_values(node: ast.Expr, lists: dict[str, tuple[str, ...]], used_lists: set[str]) -> ast.Expr:
    """Expand list names inside `(...)` and bare list names after in/intersects/pmatch."""
    if isinstance(node, ast.And):
        return ast.And(tuple(_resolve_values(c, lists, used_lists) for c in node.children))
    if isinstance(node, ast.Or):
        return ast.Or(tuple(_resolve_values(c, lists, used_lists) for c in node.children))
    if isinstance(node, ast.Not):
        return ast.Not(_resolve_values(node.child, lists, used_lists))
    if isinstance(node, ast.BinaryCheck):
        value = node.value
        if isinstance(value, ast.ValueList):
            items: list[str] = []
            for item in value.items:
                if item in lists:
                    used_lists.add(item)
                    items.extend(lists[item])
                else:
                    items.append(item)
            return ast.BinaryCheck(node.field, node.op, ast.ValueList(tuple(items), value.pos), node.pos)
        if isinstance(value, ast.ListRef):
            if value.name in lists:
                used_lists.add(value.name)
                return ast.BinaryCheck(node.field, node.op, ast.ValueList(lists[value.name], value.pos), node.pos)
            return ast.BinaryCheck(node.field, node.op, ast.ValueList((value.name,), value.pos), node.pos)
    return node


def _validate_leaves(node: ast.Expr, macros: set[str]) -> list[CompileError]:
    """Every field known, every literal of the right type, every macro defined."""
    errors: list[CompileError] = []
    scratch = BucketCodegen(_Namespace(), {})
    for leaf in ast.walk(node):
        if isinstance(leaf, ast.MacroRef):
            if leaf.name not in macros:
                errors.append(CompileError("undefined macro '%s'" % leaf.name, leaf.pos))
        elif isinstance(leaf, (ast.BinaryCheck, ast.UnaryCheck)):
            try:
                scratch.count(leaf)
                scratch.expr(leaf)
            except CompileError as exc:
                if exc.pos is None:
                    exc.pos = leaf.pos
                errors.append(exc)
    return errors


def exception_condition(exceptions: Sequence[ExceptionDef]) -> tuple[ast.Expr | None, list[tuple[ExceptionDef, str]]]:
    """Falco's exceptions as one condition to add with `and not (...)`; problems per exception."""
    alternatives: list[ast.Expr] = []
    problems: list[tuple[ExceptionDef, str]] = []
    for exc in exceptions:
        if not exc.values:
            continue
        if isinstance(exc.fields, list):
            comps = exc.comps if isinstance(exc.comps, list) else ["="] * len(exc.fields)
            for value in exc.values:
                checks = []
                for field_name, comp, item in zip(exc.fields, comps, value, strict=True):
                    checks.append(_exception_check(field_name, str(comp), item, exc, problems))
                if all(c is not None for c in checks):
                    alternatives.append(ast.all_of(*checks))  # type: ignore[arg-type]
        else:
            comp = str(exc.comps) if exc.comps is not None else "in"
            # one field: `field in (values)`; with a one-value operator, one alternative per value
            items = [list(exc.values)] if comp in ast.LIST_OPS else list(exc.values)
            for item in items:
                check = _exception_check(exc.fields, comp, item, exc, problems)
                if check is not None:
                    alternatives.append(check)
    if not alternatives:
        return None, problems
    return ast.any_of(*alternatives), problems


def _exception_check(field_name: str, comp: str, item: Any, exc: ExceptionDef, problems: list) -> ast.Expr | None:
    if comp not in ast.BINARY_OPS:
        problems.append((exc, "unknown comparison operator '%s'" % comp))
        return None
    try:
        ref = grammar.parse("%s exists" % field_name)
    except grammar.ConditionSyntaxError:
        problems.append((exc, "invalid field name '%s'" % field_name))
        return None
    if not isinstance(ref, ast.UnaryCheck):
        problems.append((exc, "invalid field name '%s'" % field_name))
        return None
    if comp in ast.LIST_OPS:
        items = item if isinstance(item, list) else [item]
        operand: ast.Operand = ast.ValueList(tuple(_scalar(i) for i in items))  # list names expand later
    else:
        if isinstance(item, list):
            problems.append((exc, "operator '%s' takes one value, got a list" % comp))
            return None
        operand = ast.Value(_scalar(item))
    return ast.BinaryCheck(ref.field, comp, operand)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _locate(text: Text | None, condition: str, pos: ast.Position | None, fallback: SourceLocation) -> SourceLocation:
    if text is None or pos is None:
        return fallback
    return text.locate(condition, pos.offset)


def _expand_macros(node: ast.Expr, macros: dict[str, ast.Expr], stack: tuple[str, ...]) -> ast.Expr:
    if isinstance(node, ast.MacroRef):
        if node.name in stack:
            raise CompileError("macro cycle: %s" % " -> ".join(stack + (node.name,)), node.pos)
        return _expand_macros(macros[node.name], macros, stack + (node.name,))
    if isinstance(node, ast.And):
        return ast.And(tuple(_expand_macros(c, macros, stack) for c in node.children))
    if isinstance(node, ast.Or):
        return ast.Or(tuple(_expand_macros(c, macros, stack) for c in node.children))
    if isinstance(node, ast.Not):
        return ast.Not(_expand_macros(node.child, macros, stack))
    return node


def compile_collection(collection: Collection, extra: Iterable[RuleSpec] = (), match: str = "all") -> Ruleset:
    """The compile stage; raises RuleLoadError with every problem found."""
    problems = _Problems()
    problems.errors.extend(collection.errors)
    problems.warnings.extend(collection.warnings)
    lists = resolve_lists(collection, problems)
    used_lists: set[str] = set()

    # macros: parse, expand list names, validate leaves
    macro_trees: dict[str, ast.Expr] = {}
    for name, macro in collection.macros.items():
        label = "macro '%s'" % name
        try:
            tree = grammar.parse(macro.condition)
        except grammar.ConditionSyntaxError as exc:
            where = _locate(macro.text, macro.condition, exc.pos, macro.location)
            problems.errors.append(Problem("syntax error: %s" % exc.message, where, label))
            continue
        tree = _resolve_values(tree, lists, used_lists)
        for error in _validate_leaves(tree, set(collection.macros)):
            problems.errors.append(Problem(error.message, _locate(macro.text, macro.condition, error.pos, macro.location), label))
        macro_trees[name] = tree

    # (spec, its YAML text or None, index, its parsed and validated tree or None)
    specs: list[tuple[RuleSpec, Text | None, int, ast.Expr | None]] = []
    for rule in collection.rules.values():
        parsed = _rule_spec(rule, lists, used_lists, set(collection.macros), problems)
        if parsed is not None:
            specs.append((parsed[0], rule.condition_text, rule.index, parsed[1]))
    base = collection.next_index()  # extra rules come after every YAML rule
    if collection.sigma_sources:
        from sentinel.rules.sigma import sigma_rule_specs  # imported here: sigma builds on RuleSpec

        extra = list(extra) + sigma_rule_specs(collection, problems.errors, problems.warnings)
    for offset, spec in enumerate(extra):
        specs.append((spec, None, base + offset, None))

    compiled: list[Rule] = []
    for spec, text, index, parsed_tree in specs:
        label = "rule '%s'" % spec.name
        condition_text = spec.condition if isinstance(spec.condition, str) else ast.render(spec.condition)
        if parsed_tree is not None:
            tree = parsed_tree
        elif isinstance(spec.condition, str):
            try:
                tree = _resolve_values(grammar.parse(spec.condition), lists, used_lists)
            except grammar.ConditionSyntaxError as exc:
                problems.errors.append(Problem("syntax error: %s" % exc.message, spec.location, label))
                continue
        else:
            tree = _resolve_values(spec.condition, lists, used_lists)
        if parsed_tree is None:
            errors = _validate_leaves(tree, set(macro_trees))
            if errors:
                problems.errors.extend(Problem(e.message, spec.location, label) for e in errors)
                continue
        if spec.source not in ("syscall", "sigma"):  # sigma: Sigma rules over syscall events
            problems.warnings.append(Problem("source '%s' is not supported: rule skipped" % spec.source, spec.location, label))
            continue
        try:
            expanded = _expand_macros(tree, macro_trees, ())
        except RecursionError:
            problems.errors.append(Problem(_TOO_DEEP, spec.location, label))
            continue
        except CompileError as exc:
            problems.errors.append(Problem(exc.message, _locate(text, condition_text, exc.pos, spec.location), label))
            continue
        except KeyError:
            continue  # the undefined macro was already reported
        try:
            template = parse_output(spec.output, bind_field)
        except CompileError as exc:
            yaml_rule = collection.rules.get(spec.name) if parsed_tree is not None else None
            output_text = yaml_rule.output_text if yaml_rule is not None else None
            where = _locate(output_text, spec.output, exc.pos, spec.location)
            problems.errors.append(Problem("output: %s" % exc.message, where, label))
            continue
        compiled.append(Rule(
            name=spec.name, desc=spec.desc, condition=condition_text, expanded=expanded, output=template,
            priority=spec.priority, tags=tuple(spec.tags), enabled=spec.enabled, source=spec.source,
            action=spec.action, mode=spec.mode, location=spec.location, index=index, event_types=None,
            extra=dict(spec.extra), warn_evttypes=spec.warn_evttypes,
        ))

    for name, definition in collection.lists.items():
        if name not in used_lists and not any(name in other.items for other in collection.lists.values()):
            problems.warnings.append(Problem("list is never used", definition.location, "list '%s'" % name))

    if problems.errors:
        raise RuleLoadError(problems.errors, problems.warnings)
    return _build(compiled, lists, macro_trees, problems.warnings, match, collection)


def _rule_spec(rule: RuleDef, lists: dict, used_lists: set, macro_names: set,
               problems: _Problems) -> tuple[RuleSpec, ast.Expr] | None:
    """A YAML rule as a RuleSpec and its validated condition tree (exceptions included)."""
    label = "rule '%s'" % rule.name
    condition = rule.condition
    try:
        tree = grammar.parse(condition)
    except grammar.ConditionSyntaxError as exc:
        problems.errors.append(Problem("syntax error: %s" % exc.message, _locate(rule.condition_text, condition, exc.pos, rule.location), label))
        return None
    tree = _resolve_values(tree, lists, used_lists)
    failed = False
    for error in _validate_leaves(tree, macro_names):
        problems.errors.append(Problem(error.message, _locate(rule.condition_text, condition, error.pos, rule.location), label))
        failed = True
    exceptions, exception_problems = exception_condition(rule.exceptions)
    for exc, message in exception_problems:
        problems.errors.append(Problem("exception '%s': %s" % (exc.name, message), exc.location, label))
        failed = True
    if exceptions is not None:
        exceptions_text = ast.render(exceptions)
        exceptions = _resolve_values(exceptions, lists, used_lists)
        for error in _validate_leaves(exceptions, macro_names):
            location = rule.exceptions[0].location if rule.exceptions else rule.location
            problems.errors.append(Problem("exceptions: %s" % error.message, location, label))
            failed = True
        condition = "(%s) and not (%s)" % (condition, exceptions_text)
        tree = ast.And((tree, ast.Not(exceptions)))
    if failed:
        return None
    spec = RuleSpec(
        name=rule.name, condition=condition, output=rule.output, priority=rule.priority, desc=rule.desc,
        tags=tuple(rule.tags), enabled=rule.enabled, source=rule.source, action=rule.action, mode=rule.mode,
        location=rule.location, warn_evttypes=rule.warn_evttypes,
    )
    return spec, tree


def _build(rules: list[Rule], lists: dict, macros: dict, warnings: list[Problem], match: str, collection: Collection | None) -> Ruleset:
    """Buckets, generated code and interest for compiled rules; RuleLoadError if they nest too deeply."""
    try:
        return _build_buckets(rules, lists, macros, warnings, match, collection)
    except RecursionError:
        deepest = sorted(rules, key=lambda rule: -_depth(rule.expanded))[:3]
        raise RuleLoadError([Problem(_TOO_DEEP, rule.location, "rule '%s'" % rule.name) for rule in deepest],
                            warnings) from None


def _build_buckets(rules: list[Rule], lists: dict, macros: dict, warnings: list[Problem], match: str,
                   collection: Collection | None) -> Ruleset:
    if match not in ("all", "first"):
        raise ValueError("match must be 'all' or 'first'")
    interner = Interner()
    interned = {id(rule): interner.intern(rule.expanded) for rule in rules}
    enabled = [rule for rule in rules if rule.enabled]
    mentioned: set[str] = set()
    for rule in enabled:
        mentioned |= mentioned_event_types(interned[id(rule)])
    bucket_types = sorted(mentioned) + [_OTHER]
    bound_fields: dict[str, BoundField] = {}
    binder = BucketCodegen(_Namespace(), bound_fields)
    merge_memo: dict[int, ast.Expr] = {}
    per_bucket: dict[str, list[tuple[Rule, ast.Expr]]] = {}
    rule_types: dict[int, set[str]] = {id(rule): set() for rule in enabled}
    for event_type in bucket_types:
        memo: dict[int, ast.Expr] = {}
        entries = []
        for rule in enabled:
            specialised = specialize(interned[id(rule)], None if event_type == _OTHER else event_type, interner, memo)
            specialised = merge_alternatives(specialised, interner, binder.bound, merge_memo)
            if specialised is not interner.false:
                entries.append((rule, specialised))
                rule_types[id(rule)].add(event_type)
        per_bucket[event_type] = entries

    for rule in rules:
        types = rule_types.get(id(rule))
        if types is None:
            continue
        if _OTHER in types:
            rule.event_types = None
            if rule.source == "syscall" and rule.warn_evttypes:
                warnings.append(Problem(
                    "rule does not restrict evt.type: it is evaluated for every event (add an evt.type condition)",
                    rule.location, "rule '%s'" % rule.name))
        else:
            rule.event_types = frozenset(types)

    namespace = _Namespace()
    buckets: dict[str, Callable[[Event], list[Rule]]] = {}
    sources: dict[str, str] = {}
    for number, (event_type, entries) in enumerate(per_bucket.items()):
        # event type names come from rule text: only the bucket number goes into identifiers
        function_name = "match_%d" % number
        try:
            source, tables = _bucket_source(function_name, entries, namespace, bound_fields, interner)
            code = compile(source, "<rules:%s>" % event_type, "exec")
        except (RecursionError, SyntaxError, MemoryError):
            deepest = sorted(entries, key=lambda entry: -_depth(entry[1]))[:3]
            raise RuleLoadError([Problem(_TOO_DEEP, rule.location, "rule '%s'" % rule.name) for rule, _ in deepest],
                                warnings) from None
        sources[event_type] = source
        scope = namespace.values  # globals shared by all buckets: constants are added, never changed
        exec(code, scope)
        for table, names in tables:
            table.update({key: scope[name] for key, name in names.items()})
        buckets[event_type] = scope[function_name]

    interest = _interest(enabled, per_bucket)
    counts = {
        "rules": len(rules),
        "enabled_rules": len(enabled),
        "macros": len(macros),
        "lists": len(lists),
    }
    if collection is not None:
        counts.update({"raw_" + kind + "s": count for kind, count in collection.raw_counts.items()})
        counts.update(collection.sigma_counts)
    return Ruleset(
        rules=tuple(rules), lists=lists, macros=macros, interest=interest, warnings=warnings, counts=counts,
        first_match=(match == "first"), _buckets=buckets, _sources=sources,
    )


_TOO_DEEP = "the condition nests too deeply (macros within macros) to be compiled"


def _depth(node: ast.Expr, limit: int = 500) -> int:
    """Nesting depth of a condition, counted without recursion."""
    deepest = 0
    stack = [(node, 1)]
    while stack and deepest < limit:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(current, (ast.And, ast.Or)):
            stack.extend((child, depth + 1) for child in current.children)
        elif isinstance(current, ast.Not):
            stack.append((current.child, depth + 1))
    return deepest


def _bucket_source(
    function_name: str,
    entries: list[tuple[Rule, ast.Expr]],
    namespace: _Namespace,
    bound_fields: dict[str, BoundField],
    interner: Interner,
) -> tuple[str, list[tuple[dict, dict[Any, str]]]]:
    """Source of one event type's function, its indexed groups, and the index tables to fill."""
    codegen = BucketCodegen(namespace, bound_fields)
    consts = [(namespace.add(rule, "r"), condition) for rule, condition in entries]
    remaining, plans = plan_indexes(consts, codegen.bound, interner)
    group_sources: list[str] = []
    dispatch: list[str] = []
    tables: list[tuple[dict, dict[Any, str]]] = []
    for number, plan in enumerate(plans):
        table: dict[Any, Callable] = {}
        names: dict[Any, str] = {}
        for key, group_entries in plan.groups.items():
            group_name = "%s_i%d_%d" % (function_name, number, len(names))
            group_sources.append(BucketCodegen(namespace, bound_fields).function(group_name, group_entries, group=True))
            names[key] = group_name
        tables.append((table, names))
        table_name = namespace.add(table, "i")
        bound = codegen.bound(plan.field)
        extract = bound.inline or "%s(e)" % namespace.add(bound.extract, "x")
        if plan.mode == "eq":
            dispatch += ["    _f = %s.get(%s)" % (table_name, extract), "    if _f is not None:", "        _f(e, hits)"]
        else:
            dispatch.append("    _prefix_dispatch(%s, %s, e, hits)" % (extract, table_name))
    main = codegen.function(function_name, remaining, dispatch=dispatch)
    return "\n".join(group_sources + [main]), tables


def _interest(enabled: list[Rule], per_bucket: dict[str, list[tuple[Rule, ast.Expr]]]) -> Interest:
    event_types: set[str] = set()
    for event_type, entries in per_bucket.items():
        if not entries:
            continue
        if event_type == _OTHER:
            event_types |= KNOWN_EVENT_TYPES
        else:
            event_types.add(event_type)
    per_rule: list[tuple[Rule, Narrowing]] = []
    for event_type, entries in per_bucket.items():
        if event_type not in OPEN_EVENT_TYPES and not (event_type == _OTHER and entries):
            continue
        per_rule += [(rule, _any_path_if_root(narrowing(condition))) for rule, condition in entries]
    urgent: set[str] = set()
    for rule in enabled:
        if rule.action == "kill":
            urgent |= rule.event_types if rule.event_types is not None else event_types
    opens_wanted = bool(event_types & OPEN_EVENT_TYPES)
    if not opens_wanted:
        return Interest(event_types=frozenset(event_types), open_path_prefixes=(), urgent_types=frozenset(urgent))
    found = [(rule, narrowed) for rule, narrowed in per_rule if not narrowed.impossible]
    reasons: list[str] = []
    for rule, narrowed in found:
        if not narrowed.any_path:
            continue
        if narrowed.selectors:
            reason = "rule '%s' passes opens by %s only, whatever their path" % (rule.name, ", ".join(narrowed.selectors))
        else:
            reason = "rule '%s' forces every open to userspace" % rule.name
        if reason not in reasons:
            reasons.append(reason)
    path_part = union_narrowings([narrowed for _, narrowed in found if not narrowed.any_path])
    every = [_selectors(narrowed) for _, narrowed in found]
    any_path_selectors = [_selectors(narrowed) for _, narrowed in found if narrowed.any_path]
    global_selectors = _union_selectors(every) if every else OpenSelectors()
    any_path = _union_selectors(any_path_selectors) if any_path_selectors else None
    if any_path == OpenSelectors() or (any_path is not None and len(any_path_selectors) == len(found)):
        # a rule matches opens whatever their path and selectors, or every rule matches opens
        # whatever their path (then the selectors of every open are those of the any-path ones)
        any_path = None
        path_part = ANY_OPEN
    if global_selectors.uids is not None or (any_path is not None and any_path.uids is not None):
        event_types |= _UID_CHANGES  # the process table must follow the uid changes the kernel filter sees
    prefix_modes = {} if path_part.any_path else prefix_access_modes([n for _, n in found if not n.any_path])
    return Interest(
        event_types=frozenset(event_types),
        open_path_prefixes=None if path_part.any_path else tuple(sorted(prefix_modes)),
        open_prefix_accmodes=tuple(sorted((p, modes) for p, modes in prefix_modes.items() if modes is not None)),
        open_comms=frozenset() if path_part.any_path else path_part.comms,
        open_basenames=frozenset() if path_part.any_path else path_part.basenames,
        open_created=path_part.created,
        open_selectors=global_selectors,
        open_any_path=any_path,
        reasons=tuple(reasons),
        urgent_types=frozenset(urgent),
    )


def _any_path_if_root(narrowed: Narrowing) -> Narrowing:
    """A path part with the prefix "/" (fd.directory = /) passes every path: only the
    rule's selectors narrow it."""
    if narrowed.any_path or not ({"/", ""} & narrowed.prefixes):
        return narrowed
    return replace(narrowed, prefixes=frozenset(), comms=frozenset(), basenames=frozenset(), created=False, any_path=True)


def _selectors(narrowed: Narrowing) -> OpenSelectors:
    dotdot = (narrowed.accmodes if narrowed.accmodes is not None else ACCMODES_ALL) if narrowed.raw_dotdot else frozenset()
    return OpenSelectors(narrowed.accmodes, narrowed.file_types, narrowed.uids, narrowed.container, dotdot)


def _union_selectors(selectors: list[OpenSelectors]) -> OpenSelectors:
    result = selectors[0]
    for other in selectors[1:]:
        result = result.union(other)
    return result


# setuid-family calls the process table follows (sysdecode._apply_creds)
_UID_CHANGES = frozenset({"setuid", "setreuid", "setresuid"})


# ---------------------------------------------------------------------------------------------
# entry points


def load_rules(paths: Sequence[str], extra: Iterable[RuleSpec] = (), match: str = "all") -> Ruleset:
    """Load rule files (or folders of them) in order and compile them; raises RuleLoadError."""
    return compile_collection(collect_files(list(paths)), extra, match)


def load_rules_text(sources: Sequence[tuple[str, str]], extra: Iterable[RuleSpec] = (), match: str = "all") -> Ruleset:
    """Same as load_rules from (name, YAML text) pairs."""
    return compile_collection(collect(list(sources)), extra, match)


def compile_rules(specs: Iterable[RuleSpec], base: Ruleset | None = None, match: str = "all") -> Ruleset:
    """Compile rules given as RuleSpecs (conditions as AST or text), with the macros and lists of
    `base` (e.g. the loaded Falco files) available to them."""
    collection = Collection()
    extra = list(specs)
    if base is None:
        return compile_collection(collection, extra, match)
    problems = _Problems()
    compiled: list[Rule] = list(base.rules)
    next_index = max((rule.index for rule in compiled), default=0) + 1
    for offset, spec in enumerate(extra):
        label = "rule '%s'" % spec.name
        used: set[str] = set()
        try:
            tree = grammar.parse(spec.condition) if isinstance(spec.condition, str) else spec.condition
        except grammar.ConditionSyntaxError as exc:
            problems.errors.append(Problem("syntax error: %s" % exc.message, spec.location, label))
            continue
        tree = _resolve_values(tree, base.lists, used)
        errors = _validate_leaves(tree, set(base.macros))
        if errors:
            problems.errors.extend(Problem(e.message, spec.location, label) for e in errors)
            continue
        try:
            expanded = _expand_macros(tree, base.macros, ())
            template = parse_output(spec.output, bind_field)
        except CompileError as exc:
            problems.errors.append(Problem(exc.message, spec.location, label))
            continue
        compiled.append(Rule(
            name=spec.name, desc=spec.desc, condition=ast.render(tree), expanded=expanded, output=template,
            priority=spec.priority, tags=tuple(spec.tags), enabled=spec.enabled, source=spec.source,
            action=spec.action, mode=spec.mode, location=spec.location, index=next_index + offset, event_types=None,
            extra=dict(spec.extra),
        ))
    if problems.errors:
        raise RuleLoadError(problems.errors)
    return _build(compiled, base.lists, base.macros, list(base.warnings), match, None)


def compile_condition(condition: ast.Expr | str, base: Ruleset | None = None) -> Callable[[Event], bool]:
    """One condition (AST or text) as a predicate over events, through the same code generator."""
    spec = RuleSpec(name="condition", condition=condition, output="", priority="debug")
    ruleset = compile_rules([spec], base=None if base is None else _only_definitions(base))
    return lambda event: bool(ruleset.match(event))


def _only_definitions(base: Ruleset) -> Ruleset:
    return Ruleset(rules=(), lists=base.lists, macros=base.macros, interest=Interest())
