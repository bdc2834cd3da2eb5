"""`sentinel rules validate` on Sigma files and folders, mixed with Falco files."""

from __future__ import annotations

import json
import textwrap

from click.testing import CliRunner

from sentinel.cli import main

FALCO = textwrap.dedent("""\
    - rule: Shell Started
      desc: a shell runs
      condition: evt.type = execve and proc.name = bash
      output: shell %proc.cmdline
      priority: NOTICE
    """)

SIGMA = textwrap.dedent("""\
    title: Chattr Immutable Removal
    id: 0b2a1c3d-0000-4000-8000-000000000001
    level: medium
    logsource:
        product: linux
        category: process_creation
    detection:
        selection:
            Image|endswith: /chattr
            CommandLine|contains: ' -i '
        condition: selection
    """)

AUDITD = textwrap.dedent("""\
    title: Auditd Only
    id: 0b2a1c3d-0000-4000-8000-000000000002
    logsource:
        product: linux
        service: auditd
    detection:
        selection:
            type: EXECVE
        condition: selection
    """)


def test_validate_reports_sigma_counts_and_skips(tmp_path):
    (tmp_path / "linux" / "process_creation").mkdir(parents=True)
    (tmp_path / "linux" / "process_creation" / "chattr.yml").write_text(SIGMA)
    (tmp_path / "linux" / "auditd.yml").write_text(AUDITD)
    falco = tmp_path / "falco.yaml"
    falco.write_text(FALCO)
    result = CliRunner().invoke(main, ["rules", "validate", str(falco), str(tmp_path / "linux")])
    assert result.exit_code == 0, result.output
    assert "sigma: 1 rules loaded, 1 skipped (1 unsupported-logsource)" in result.output
    assert "auditd.yml:1:1: sigma rule 'Auditd Only': skipped (unsupported-logsource)" in result.output

    result = CliRunner().invoke(main, ["rules", "validate", "--json", str(falco), str(tmp_path / "linux")])
    report = json.loads(result.output)
    assert report["ok"] is True
    assert report["counts"]["sigma_rules"] == 1 and report["counts"]["sigma_skipped.unsupported-logsource"] == 1
    assert {"execve", "execveat"} <= set(report["interest"]["event_types"])


def test_validate_fails_on_invalid_sigma_with_its_location(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(SIGMA.replace("condition: selection", "condition: selection and nowhere"))
    result = CliRunner().invoke(main, ["rules", "validate", str(bad)])
    assert result.exit_code == 1
    assert "bad.yml:1:1" in result.output and "nowhere" in result.output
