"""Alert lines keep Falco's shape so Falco's tools read them unchanged."""

from __future__ import annotations

import json
import re
import uuid

from sentinel.actions.alert import AlertWriter, HostIdentity, alert_record, rfc3339_ns


def test_time_is_rfc3339_utc_with_nanoseconds():
    assert rfc3339_ns(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert rfc3339_ns(5) == "1970-01-01T00:00:00.000000005Z"


def test_record_has_falco_keys_first_and_host_identity():
    host = HostIdentity("h1", "m" * 32, "b-1")
    record = alert_record(
        rule="Terminal shell in container",
        priority="notice",
        output="A shell was spawned",
        tags=["shell", "mitre_execution"],
        output_fields={"proc.name": "bash"},
        time_ns=1_700_000_000_000_000_000,
        host=host,
        ruleset_version="abc",
    )
    assert list(record)[:8] == ["time", "rule", "priority", "source", "hostname", "output", "tags", "output_fields"]
    assert record["priority"] == "Notice"
    assert record["host"] == {"machine_id": "m" * 32, "boot_id": "b-1"}
    assert uuid.UUID(record["id"]).version == 7


def test_hostile_output_stays_on_one_line(tmp_path):
    path = tmp_path / "alerts.json"
    writer = AlertWriter(str(path))
    hostile = "evil\nrule\x1b[31m\udcff"
    writer.write({"output": hostile})
    writer.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 1
    assert b"\\n" in lines[0] and b"\\u001b" in lines[0]


def test_reopen_follows_logrotate(tmp_path):
    path = tmp_path / "alerts.json"
    writer = AlertWriter(str(path))
    writer.write({"n": 1})
    path.rename(tmp_path / "alerts.json.1")
    writer.reopen()
    writer.write({"n": 2})
    writer.close()
    assert json.loads(path.read_text()) == {"n": 2}
    assert json.loads((tmp_path / "alerts.json.1").read_text()) == {"n": 1}
    assert re.fullmatch(r"\d+", str(writer.written))
