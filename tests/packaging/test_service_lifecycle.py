"""The agent as sentinel.service runs it, with a stand-in for systemd: the unit's
ExecStart arguments and Environment, its capability bounding set, NoNewPrivileges, the
MemoryDenyWriteExecute filter, a read-only file system but for its own directories
(ProtectSystem=strict), a $NOTIFY_SOCKET and $WATCHDOG_USEC. The notify protocol
(READY=1, WATCHDOG=1, STOPPING=1, all from the main process as NotifyAccess=main
requires), SIGHUP reopening the alerts file for logrotate, and a clean SIGTERM stop."""

from __future__ import annotations

import array
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_systemd_unit import CACHE_DIRECTORY, confined_command, confined_environment, one, unit_capabilities

WATCHDOG_USEC = 2_000_000


class NotifySocket:
    """The receiving end of sd_notify, with the sender's pid of every datagram."""

    def __init__(self, path: Path, sender: subprocess.Popen | None = None, log: Path | None = None) -> None:
        self.path = path
        self.sender = sender
        self.log = log
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.received: list[tuple[int, str]] = []

    def wait_for(self, state: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(state in message.split("\n") for _pid, message in self.received):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no %s within %ss; got %r; log:\n%s" % (state, timeout, self.received, self._log_tail()))
            if self.sender is not None and self.sender.poll() is not None:
                raise AssertionError("the agent exited (%s) before %s:\n%s" % (self.sender.returncode, state, self._log_tail()))
            self.sock.settimeout(min(remaining, 1.0))
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[:12])[0]
            self.received.append((pid, data.decode()))

    def _log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log is not None else ""

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def agent_config(tmp_path) -> Path:
    config = tmp_path / "sentinel.yaml"
    config.write_text(
        "store:\n  path: %s\nalerts:\n  file: %s\ncontrol:\n  socket: %s\nforward:\n  outbox: %s\n"
        % (tmp_path / "events.db", tmp_path / "alerts.json", tmp_path / "control.sock", tmp_path / "outbox.db")
    )
    return config


@pytest.mark.kernel
def test_agent_under_the_unit_notifies_reopens_and_stops_cleanly(tmp_path, agent_config):
    arguments = shlex.split(one("Service", "ExecStart"))[1:]  # after /usr/bin/sentinel
    arguments[arguments.index("--config") + 1] = str(agent_config)
    command = confined_command(unit_capabilities(), [sys.executable, "-m", "sentinel.cli", *arguments])
    notify = NotifySocket(tmp_path / "notify.sock", log=tmp_path / "agent.log")
    os.makedirs(CACHE_DIRECTORY, exist_ok=True)
    env = confined_environment(
        [str(tmp_path), CACHE_DIRECTORY], NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(WATCHDOG_USEC)
    )
    log = notify.log.open("w")
    agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    notify.sender = agent
    try:
        notify.wait_for("READY=1", timeout=180)
        notify.wait_for("WATCHDOG=1", timeout=WATCHDOG_USEC / 1e6 * 2)

        alerts = tmp_path / "alerts.json"
        assert alerts.exists()
        alerts.rename(tmp_path / "alerts.json.1")  # what logrotate does
        agent.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not alerts.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alerts.exists(), "the agent did not reopen its alerts file on SIGHUP"

        agent.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", timeout=10)
        # TimeoutStopSec in the unit
        assert agent.wait(timeout=float(one("Service", "TimeoutStopSec").rstrip("s"))) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        notify.close()
        log.close()
    assert {pid for pid, _message in notify.received} == {agent.pid}, notify.received
