"""Forwarding to SIEMs: a durable outbox, formats (Falco JSON, RFC 5424/3164, CEF, ECS) and
transports (syslog UDP/TCP/TLS/RELP, webhook, Splunk HEC, Elasticsearch _bulk, Loki, files).

The pipeline builds records with `sentinel.actions.alert.alert_record` (or `event_record`)
and hands them to `Forwarder.submit`; see `forwarder.py` for delivery guarantees.
"""

from __future__ import annotations

from sentinel.actions.forward.forwarder import Forwarder, OutputStatus
from sentinel.actions.forward.outbox import Outbox
from sentinel.actions.forward.records import RecordFilter, event_record
from sentinel.actions.forward.settings import Secret, parse_output, validate_output

__all__ = [
    "Forwarder",
    "Outbox",
    "OutputStatus",
    "RecordFilter",
    "Secret",
    "event_record",
    "parse_output",
    "validate_output",
]
