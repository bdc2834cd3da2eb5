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


def test_times_within_one_second_share_its_text_and_keep_their_nanoseconds():
    first = rfc3339_ns(1_700_000_000_000_000_001)
    second = rfc3339_ns(1_700_000_000_999_999_999)
    assert (first, second) == ("2023-11-14T22:13:20.000000001Z", "2023-11-14T22:13:20.999999999Z")
    assert rfc3339_ns(1_700_000_001_000_000_000) == "2023-11-14T22:13:21.000000000Z"


def test_batched_writer_holds_lines_until_flush(tmp_path):
    path = tmp_path / "alerts.json"
    writer = AlertWriter(str(path), flush_each=False)
    writer.write({"n": 1})
    writer.write({"n": 2})
    assert path.read_text() == ""
    writer.flush()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"n": 1}, {"n": 2}]
    writer.write({"n": 3})
    writer.close()
    assert len(path.read_text().splitlines()) == 3


def test_line_writer_shows_each_line_at_once(tmp_path):
    path = tmp_path / "alerts.json"
    writer = AlertWriter(str(path))
    writer.write({"n": 1})
    assert json.loads(path.read_text()) == {"n": 1}
    writer.close()
