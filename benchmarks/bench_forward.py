"""Forwarding throughput per output, and what Forwarder.submit costs the pipeline.

Prints, from one run on this host (receivers on loopback, started here and stopped after):
- Forwarder.submit on the caller: microseconds per record (it only appends to a deque),
  and the outbox writer's rate (records/s into the SQLite WAL file);
- records/s delivered end to end (submit -> outbox -> transport -> acknowledgement) for
  syslog over TCP and RELP to a real rsyslogd, a webhook (one POST per record, falcosidekick
  style) and the Loki push API (batched), each with 1 KiB-ish alerts.

Run: .venv/bin/python -m benchmarks.bench_forward
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from sentinel.actions.alert import HostIdentity, alert_record
from sentinel.actions.forward import Forwarder
from sentinel.actions.forward.outbox import Outbox
from sentinel.actions.forward.settings import parse_output

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "forward"))
from forward_harness import HTTPReceiver, Rsyslog, make_test_pki  # noqa: E402  (the test harness's receivers)

IDENTITY = HostIdentity("bench-host", "m" * 32, "boot")


def make_records(count: int) -> list[dict]:
    fields = {"proc.name": "cat", "proc.pid": 4242, "proc.cmdline": "cat /etc/shadow", "fd.name": "/etc/shadow",
              "user.name": "root", "container.id": "host", "proc.pname": "bash", "proc.exepath": "/usr/bin/cat"}
    return [
        alert_record(host=IDENTITY, ruleset_version="bench", time_ns=time.time_ns(),
                     rule="Read sensitive file untrusted", priority="warning",
                     output="Sensitive file opened for reading by non-trusted program (file=/etc/shadow n=%d)" % n,
                     output_fields=dict(fields, n=n), tags=("filesystem", "mitre_credential_access"))
        for n in range(count)
    ]


def bench_submit(directory: Path, count: int = 200_000) -> None:
    records = make_records(count)
    forwarder = Forwarder([], str(directory / "submit.db"), identity=IDENTITY, flush_seconds=3600)
    started = time.perf_counter()
    for record in records:
        forwarder.submit(record)
    elapsed = time.perf_counter() - started
    print("submit (caller side):        %6.3f us/record over %d records" % (elapsed / count * 1e6, count))
    outbox = Outbox(directory / "writer.db")
    started = time.perf_counter()
    for start in range(0, count, 5000):
        outbox.append(records[start:start + 5000])
    elapsed = time.perf_counter() - started
    print("outbox writer:               %8.0f records/s (batches of 5000, WAL)" % (count / elapsed))
    outbox.close()


def bench_output(directory: Path, name: str, settings, count: int) -> float:
    records = make_records(count)
    forwarder = Forwarder([settings], str(directory / ("%s.db" % name)), identity=IDENTITY)
    forwarder.start()
    started = time.perf_counter()
    forwarder.submit_many(records)
    delivered = forwarder.wait_delivered(300)
    elapsed = time.perf_counter() - started
    status = forwarder.workers[0].status
    forwarder.stop()
    rate = count / elapsed
    print("%-28s %8.0f records/s (%d records, %s, failures %d)"
          % (name + ":", rate, count, "all acknowledged" if delivered else "NOT all delivered", status.failures))
    return rate


def main() -> None:
    print("host load average at start: %.1f (2 cores: figures drop when others run)" % os.getloadavg()[0])
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as scratch:
        directory = Path(scratch)
        bench_submit(directory)
        pki = make_test_pki(directory / "pki")
        (directory / "rsyslog").mkdir()
        rsyslog = Rsyslog(directory / "rsyslog", pki)
        webhook, loki = HTTPReceiver("webhook"), HTTPReceiver("loki")
        rsyslog.start()
        webhook.start()
        loki.start()
        try:
            base = {"host": "127.0.0.1", "batch_size": 500}
            bench_output(directory, "syslog tcp (rsyslog)",
                         parse_output("tcp", "syslog", {**base, "protocol": "tcp", "port": rsyslog.ports["tcp"]}), 50_000)
            bench_output(directory, "syslog relp (rsyslog)",
                         parse_output("relp", "syslog", {**base, "protocol": "relp", "port": rsyslog.ports["relp"]}), 50_000)
            bench_output(directory, "webhook (1 POST/record)",
                         parse_output("webhook", "webhook", {"url": webhook.url, "batch_size": 100}), 5_000)
            bench_output(directory, "loki push (batched)",
                         parse_output("loki", "loki", {"url": loki.url, "batch_size": 500}), 50_000)
        finally:
            rsyslog.stop()
            webhook.stop()
            loki.stop()


if __name__ == "__main__":
    main()
