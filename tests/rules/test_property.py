"""Robustness: any rule text either loads or fails with the engine's own located error."""

from __future__ import annotations

import textwrap

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.rules.grammar import ConditionSyntaxError, parse
from sentinel.rules.loader import RuleLoadError
from sentinel.rules.ruleset import load_rules_text
from sentinel.rules.testcases import build_event

VALID = textwrap.dedent("""\
    - list: shells
      items: [bash, sh, "it's", '"quoted"']
    - macro: spawned
      condition: evt.type in (execve, execveat) and evt.res = SUCCESS
    - rule: Shell
      desc: a shell
      condition: >
        spawned and proc.name in (shells) and not proc.aname[2] startswith "/x y"
        and (fd.net = 10.0.0.0/8 or tolower(proc.exepath) glob '*/bin/*' or proc.pname = val(proc.name))
      output: shell %proc.name %proc.aname[2] %evt.arg.flags
      priority: WARNING
      tags: [a, b]
      exceptions:
        - name: e
          fields: [proc.pname, user.uid]
          comps: [=, in]
          values: [[cron, [0, 1]]]
    - rule: Shell
      condition: and user.uid != 5
      override:
        condition: append
""")

TOKENS = ["and", "or", "not", "(", ")", "proc.name", "fd.name", "proc.aname[2]", "evt.type", "=", "!=", "<", ">=",
          "in", "contains", "startswith", "glob", "exists", "pmatch", "intersects", "bash", "'q'", '"d"', "1", "0x1f",
          "spawned", "tolower(", "val(", ",", "[", "]", "\\", "\n", " ", "-", ":", "#", "{", "}", "|", ">", "'", '"']


def assert_loads_or_located_error(text: str) -> None:
    try:
        ruleset = load_rules_text([("fuzz.yaml", text)])
    except RuleLoadError as error:
        assert error.errors
        for problem in error.errors:
            assert problem.location.path == "fuzz.yaml"
            assert str(problem.location).startswith("fuzz.yaml")
        assert str(error)
        return
    # whatever loaded must also evaluate without raising
    event = build_event({"type": "execve", "proc": {"name": "bash"}, "parents": [{"name": "sh"}]})
    ruleset.match(event)
    assert ruleset.errors_at_runtime == 0


def test_the_seed_text_is_valid():
    ruleset = load_rules_text([("fuzz.yaml", VALID)])
    assert ruleset.rule("Shell").condition.endswith("and user.uid != 5) and not (proc.pname = cron and user.uid in (0, 1))")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_rule_files(data):
    text = VALID
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["delete", "insert", "duplicate", "replace"]))
        if action == "delete":
            end = data.draw(st.integers(position, min(len(text), position + 12)))
            text = text[:position] + text[end:]
        elif action == "insert":
            text = text[:position] + data.draw(st.sampled_from(TOKENS)) + text[position:]
        elif action == "duplicate":
            end = data.draw(st.integers(position, min(len(text), position + 40)))
            text = text[:end] + text[position:end] + text[end:]
        else:
            text = text[:position] + data.draw(st.text(max_size=3)) + text[position + 1:]
    assert_loads_or_located_error(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_files(text):
    assert_loads_or_located_error(text)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=14).map(" ".join))
def test_random_conditions(condition):
    try:
        parse(condition)
    except ConditionSyntaxError as error:
        assert error.pos.line >= 1 and error.pos.col >= 1
    rule = "- rule: R\n  desc: d\n  condition: %s\n  output: o\n  priority: debug\n" % condition.replace("\n", " ").replace("#", "")
    assert_loads_or_located_error("- macro: spawned\n  condition: evt.type = execve\n" + rule)
