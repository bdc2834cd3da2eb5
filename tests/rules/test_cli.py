"""`sentinel rules validate|fields|test` and the rule test cases shipped in rules/tests/."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from sentinel.cli import main
from sentinel.rules.testcases import run_case_file

REPO = Path(__file__).resolve().parents[2]
GOOD = textwrap.dedent("""\
    - list: shells
      items: [bash]
    - macro: spawned
      condition: evt.type = execve
    - rule: Shell
      desc: d
      condition: spawned and proc.name in (shells)
      output: shell %proc.name
      priority: notice
      colour: blue
""")


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_validate_ok_with_counts_and_warnings(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = run("rules", "validate", str(path))
    assert result.exit_code == 0, result.output
    assert "ok: 1 file(s), 1 rules (1 enabled), 1 macros, 1 lists" in result.output
    assert "good.yaml:10:3: rule 'Shell': unknown key 'colour' (ignored) (warning)" in result.output
    assert "capture: 1 event type(s); opens under 0 path prefix(es) or by 0 program name(s)" in result.output


def test_validate_errors_exit_1_with_locations(tmp_path):
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text("- rule: Bad\n  desc: d\n  condition: spawned and proc.nme = x\n  output: o\n  priority: debug\n")
    result = run("rules", "validate", str(tmp_path))
    assert result.exit_code == 1
    assert "b.yaml:3:26: rule 'Bad': unknown field 'proc.nme' (error)" in result.output
    assert result.output.strip().splitlines()[-1].startswith("invalid: 2 file(s)")


def test_validate_json(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    report = json.loads(run("rules", "validate", "--json", str(path)).output)
    assert report["ok"] is True
    assert report["counts"]["rules"] == 1 and report["counts"]["raw_macros"] == 1
    assert report["warnings"][0]["line"] == 10 and report["warnings"][0]["item"] == "rule 'Shell'"
    assert report["interest"]["event_types"] == ["execve"]


def test_fields_listing():
    text = run("rules", "fields").output
    assert "proc.aname[arg]" in text and "fd.name" in text
    entries = json.loads(run("rules", "fields", "--json").output)
    assert any(entry["name"] == "k8s.ns.name" and "not available on a host" in entry["source"] for entry in entries)
    assert run("rules", "fields", "--markdown").output == (REPO / "docs" / "fields.md").read_text()


def test_rules_test_command(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOOD)
    cases = tmp_path / "cases.yaml"
    cases.write_text(textwrap.dedent("""\
        rules_files: [rules.yaml]
        cases:
          - name: bash starts
            event: {type: execve, proc: {name: bash}}
            match: [Shell]
          - name: wrong expectation
            event: {type: execve, proc: {name: ls}}
            match: [Shell]
          - name: unknown rule
            event: {type: execve, proc: {name: ls}}
            no_match: [Nope]
          - name: bad event
            event: {type: execve, proc: {colour: red}}
    """))
    result = run("rules", "test", str(cases))
    assert result.exit_code == 1
    assert "1 passed, 3 failed" in result.output
    assert "cases.yaml:6: FAIL: wrong expectation" in result.output
    assert "expected rule 'Shell' to match; matched: nothing" in result.output
    assert "no rule named 'Nope' is loaded" in result.output
    assert "bad event: unknown process key 'colour'" in result.output


def test_rules_dir_option_finds_rule_files(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text(GOOD)
    cases = tmp_path / "cases.yaml"
    cases.write_text("rules_files: [elsewhere/rules.yaml]\ncases:\n  - event: {type: execve, proc: {name: bash}}\n    match: [Shell]\n")
    assert run("rules", "test", str(cases)).exit_code == 1
    result = run("rules", "test", "--rules-dir", str(tmp_path / "rules"), str(cases))
    assert result.exit_code == 0 and "1 passed, 0 failed" in result.output


@pytest.mark.parametrize("case_file", sorted(str(p.relative_to(REPO)) for p in (REPO / "rules" / "tests").rglob("*.yaml")))
def test_shipped_rule_cases(case_file):
    results = run_case_file(str(REPO / case_file))
    failures = [str(result) for result in results if not result.passed]
    assert results and not failures, "\n".join(failures)
