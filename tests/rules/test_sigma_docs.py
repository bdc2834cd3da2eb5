"""docs/sigma.md's field tables are generated from sentinel.rules.sigma_fields: keep them equal."""

from __future__ import annotations

from pathlib import Path

from sentinel.rules.sigma_fields import LEVEL_PRIORITY, LOGSOURCES, Mapped, render_sigma_doc

DOC = Path(__file__).resolve().parents[2] / "docs" / "sigma.md"


def test_generated_tables_are_up_to_date():
    current = DOC.read_text()
    assert current == render_sigma_doc(current), (
        "docs/sigma.md is stale: run `python -m sentinel.rules.sigma_fields docs/sigma.md`"
    )


def test_every_sigma_level_has_a_falco_priority():
    assert set(LEVEL_PRIORITY) == {"informational", "low", "medium", "high", "critical"}


def test_command_line_is_the_full_argv_not_falcos_comm_based_cmdline():
    assert LOGSOURCES["process_creation"].fields["CommandLine"] == Mapped(
        "proc.exeline", note=LOGSOURCES["process_creation"].fields["CommandLine"].note
    )
