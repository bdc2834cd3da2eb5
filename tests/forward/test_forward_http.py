"""HTTP outputs against receivers started on loopback: exact webhook, HEC, _bulk and Loki
payloads, outages, refusals, HTTPS checks, secrets kept out of logs, and SIGKILL resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

from forward_harness import HOSTILE, IDENTITY, HTTPReceiver, make_alert, split_concatenated_json, wait_for
from structlog.testing import capture_logs

from sentinel.actions.forward import Forwarder, formats
from sentinel.actions.forward.records import parse_rfc3339_ns
from sentinel.actions.forward.settings import parse_output

FAST_RETRY = {"backoff_initial": 0.05, "backoff_max": 0.3, "timeout": 5}
REPO = Path(__file__).resolve().parents[2]


def run_forwarder(tmp_path, outputs, records, timeout: float = 20) -> Forwarder:
    forwarder = Forwarder(outputs, str(tmp_path / "outbox.db"), identity=IDENTITY)
    forwarder.start()
    forwarder.submit_many(records)
    assert forwarder.wait_delivered(timeout), forwarder.status()
    forwarder.stop()
    return forwarder


def test_webhook_posts_each_record_in_falco_json(tmp_path, http_receiver):
    receiver = http_receiver("webhook")
    records = [make_alert(n, output=HOSTILE) for n in range(3)]
    (tmp_path / "bearer").write_text("bearer-777\n")
    output = parse_output("hook", "webhook", {"url": receiver.url + "/falco", "headers": {"X-Team": "soc"},
                                              "bearer_token_file": str(tmp_path / "bearer"), **FAST_RETRY})
    run_forwarder(tmp_path, [output], records)
    assert [r["path"] for r in receiver.requests] == ["/falco"] * 3
    for request, record in zip(receiver.requests, records):
        assert request["headers"]["Content-Type"] == "application/json"
        assert request["headers"]["X-Team"] == "soc"
        assert request["headers"]["Authorization"] == "Bearer bearer-777"
        body = json.loads(request["body"])
        assert body == formats.clean(record)
        assert set(body) >= {"time", "rule", "priority", "source", "hostname", "output", "tags", "output_fields", "id"}
        assert body["output"] == HOSTILE


def test_splunk_hec_batches_with_token_and_body_limit(tmp_path, http_receiver, monkeypatch):
    monkeypatch.setenv("TEST_HEC_TOKEN", "hec-token-123")
    receiver = http_receiver("hec")
    output = parse_output("splunk", "splunk_hec", {
        "url": receiver.url, "token_env": "TEST_HEC_TOKEN", "index": "security", "batch_size": 100,
        "max_body_bytes": 20000, **FAST_RETRY,
    })
    records = [make_alert(n) for n in range(120)]
    run_forwarder(tmp_path, [output], records)
    assert {r["path"] for r in receiver.requests} == {"/services/collector/event"}
    assert {r["headers"]["Authorization"] for r in receiver.requests} == {"Splunk hec-token-123"}
    assert all(len(body) <= 20000 for body in receiver.bodies())
    total = sum(len(body) for body in receiver.bodies())
    assert total // 20000 + 1 <= len(receiver.requests) <= total // 20000 + 3  # batched, split under the limit
    events = [event for body in receiver.bodies() for event in split_concatenated_json(body)]
    assert [e["event"]["id"] for e in events] == [r["id"] for r in records]
    first = events[0]
    assert first["index"] == "security" and first["sourcetype"] == "falco" and first["host"] == "test-host"
    assert first["fields"]["sentinel_id"] == records[0]["id"]
    assert abs(first["time"] - parse_rfc3339_ns(records[0]["time"]) / 1e9) < 1e-5


def test_elasticsearch_bulk_ndjson_ecs_and_id_dedupe(tmp_path, http_receiver):
    receiver = http_receiver("bulk")
    answers = iter([503])
    receiver.status = lambda request: next(answers, 200)  # the first _bulk fails: resent whole
    output = parse_output("es", "elasticsearch", {"url": receiver.url, "index": "sentinel-%Y.%m", "gzip": True,
                                                  **FAST_RETRY})
    records = [make_alert(n) for n in range(30)]
    run_forwarder(tmp_path, [output], records)
    (request,) = receiver.requests
    assert request["path"] == "/_bulk" and request["headers"]["Content-Type"] == "application/x-ndjson"
    lines = request["body"].decode().split("\n")
    actions, documents = [json.loads(l) for l in lines[:-1:2]], [json.loads(l) for l in lines[1:-1:2]]
    assert [a["create"]["_id"] for a in actions] == [r["id"] for r in records]
    assert {a["create"]["_index"] for a in actions} == {"sentinel-" + records[0]["time"][:7].replace("-", ".")}
    assert request["headers"]["Content-Encoding"] == "gzip"
    document = documents[0]
    assert document["@timestamp"] == records[0]["time"]
    assert document["event"]["kind"] == "alert" and document["rule"]["name"] == "Read sensitive file"
    assert document["process"]["name"] == "bash" and document["host"]["hostname"] == "test-host"


def test_elasticsearch_resent_records_count_as_duplicates_not_failures(tmp_path, http_receiver):
    receiver = http_receiver("bulk")
    records = [make_alert(n) for n in range(5)]
    receiver.bulk_ids.update(r["id"] for r in records[:3])  # already indexed before a crash
    output = parse_output("es", "elasticsearch", {"url": receiver.url, **FAST_RETRY})
    forwarder = run_forwarder(tmp_path, [output], records)
    status = forwarder.workers[0].status
    assert status.delivered == 5 and status.dropped == 0 and status.failures == 0


def test_loki_push_lines_and_labels_queried_back(tmp_path, http_receiver):
    receiver = http_receiver("loki")
    output = parse_output("loki", "loki", {"url": receiver.url, "labels": {"env": "test"}, "tenant": "soc", **FAST_RETRY})
    records = [make_alert(n, priority="critical" if n % 2 else "warning") for n in range(6)]
    run_forwarder(tmp_path, [output], records)
    assert {r["headers"]["X-Scope-OrgID"] for r in receiver.requests} == {"soc"}
    query = urllib.parse.urlencode({"query": '{host="test-host",priority="critical"}'})
    with urllib.request.urlopen("%s/loki/api/v1/query_range?%s" % (receiver.url, query)) as answer:
        result = json.load(answer)["data"]["result"]
    (stream,) = result
    assert stream["stream"] == {"host": "test-host", "rule": "Read sensitive file", "priority": "critical",
                                "kind": "alert", "source": "sentinel", "env": "test"}
    lines = [json.loads(line) for _stamp, line in stream["values"]]
    assert [line["id"] for line in lines] == [r["id"] for r in records if r["priority"] == "Critical"]
    assert [int(stamp) for stamp, _line in stream["values"]] == [parse_rfc3339_ns(l["time"]) for l in lines]


def test_http_outage_delivers_all_in_order_none_twice(tmp_path, http_receiver):
    receiver = http_receiver("webhook")
    output = parse_output("hook", "webhook", {"url": receiver.url, **FAST_RETRY})
    forwarder = Forwarder([output], str(tmp_path / "outbox.db"), identity=IDENTITY)
    forwarder.start()
    try:
        receiver.stop()
        records = [make_alert(n) for n in range(100)]
        forwarder.submit_many(records)
        assert wait_for(lambda: forwarder.status()[0].failures >= 3, timeout=10)
        receiver.start()
        assert forwarder.wait_delivered(30), forwarder.status()
    finally:
        forwarder.stop()
    assert [json.loads(body)["id"] for body in receiver.bodies()] == [r["id"] for r in records]


def test_a_refused_record_is_isolated_dropped_and_counted(tmp_path, http_receiver):
    receiver = http_receiver("hec")
    receiver.status = lambda request: 400 if b"poison" in request["body"] else 200
    os.environ["TEST_HEC_TOKEN2"] = "t"
    output = parse_output("splunk", "splunk_hec", {"url": receiver.url, "token_env": "TEST_HEC_TOKEN2", **FAST_RETRY})
    records = [make_alert(n, output="poison" if n == 7 else "fine") for n in range(20)]
    forwarder = run_forwarder(tmp_path, [output], records)
    delivered = [e["event"]["id"] for body in receiver.bodies() for e in split_concatenated_json(body)]
    assert delivered == [r["id"] for n, r in enumerate(records) if n != 7]
    assert forwarder.workers[0].status.dropped == 1 and forwarder.workers[0].status.delivered == 19


def test_https_webhook_checks_ca_and_name(tmp_path, http_receiver, pki):
    receiver = HTTPReceiver("webhook", tls=(pki["server.pem"], pki["server.key"]))
    receiver.start()
    try:
        good = parse_output("good", "webhook", {"url": receiver.url, "tls_ca_file": str(pki["ca.pem"]), **FAST_RETRY})
        run_forwarder(tmp_path / "good", [good], [make_alert(1)])
        assert len(receiver.requests) == 1
        wrong = parse_output("wrong", "webhook", {"url": receiver.url, "tls_ca_file": str(pki["ca.pem"]),
                                                  "tls_server_name": "evil.example", **FAST_RETRY})
        forwarder = Forwarder([wrong], str(tmp_path / "wrong.db"), identity=IDENTITY)
        forwarder.start()
        forwarder.submit(make_alert(2))
        assert wait_for(lambda: forwarder.status()[0].failures >= 1)
        forwarder.stop(timeout=1)
        assert "certificate" in forwarder.status()[0].last_error.lower() or "hostname" in forwarder.status()[0].last_error
        assert len(receiver.requests) == 1
    finally:
        receiver.stop()


def test_secrets_never_reach_logs_or_reprs(tmp_path, http_receiver, monkeypatch):
    token, password = "hec-SECRET-4242", "loki-PASSWORD-77"
    monkeypatch.setenv("S_HEC", token)
    (tmp_path / "loki.pw").write_text(password)
    receiver = http_receiver("hec")
    receiver.status = 503
    hec = parse_output("splunk", "splunk_hec", {"url": receiver.url, "token_env": "S_HEC", **FAST_RETRY})
    loki = parse_output("loki", "loki", {"url": receiver.url, "username": "u", "password_file": str(tmp_path / "loki.pw"),
                                         **FAST_RETRY})
    with capture_logs() as logs:
        forwarder = Forwarder([hec, loki], str(tmp_path / "outbox.db"), identity=IDENTITY)
        forwarder.start()
        forwarder.submit(make_alert(1))
        assert wait_for(lambda: all(s.failures >= 2 for s in forwarder.status()))
        forwarder.stop(timeout=1)
    assert logs, "failures are logged"
    everything = repr(logs) + repr(forwarder.status()) + repr(hec) + repr(loki)
    everything += repr([vars(w.transport) for w in forwarder.workers])
    assert token not in everything and password not in everything
    import base64

    assert base64.b64encode(b"u:" + password.encode()).decode() not in everything


def test_sigkill_mid_stream_then_restart_delivers_all_with_dedupable_duplicates(tmp_path, http_receiver):
    receiver = http_receiver("webhook")
    receiver.delay = 0.004
    count = 400
    env = dict(os.environ, PYTHONPATH=str(REPO))
    script = str(Path(__file__).parent / "forwarder_proc.py")
    outbox = str(tmp_path / "outbox.db")
    first = subprocess.Popen([sys.executable, script, outbox, receiver.url, str(count)], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "submitted"
        assert wait_for(lambda: len(receiver.requests) >= count // 4, timeout=30)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        before_restart = len(receiver.requests)
        assert before_restart < count, "killed mid-stream"
        second = subprocess.run([sys.executable, script, outbox, receiver.url, "0"], env=env, capture_output=True,
                                text=True, timeout=120)
        assert second.stdout.split() == ["submitted", "delivered"], second.stderr
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
    ids = [json.loads(body)["id"] for body in receiver.bodies()]
    numbers = [json.loads(body)["output_fields"]["n"] for body in receiver.bodies()]
    assert len(set(ids)) == count  # every record arrived
    first_seen = list(dict.fromkeys(numbers))
    assert first_seen == list(range(count))  # in order
    duplicates = len(ids) - count
    assert duplicates <= 1  # at most the one request in flight when killed, same id: dedupable


def test_a_64k_value_is_truncated_in_one_record_not_split(tmp_path, http_receiver, monkeypatch):
    monkeypatch.setenv("TEST_HEC_TOKEN3", "t")
    hook, hec = http_receiver("webhook"), http_receiver("hec")
    record = make_alert(output="D" * 65536, output_fields={"proc.cmdline": "E" * 65536})
    outputs = [
        parse_output("hook", "webhook", {"url": hook.url, "max_record_bytes": 16384, **FAST_RETRY}),
        parse_output("hec", "splunk_hec", {"url": hec.url, "token_env": "TEST_HEC_TOKEN3", "max_record_bytes": 16384,
                                           **FAST_RETRY}),
    ]
    run_forwarder(tmp_path, outputs, [record])
    (hook_body,) = hook.bodies()
    (hec_body,) = hec.bodies()
    (envelope,) = split_concatenated_json(hec_body)
    for body in (json.loads(hook_body), envelope["event"]):
        assert body["id"] == record["id"] and body["truncated"] is True
        assert body["output"].endswith(" bytes]") and "…[truncated " in body["output"]
        assert body["output_fields"]["proc.cmdline"].endswith(" bytes]")
    assert len(hook_body) <= 16384


def test_retry_after_of_a_429_is_honoured(tmp_path, http_receiver):
    receiver = http_receiver("loki")
    answers = iter([429])
    receiver.status = lambda request: next(answers, 204)
    output = parse_output("loki", "loki", {"url": receiver.url, **FAST_RETRY})  # backoff alone: <= 0.05 s
    run_forwarder(tmp_path, [output], [make_alert(1)])
    assert len(receiver.attempts) == 2 and len(receiver.requests) == 1
    assert receiver.attempts[1] - receiver.attempts[0] >= 0.95
