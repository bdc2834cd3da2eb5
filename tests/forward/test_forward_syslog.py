"""Syslog outputs against a real rsyslogd (TCP, TLS, RELP) and a UDP socket."""

from __future__ import annotations

import json
import re
import socket

import pytest
from forward_harness import HOSTILE, IDENTITY, free_port, make_alert, make_test_pki, parse_cef, parse_sd_params, wait_for

from sentinel.actions.forward import Forwarder
from sentinel.actions.forward.settings import parse_output
from sentinel.actions.forward.transports import DeliveryError, make_transport

FAST_RETRY = {"backoff_initial": 0.05, "backoff_max": 0.3, "timeout": 5}


def syslog_output(name: str, rsyslog, protocol: str, pki=None, **options):
    values = {"protocol": protocol, "host": "127.0.0.1", "port": rsyslog.ports[protocol], **FAST_RETRY}
    if protocol in ("tls", "relp-tls"):
        values.update(tls_ca_file=str(pki["ca.pem"]), tls_server_name="localhost",
                      tls_cert_file=str(pki["client.pem"]), tls_key_file=str(pki["client.key"]))
    values.update(options)
    return parse_output(name, "syslog", values)


def forward(tmp_path, outputs, records, timeout: float = 20) -> Forwarder:
    forwarder = Forwarder(outputs, str(tmp_path / "outbox.db"), identity=IDENTITY)
    forwarder.start()
    forwarder.submit_many(records)
    assert forwarder.wait_delivered(timeout), forwarder.status()
    forwarder.stop()
    return forwarder


def received_ids(rsyslog, input_name: str) -> list[str]:
    return [parse_sd_params(line["sd"])["id"] for line in rsyslog.lines() if line.get("input") == input_name]


@pytest.mark.parametrize("protocol", ["tcp", "tls", "relp", "relp-tls"])
def test_records_arrive_in_order_with_id_and_hostile_values_intact(tmp_path, rsyslog, pki, protocol):
    invalid_utf8 = b"/tmp/\xff\xfe".decode("utf-8", "surrogateescape")
    records = [make_alert(n, output=HOSTILE + " #%d" % n, output_fields={"fd.name": invalid_utf8, "proc.args": b"\x80"})
               for n in range(50)]
    forward(tmp_path, [syslog_output("soc", rsyslog, protocol, pki)], records)
    assert wait_for(lambda: len(received_ids(rsyslog, protocol)) >= 50)
    lines = [line for line in rsyslog.lines() if line.get("input") == protocol]
    assert [parse_sd_params(line["sd"])["id"] for line in lines] == [r["id"] for r in records]
    for line, record in zip(lines, records):
        assert line["msgid"] == "alert" and line["hostname"] == "test-host" and line["app"] == "sentinel"
        body = json.loads(line["msg"])
        assert body["output"] == record["output"]
        assert body["output_fields"]["fd.name"] == "/tmp/\\xff\\xfe" and body["output_fields"]["proc.args"] == "\\x80"


def test_cef_payload_over_relp(tmp_path, rsyslog):
    record = make_alert(output="x=1 | y\nact=blocked", rule="Rule|with=pipe")
    forward(tmp_path, [syslog_output("cef", rsyslog, "relp", payload="cef")], [record])
    assert wait_for(lambda: rsyslog.lines())
    (line,) = rsyslog.lines()
    header, fields = parse_cef(line["msg"])
    assert header[4] == "Rule|with=pipe"
    assert fields["msg"] == "x=1 | y\nact=blocked" and "act" not in fields
    assert fields["externalId"] == record["id"]


def test_tls_refuses_a_server_with_the_wrong_name(rsyslog, pki):
    settings = syslog_output("tls", rsyslog, "tls", pki, tls_server_name="siem.example")
    transport = make_transport(settings)
    with pytest.raises(DeliveryError, match="certificate verify failed|doesn't match|mismatch"):
        transport.send([(1, make_alert())])
    transport.close()


def test_tls_refuses_an_unknown_ca(rsyslog, pki, tmp_path):
    other = tmp_path / "other-ca"
    other_pki = make_test_pki(other)
    settings = syslog_output("tls", rsyslog, "tls", pki, tls_ca_file=str(other_pki["ca.pem"]))
    with pytest.raises(DeliveryError, match="certificate verify failed"):
        make_transport(settings).send([(1, make_alert())])


def test_64k_value_is_truncated_to_rsyslogs_default_limit_with_a_marker(tmp_path, rsyslog):
    record = make_alert(output="B" * 65536)
    forward(tmp_path, [syslog_output("soc", rsyslog, "relp")], [record])
    assert wait_for(lambda: rsyslog.lines())
    (line,) = rsyslog.lines()  # one record, not several pieces
    body = json.loads(line["msg"])
    assert body["truncated"] is True and body["id"] == record["id"]
    assert re.search(r"…\[truncated \d+ bytes\]$", body["output"])
    assert parse_sd_params(line["sd"])["truncated"] == "true"
    assert len(line["msg"].encode()) < 8192


def test_relp_outage_delivers_everything_in_order_once(tmp_path, rsyslog):
    output = syslog_output("soc", rsyslog, "relp", relp_window=16, batch_size=40)
    forwarder = Forwarder([output], str(tmp_path / "outbox.db"), identity=IDENTITY)
    forwarder.start()
    try:
        first = [make_alert(n) for n in range(20)]
        forwarder.submit_many(first)
        assert forwarder.wait_delivered(20)
        rsyslog.stop()
        during = [make_alert(n) for n in range(20, 220)]
        forwarder.submit_many(during)
        assert forwarder.flush()
        assert wait_for(lambda: forwarder.status()[0].failures >= 2, timeout=10)
        assert not forwarder.wait_delivered(0.5)
        rsyslog.start()
        assert forwarder.wait_delivered(30), forwarder.status()
    finally:
        forwarder.stop()
    expected = [r["id"] for r in first + during]
    assert wait_for(lambda: len(received_ids(rsyslog, "relp")) >= len(expected))
    assert received_ids(rsyslog, "relp") == expected


def test_tcp_receiver_restart_is_detected_before_the_next_batch(tmp_path, rsyslog):
    output = syslog_output("soc", rsyslog, "tcp")
    forwarder = Forwarder([output], str(tmp_path / "outbox.db"), identity=IDENTITY)
    forwarder.start()
    try:
        forwarder.submit_many(make_alert(n) for n in range(5))
        assert forwarder.wait_delivered(20)
        # plain TCP has no acknowledgement: let rsyslog write them before stopping it
        assert wait_for(lambda: len(received_ids(rsyslog, "tcp")) == 5)
        rsyslog.stop()
        rsyslog.start()
        later = [make_alert(n) for n in range(5, 10)]
        forwarder.submit_many(later)
        assert forwarder.wait_delivered(20)
    finally:
        forwarder.stop()
    assert wait_for(lambda: len(received_ids(rsyslog, "tcp")) >= 10)
    assert received_ids(rsyslog, "tcp")[-5:] == [r["id"] for r in later]


def test_udp_rfc3164_one_datagram_per_record_within_the_limit(tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", port))
        receiver.settimeout(5)
        settings = parse_output("udp", "syslog", {"protocol": "udp", "port": port, "format": "rfc3164",
                                                  "max_message_bytes": 2048})
        records = [make_alert(0, output=HOSTILE), make_alert(1, output="C" * 65536)]
        forward(tmp_path, [settings], records)
        datagrams = [receiver.recv(70000) for _ in records]
    first, second = (d.decode() for d in datagrams)
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", first)
    assert "\\nline2" in first  # the newline travels as an escape
    assert json.loads(first.split(": ", 1)[1])["output"] == HOSTILE  # and decodes back intact
    assert len(datagrams[1]) <= 2048 and "truncated" in second


def test_tls_client_key_with_passphrase_from_the_environment(tmp_path, rsyslog, pki, monkeypatch):
    import subprocess

    encrypted = tmp_path / "client-encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(pki["client.key"]), "-aes256", "-passout", "pass:key-pass-99",
                    "-out", str(encrypted)], check=True, capture_output=True)
    monkeypatch.setenv("TEST_KEY_PASS", "key-pass-99")
    output = syslog_output("tls", rsyslog, "tls", pki, tls_key_file=str(encrypted), tls_key_password_env="TEST_KEY_PASS")
    forward(tmp_path, [output], [make_alert(1)])
    assert wait_for(lambda: received_ids(rsyslog, "tls"))
    monkeypatch.setenv("TEST_KEY_PASS", "wrong")
    with pytest.raises(Exception, match="TLS setup failed"):
        make_transport(output).send([(1, make_alert(2))])
