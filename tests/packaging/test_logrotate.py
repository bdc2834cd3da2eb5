"""packaging/logrotate/sentinel run by the real logrotate on a scratch alerts file, with
`systemctl` replaced by a recorder: the file is renamed, and the agent is told to reopen
it (SIGHUP to the main process) only when it runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "packaging/logrotate/sentinel"
ALERTS = "/var/log/sentinel/alerts.json"


def rotate(tmp_path: Path, agent_active: bool) -> tuple[Path, list[str]]:
    logs = tmp_path / "log"
    logs.mkdir()
    (logs / "alerts.json").write_text('{"rule": "x"}\n')
    config = tmp_path / "sentinel.logrotate"
    text = SHIPPED.read_text()
    assert ALERTS in text
    config.write_text(text.replace(ALERTS, str(logs / "alerts.json")))
    config.chmod(0o644)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl.calls"
    recorder = bin_dir / "systemctl"
    recorder.write_text(
        '#!/bin/sh\necho "$*" >> %s\ncase "$*" in *is-active*) exit %d ;; esac\nexit 0\n' % (calls, 0 if agent_active else 3)
    )
    recorder.chmod(0o755)
    result = subprocess.run(
        ["logrotate", "--force", "--state", str(tmp_path / "state"), str(config)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH="%s:%s" % (bin_dir, os.environ["PATH"])),
    )
    assert result.returncode == 0, result.stderr
    return logs, calls.read_text().splitlines() if calls.exists() else []


def test_configuration_parses(tmp_path):
    installed = tmp_path / "sentinel"
    installed.write_text(SHIPPED.read_text())
    installed.chmod(0o644)  # as packaged: logrotate ignores group-writable files
    result = subprocess.run(["logrotate", "--debug", "--state", "/dev/null", str(installed)], capture_output=True, text=True)
    assert result.returncode == 0 and "error" not in result.stderr.lower(), result.stderr
    assert "Handling 1 logs" in result.stderr and "rotating pattern: %s" % ALERTS in result.stderr


@pytest.mark.parametrize("agent_active", [True, False])
def test_rotation_renames_and_signals_a_running_agent(tmp_path, agent_active):
    logs, calls = rotate(tmp_path, agent_active)
    assert sorted(p.name for p in logs.iterdir()) == ["alerts.json.1"]  # the agent recreates it
    hup = "kill --kill-whom=main --signal=HUP sentinel.service"
    assert (hup in calls) is agent_active
    assert calls[0] == "--quiet is-active sentinel.service"
