"""Fixtures for the forwarding tests: a test CA, an rsyslogd, HTTP receivers, sample alerts."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from receivers import HTTPReceiver, Rsyslog, make_test_pki  # noqa: E402

from sentinel.actions.alert import HostIdentity, alert_record  # noqa: E402

IDENTITY = HostIdentity(hostname="test-host", machine_id="m" * 32, boot_id="b-o-o-t")


def make_alert(number: int = 0, **changes) -> dict:
    fields = {"proc.name": "bash", "proc.pid": 1000 + number, "fd.name": "/etc/shadow", "user.name": "root"}
    fields.update(changes.pop("output_fields", {}))
    values = dict(rule="Read sensitive file", priority="warning", output="alert number %d" % number,
                  output_fields=fields, tags=("filesystem", "mitre_credential_access"))
    values.update(changes)
    return alert_record(host=IDENTITY, ruleset_version="r1", time_ns=time.time_ns(), **values)


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
