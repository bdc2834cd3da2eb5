"""Alerts in Falco's JSON shape, one object per line, so tools built for Falco read them as is.

Falco's keys (`time`, `rule`, `priority`, `source`, `hostname`, `output`, `tags`,
`output_fields`) come first; sentinel adds a stable `id` (receivers dedupe on it), the host's
identity and the agent and rule-set versions.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from sentinel import __version__
from sentinel.actions.record import new_id


# (second, its text): alerts come in bursts within the same second, which is formatted once.
_last_second: tuple[int, str] = (-1, "")


def rfc3339_ns(epoch_ns: int) -> str:
    """UTC time with nanoseconds, as Falco writes it: 2026-11-23T11:42:21.123456789Z."""
    global _last_second
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    cached = _last_second  # one read: another thread may replace it meanwhile
    if cached[0] != seconds:
        cached = _last_second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    return cached[1] + ".%09dZ" % nanos


def _read_first_line(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.readline().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class HostIdentity:
    hostname: str
    machine_id: str
    boot_id: str

    @classmethod
    def current(cls) -> HostIdentity:
        return cls(
            hostname=socket.gethostname(),
            machine_id=_read_first_line("/etc/machine-id"),
            boot_id=_read_first_line("/proc/sys/kernel/random/boot_id"),
        )


def alert_record(
    *,
    rule: str,
    priority: str,
    output: str,
    tags: list[str] | tuple[str, ...],
    output_fields: dict[str, Any],
    time_ns: int,
    host: HostIdentity,
    ruleset_version: str,
    source: str = "syscall",
    record_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    record = {
        "time": rfc3339_ns(time_ns),
        "rule": rule,
        "priority": priority.capitalize() if priority else "",
        "source": source,
        "hostname": host.hostname,
        "output": output,
        "tags": sorted(tags),
        "output_fields": output_fields,
        "id": record_id or new_id(),
        "kind": "alert",
        "host": {"machine_id": host.machine_id, "boot_id": host.boot_id},
        "agent_version": __version__,
        "ruleset_version": ruleset_version,
    }
    if extra:
        record.update(extra)
    return record


def dumps(record: dict[str, Any]) -> str:
    """One line of JSON: control characters in values are escaped by JSON itself, never raw."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)


class AlertWriter:
    """Writes alert lines to stdout or a file; `reopen()` (on SIGHUP) follows logrotate.

    Each line is flushed as it is written, unless `flush_each=False`: then lines wait in the
    buffer until `flush()`, which the agent calls after each batch of events (a burst of
    alerts costs a few writes instead of one per alert).
    """

    def __init__(self, path: str = "-", *, flush_each: bool = True) -> None:
        self.path = path
        self.flush_each = flush_each
        self._lock = threading.Lock()
        self._handle: IO[str] = self._open()
        self._unflushed = False
        self.written = 0

    def _open(self) -> IO[str]:
        if self.path == "-":
            return sys.stdout
        return open(self.path, "a", buffering=1 if self.flush_each else -1, encoding="utf-8", errors="surrogateescape")

    def write(self, record: dict[str, Any]) -> None:
        line = dumps(record) + "\n"
        with self._lock:
            self._handle.write(line)
            if self.flush_each:
                if self.path == "-":
                    self._handle.flush()
            else:
                self._unflushed = True
            self.written += 1

    def flush(self) -> None:
        """Hand the lines written since the last flush to the file (cheap when there are none)."""
        if not self._unflushed:
            return
        with self._lock:
            self._unflushed = False
            self._handle.flush()

    def reopen(self) -> None:
        if self.path == "-":
            return
        with self._lock:
            old = self._handle
            self._handle = self._open()
            old.close()

    def close(self) -> None:
        with self._lock:
            self._handle.flush()
            if self.path != "-":
                self._handle.close()
