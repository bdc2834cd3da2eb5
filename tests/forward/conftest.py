"""Fixtures for the forwarding tests: a test CA, an rsyslogd, HTTP receivers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from forward_harness import HTTPReceiver, Rsyslog, make_test_pki  # noqa: E402


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def rsyslog(tmp_path, pki):
    (tmp_path / "rsyslog").mkdir()
    server = Rsyslog(tmp_path / "rsyslog", pki)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def http_receiver():
    receivers = []

    def start(mode: str = "webhook") -> HTTPReceiver:
        receiver = HTTPReceiver(mode)
        receiver.start()
        receivers.append(receiver)
        return receiver

    yield start
    for receiver in receivers:
        receiver.stop()
