"""Sigma files load through the rule engine's loader, mixed with Falco files, in one ruleset."""

from __future__ import annotations

import textwrap

import pytest

from sentinel.events.model import Event, Process
from sentinel.rules.loader import RuleLoadError, expand_paths
from sentinel.rules.ruleset import load_rules, load_rules_text

FALCO = textwrap.dedent("""\
    - macro: spawned_process
      condition: (evt.type in (execve, execveat) and evt.dir=<)
    - rule: Curl Started
      desc: curl runs
      condition: spawned_process and proc.name = curl
      output: curl %proc.cmdline
      priority: NOTICE
    """)

SIGMA = textwrap.dedent("""\
    title: Curl Started
    id: 7a1b2c3d-0000-4000-8000-00000000c0de
    level: high
    tags:
        - attack.t1105
    logsource:
        product: linux
        category: process_creation
    detection:
        selection:
            Image|endswith: /curl
        condition: selection
    ---
    title: Ngrok
    id: 7a1b2c3d-0000-4000-8000-00000000beef
    logsource:
        product: linux
        category: network_connection
    detection:
        selection:
            DestinationHostname|endswith: .ngrok.io
        condition: selection
    """)


def curl_exec() -> Event:
    proc = Process(pid=10, comm="curl", exe="curl", exepath="/usr/bin/curl", args=("-s", "http://x"))
    return Event("execve", proc, res=0)


def test_falco_and_sigma_files_mixed_in_one_ruleset():
    ruleset = load_rules_text([("falco.yaml", FALCO), ("sigma.yml", SIGMA)])
    matched = ruleset.match(curl_exec())
    assert [(rule.name, rule.source, rule.priority) for rule in matched] == [
        ("Curl Started", "syscall", "notice"),
        ("Curl Started (7a1b2c3d-0000-4000-8000-00000000c0de)", "sigma", "error"),
    ]
    sigma_rule = matched[1]
    assert "attack.t1105" in sigma_rule.tags
    assert sigma_rule.render_output(curl_exec()).startswith(
        "Curl Started (sigma 7a1b2c3d-0000-4000-8000-00000000c0de) user="
    )
    assert "image=/usr/bin/curl cmdline=curl -s http://x" in sigma_rule.render_output(curl_exec())


def test_skipped_sigma_rules_are_warnings_with_location_and_counted():
    ruleset = load_rules_text([("sigma.yml", SIGMA)])
    assert ruleset.counts["sigma_rules"] == 1
    assert ruleset.counts["sigma_skipped"] == 1
    assert ruleset.counts["sigma_skipped.unavailable-field"] == 1
    (warning,) = [w for w in ruleset.warnings if "sigma rule" in str(w)]
    assert str(warning).startswith("sigma.yml:21:9: sigma rule 'Ngrok': skipped (unavailable-field)")


def test_invalid_sigma_fails_the_load_with_its_location():
    bad = SIGMA.replace("Image|endswith", "Image|sideways")
    with pytest.raises(RuleLoadError) as caught:
        load_rules_text([("falco.yaml", FALCO), ("bad.yml", bad)])
    assert "bad.yml:1:1" in str(caught.value) and "sideways" in str(caught.value)


def test_folders_are_read_recursively_except_tests(tmp_path):
    (tmp_path / "process_creation").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "process_creation" / "curl.yml").write_text(SIGMA)
    (tmp_path / "tests" / "case.yaml").write_text("not: a rule file\n")
    (tmp_path / "falco.yaml").write_text(FALCO)
    assert expand_paths([tmp_path]) == [str(tmp_path / "falco.yaml"), str(tmp_path / "process_creation" / "curl.yml")]
    ruleset = load_rules([str(tmp_path)])
    assert {rule.source for rule in ruleset.rules} == {"syscall", "sigma"}


def test_created_file_rules_narrow_the_open_filter_beside_falco_prefixes():
    falco = textwrap.dedent("""\
        - rule: Shadow Read
          desc: shadow read
          condition: evt.type = openat and fd.name = /etc/shadow
          output: read %fd.name
          priority: WARNING
        """)
    sigma = textwrap.dedent("""\
        title: Cron File
        id: 7a1b2c3d-0000-4000-8000-00000000ca11
        logsource:
            product: linux
            category: file_event
        detection:
            selection:
                TargetFilename|contains: /CRON
            condition: selection
        """)
    interest = load_rules_text([("falco.yaml", falco), ("sigma.yml", sigma)]).interest
    assert interest.open_path_prefixes == ("/etc/shadow",)
    assert interest.open_created is True
    assert not interest.reasons
    assert load_rules_text([("falco.yaml", falco)]).interest.open_created is False
