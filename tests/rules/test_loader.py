"""Loading rule files: documents, name resolution, overrides, exceptions, errors with locations."""

from __future__ import annotations

import re
import textwrap

import pytest

from sentinel.errors import RuleError
from sentinel.rules.loader import RuleLoadError
from sentinel.rules.ruleset import load_rules, load_rules_text
from sentinel.rules.testcases import build_event

BASE = """
- required_engine_version: 0.31.0
- list: shells
  items: [bash, sh]
- macro: spawned
  condition: evt.type in (execve, execveat)
- rule: Shell
  desc: a shell started
  condition: spawned and proc.name in (shells)
  output: shell %proc.name (parent %proc.pname, gp %proc.aname[2], flags %evt.arg.flags, %container.info)
  priority: WARNING
  tags: [process]
"""


def load(*texts: str, **options):
    return load_rules_text([("file%d.yaml" % i, textwrap.dedent(t)) for i, t in enumerate(texts)], **options)


def names(ruleset, event) -> list[str]:
    return [rule.name for rule in ruleset.match(build_event(event))]


def execve(name: str, **proc) -> dict:
    return {"type": "execve", "proc": dict(proc, name=name), "parents": [{"name": "sshd"}, {"name": "systemd"}]}


def load_error(*texts: str) -> RuleLoadError:
    with pytest.raises(RuleLoadError) as info:
        load(*texts)
    return info.value


def test_basic_document():
    ruleset = load(BASE)
    rule = ruleset.rule("Shell")
    assert (rule.priority, rule.tags, rule.enabled, rule.source) == ("warning", ("process",), True, "syscall")
    assert rule.event_types == frozenset({"execve", "execveat"})
    assert names(ruleset, execve("bash")) == ["Shell"]
    assert names(ruleset, execve("ls")) == []
    assert rule.expanded_condition == "evt.type in (execve, execveat) and proc.name in (bash, sh)"
    assert rule.location.path == "file0.yaml" and rule.location.line == 7


def test_output_rendering():
    ruleset = load(BASE)
    event = build_event(execve("bash"))
    rule = ruleset.match(event)[0]
    assert rule.render_output(event) == (
        "shell bash (parent sshd, gp systemd, flags , container_id=host container_name=host)")
    fields = rule.output_fields(event)
    assert fields["proc.aname[2]"] == "systemd" and fields["proc.pname"] == "sshd"
    absent = load(BASE.replace("%proc.pname", "%k8s.pod.name"))
    assert "(parent <NA>," in absent.rule("Shell").render_output(event)


def test_output_text_and_fields_together_match_each_alone():
    ruleset = load(BASE.replace("output: shell %proc.name", "output: shell %proc.name again %proc.name args %proc.args"))
    event = build_event(dict(execve("bash"), proc={"name": "bash", "args": ["-c", "id\x07"]}))
    rule = ruleset.rule("Shell")
    text, fields = rule.render_with_fields(event)
    assert (text, fields) == (rule.render_output(event), rule.output_fields(event))
    assert text.startswith("shell bash again bash args -c id\\x07 (parent sshd,")
    assert list(fields)[:2] == ["proc.name", "proc.args"] and fields["proc.args"] == "-c id\x07"


def test_output_values_of_every_kind_and_a_failing_field():
    from types import SimpleNamespace

    from sentinel.rules.output import parse_output

    values = {"a.str": "x\x1by", "a.int": 7, "a.none": None, "a.bool": True, "a.tuple": ("p", "q"), "a.bytes": b"\xffz"}

    def bind(ref):
        if ref.name == "a.fails":
            return SimpleNamespace(extract=lambda event: 1 / 0)
        return SimpleNamespace(extract=lambda event: values[ref.name])

    template = parse_output("%a.str|%a.int|%a.none|%a.bool|%a.tuple|%a.bytes|%a.fails|%a.int '{x}' \\n", bind)
    text, fields = template.render_with_fields(None)
    assert text == "x\\x1by|7|<NA>|true|p,q|\\xffz|<NA>|7 '{x}' \\n"
    assert fields == {"a.str": "x\x1by", "a.int": 7, "a.none": None, "a.bool": True, "a.tuple": ["p", "q"],
                      "a.bytes": "\\xffz", "a.fails": None}
    assert parse_output("", bind).render_with_fields(None) == ("", {})
    assert parse_output("%a.int", bind).render(None) == "7"


def test_output_times_render_as_falco_prints_them():
    ruleset = load(BASE.replace("output: shell %proc.name", "output: at %evt.time %evt.time.iso8601 shell %proc.name"))
    event = build_event(dict(execve("bash"), time_ns=1_700_000_000_123_456_789))
    text = ruleset.rule("Shell").render_output(event)
    assert re.match(r"at \d\d:\d\d:\d\d\.123456789 2023-11-14T22:13:20\.123456789Z shell bash", text), text


def test_output_escapes_control_characters():
    ruleset = load(BASE)
    event = build_event(execve("bash"))
    event.proc.parent.comm = "ss\nhd\x1b"
    assert "parent ss\\x0ahd\\x1b," in ruleset.rule("Shell").render_output(event)


def test_priorities_and_aliases():
    text = BASE.replace("WARNING", "Informational")
    assert load(text).rule("Shell").priority == "informational"
    assert load(BASE.replace("WARNING", "info")).rule("Shell").priority_level == 6
    error = load_error(BASE.replace("WARNING", "LOUD"))
    assert "invalid priority 'LOUD'" in str(error)


def test_later_definitions_replace_earlier_ones():
    second = """
    - list: shells
      items: [zsh]
    - rule: Shell
      desc: replaced
      condition: spawned and proc.name in (shells) and proc.pname = sshd
      output: x
      priority: ERROR
    """
    ruleset = load(BASE, second)
    assert names(ruleset, execve("zsh")) == ["Shell"]
    assert names(ruleset, execve("bash")) == []
    assert ruleset.rule("Shell").priority == "error"
    assert ruleset.counts["rules"] == 1 and ruleset.counts["raw_rules"] == 2


def test_references_resolve_after_everything_is_loaded():
    text = """
    - rule: Early
      desc: uses names defined later
      condition: later_macro and proc.name in (later_list)
      output: x
      priority: notice
    - macro: later_macro
      condition: evt.type = execve
    - list: later_list
      items: [nested, inner_list]
    - list: inner_list
      items: [deep]
    """
    ruleset = load(text)
    assert names(ruleset, execve("deep")) == ["Early"]
    assert names(ruleset, execve("nested")) == ["Early"]
    assert ruleset.lists["later_list"] == ("nested", "deep")


def test_unknown_bare_words_in_lists_are_literals():
    text = BASE.replace("proc.name in (shells)", "proc.name in (shells, not_a_list, 'quoted')")
    ruleset = load(text)
    assert names(ruleset, execve("not_a_list")) == ["Shell"]
    assert ruleset.rule("Shell").expanded_condition.endswith("proc.name in (bash, sh, not_a_list, quoted)")


def test_quoted_list_items_are_unquoted():
    text = """
    - list: nets
      items: ['"10.0.0.0/8"', "'192.168.0.0/16'"]
    - rule: Net
      desc: d
      condition: evt.type = connect and fd.rnet in (nets)
      output: x
      priority: notice
    """
    ruleset = load(text)
    assert ruleset.lists["nets"] == ("10.0.0.0/8", "192.168.0.0/16")
    event = {"type": "connect", "proc": {"name": "c"}, "fd": {"type": "ipv4", "rip": "10.2.3.4", "rport": 1, "lip": "1.1.1.1", "lport": 2}}
    assert names(ruleset, event) == ["Net"]


def test_override_append_and_replace():
    override = """
    - list: shells
      items: [zsh]
      override:
        items: append
    - macro: spawned
      condition: and proc.pname = sshd
      override:
        condition: append
    - rule: Shell
      condition: and not proc.name = sh
      output: more
      tags: [extra]
      override:
        condition: append
        output: append
        tags: append
    - rule: Shell
      priority: CRITICAL
      enabled: true
      override:
        priority: replace
        enabled: replace
    """
    ruleset = load(BASE, override)
    rule = ruleset.rule("Shell")
    assert rule.expanded_condition == (
        "(evt.type in (execve, execveat) and proc.pname = sshd) and proc.name in (bash, sh, zsh) and not proc.name = sh")
    assert rule.priority == "critical" and rule.tags == ("process", "extra")
    assert rule.output.text.endswith("%container.info) more")
    assert names(ruleset, execve("zsh")) == ["Shell"]
    assert names(ruleset, execve("sh")) == []


def test_deprecated_append():
    appended = """
    - list: shells
      items: [fish]
      append: true
    - rule: Shell
      condition: and proc.uid = 0
      append: true
    """
    ruleset = load(BASE, appended.replace("proc.uid", "user.uid"))
    assert ruleset.rule("Shell").condition == "spawned and proc.name in (shells) and user.uid = 0"
    assert names(ruleset, execve("fish", uid=0)) == ["Shell"]
    assert names(ruleset, execve("fish", uid=5)) == []


def test_enabled_only_item_switches_a_rule():
    ruleset = load(BASE, "- rule: Shell\n  enabled: false\n")
    assert not ruleset.rule("Shell").enabled
    assert names(ruleset, execve("bash")) == []
    assert ruleset.interest.event_types == frozenset()


def test_append_without_earlier_definition_is_an_error():
    error = load_error("- list: ghosts\n  items: [a]\n  append: true\n")
    assert "no list by that name" in str(error)
    error = load_error(BASE, "- rule: Nope\n  condition: x\n  override:\n    condition: append\n")
    assert "rule 'Nope'" in str(error) and "defined earlier" in str(error)


def test_sentinel_extension_keys():
    text = BASE.replace("tags: [process]", "tags: [process]\n  action: kill\n  mode: enforce")
    rule = load(text).rule("Shell")
    assert (rule.action, rule.mode) == ("kill", "enforce")
    assert load(BASE).rule("Shell").action is None
    error = load_error(BASE.replace("tags: [process]", "tags: [process]\n  action: explode"))
    assert "invalid action 'explode'" in str(error)


def test_exceptions_compile_into_the_condition_like_falco():
    text = BASE.replace("tags: [process]", textwrap.dedent("""\
      tags: [process]
      exceptions:
        - name: known_parents
          fields: [proc.pname, proc.cmdline]
          comps: [=, startswith]
          values:
            - [cron, "bash -c backup"]
            - [sshd, bash]
        - name: by_name
          fields: proc.name
          values: [sh]
        - name: by_list
          fields: [proc.pname]
          comps: [in]
          values:
            - [shells]
        - name: prefixes
          fields: proc.exepath
          comps: startswith
          values: [/opt/a/, /opt/b/]
        - name: unused
          fields: [proc.name]
    """).replace("\n", "\n  ").rstrip())
    ruleset = load(text)
    rule = ruleset.rule("Shell")
    assert rule.condition == (
        "(spawned and proc.name in (shells)) and not ("
        "(proc.pname = cron and proc.cmdline startswith \"bash -c backup\") or "
        "(proc.pname = sshd and proc.cmdline startswith bash) or proc.name in (sh) or proc.pname in (shells) or "
        "proc.exepath startswith /opt/a/ or proc.exepath startswith /opt/b/)")
    assert names(ruleset, execve("bash")) == []  # parent sshd, cmdline "bash"
    event = {"type": "execve", "proc": {"name": "bash", "args": ["-x"]}, "parents": [{"name": "init"}]}
    assert names(ruleset, event) == ["Shell"]
    event["parents"] = [{"name": "sh"}]
    assert names(ruleset, event) == []


def test_exception_errors_are_located():
    text = BASE.replace("tags: [process]", "tags: [process]\n  exceptions:\n    - name: bad\n      fields: [proc.nope]\n      values: [[x]]")
    error = load_error(text)
    assert "unknown field 'proc.nope'" in str(error)
    text = BASE.replace("tags: [process]", "tags: [process]\n  exceptions:\n    - name: bad\n      fields: [proc.name, proc.pname]\n      values: [[x]]")
    assert "each value must be a list of 2 items" in str(load_error(text))


def test_every_error_of_every_file_with_its_location():
    first = """
    - rule: Broken syntax
      desc: d
      condition: >
        evt.type = execve and
        proc.name in (a, b
      output: x
      priority: notice
    - macro: bad_field
      condition: proc.nmae = x
    """
    second = """
    - rule: Undefined macro
      desc: d
      condition: evt.type = execve and no_such_macro
      output: x
      priority: notice
    - rule: Missing keys
      condition: evt.type = execve
    - rule: Bad output
      desc: d
      condition: evt.type = execve
      output: "%proc.nope here"
      priority: notice
    - list: l
      items: not-a-list
      surprise: 1
    """
    error = load_error(first, second)
    text = [str(problem) for problem in error.errors]
    assert any(t.startswith("file0.yaml:6:23:") and "rule 'Broken syntax'" in t and "')'" in t for t in text), text
    assert any(t.startswith("file0.yaml:10:14: macro 'bad_field': unknown field 'proc.nmae'") for t in text), text
    assert any(t.startswith("file1.yaml:4:36: rule 'Undefined macro': undefined macro 'no_such_macro'") for t in text), text
    assert any("file1.yaml:7:3: rule 'Missing keys': missing required keys 'output', 'desc', 'priority'" in t for t in text), text
    assert any(t.startswith("file1.yaml:12:12: rule 'Bad output': output: unknown field 'proc.nope'") for t in text), text
    assert any("list 'l'" in t and "'items' must be a list" in t for t in text), text
    assert len(error.errors) == 6
    assert isinstance(error, RuleError) and "5 more errors" in str(error)


def test_warnings_for_unknown_keys_do_not_stop_loading():
    ruleset = load(BASE.replace("tags: [process]", "tags: [process]\n  colour: blue"))
    assert any("unknown key 'colour'" in str(w) and "rule 'Shell'" in str(w) for w in ruleset.warnings)


def test_unrestricted_rule_goes_everywhere_with_a_warning():
    text = "- rule: Any\n  desc: d\n  condition: proc.name = bash\n  output: x\n  priority: debug\n"
    ruleset = load(BASE, text)
    assert ruleset.rule("Any").event_types is None
    assert any("does not restrict evt.type" in str(w) for w in ruleset.warnings)
    assert names(ruleset, {"type": "whatever", "proc": {"name": "bash"}}) == ["Any"]
    assert names(ruleset, execve("bash")) == ["Shell", "Any"]
    assert "execve" in ruleset.interest.event_types and "openat" in ruleset.interest.event_types


def test_warn_evttypes_false_silences_the_warning():
    text = "- rule: Any\n  desc: d\n  condition: proc.name = bash\n  output: x\n  priority: debug\n  warn_evttypes: false\n"
    assert not any("does not restrict evt.type" in str(w) for w in load(text).warnings)


def test_first_match_option():
    text = "- rule: Second\n  desc: d\n  condition: evt.type = execve and proc.name = bash\n  output: x\n  priority: debug\n"
    assert names(load(BASE, text), execve("bash")) == ["Shell", "Second"]
    assert names(load(BASE, text, match="first"), execve("bash")) == ["Shell"]
    # a redefined rule keeps its place
    redefined = BASE.split("- rule: Shell")[1].replace("WARNING", "ERROR")
    assert names(load(BASE, text, "- rule: Shell" + redefined, match="first"), execve("bash")) == ["Shell"]


def test_required_engine_version():
    assert load("- required_engine_version: 0.57.0\n- required_engine_version: 12\n").counts["rules"] == 0
    error = load_error("- required_engine_version: 0.99.0\n")
    assert "file0.yaml:1:28" in str(error.errors[0]) and "requires engine version 0.99.0" in str(error)
    assert "must be a version" in str(load_error("- required_engine_version: soon\n"))


def test_yaml_errors_and_shapes():
    assert "invalid YAML" in str(load_error("- rule: [unclosed\n"))
    assert "must be a YAML list" in str(load_error("rule: x\n"))
    assert "unknown item" in str(load_error("- something: 1\n"))
    assert load("").counts["rules"] == 0


def test_macro_cycle_is_an_error():
    text = """
    - macro: a
      condition: b
    - macro: b
      condition: a
    - rule: R
      desc: d
      condition: evt.type = execve and a
      output: x
      priority: debug
    """
    assert "macro cycle" in str(load_error(text))


def test_files_and_folders(tmp_path):
    (tmp_path / "10-base.yaml").write_text(textwrap.dedent(BASE))
    (tmp_path / "20-local.yaml").write_text("- list: shells\n  items: [tcsh]\n  override:\n    items: append\n")
    (tmp_path / "notes.txt").write_text("ignored")
    ruleset = load_rules([str(tmp_path)])
    assert ruleset.lists["shells"] == ("bash", "sh", "tcsh")
    with pytest.raises(RuleLoadError) as info:
        load_rules([str(tmp_path / "missing.yaml")])
    assert "cannot read rule file" in str(info.value)


def test_extra_rules_come_after_yaml_rules():
    from sentinel.rules.ruleset import RuleSpec

    extra = RuleSpec(name="Extra", condition="evt.type = execve and proc.name = bash", output="x", priority="debug")
    ruleset = load(BASE, extra=[extra])
    assert names(ruleset, execve("bash")) == ["Shell", "Extra"]
    assert ruleset.rule("Extra").index > max(rule.index for rule in ruleset.rules if rule.name != "Extra")


def test_conditions_nested_too_deeply_are_a_located_error():
    items = ["- macro: m%d\n  condition: fd.name = a%d or (user.uid = %d and %s)\n"
             % (k, k, k, "proc.name = z" if k == 299 else "m%d" % (k + 1)) for k in range(300)]
    items.append("- rule: Deep\n  desc: d\n  condition: evt.type = execve and m0\n  output: x\n  priority: debug\n")
    error = load_error("".join(items))
    assert str(error.errors[0]).startswith("file0.yaml:601:3: rule 'Deep': the condition nests too deeply")
