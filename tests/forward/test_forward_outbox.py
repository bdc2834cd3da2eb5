"""Outbox and Forwarder: seq order, persisted cursors, filters, bounds and loss alerts."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from forward_harness import IDENTITY, make_alert
from structlog.testing import capture_logs

from sentinel.actions.forward import Forwarder, Outbox, RecordFilter, event_record
from sentinel.actions.forward.forwarder import LOSS_RULE, backoff_delay
from sentinel.actions.forward.settings import parse_output
from sentinel.actions.forward.transports import DeliveryError, Transport
from sentinel.config import OutputConfig
from sentinel.errors import SentinelError


def jsonfile(name: str, path, **options) -> OutputConfig:
    return OutputConfig(name, "jsonfile", {"path": str(path), **options})


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_outbox_assigns_increasing_seqs_and_persists_cursors(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db")
    assert outbox.register("a") == 0
    assert outbox.append([make_alert(1), make_alert(2)]) == 2
    assert outbox.append([make_alert(3)]) == 3
    rows = outbox.read_after(0, 10)
    assert [row.seq for row in rows] == [1, 2, 3]
    assert rows[0].record["output"] == "alert number 1"
    outbox.advance("a", 2)
    outbox.advance("a", 1)  # never backwards
    outbox.close()
    reopened = Outbox(tmp_path / "outbox.db")
    assert reopened.cursor("a") == 2
    assert reopened.register("b") == 3  # a new output starts at the head
    assert [row.seq for row in reopened.read_after(2, 10)] == [3]


def test_trim_deletes_delivered_rows_and_counts_losses_per_output(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db", max_rows=5)
    outbox.register("fast")
    outbox.register("slow_errors")
    records = [make_alert(n, priority="error" if n % 2 else "notice") for n in range(10)]
    outbox.append(records)
    outbox.advance("fast", 10)
    losses = outbox.trim({"fast": RecordFilter(), "slow_errors": RecordFilter(min_priority="error")})
    # rows 1..5 fell out; slow_errors would have sent the error ones among them (n = 1, 3)
    assert losses == {"slow_errors": 2}
    assert outbox.cursor("slow_errors") == 5 and outbox.lost("slow_errors") == 2
    assert [row.seq for row in outbox.read_after(0, 100)] == [6, 7, 8, 9, 10]
    outbox.advance("slow_errors", 10)
    assert outbox.trim({"fast": RecordFilter(), "slow_errors": RecordFilter()}) == {}
    assert outbox.count() == 0


def test_trim_by_age(tmp_path):
    outbox = Outbox(tmp_path / "outbox.db", max_age_seconds=60)
    outbox.register("a")
    outbox.append([make_alert(1)])
    assert outbox.trim({"a": RecordFilter()}) == {}
    losses = outbox.trim({"a": RecordFilter()}, now_ns=time.time_ns() + 61 * 10**9)
    assert losses == {"a": 1}


def test_forwarder_filters_per_output_and_resumes_from_cursor(tmp_path):
    everything, errors, shells, events = (tmp_path / n for n in ("all.jsonl", "errors.jsonl", "shells.jsonl", "events.jsonl"))
    outputs = [
        jsonfile("all", everything),
        jsonfile("errors", errors, min_priority="error"),
        jsonfile("shells", shells, rules=["Shell spawned"], tags=["shell"]),
        jsonfile("events", events, events=True, min_priority="emergency"),
    ]
    forwarder = Forwarder(outputs, str(tmp_path / "outbox.db"), identity=IDENTITY)
    forwarder.start()
    forwarder.submit(make_alert(1, priority="critical"))
    forwarder.submit(make_alert(2, priority="notice"))
    forwarder.submit(make_alert(3, rule="Shell spawned", tags=("shell",)))
    forwarder.submit(make_alert(4, rule="Shell spawned", tags=("other",)))
    forwarder.submit(event_record(IDENTITY, {"type": "execve"}))
    assert forwarder.wait_delivered(10)
    forwarder.stop()
    assert [r.get("output") for r in read_lines(everything)] == ["alert number %d" % n for n in (1, 2, 3, 4)]
    assert [r["output"] for r in read_lines(errors)] == ["alert number 1"]
    assert [r["output"] for r in read_lines(shells)] == ["alert number 3"]
    assert [r["kind"] for r in read_lines(events)] == ["event"]

    # a restart delivers only what came after the cursors
    forwarder = Forwarder(outputs, str(tmp_path / "outbox.db"), identity=IDENTITY)
    forwarder.start()
    forwarder.submit(make_alert(5))
    assert forwarder.wait_delivered(10)
    forwarder.stop()
    assert [r["output"] for r in read_lines(everything)][-2:] == ["alert number 4", "alert number 5"]
    assert len(read_lines(everything)) == 5


class FlakyTransport(Transport):
    """Fails the first `failures` sends after delivering part of the batch."""

    def __init__(self, settings, failures: int) -> None:
        super().__init__(settings)
        self.failures = failures
        self.received: list[str] = []

    def send(self, batch) -> None:
        if self.failures:
            self.failures -= 1
            self.received.append(batch[0][1]["id"])
            raise DeliveryError("receiver hiccup", delivered=1)
        self.received.extend(record["id"] for _seq, record in batch)


def test_partial_delivery_advances_the_cursor_and_retries_the_rest(tmp_path):
    settings = parse_output("flaky", "jsonfile", {"path": str(tmp_path / "unused"), "backoff_initial": 0.01})
    forwarder = Forwarder([settings], str(tmp_path / "outbox.db"), identity=IDENTITY)
    transport = FlakyTransport(settings, failures=3)
    forwarder.workers[0].transport = transport
    records = [make_alert(n) for n in range(10)]
    with capture_logs() as logs:
        forwarder.start()
        forwarder.submit_many(records)
        assert forwarder.wait_delivered(10)
        forwarder.stop()
    assert transport.received == [r["id"] for r in records]  # in order, none twice
    assert [entry["event"] for entry in logs].count("forward.retry") == 3


def test_backoff_grows_exponentially_with_jitter_and_a_bound():
    delays = [backoff_delay(n, 0.5, 30.0) for n in range(1, 12)]
    assert 0.25 <= delays[0] <= 0.5
    assert 2.0 <= delays[3] <= 4.0
    assert all(15.0 <= d <= 30.0 for d in delays[7:])
    assert len({round(backoff_delay(3, 1, 60), 6) for _ in range(20)}) > 1


def test_loss_is_reported_as_an_alert_through_the_outputs(tmp_path):
    dead = parse_output("dead", "jsonfile", {"path": str(tmp_path / "no-such-dir" / "x.jsonl"), "backoff_initial": 10})
    alive = tmp_path / "alive.jsonl"
    forwarder = Forwarder([dead, jsonfile("alive", alive)], str(tmp_path / "outbox.db"), max_rows=3, trim_seconds=3600,
                          identity=IDENTITY)
    forwarder.start()
    forwarder.submit_many(make_alert(n) for n in range(8))
    assert forwarder.flush()
    assert wait_until(lambda: forwarder.workers[1].cursor == 8)
    assert forwarder.trim() == {"dead": 5}
    assert forwarder.flush()
    status = {s.name: s for s in forwarder.status()}
    assert status["dead"].lost == 5 and status["alive"].lost == 0
    assert status["dead"].failures >= 1 and "cannot write" in status["dead"].last_error
    assert wait_until(lambda: LOSS_RULE in [r.get("rule") for r in read_lines(alive)])
    forwarder.stop(timeout=1)
    loss = [r for r in read_lines(alive) if r.get("rule") == LOSS_RULE]
    assert loss and loss[0]["output_fields"] == {"forward.output": "dead", "forward.lost": 5}
    assert loss[0]["priority"] == "Error"


def test_custom_loss_callback(tmp_path):
    seen = []
    dead = parse_output("dead", "jsonfile", {"path": str(tmp_path / "none" / "x"), "backoff_initial": 10})
    forwarder = Forwarder([dead], str(tmp_path / "outbox.db"), max_rows=2, trim_seconds=3600,
                          on_loss=lambda output, count: seen.append((output, count)))
    forwarder.start()
    forwarder.submit_many(make_alert(n) for n in range(5))
    forwarder.flush()
    forwarder.trim()
    forwarder.stop(timeout=1)
    assert seen == [("dead", 3)]


def test_jsonfile_reopen_follows_rotation(tmp_path):
    path = tmp_path / "alerts.jsonl"
    forwarder = Forwarder([jsonfile("file", path)], str(tmp_path / "outbox.db"), identity=IDENTITY)
    forwarder.start()
    forwarder.submit(make_alert(1))
    assert forwarder.wait_delivered(10)
    os.rename(path, tmp_path / "alerts.jsonl.1")
    got_hup = threading.Event()
    previous = signal.signal(signal.SIGHUP, lambda *_: (forwarder.reopen(), got_hup.set()))
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert got_hup.wait(5)
    finally:
        signal.signal(signal.SIGHUP, previous)
    forwarder.submit(make_alert(2))
    assert forwarder.wait_delivered(10)
    forwarder.stop()
    assert [r["output"] for r in read_lines(tmp_path / "alerts.jsonl.1")] == ["alert number 1"]
    assert [r["output"] for r in read_lines(path)] == ["alert number 2"]


def test_duplicate_output_names_are_refused(tmp_path):
    with pytest.raises(SentinelError, match="unique: a"):
        Forwarder([jsonfile("a", tmp_path / "1"), jsonfile("a", tmp_path / "2")], str(tmp_path / "o.db"))


def test_forward_section_and_from_config(tmp_path):
    from sentinel import config

    path = tmp_path / "sentinel.yaml"
    path.write_text(
        "forward:\n  outbox: %s\n  max_rows: 10\n  max_age_hours: 1\n"
        "outputs:\n  - name: file\n    type: jsonfile\n    path: %s\n" % (tmp_path / "o.db", tmp_path / "a.jsonl")
    )
    loaded = config.load(path)
    assert loaded.outbox_path == str(tmp_path / "o.db")
    forwarder = Forwarder.from_config(loaded, identity=IDENTITY)
    assert forwarder.outbox.max_rows == 10 and forwarder.outbox.max_age_seconds == 3600
    assert [w.settings.name for w in forwarder.workers] == ["file"]
    forwarder.outbox.close()


class ExplodingTransport(Transport):
    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.calls = 0

    def send(self, batch) -> None:
        self.calls += 1
        if self.calls == 1:
            raise KeyError("a bug in a transport")


def test_an_unexpected_error_is_retried_not_fatal(tmp_path):
    settings = parse_output("x", "jsonfile", {"path": str(tmp_path / "x"), "backoff_initial": 0.01})
    forwarder = Forwarder([settings], str(tmp_path / "outbox.db"), identity=IDENTITY)
    forwarder.workers[0].transport = ExplodingTransport(settings)
    with capture_logs() as logs:
        forwarder.start()
        forwarder.submit(make_alert(1))
        assert forwarder.wait_delivered(10)
        forwarder.stop()
    assert forwarder.workers[0].transport.calls == 2
    assert any(entry["event"] == "forward.worker_error" for entry in logs)


def test_submit_beyond_max_pending_is_reported_not_silent(tmp_path):
    seen = []
    forwarder = Forwarder([], str(tmp_path / "outbox.db"), max_pending=5, on_loss=lambda o, n: seen.append((o, n)))
    forwarder.submit_many(make_alert(n) for n in range(8))  # the writer is not running: it lags
    assert forwarder.trim() == {"outbox": 3}
    assert seen == [("outbox", 3)]
    forwarder.start()
    assert forwarder.flush()
    forwarder.stop()
    assert Outbox(tmp_path / "outbox.db").head() == 5


def test_a_failed_outbox_write_keeps_the_records_queued(tmp_path, monkeypatch):
    forwarder = Forwarder([], str(tmp_path / "outbox.db"))
    forwarder.submit_many(make_alert(n) for n in range(3))
    real_append = forwarder.outbox.append
    monkeypatch.setattr(forwarder.outbox, "append", lambda records: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        forwarder._write_pending()
    monkeypatch.setattr(forwarder.outbox, "append", real_append)
    assert forwarder._write_pending() == 3
    assert [r.record["output"] for r in forwarder.outbox.read_after(0, 10)] == ["alert number %d" % n for n in range(3)]
