"""docs/rules.md stays honest: its Python example runs."""

from __future__ import annotations

import re
from pathlib import Path

from sentinel.rules.testcases import build_event

REPO = Path(__file__).resolve().parents[2]


def test_python_example_runs(monkeypatch, capsys):
    text = (REPO / "docs" / "rules.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    monkeypatch.chdir(REPO)
    event = build_event({"type": "execve", "proc": {"name": "nc", "args": ["-l", "4444"]}})
    scope = {"event": event}
    exec(compile(example, "docs/rules.md", "exec"), scope)
    assert [rule.name for rule in scope["more"].match(event)][-1] == "Netcat"
    assert scope["sql"] == "(\"proc_name\" IS NOT NULL AND \"proc_name\" IN (?, ?))"
