"""Stores with known content for the TUI's tests, its benchmark and demos, written by the
store's own writer (`Store`), so the rows have exactly the shape the agent gives them.

    python -m sentinel.tui.sample DB            # a small store with a process tree and alerts
    python -m sentinel.tui.sample DB --live N   # then N more events, one every 0.05 s
"""

from __future__ import annotations

import sqlite3
import sys
import time

from sentinel.actions import record
from sentinel.actions.alert import HostIdentity, alert_record
from sentinel.actions.store import Store
from sentinel.config import StoreConfig
from sentinel.events.model import Event, Fd, Process

# What an attacker controls: a title-setting escape, a bell, screen clearing, invalid UTF-8
# (as surrogateescape'd bytes) and Rich markup.
HOSTILE_NAME = "ev\x1b]0;pwned\x07il"
HOSTILE_PATH = "/tmp/\x1b[2J[bold]x[/bold]\udcff\udcfe.sh"


def process_tree(base_pid: int = 1000, start_ns: int = 10**18) -> list[Process]:
    """systemd -> sshd -> bash -> curl, each the parent of the next."""
    chain: list[Process] = []
    parent = None
    for offset, (comm, args) in enumerate(
        (("systemd", ()), ("sshd", ("-D",)), ("bash", ("-l",)), ("curl", ("-s", "http://example.test/x")))
    ):
        pid = 1 if offset == 0 else base_pid + offset
        proc = Process(
            pid,
            start_ns + offset,
            comm=comm,
            exe=comm,
            exepath="/usr/bin/" + comm,
            args=args,
            ppid=parent.pid if parent else 0,
            parent=parent,
            uid=1000,
            user_name="alice",
        )
        chain.append(proc)
        parent = proc
    return chain


def exec_event(proc: Process, time_ns: int) -> Event:
    return Event("execve", proc, 0, {"filename": proc.exepath}, time_ns=time_ns)


def open_event(proc: Process, path: str, time_ns: int) -> Event:
    return Event("openat", proc, 3, {"flags": 0, "mode": 0}, Fd(3, "file", path, open_flags=0), time_ns=time_ns)


def alert_for(event: Event, rule: str, priority: str, output: str) -> dict:
    return alert_record(
        rule=rule,
        priority=priority,
        output=output,
        tags=["test", "mitre_execution"],
        output_fields={"proc.name": event.proc.comm},
        time_ns=event.time_ns,
        host=HostIdentity.current(),
        ruleset_version="sample",
    )


def write_sample(path: str, now_ns: int | None = None) -> dict[str, str]:
    """A process tree with events, three alerts (one with hostile strings); returns their ids."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    ids: dict[str, str] = {}
    with Store(path, StoreConfig(always_store=("execve", "openat"))) as store:
        tree = process_tree()
        for index, proc in enumerate(tree):
            store.upsert_process(proc)
            store.add_event(exec_event(proc, now_ns - 60_000_000_000 + index), matched=False)
        curl = tree[-1]
        for index in range(20):
            store.add_event(open_event(curl, "/var/lib/data/file%02d" % index, now_ns - 30_000_000_000 + index), matched=False)
        shadow = open_event(curl, "/etc/shadow", now_ns - 20_000_000_000)
        shadow_id = store.add_event(shadow, matched=True)
        ids["shadow"] = store.add_alert(
            alert_for(shadow, "Read sensitive file untrusted", "warning", "Sensitive file opened (file=/etc/shadow proc=curl)"),
            shadow_id,
            record.ancestry_of(curl),
        )
        hostile = Process(
            2000, now_ns - 10, comm=HOSTILE_NAME, exe=HOSTILE_NAME, exepath=HOSTILE_PATH, args=("[red]arg\x07",), ppid=curl.pid, parent=curl
        )
        store.upsert_process(hostile)
        hostile_exec = exec_event(hostile, now_ns - 10_000_000_000)
        hostile_id = store.add_event(hostile_exec, matched=True)
        ids["hostile"] = store.add_alert(
            alert_for(hostile_exec, "Run shell from tmp [bold]", "critical", "exec of %s by %s" % (HOSTILE_PATH, HOSTILE_NAME)),
            hostile_id,
            record.ancestry_of(hostile),
        )
        bash = tree[2]
        debug_event = exec_event(bash, now_ns - 5_000_000_000)
        debug_id = store.add_event(debug_event, matched=True)
        ids["notice"] = store.add_alert(alert_for(debug_event, "Interactive shell", "notice", "shell bash started"), debug_id, record.ancestry_of(bash))
    return ids


def write_live(path: str, count: int, interval: float = 0.05, comm: str = "livewriter") -> None:
    """Events appearing one by one, as the agent would write them (each flush a transaction)."""
    with Store(path, StoreConfig(always_store=("openat",))) as store:
        proc = Process(3000, time.time_ns(), comm=comm, exe=comm, exepath="/usr/bin/" + comm, args=("--tick",))
        store.upsert_process(proc)
        for index in range(count):
            store.add_event(open_event(proc, "/run/live/%d" % index, time.time_ns()), matched=False)
            store.flush()
            time.sleep(interval)


_BULK_COLUMNS = (
    "id", "time", "matched", "evt_type", "evt_res", "proc_pid", "proc_start_ns",
    "proc_ppid", "proc_name", "proc_exepath", "proc_args", "fd_name", "user_name",
)  # fmt: skip
NAMES = tuple("proc%02d" % i for i in range(50))


def write_bulk(path: str, count: int, batch: int = 50_000, now_ns: int | None = None) -> None:
    """`count` events quickly (executemany, one transaction a batch) for benchmarks: 50 process
    names, one event a millisecond, every 1000th an alert."""
    Store(path).close()  # schema and pragmas as the agent sets them
    now_ns = time.time_ns() if now_ns is None else now_ns
    start = now_ns - count * 1_000_000
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = OFF")
    insert = "INSERT INTO events (%s) VALUES (%s)" % (", ".join(_BULK_COLUMNS), ", ".join("?" * len(_BULK_COLUMNS)))
    insert_alert = (
        "INSERT INTO alerts (id, time, rule, priority, source, output, event_id, ancestry) "
        "VALUES (?, ?, ?, ?, 'syscall', ?, ?, '[]')"
    )
    for first in range(0, count, batch):
        rows, alerts = [], []
        for index in range(first, min(first + batch, count)):
            name = NAMES[index % len(NAMES)]
            event_id = "ev-%d" % index
            when = start + index * 1_000_000
            path = "/data/%s/file%d" % (name, index)
            matched = index % 1000 == 0
            rows.append(
                (event_id, when, int(matched), "openat", "SUCCESS", 10_000 + index % 500, 7, 1, name, "/usr/bin/" + name,
                 "--n %d" % index, path, "alice")
            )  # fmt: skip
            if matched:
                alerts.append(("al-%d" % index, when, "Bulk rule %d" % (index % 7), "warning", "bulk alert %d" % index, event_id))
        conn.execute("BEGIN")
        conn.executemany(insert, rows)
        conn.executemany(insert_alert, alerts)
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


if __name__ == "__main__":
    target = sys.argv[1]
    if len(sys.argv) > 3 and sys.argv[2] == "--live":
        write_live(target, int(sys.argv[3]))
    else:
        print(write_sample(target))
