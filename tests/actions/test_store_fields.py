"""The store's columns mean what the rule engine's fields mean, so `sentinel events COND`
selects exactly the events on which the same condition, as a rule, would have matched."""

from __future__ import annotations

import sqlite3

import pytest

from sentinel.actions.record import FIELD_COLUMNS
from sentinel.actions.store import Store
from sentinel.events.model import Event, Fd, Process
from sentinel.rules import fields
from sentinel.rules.ruleset import compile_condition
from sentinel.rules.sql import to_sql

O_WRONLY, O_RDWR, O_CREAT = 0o1, 0o2, 0o100


def sample_events() -> list[Event]:
    init = Process(1, 1, comm="systemd", exepath="/usr/lib/systemd/systemd")
    shell = Process(200, 20, comm="bash", exepath="/usr/bin/bash", args=("-i",), parent=init, ppid=1, tty=34816)
    curl = Process(
        300,
        30,
        comm="curl",
        exe="curl",
        exepath="/usr/bin/curl",
        args=("-s", "http://x"),
        parent=shell,
        ppid=200,
        uid=1000,
        gid=1000,
        user_name="alice",
        loginuid=1000,
        cwd="/home/alice",
        container_id="0123456789ab",
    )
    orphan = Process(400, 40, comm="kworker", loginuid=0xFFFFFFFF)

    def file(name, flags=0, kind="file"):
        return Fd(3, kind, name, open_flags=flags)

    def sock(server):
        return Fd(
            5, "ipv4", "10.0.0.1:4000->10.0.0.2:443", l4proto="tcp", family=2,
            lip="10.0.0.1", lport=4000, rip="10.0.0.2", rport=443, is_server=server,
        )

    return [
        Event("execve", curl, 0, {"filename": "/usr/bin/curl"}, time_ns=1),
        Event("execve", orphan, -2, {}, time_ns=2),
        Event("openat", curl, 3, {"flags": 0}, file("/etc/shadow"), time_ns=3),
        Event("openat", curl, 3, {"flags": O_WRONLY | O_CREAT}, file("/tmp/out.txt", O_WRONLY | O_CREAT), time_ns=4),
        Event("openat", curl, 3, {"flags": O_RDWR}, file("/x"), time_ns=5),
        Event("open", shell, 3, {"flags": 0}, file("/etc", kind="directory"), time_ns=6),
        Event("openat", shell, -13, {"flags": 0}, file("relative/name.txt"), time_ns=7),
        Event("connect", curl, 0, {}, sock(False), time_ns=8),
        Event("accept", curl, 5, {}, sock(True), time_ns=9),
        Event("openat", curl, 3, {}, file("/tmp/é日本/x"), time_ns=10),
        Event("creat", curl, 3, {"mode": 0o755}, file("/tmp/new.sh", O_WRONLY | O_CREAT), time_ns=11),
    ]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fields") / "events.db")
    events = sample_events()
    with Store(path) as store:
        for event in events:
            store.add_event(event, matched=True)
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    yield events, conn
    conn.close()


def comparable(value):
    if isinstance(value, bool):
        return int(value)
    if value is not None and not isinstance(value, (int, str)):
        return str(value)
    return value


@pytest.mark.parametrize("field_name", sorted(FIELD_COLUMNS))
def test_column_value_equals_the_field_value(stored, field_name):
    events, conn = stored
    extract = fields.lookup(field_name).bind(None)
    column = FIELD_COLUMNS[field_name]
    for event in events:
        (value,) = conn.execute('SELECT "%s" FROM events WHERE time = ?' % column, (event.time_ns,)).fetchone()
        assert comparable(value) == comparable(extract(event)), (field_name, event)


@pytest.mark.parametrize(
    "condition",
    [
        "evt.type = openat and evt.is_open_read = true",
        "evt.is_open_write = true and fd.directory = /tmp",
        "evt.dir = < and evt.type in (execve, execveat)",
        "fd.filename = shadow or fd.directory = /",
        "evt.res != SUCCESS",
        "fd.sip = 10.0.0.2 and fd.sport = 443",
        "proc.pname = bash and proc.cmdline contains http",
        "user.loginuid = -1",
        "not container.id = host",
        "fd.name startswith /tmp/é",
    ],
)
def test_sql_selects_the_events_the_rule_engine_matches(stored, condition):
    events, conn = stored
    matches = compile_condition(condition)
    expected = sorted(event.time_ns for event in events if matches(event))
    where, params = to_sql(condition, FIELD_COLUMNS)
    found = sorted(row[0] for row in conn.execute("SELECT time FROM events WHERE " + where, params))
    assert found == expected
    assert expected  # every condition selects something, so the comparison means something

