"""Events, alerts, actions and processes as store rows: the column layout and the serialisers.

`FIELD_COLUMNS` maps Falco field names to columns of the `events` table; the rule engine's SQL
backend compiles conditions over it, so `sentinel events FILTER` speaks the rule language.
What has no column (syscall arguments, fd and exe details, env, capabilities) goes into one
JSON column, `extra`.

Serialisation is split in two so that the caller's thread pays little: `event_row()` copies
the values into a tuple at once (Process objects are updated in place later, so they cannot
be read at flush time), and the JSON text of the extras is built by the writer
(`finish_event_rows()`), off the hot path; alert rows likewise (`finish_alert_rows()`).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sentinel.events.model import Event, Process
from sentinel.rules.loader import PRIORITIES as RULE_PRIORITIES
from sentinel.rules.render import user_name

# Falco field name -> events column. Generated columns (see store_schema) count as columns.
FIELD_COLUMNS: Mapping[str, str] = {
    "evt.time": "time",
    "evt.rawtime": "time",
    "evt.type": "evt_type",
    "evt.dir": "evt_dir",
    "evt.res": "evt_res",
    "evt.rawres": "evt_rawres",
    "evt.is_open_read": "evt_is_open_read",
    "evt.is_open_write": "evt_is_open_write",
    "thread.tid": "thread_tid",
    "proc.pid": "proc_pid",
    "proc.vpid": "proc_vpid",
    "proc.ppid": "proc_ppid",
    "proc.name": "proc_name",
    "proc.exe": "proc_exe",
    "proc.exepath": "proc_exepath",
    "proc.args": "proc_args",
    "proc.cmdline": "proc_cmdline",
    "proc.cwd": "proc_cwd",
    "proc.tty": "proc_tty",
    "proc.pname": "proc_pname",
    "proc.pexepath": "proc_pexepath",
    "proc.pcmdline": "proc_pcmdline",
    "user.uid": "user_uid",
    "user.name": "user_name",
    "user.loginuid": "user_loginuid",
    "group.gid": "group_gid",
    "container.id": "container_id",
    "fd.num": "fd_num",
    "fd.type": "fd_type",
    "fd.typechar": "fd_typechar",
    "fd.name": "fd_name",
    "fd.directory": "fd_directory",
    "fd.filename": "fd_filename",
    "fd.l4proto": "fd_l4proto",
    "fd.lip": "fd_lip",
    "fd.lport": "fd_lport",
    "fd.rip": "fd_rip",
    "fd.rport": "fd_rport",
    "fd.sip": "fd_sip",
    "fd.sport": "fd_sport",
    "fd.cip": "fd_cip",
    "fd.cport": "fd_cport",
}

# Stored columns of `events`, in the order of the tuples event_row() builds.
EVENT_COLUMNS: tuple[str, ...] = (
    "id",
    "time",
    "matched",
    "evt_type",
    "evt_rawres",
    "evt_res",
    "thread_tid",
    "proc_pid",
    "proc_start_ns",
    "proc_vpid",
    "proc_ppid",
    "proc_name",
    "proc_exe",
    "proc_exepath",
    "proc_args",
    "proc_cwd",
    "proc_tty",
    "proc_pname",
    "proc_pexepath",
    "proc_pcmdline",
    "user_uid",
    "user_name",
    "user_loginuid",
    "group_gid",
    "container_id",
    "fd_num",
    "fd_type",
    "fd_typechar",
    "fd_name",
    "fd_l4proto",
    "fd_lip",
    "fd_lport",
    "fd_rip",
    "fd_rport",
    "fd_is_server",
    "extra",
)
_EXTRA_INDEX = EVENT_COLUMNS.index("extra")

ALERT_COLUMNS: tuple[str, ...] = (
    "id",
    "time",
    "rule",
    "priority",
    "source",
    "hostname",
    "output",
    "tags",
    "output_fields",
    "event_id",
    "ancestry",
    "enforcement",
)

ACTION_COLUMNS: tuple[str, ...] = (
    "id",
    "time",
    "kind",
    "target",
    "rule",
    "mode",
    "outcome",
    "detail",
    "alert_id",
)

PROCESS_COLUMNS: tuple[str, ...] = (
    "pid",
    "start_ns",
    "ppid",
    "parent_start_ns",
    "comm",
    "exepath",
    "cmdline",
    "uid",
    "user_name",
    "container_id",
    "seen",
)

# Falco's priorities, most severe first; `--priority P` means "P or more severe".
PRIORITIES = RULE_PRIORITIES
_PRIORITY_ALIASES = {"info": "informational", "warn": "warning", "err": "error", "crit": "critical"}


def normalise_priority(priority: str) -> str:
    """Falco writes `Warning`, rules say `WARNING` or `warn`: one lower-case spelling is stored."""
    name = priority.strip().lower()
    return _PRIORITY_ALIASES.get(name, name)


class _IdSource:
    """UUIDv7-layout ids: 48-bit ms time, then a 42-bit per-process counter, then 32 random bits.

    The counter never repeats within a process, so ids are unique and ordered in one agent;
    random bits (and a random counter start) keep two hosts' ids apart. The text up to the
    counter's low 16 bits changes once per millisecond at most and is formatted once
    (an id was the most expensive part of storing an event).
    """

    __slots__ = ("_counter", "_node_hex", "_prefix")

    def __init__(self) -> None:
        self.reseed()
        # A forked child must not repeat its parent's ids.
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        seed = int.from_bytes(os.urandom(9), "big")
        self._counter = itertools.count(seed >> 32)  # next() on a count is atomic under the GIL
        self._node_hex = "%08x" % (seed & 0xFFFFFFFF)
        self._prefix: tuple[int, int, str] = (-1, -1, "")  # (ms, counter >> 16, their text)

    def __call__(self) -> str:
        count = next(self._counter) & 0x3FFFFFFFFFF
        ms = time.time_ns() // 1_000_000
        high = count >> 16
        prefix = self._prefix  # one read: another thread may replace it meanwhile
        if prefix[0] != ms or prefix[1] != high:
            prefix = self._prefix = (ms, high, "%08x-%04x-%04x-%04x-" % (
                ms >> 16 & 0xFFFFFFFF, ms & 0xFFFF, 0x7000 | high >> 14, 0x8000 | high & 0x3FFF))
        return prefix[2] + "%04x" % (count & 0xFFFF) + self._node_hex


new_id = _IdSource()


def _errno_name(res: int) -> str:
    """Falco's evt.res: SUCCESS, or the errno's name for a negative result."""
    if res >= 0:
        return "SUCCESS"
    return errno.errorcode.get(-res, str(res))


_RES_NAMES = {res: _errno_name(res) for res in range(-150, 1)}


def event_row(event: Event, event_id: str, matched: bool) -> list:
    """Copy an event into a row (a list: the writer replaces the extras with their JSON)."""
    proc = event.proc
    parent = proc.parent
    fd = event.fd
    res = event.res
    extra = (
        event.args or None,
        proc.env,
        proc.cap_permitted,
        proc.cap_effective,
        proc.cap_inheritable,
        proc.filename,
        proc.interpreter,
        proc.args_truncated,
        proc.exe_ino,
        proc.exe_dev,
        proc.exe_from_memfd,
        proc.exe_upper_layer,
        proc.exe_writable,
        proc.euid,
        proc.egid,
        proc.sid,
        proc.pgid,
        proc.cgroup,
        None if fd is None else (fd.ino, fd.dev, fd.open_flags, fd.created, fd.nameraw, fd.family),
    )
    row = [
        event_id,
        event.time_ns,
        1 if matched else 0,
        event.type,
        res,
        _RES_NAMES.get(res) or _errno_name(res),
        event.tid,
        proc.pid,
        proc.start_ns,
        proc.vpid,
        proc.ppid,
        proc.comm,
        proc.exe,
        proc.exepath,
        " ".join(proc.args),
        proc.cwd or None,
        proc.tty,
        None if parent is None else parent.comm,
        None if parent is None else parent.exepath,
        None if parent is None else parent.cmdline,
        proc.uid,
        proc.user_name or user_name(proc.uid),  # as user.name shows it when the table had none
        -1 if proc.loginuid == 0xFFFFFFFF else proc.loginuid,  # Falco shows an unset one as -1
        proc.gid,
        proc.container_id,
    ]
    if fd is None:
        row += (None, None, None, None, None, None, None, None, None, None, extra)
    else:
        is_socket = bool(fd.l4proto) or fd.family != 0
        row += (
            fd.num,
            fd.type,
            fd.typechar,
            fd.name,
            fd.l4proto or None,
            fd.lip if is_socket else None,
            fd.lport if is_socket else None,
            fd.rip if is_socket else None,
            fd.rport if is_socket else None,
            (1 if fd.is_server else 0) if is_socket else None,
            extra,
        )
    return row


_EXTRA_PROC_KEYS = (
    "env",
    "cap_permitted",
    "cap_effective",
    "cap_inheritable",
    "filename",
    "interpreter",
    "args_truncated",
    "exe_ino",
    "exe_dev",
    "exe_from_memfd",
    "exe_upper_layer",
    "exe_writable",
    "euid",
    "egid",
    "sid",
    "pgid",
    "cgroup",
)
_EXTRA_FD_KEYS = ("ino", "dev", "open_flags", "created", "nameraw", "family")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


# One encoder for every row: json.dumps with options builds a new one per call (~0.6 us).
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default)


def to_json(value: Any) -> str:
    """Compact JSON; non-ASCII escaped so that strings a program smuggled in stay valid text."""
    return _ENCODER.encode(value)


def extra_json(extra: tuple) -> str:
    """The JSON of everything without a column; empty and default values are left out."""
    args, *proc_values, fd_values = extra
    document: dict[str, Any] = {}
    if args:
        document["args"] = args
    proc = {key: value for key, value in zip(_EXTRA_PROC_KEYS, proc_values) if value}
    if proc:
        document["proc"] = proc
    if fd_values is not None:
        fd = {key: value for key, value in zip(_EXTRA_FD_KEYS, fd_values) if value}
        if fd:
            document["fd"] = fd
    return to_json(document)


def finish_event_rows(rows: Iterable[list]) -> list[list]:
    """Turn the extras of event rows into JSON text (the writer's share of the work)."""
    finished = []
    for row in rows:
        extra = row[_EXTRA_INDEX]
        if type(extra) is tuple:
            row[_EXTRA_INDEX] = _extra_json_of_process_event(extra) if extra[-1] is None else extra_json(extra)
        finished.append(row)
    return finished


# Events without a file descriptor (execs above all) repeat their extras: the execs of one
# program by one parent differ in none of them. Their JSON is remembered (~0.5 us a lookup
# against ~5 us to encode), a bounded number of them.
_PROCESS_EXTRAS: dict[tuple, str] = {}
_PROCESS_EXTRAS_MAX = 1024


def _extra_json_of_process_event(extra: tuple) -> str:
    args = extra[0]
    try:
        key = (tuple(args.items()) if args else None, extra[1:])
        text = _PROCESS_EXTRAS.get(key)
    except TypeError:  # an argument that cannot be a key (a list)
        return extra_json(extra)
    if text is None:
        if len(_PROCESS_EXTRAS) >= _PROCESS_EXTRAS_MAX:
            _PROCESS_EXTRAS.clear()
        text = _PROCESS_EXTRAS[key] = extra_json(extra)
    return text


def ancestry_entry(proc: Process) -> dict[str, Any]:
    return {"pid": proc.pid, "comm": proc.comm, "exepath": proc.exepath, "cmdline": proc.cmdline}


def ancestry_of(proc: Process, limit: int = 32) -> list[dict[str, Any]]:
    """The chain of parents at the time of an alert, nearest first."""
    return [ancestry_entry(parent) for parent in proc.ancestors(limit)]


_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z?")


def _time_ns_of(value: Any) -> int:
    """Accept ns since the epoch or Falco's RFC 3339 text (2026-11-23T11:42:21.123456789Z)."""
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value * 1e9)
    if isinstance(value, str) and value:
        parts = _RFC3339.fullmatch(value)
        if parts is not None:  # the agent's own alerts: no strptime, whose locale handling is slow
            *date_time, fraction = parts.groups()
            stamp = datetime(*(int(part) for part in date_time), tzinfo=timezone.utc)
            return int(stamp.timestamp()) * 1_000_000_000 + int(((fraction or "") + "000000000")[:9])
        text = value.rstrip("Z")
        whole, _, fraction = text.partition(".")
        stamp = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
        nanos = int((fraction + "000000000")[:9]) if fraction else 0
        return int(stamp.timestamp()) * 1_000_000_000 + nanos
    return time.time_ns()


# Columns of an alert row that hold JSON text once the writer has finished the row.
_ALERT_JSON_INDEXES = tuple(ALERT_COLUMNS.index(column) for column in ("tags", "output_fields", "ancestry"))
_ALERT_TAGS_INDEX = ALERT_COLUMNS.index("tags")


def alert_row(alert: Mapping[str, Any], event_id: str | None, ancestry: Sequence[Any] | None,
              time_ns: int | None = None) -> tuple:
    """An alert record (the dict sentinel.actions.alert builds) as a row; keeps its `id`.
    `time_ns`, when the caller has it, spares reading the record's time text back.

    Like event rows, its JSON columns (tags, output fields, ancestry) are encoded by the
    writer (`finish_alert_rows()`), off the hot path."""
    entries = [ancestry_entry(item) if isinstance(item, Process) else dict(item) for item in ancestry or ()]
    tags = alert.get("tags") or []
    return (
        alert.get("id") or new_id(),
        time_ns if time_ns is not None else _time_ns_of(alert.get("time_ns", alert.get("time"))),
        str(alert.get("rule", "")),
        normalise_priority(str(alert.get("priority", ""))),
        str(alert.get("source", "syscall")),
        str(alert.get("hostname", "")),
        str(alert.get("output", "")),
        sorted(tags),
        alert.get("output_fields") or {},
        event_id,
        entries,
        alert.get("enforcement"),
    )


def finish_alert_rows(rows: Iterable[tuple]) -> list[tuple]:
    """Alert rows with their JSON columns encoded (rows already finished pass unchanged)."""
    finished = []
    for row in rows:
        if not isinstance(row[_ALERT_TAGS_INDEX], str):
            values = list(row)
            for index in _ALERT_JSON_INDEXES:
                values[index] = to_json(values[index])
            row = tuple(values)
        finished.append(row)
    return finished


def action_row(
    kind: str,
    target: str,
    *,
    rule: str = "",
    mode: str = "audit",
    outcome: str = "",
    detail: Any = None,
    alert_id: str | None = None,
    time_ns: int | None = None,
) -> tuple:
    return (
        new_id(),
        time.time_ns() if time_ns is None else time_ns,
        kind,
        target,
        rule,
        mode,
        outcome,
        None if detail is None else (detail if isinstance(detail, str) else to_json(detail)),
        alert_id,
    )


def process_row(proc: Process, seen_ns: int | None = None) -> tuple:
    parent = proc.parent
    return (
        proc.pid,
        proc.start_ns,
        proc.ppid,
        None if parent is None else parent.start_ns,
        proc.comm,
        proc.exepath,
        proc.cmdline,
        proc.uid,
        proc.user_name or user_name(proc.uid),
        proc.container_id,
        time.time_ns() if seen_ns is None else seen_ns,
    )


_FIELD_OF_COLUMN = {column: field for field, column in FIELD_COLUMNS.items()}


def event_fields(event: Event, event_id: str, matched: bool) -> dict[str, Any]:
    """The stored view of an event keyed by Falco field names (columns without one keep their
    column name): what outputs that forward raw events send."""
    row = finish_event_rows([event_row(event, event_id, matched)])[0]
    return {
        _FIELD_OF_COLUMN.get(column, column): value
        for column, value in zip(EVENT_COLUMNS, row)
        if value is not None and value != ""
    }
