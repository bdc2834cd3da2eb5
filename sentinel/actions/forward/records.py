"""Forwarded records: event records, priorities and per-output filters.

A record is a plain dict so every format can read it without a class in between. Alerts are
built by `sentinel.actions.alert.alert_record` (Falco's JSON shape plus sentinel's keys);
events carry their fields under `evt`. The id is assigned once, when the record is built,
and travels with every copy so receivers can drop duplicates of an at-least-once delivery.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from typing import Any, Iterable

from sentinel.actions.alert import HostIdentity, rfc3339_ns
from sentinel.actions.record import new_id

# Falco's priorities, most severe first; the index is the syslog severity (RFC 5424 6.2.1).
PRIORITIES = ("emergency", "alert", "critical", "error", "warning", "notice", "informational", "debug")
_PRIORITY_ALIASES = {"info": "informational", "warn": "warning", "err": "error", "crit": "critical", "emerg": "emergency"}
SEVERITY = {name: index for index, name in enumerate(PRIORITIES)}


def normalize_priority(name: str) -> str:
    """Falco's canonical priority name for `name` (case-insensitive, short forms accepted)."""
    lowered = str(name).strip().lower()
    lowered = _PRIORITY_ALIASES.get(lowered, lowered)
    if lowered not in SEVERITY:
        raise ValueError("unknown priority %r (known: %s)" % (name, ", ".join(PRIORITIES)))
    return lowered


def severity_of(record: dict) -> int:
    """Syslog severity of a record; events and unknown priorities count as informational."""
    priority = record.get("priority")
    if priority is None:
        return SEVERITY["informational"]
    try:
        return SEVERITY[normalize_priority(priority)]
    except ValueError:
        return SEVERITY["informational"]


def parse_rfc3339_ns(text: str) -> int:
    """Inverse of rfc3339_ns (UTC 'Z' only, any number of fraction digits)."""
    main, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    digits = (fraction + "000000000")[:9] if fraction else "0"
    return seconds * 1_000_000_000 + int(digits)


def event_record(
    host: HostIdentity, evt: dict[str, Any], *, time_ns: int | None = None, record_id: str | None = None
) -> dict:
    """A raw event for outputs that ask for events too."""
    return {
        "id": record_id or new_id(),
        "kind": "event",
        "time": rfc3339_ns(time.time_ns() if time_ns is None else time_ns),
        "hostname": host.hostname,
        "evt": evt,
    }


@dataclass(frozen=True)
class RecordFilter:
    """Which records an output takes: alerts at or above a priority, by rule or tag, events."""

    min_priority: str = "debug"
    rules: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    events: bool = False

    def accepts(self, kind: str, severity: int, rule: str, tags: Iterable[str]) -> bool:
        if kind == "event":
            return self.events
        if severity > SEVERITY[self.min_priority]:
            return False
        if self.rules and rule not in self.rules:
            return False
        if self.tags and self.tags.isdisjoint(tags):
            return False
        return True

    def accepts_record(self, record: dict) -> bool:
        return self.accepts(record.get("kind", "alert"), severity_of(record), record.get("rule", ""), record.get("tags", ()))
