"""The forwarded record: its shape, its stable id, priorities and per-output filters.

A record is a plain dict so every format can read it without a class in between. Alerts
follow Falco's JSON output shape (what falcosidekick and SIEM parsers already understand)
plus sentinel's keys; events carry their fields under `evt`. The id is assigned once, when
the record is built, and travels with every copy so receivers can drop duplicates of an
at-least-once delivery.
"""

from __future__ import annotations

import calendar
import itertools
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterable

from sentinel import __version__

# Falco's priorities, most severe first; the index is the syslog severity (RFC 5424 6.2.1).
PRIORITIES = ("emergency", "alert", "critical", "error", "warning", "notice", "informational", "debug")
_PRIORITY_ALIASES = {"info": "informational", "warn": "warning", "err": "error", "crit": "critical", "emerg": "emergency"}
SEVERITY = {name: index for index, name in enumerate(PRIORITIES)}

# 96 random bits per process plus a counter: unique across restarts and hosts, ~0.2 us each.
_ID_PREFIX = os.urandom(12).hex()
_id_counter = itertools.count(1)


def new_record_id() -> str:
    """A new unique id (hex prefix random per process, then a counter)."""
    return "%s-%x" % (_ID_PREFIX, next(_id_counter))


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


def rfc3339_ns(epoch_ns: int) -> str:
    """UTC time with nanoseconds, as Falco writes it: 2026-01-02T03:04:05.123456789Z."""
    seconds, nanos = divmod(int(epoch_ns), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%09dZ" % nanos


def parse_rfc3339_ns(text: str) -> int:
    """Inverse of rfc3339_ns (UTC 'Z' only, any number of fraction digits)."""
    main, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    digits = (fraction + "000000000")[:9] if fraction else "0"
    return seconds * 1_000_000_000 + int(digits)


def _read_id(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class HostIdentity:
    """Who sends: filled once at start and stamped on every record."""

    hostname: str
    machine_id: str
    boot_id: str
    agent_version: str = __version__
    ruleset_version: str = ""

    @classmethod
    def detect(cls, ruleset_version: str = "") -> HostIdentity:
        return cls(
            hostname=socket.gethostname(),
            machine_id=_read_id("/etc/machine-id"),
            boot_id=_read_id("/proc/sys/kernel/random/boot_id"),
            ruleset_version=ruleset_version,
        )


def alert_record(
    identity: HostIdentity,
    *,
    rule: str,
    priority: str,
    output: str,
    output_fields: dict[str, Any],
    tags: Iterable[str] = (),
    source: str = "syscall",
    time_ns: int | None = None,
    record_id: str | None = None,
) -> dict:
    """An alert in Falco's JSON shape plus sentinel's keys (id, kind, host, versions)."""
    return {
        "id": record_id or new_record_id(),
        "kind": "alert",
        "time": rfc3339_ns(time.time_ns() if time_ns is None else time_ns),
        "rule": rule,
        "priority": normalize_priority(priority).capitalize(),
        "source": source,
        "hostname": identity.hostname,
        "output": output,
        "tags": sorted(tags),
        "output_fields": output_fields,
        "host": {"machine_id": identity.machine_id, "boot_id": identity.boot_id},
        "agent_version": identity.agent_version,
        "ruleset_version": identity.ruleset_version,
    }


def event_record(
    identity: HostIdentity, evt: dict[str, Any], *, time_ns: int | None = None, record_id: str | None = None
) -> dict:
    """A raw event for outputs that ask for events too."""
    return {
        "id": record_id or new_record_id(),
        "kind": "event",
        "time": rfc3339_ns(time.time_ns() if time_ns is None else time_ns),
        "hostname": identity.hostname,
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
