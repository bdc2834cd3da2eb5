"""A real `sentinel run` in a subprocess, with its own DB, alerts file, control socket and rules."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class RunningAgent:
    def __init__(self, workdir: Path, rules: list[Path], db: Path | str | None = None, extra_config: str = "") -> None:
        self.workdir = workdir
        self.db = Path(db) if db else workdir / "events.db"
        self.alerts_path = workdir / "alerts.json"
        self.log_path = workdir / "agent.log"
        self.socket_path = workdir / "control.sock"
        self.config_path = workdir / "sentinel.yaml"
        self.config_path.write_text(
            "control:\n  socket: %s\nstore:\n  flush_seconds: 0.1\n%s" % (self.socket_path, extra_config)
        )
        notify_path = str(workdir / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(notify_path)
        self.notify.settimeout(120)
        command = [sys.executable, "-m", "sentinel.cli", "run", "--config", str(self.config_path), "--db", str(self.db), "--alerts-file", str(self.alerts_path)]
        for rule in rules:
            command += ["--rules", str(rule)]
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, NOTIFY_SOCKET=notify_path), cwd=REPO
        )
        self.notifications: list[str] = []

    def wait_for_notification(self, state: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while state not in self.notifications:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError("no %s from the agent; log:\n%s" % (state, self.log_path.read_text()[-4000:]))
            try:
                self.notifications.extend(self.notify.recv(4096).decode().split("\n"))
            except TimeoutError:
                pass

    def alerts(self) -> list[dict]:
        if not self.alerts_path.exists():
            return []
        return [json.loads(line) for line in self.alerts_path.read_text().splitlines() if line.strip()]

    def wait_for_alert(self, predicate, timeout: float = 15) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for alert in self.alerts():
                if predicate(alert):
                    return alert
            time.sleep(0.1)
        raise AssertionError("no matching alert; got %s" % [a["rule"] for a in self.alerts()])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.log.close()
        self.notify.close()
        return code

    def log_records(self) -> list[dict]:
        records = []
        for line in self.log_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
        return records


@pytest.fixture
def agent_dir():
    # Not pytest's tmp_path: executables run from there would look like /tmp payloads
    # only by accident; tests choose their paths on purpose.
    directory = Path(tempfile.mkdtemp(prefix="sentinel-agent-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def start_agent(agent_dir):
    started: list[RunningAgent] = []

    def start(rules=None, **kwargs) -> RunningAgent:
        agent = RunningAgent(agent_dir, rules or [REPO / "rules" / "sentinel_rules.yaml"], **kwargs)
        started.append(agent)
        agent.wait_for_notification("READY=1")
        return agent

    yield start
    for agent in started:
        agent.stop()
