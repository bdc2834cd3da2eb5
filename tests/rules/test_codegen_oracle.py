"""The generated code against a plain tree-walking evaluator, on random rules and events.

Specialisation by event type, shared sub-conditions, merged alternatives, inline field reads
and indexed groups are optimisations: whatever they do, each rule must match exactly the
events the straightforward reading of its condition matches.
"""

from __future__ import annotations

import fnmatch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.events.model import Event, Fd, Process
from sentinel.rules import ast
from sentinel.rules.compiler import bind_field, path_prefix_match
from sentinel.rules.ruleset import RuleSpec, compile_rules

NAMES = ["bash", "sh", "nc", "cat", "python3"]
PATHS = ["/etc/shadow", "/etc/passwd", "/etc/ssh/sshd_config", "/root/.ssh/id_rsa", "/tmp/x", "/etc", "/etcx/a"]
TYPES = ["openat", "execve", "connect", "unlink"]
NUMBERS = ["-1", "0", "3", "1000"]

_STRING_FIELDS = st.sampled_from(["proc.name", "fd.name", "fd.directory", "proc.pname", "evt.type", "proc.aname"])
_INT_FIELDS = st.sampled_from(["fd.num", "user.uid"])
_STRINGS = st.sampled_from(NAMES + PATHS + TYPES)


def _string_check():
    return st.one_of(
        st.builds(lambda f, op, v: ast.check(f, op, v), _STRING_FIELDS,
                  st.sampled_from(["=", "!=", "startswith", "endswith", "contains", "glob"]), _STRINGS),
        st.builds(lambda f, op, vs: ast.check(f, op, vs), _STRING_FIELDS, st.sampled_from(["in", "pmatch"]),
                  st.lists(_STRINGS, min_size=1, max_size=4)),
        st.builds(lambda f: ast.check(f, "exists"), _STRING_FIELDS),
        st.builds(lambda f, op, v: ast.check(f, op, v), _INT_FIELDS, st.sampled_from(["=", "!=", "<", ">=", "in"]),
                  st.sampled_from(NUMBERS)),
    )


def _tree():
    return st.recursive(
        _string_check(),
        lambda children: st.one_of(
            st.builds(lambda xs: ast.And(tuple(xs)), st.lists(children, min_size=2, max_size=3)),
            st.builds(lambda xs: ast.Or(tuple(xs)), st.lists(children, min_size=2, max_size=3)),
            st.builds(ast.Not, children),
        ),
        max_leaves=8,
    )


def _indexable_rule():
    """`proc.name = X and <tree>`: enough of these get an index."""
    return st.builds(lambda name, tree: ast.And((ast.check("proc.name", "=", name), tree)), st.sampled_from(NAMES), _tree())


def _event():
    def build(event_type, comm, parent, path, num, uid, has_fd):
        proc = Process(10, 1, comm=comm, uid=uid, parent=Process(5, 1, comm=parent, parent=Process(1, 1, comm="systemd")))
        fd = Fd(num, "file", path) if has_fd else None
        return Event(event_type, proc, res=0, args={}, fd=fd, num=1)

    return st.builds(build, st.sampled_from(TYPES), st.sampled_from(NAMES), st.sampled_from(NAMES), st.sampled_from(PATHS),
                     st.sampled_from([-1, 0, 3]), st.sampled_from([0, 1000]), st.booleans())


def reference(node: ast.Expr, event: Event) -> bool:
    if isinstance(node, ast.And):
        return all(reference(c, event) for c in node.children)
    if isinstance(node, ast.Or):
        return any(reference(c, event) for c in node.children)
    if isinstance(node, ast.Not):
        return not reference(node.child, event)
    bound = bind_field(node.field)
    value = bound.extract(event)
    values = value if bound.kind != "single" else (() if value is None else (value,))
    if isinstance(node, ast.UnaryCheck):
        return bool(values)
    numeric = bound.type == "int"
    convert = int if numeric else str
    if isinstance(node.value, ast.ValueList):
        items = [convert(item) for item in node.value.items]
    else:
        items = [convert(node.value.text)]
    op = node.op
    for candidate in values:
        if op == "=" and candidate == items[0]:
            return True
        if op == "!=" and candidate != items[0]:
            return True
        if op == "<" and candidate < items[0]:
            return True
        if op == ">=" and candidate >= items[0]:
            return True
        if op == "in" and candidate in items:
            return True
        if op == "startswith" and candidate.startswith(items[0]):
            return True
        if op == "endswith" and candidate.endswith(items[0]):
            return True
        if op == "contains" and items[0] in candidate:
            return True
        if op == "glob" and fnmatch.fnmatchcase(candidate, items[0]):
            return True
        if op == "pmatch" and path_prefix_match(candidate, tuple(items)):
            return True
    return False


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rules=st.lists(st.one_of(_tree(), _indexable_rule()), min_size=1, max_size=16),
       events=st.lists(_event(), min_size=1, max_size=12))
def test_generated_code_matches_the_reference(rules, events):
    specs = [RuleSpec(name="r%d" % i, condition=tree, output="", priority="debug", warn_evttypes=False)
             for i, tree in enumerate(rules)]
    ruleset = compile_rules(specs)
    for event in events:
        expected = ["r%d" % i for i, tree in enumerate(rules) if reference(tree, event)]
        assert [rule.name for rule in ruleset.match(event)] == expected, (event, ruleset.generated_source(event.type))
    assert ruleset.errors_at_runtime == 0
