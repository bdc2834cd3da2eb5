"""The event store: schema, what is stored, batching, ids, migrations, retention, errors."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel.actions import record
from sentinel.actions.store import Store, StoragePolicy, StoreWriter, open_readonly
from sentinel.actions.store_schema import MIGRATIONS, SCHEMA_VERSION, migrate
from sentinel.config import StoreConfig
from sentinel.errors import StoreError
from sentinel.events.model import Event, Fd, Process

DAY_NS = 86_400 * 1_000_000_000


def make_process(pid: int = 4242, comm: str = "curl", **fields) -> Process:
    parent = Process(100, 7, comm="bash", exepath="/usr/bin/bash", args=("-i",))
    return Process(
        pid,
        pid * 1000,
        comm=comm,
        exe=comm,
        exepath="/usr/bin/" + comm,
        args=("-s", "https://example.test/x"),
        parent=parent,
        ppid=100,
        uid=1000,
        user_name="alice",
        cwd="/home/alice",
        env=("PATH=/usr/bin",),
        cap_effective=0x20,
        **fields,
    )


def exec_event(pid: int = 4242, time_ns: int | None = None, comm: str = "curl") -> Event:
    proc = make_process(pid, comm)
    return Event("execve", proc, 0, {"filename": proc.exepath}, time_ns=time_ns or time.time_ns())


def open_event(path: str = "/etc/shadow", time_ns: int | None = None, res: int = 3) -> Event:
    fd = Fd(3, "file", path, open_flags=0, ino=77)
    return Event("openat", make_process(), res, {"flags": 0, "mode": 0}, fd, time_ns=time_ns or time.time_ns())


def connect_event(server: bool = False) -> Event:
    fd = Fd(
        5,
        "ipv4",
        "10.0.0.1:40000->10.0.0.2:443",
        l4proto="tcp",
        family=2,
        lip="10.0.0.1",
        lport=40000,
        rip="10.0.0.2",
        rport=443,
        is_server=server,
    )
    return Event("connect", make_process(), 0, {"addrlen": 16}, fd, time_ns=time.time_ns())


def alert(rule: str = "Read sensitive file", priority: str = "Warning", **extra) -> dict:
    return {
        "time": "2026-11-23T11:42:21.123456789Z",
        "rule": rule,
        "priority": priority,
        "source": "syscall",
        "hostname": "h1",
        "output": "read /etc/shadow by curl",
        "tags": ["T1003", "filesystem"],
        "output_fields": {"fd.name": "/etc/shadow"},
        **extra,
    }


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "state" / "events.db")


def rows(path: str, sql: str, params=()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_new_store_has_current_schema_wal_and_normal_sync(db_path):
    with Store(db_path) as store:
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        assert set(store.db.table_names()) >= {"events", "alerts", "processes", "actions"}
        indexes = {row[1] for row in store.conn.execute("SELECT * FROM sqlite_master WHERE type = 'index'")}
        assert {"events_time", "events_type_time", "events_name_time", "events_exec", "alerts_rule_time"} <= indexes


def test_every_field_column_exists_in_events(db_path):
    with Store(db_path) as store:
        columns = {row[1] for row in store.conn.execute("PRAGMA table_xinfo(events)")}
    assert set(record.FIELD_COLUMNS.values()) <= columns
    assert set(record.EVENT_COLUMNS) <= columns


def test_event_row_round_trips_columns_and_extras(db_path):
    event = open_event("/etc/shadow", res=-13)
    with Store(db_path) as store:
        event_id = store.add_event(event, matched=True)
    (row,) = rows(db_path, "SELECT * FROM events")
    assert row["id"] == event_id
    assert row["evt_type"] == "openat"
    assert row["evt_rawres"] == -13 and row["evt_res"] == "EACCES"
    assert row["proc_name"] == "curl"
    assert row["proc_cmdline"] == "curl -s https://example.test/x"
    assert row["proc_pname"] == "bash" and row["proc_pcmdline"] == "bash -i"
    assert row["fd_name"] == "/etc/shadow" and row["fd_typechar"] == "f"
    assert row["fd_sip"] is None
    assert row["user_loginuid"] == -1  # unset (0xFFFFFFFF in the kernel), as Falco shows it
    extra = json.loads(row["extra"])
    assert extra["args"] == {"flags": 0, "mode": 0}
    assert extra["proc"]["env"] == ["PATH=/usr/bin"]
    assert extra["proc"]["cap_effective"] == 0x20
    assert extra["fd"]["ino"] == 77
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["ts"])


def test_extras_of_events_without_a_file_are_remembered_exactly_and_boundedly():
    """Execs repeat their extras: their JSON is looked up, and must equal a fresh encoding
    whatever the values (an unhashable argument is encoded, not remembered)."""
    record._PROCESS_EXTRAS.clear()
    events = [exec_event(pid) for pid in (10, 11)] + [exec_event(12, comm="wget")]
    events.append(Event("execve", make_process(13), -2, {"filename": "/x", "argv": ["a", "b"]}, time_ns=1))
    events.append(Event("execve", make_process(14, sid=7), 0, {"filename": "/usr/bin/curl"}, time_ns=1))
    for event in events + events:
        (row,) = record.finish_event_rows([record.event_row(event, "id", False)])
        assert row[record._EXTRA_INDEX] == record.extra_json(record.event_row(event, "id", False)[record._EXTRA_INDEX])
    assert json.loads(row[record._EXTRA_INDEX])["proc"]["sid"] == 7
    assert len(record._PROCESS_EXTRAS) == 3  # curl (twice the same), wget, curl with another sid
    for number in range(record._PROCESS_EXTRAS_MAX + 5):
        record.finish_event_rows([record.event_row(Event("execve", make_process(), 0, {"filename": str(number)}), "id", False)])
    assert len(record._PROCESS_EXTRAS) <= record._PROCESS_EXTRAS_MAX


@pytest.mark.parametrize("server", [False, True])
def test_socket_server_and_client_columns_follow_the_connection_side(db_path, server):
    with Store(db_path) as store:
        store.add_event(connect_event(server=server), matched=False)
    (row,) = rows(db_path, "SELECT * FROM events")
    expected = ("10.0.0.1", 40000, "10.0.0.2", 443) if server else ("10.0.0.2", 443, "10.0.0.1", 40000)
    assert (row["fd_sip"], row["fd_sport"], row["fd_cip"], row["fd_cport"]) == expected
    assert row["fd_l4proto"] == "tcp"


def test_policy_stores_matched_events_and_always_store_types_only(db_path):
    policy = StoragePolicy(("execve", "connect"))
    assert policy.wants("openat", True) and policy.wants("execve", False)
    assert not policy.wants("openat", False)
    with Store(db_path) as store:
        assert store.add_event(open_event(), matched=False) is None
        opened = store.add_event(open_event(), matched=True)
        executed = store.add_event(exec_event(), matched=False)
    stored = {(row["id"], row["evt_type"], row["matched"]) for row in rows(db_path, "SELECT * FROM events")}
    assert stored == {(opened, "openat", 1), (executed, "execve", 0)}


def test_ids_are_unique_time_ordered_uuid7():
    ids = [record.new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i) for i in ids[:100])


def test_ids_carry_time_counter_and_node_in_the_uuid7_layout():
    source = record._IdSource()
    before = time.time_ns() // 1_000_000
    ids = [source() for _ in range(70_000)]  # past a 16-bit boundary of the counter
    after = time.time_ns() // 1_000_000
    values = [int(i.replace("-", ""), 16) for i in ids]
    assert all(before <= value >> 80 <= after for value in values)
    assert {value >> 76 & 0xF for value in values} == {7} and {value >> 62 & 0x3 for value in values} == {2}
    counters = [(value >> 64 & 0xFFF) << 30 | (value >> 48 & 0x3FFF) << 16 | (value >> 32 & 0xFFFF) for value in values]
    assert all(later - earlier == 1 for earlier, later in zip(counters, counters[1:]) if later)  # 0: the 42 bits wrapped
    assert len({value & 0xFFFFFFFF for value in values}) == 1


def test_alert_links_event_keeps_its_id_and_records_ancestry(db_path):
    event = open_event()
    with Store(db_path) as store:
        event_id = store.add_event(event, matched=True)
        alert_id = store.add_alert(
            alert(id="0194-fixed-id"), event_id, record.ancestry_of(event.proc) + [Process(1, 1, comm="systemd")]
        )
    assert alert_id == "0194-fixed-id"
    (row,) = rows(db_path, "SELECT * FROM alerts")
    assert row["event_id"] == event_id
    assert row["priority"] == "warning"
    assert row["time"] == 1795434141123456789
    assert json.loads(row["tags"]) == ["T1003", "filesystem"]
    assert json.loads(row["ancestry"]) == [
        {"pid": 100, "comm": "bash", "exepath": "/usr/bin/bash", "cmdline": "bash -i"},
        {"pid": 1, "comm": "systemd", "exepath": "", "cmdline": "systemd"},
    ]
    assert row["acknowledged"] == 0


def test_actions_processes_and_acknowledge(db_path):
    proc = make_process(77)
    with Store(db_path) as store:
        store.upsert_process(proc)
        proc.user_name = "root"  # the process table updates in place; the upsert keeps the last
        store.upsert_process(proc)
        alert_id = store.add_alert(alert(), None, [])
        store.add_action("kill", "pid 77", rule="Read sensitive file", mode="enforce", outcome="killed", alert_id=alert_id)
        store.flush()
        assert store.acknowledge([alert_id], by="alice") == 1
    (process,) = rows(db_path, "SELECT * FROM processes")
    assert (process["pid"], process["start_ns"], process["user_name"], process["parent_start_ns"]) == (77, 77_000, "root", 7)
    kinds = [(r["kind"], r["outcome"], r["alert_id"]) for r in rows(db_path, "SELECT * FROM actions ORDER BY seq")]
    assert kinds == [("kill", "killed", alert_id), ("ack", "acknowledged", alert_id)]
    assert rows(db_path, "SELECT acknowledged FROM alerts")[0][0] == 1


def test_strings_that_are_not_utf8_are_stored_escaped_not_lost(db_path):
    evil = b"/tmp/\xff\xfe-x".decode("utf-8", "surrogateescape")
    with Store(db_path) as store:
        store.add_event(open_event(evil), matched=True)
        store.add_event(open_event("/etc/passwd"), matched=True)
    names = [row[0] for row in rows(db_path, "SELECT fd_name FROM events ORDER BY seq")]
    assert names == ["/tmp/\\xff\\xfe-x", "/etc/passwd"]


def test_store_flushes_by_batch_size(db_path):
    with Store(db_path, StoreConfig(batch_size=10)) as store:
        for _ in range(25):
            store.add_event(exec_event(), matched=False)
        assert rows(db_path, "SELECT count(*) FROM events")[0][0] == 20
    assert rows(db_path, "SELECT count(*) FROM events")[0][0] == 25


@pytest.mark.parametrize("separate_process", [False, True])
def test_writer_loses_no_accepted_event_on_close(db_path, separate_process):
    writer = StoreWriter(db_path, StoreConfig(batch_size=100, flush_seconds=5), separate_process=separate_process)
    ids = [writer.add_event(exec_event(pid), matched=False) for pid in range(1, 1051)]
    alert_id = writer.add_alert(alert(), ids[0], [])
    writer.add_action("deny", "/usr/bin/nc", mode="enforce", outcome="denied")
    writer.close()
    stored = [row[0] for row in rows(db_path, "SELECT id FROM events ORDER BY seq")]
    assert stored == ids
    assert rows(db_path, "SELECT event_id FROM alerts WHERE id = ?", (alert_id,))[0][0] == ids[0]
    assert rows(db_path, "SELECT count(*) FROM actions")[0][0] == 1
    status = writer.status()
    assert status["queued"] == status["written"] == 1052 and status["dropped"] == 0


def test_writer_flushes_by_time(db_path):
    writer = StoreWriter(db_path, StoreConfig(batch_size=10_000, flush_seconds=0.2), separate_process=False)
    try:
        writer.add_event(exec_event(), matched=False)
        deadline = time.monotonic() + 5
        while writer.status()["written"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rows(db_path, "SELECT count(*) FROM events")[0][0] == 1
        assert writer.status()["last_flush_seconds"] > 0
    finally:
        writer.close()


def test_writer_drops_and_counts_when_the_database_cannot_keep_up(db_path):
    writer = StoreWriter(db_path, StoreConfig(batch_size=5, flush_seconds=5), separate_process=False, max_batches=1)
    blocker = sqlite3.connect(db_path, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock: the store's writes wait
    try:
        for pid in range(1, 101):
            event_id = writer.add_event(exec_event(pid), matched=False)
            if pid % 10 == 0:
                writer.add_alert(alert(rule="rule %d" % pid), event_id, [])
    finally:
        blocker.rollback()
        blocker.close()
    writer.close()
    status = writer.status()
    stored = rows(db_path, "SELECT count(*) FROM events")[0][0]
    assert status["dropped"] > 0
    assert stored == 100 - status["dropped"]
    assert status["written"] == stored + 10
    # Alerts are never shed with their batch's events.
    assert [row[0] for row in rows(db_path, "SELECT rule FROM alerts ORDER BY seq")] == ["rule %d" % n for n in range(10, 101, 10)]


def test_hot_path_is_safe_from_several_threads(db_path):
    writer = StoreWriter(
        db_path, StoreConfig(batch_size=50, flush_seconds=0.05), separate_process=False, max_batches=1000
    )

    def produce(base):
        for pid in range(base, base + 500):
            writer.add_event(exec_event(pid), matched=False)

    threads = [threading.Thread(target=produce, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    assert rows(db_path, "SELECT count(DISTINCT id) FROM events")[0][0] == 2000
    assert writer.status()["queued"] == writer.status()["written"] == 2000


def test_old_v1_database_is_migrated_and_keeps_its_rows(db_path):
    os.makedirs(os.path.dirname(db_path))
    conn = sqlite3.connect(db_path, isolation_level=None)
    import sqlite_utils

    migrate(sqlite_utils.Database(conn), db_path, MIGRATIONS[:1])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.execute(
        "INSERT INTO alerts (id, time, rule, priority, source) VALUES ('a1', 1, 'Old rule', 'error', 'syscall')"
    )
    conn.execute(
        "INSERT INTO events (id, time, matched, evt_type, fd_type, fd_name, extra) "
        "VALUES ('e1', 1, 1, 'openat', 'file', '/etc/shadow', '{\"args\":{\"flags\":2}}')"
    )
    conn.close()
    with Store(db_path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        store.add_action("reload", "rules")
    (row,) = rows(db_path, "SELECT rule, acknowledged, enforcement FROM alerts")
    assert tuple(row) == ("Old rule", 0, None)
    (row,) = rows(db_path, "SELECT evt_dir, evt_is_open_read, evt_is_open_write, fd_directory FROM events")
    assert tuple(row) == ("<", 1, 1, "/etc")
    assert rows(db_path, "SELECT kind FROM actions")[0][0] == "reload"


def test_database_from_a_newer_sentinel_is_refused(db_path):
    Store(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version = %d" % (SCHEMA_VERSION + 1))
    conn.close()
    with pytest.raises(StoreError, match="newer than this sentinel") as error:
        Store(db_path)
    assert error.value.location.path == db_path
    with pytest.raises(StoreError, match="newer"):
        open_readonly(db_path)


def test_failed_migration_leaves_the_previous_version(db_path):
    def broken(db):
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    with pytest.raises(StoreError, match="to version %d failed .*: boom" % (SCHEMA_VERSION + 1)):
        Store(db_path, migrations=MIGRATIONS + (broken,))
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'half_done'").fetchall()
    conn.close()


def test_unwritable_path_gives_a_store_error_naming_path_and_reason(tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    path = str(blocked / "events.db")
    with pytest.raises(StoreError) as error:
        Store(path)
    assert error.value.location.path == path
    assert "is not a directory" in str(error.value) and path in str(error.value)


def test_unwritable_path_as_unprivileged_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    path = str(locked / "events.db")
    pid = os.fork()
    if pid == 0:  # child: become nobody, expect a clean StoreError
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                Store(path)
            except StoreError as exc:
                os._exit(0 if "Permission denied" in str(exc) and path in str(exc) else 2)
            os._exit(3)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_unknown_group_is_a_store_error(db_path):
    with pytest.raises(StoreError, match="no such group"):
        Store(db_path, StoreConfig(group="no-such-group-sentinel"))


def test_default_file_modes_are_private(db_path):
    Store(db_path).close()
    assert os.stat(db_path).st_mode & 0o777 == 0o600


def test_retention_by_age_removes_everything_older(db_path):
    now = time.time_ns()
    with Store(db_path, StoreConfig(retention_days=1)) as store:
        old = store.add_event(open_event(time_ns=now - 2 * DAY_NS), matched=True)
        store.add_alert(alert(time_ns=now - 2 * DAY_NS), old, [])
        store.add_action("kill", "pid 1", time_ns=now - 2 * DAY_NS)
        fresh = store.add_event(open_event(time_ns=now - DAY_NS // 2), matched=True)
        store.add_alert(alert(time_ns=now - DAY_NS // 2), fresh, [])
        store.flush()
        deleted = store.apply_retention(now)
    assert deleted["events"] == 1 and deleted["alerts"] == 1 and deleted["actions"] == 1
    assert [row[0] for row in rows(db_path, "SELECT id FROM events")] == [fresh]
    assert [row[0] for row in rows(db_path, "SELECT event_id FROM alerts")] == [fresh]


def test_retention_by_size_deletes_oldest_unalerted_events_and_keeps_alerted(db_path):
    with Store(db_path, StoreConfig(batch_size=500)) as store:
        first = store.add_event(exec_event(1), matched=True)
        store.add_alert(alert(), first, [])
        ids = [store.add_event(exec_event(pid), matched=False) for pid in range(2, 4002)]
    config = StoreConfig(max_bytes=400_000, batch_size=500)
    with Store(db_path, config) as store:  # the same data, now over a smaller limit
        before_file = os.path.getsize(db_path)
        assert store.used_bytes() > config.max_bytes
        deleted = store.apply_retention()
        assert 3000 < deleted["events_for_size"] < 4000  # only as many as needed
        assert config.max_bytes * 0.7 < store.used_bytes() <= config.max_bytes * 0.9
        assert os.path.getsize(db_path) < before_file  # incremental vacuum gave the pages back
        assert os.path.getsize(db_path + "-wal") == 0  # checkpointed
    kept = [row[0] for row in rows(db_path, "SELECT id FROM events ORDER BY seq")]
    assert kept[0] == first  # the oldest event survives: an alert links to it
    assert kept[1:] == ids[-(len(kept) - 1) :]  # the rest are the newest ones


def test_size_stays_bounded_while_writing(db_path):
    config = StoreConfig(max_bytes=300_000, batch_size=200)
    with Store(db_path, config) as store:
        for pid in range(1, 5001):
            store.add_event(exec_event(pid), matched=False)
            if pid % 200 == 0:
                assert store.used_bytes() <= config.max_bytes
        newest = store.add_event(exec_event(9999), matched=False)
    assert rows(db_path, "SELECT id FROM events ORDER BY seq DESC LIMIT 1")[0][0] == newest
    assert os.path.getsize(db_path) <= config.max_bytes * 1.2


def test_size_retention_backs_off_when_only_alerted_events_are_left(db_path):
    config = StoreConfig(max_bytes=50_000, batch_size=50)
    with Store(db_path, config) as store:
        for pid in range(1, 301):
            store.add_alert(alert(), store.add_event(exec_event(pid), matched=True), [])
        store.flush()
        assert rows(db_path, "SELECT count(*) FROM events")[0][0] == 300  # nothing deletable
        assert store.used_bytes() > config.max_bytes
        assert store._size_floor > 0 and not store._over_size()  # not retried on every batch


def test_writer_runs_retention_off_the_hot_path(db_path):
    now = time.time_ns()
    writer = StoreWriter(db_path, StoreConfig(retention_days=1, flush_seconds=0.05), separate_process=False)
    try:
        writer.add_event(exec_event(time_ns=now - 3 * DAY_NS), matched=False)
        writer.flush()
        writer.apply_retention()
        deadline = time.monotonic() + 5
        while writer.status()["retention_runs"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert writer.status()["retention_runs"] >= 1
        assert rows(db_path, "SELECT count(*) FROM events")[0][0] == 0
    finally:
        writer.close()


def test_readonly_connection_reads_while_writing_and_refuses_writes(db_path):
    writer = StoreWriter(db_path, StoreConfig(batch_size=10, flush_seconds=0.05), separate_process=False)
    try:
        reader = open_readonly(db_path)
        seen = []
        for pid in range(1, 201):
            writer.add_event(exec_event(pid), matched=False)
            if pid % 50 == 0:
                writer.flush()
                seen.append(reader.execute("SELECT count(*) FROM events").fetchone()[0])
        assert seen == [50, 100, 150, 200]
        with pytest.raises(sqlite3.OperationalError, match="readonly|read-only"):
            reader.execute("DELETE FROM events")
    finally:
        writer.close()


def test_closed_store_is_readable_without_write_access(db_path):
    Store(db_path).close()
    assert not os.path.exists(db_path + "-shm")
    assert rows(db_path, "PRAGMA journal_mode")[0][0] == "delete"


def test_open_readonly_of_a_missing_file_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="no event store"):
        open_readonly(str(tmp_path / "none.db"))


def test_store_process_that_dies_is_replaced_and_only_its_batch_is_lost(db_path):
    writer = StoreWriter(db_path, StoreConfig(batch_size=100, flush_seconds=5), separate_process=True)
    try:
        first = [writer.add_event(exec_event(pid), matched=False) for pid in range(1, 101)]
        writer.flush()
        victim = writer.status()["store_process_pid"]
        os.kill(victim, 9)
        lost = [writer.add_event(exec_event(pid), matched=False) for pid in range(101, 201)]
        writer.flush()
        kept = [writer.add_event(exec_event(pid), matched=False) for pid in range(201, 301)]
        writer.flush()
        status = writer.status()
        assert status["store_process_restarts"] == 1 and status["store_process_pid"] != victim
        assert status["dropped"] == len(lost) and status["errors"] == 1
    finally:
        writer.close()
    stored = [row[0] for row in rows(db_path, "SELECT id FROM events ORDER BY seq")]
    assert stored == first + kept


def test_values_the_pipe_cannot_carry_are_encoded_before_sending(db_path):
    event = open_event()
    event.args = {"buf": memoryview(b"\xffdata")}  # not picklable
    with StoreWriter(db_path, StoreConfig(), separate_process=True) as writer:
        writer.add_event(event, matched=True)
    (row,) = rows(db_path, "SELECT extra FROM events")
    assert json.loads(row[0])["args"] == {"buf": "\\xffdata"}


def test_open_flag_columns_keep_their_values_across_the_v5_migration(db_path):
    events = [open_event(), exec_event(), connect_event()]
    events[0].args["flags"] = 0o2  # O_RDWR: read and write
    write_only = open_event("/tmp/out")
    write_only.args["flags"] = 0o1101  # O_WRONLY|O_CREAT|O_TRUNC
    events.append(write_only)
    query = "SELECT evt_type, evt_is_open_read, evt_is_open_write FROM events ORDER BY seq"
    with Store(db_path, migrations=MIGRATIONS[:4]) as store:
        for event in events:
            store.add_event(event, matched=True)
    before = [tuple(row) for row in rows(db_path, query)]
    assert before == [("openat", 1, 1), ("execve", 0, 0), ("connect", 0, 0), ("openat", 0, 1)]
    Store(db_path).close()
    assert [tuple(row) for row in rows(db_path, query)] == before


def test_alert_json_columns_are_encoded_in_the_store_process(db_path):
    fields = {"proc.args": ["-c", "id"], "fd.name": None, "fd.rport": 443}
    produced = alert(output_fields=fields, tags=["b", "a"])
    with StoreWriter(db_path, StoreConfig(), separate_process=True) as writer:
        writer.add_alert(produced, None, [{"pid": 1, "comm": "systemd"}])
        writer.add_alert(alert(output_fields={"buf": memoryview(b"x")}), None, [])  # not picklable
    first, second = rows(db_path, "SELECT tags, output_fields, ancestry FROM alerts ORDER BY seq")
    assert (json.loads(first[0]), json.loads(first[1]), json.loads(first[2])) == (
        ["a", "b"], fields, [{"pid": 1, "comm": "systemd"}])
    assert json.loads(second[1]) == {"buf": "x"}


@pytest.mark.parametrize("text, expected", [
    ("2026-11-23T11:42:21Z", 1795434141000000000),
    ("2026-11-23T11:42:21.5Z", 1795434141500000000),
    ("2026-11-23T11:42:21.000000007", 1795434141000000007),
    ("1970-01-01T00:00:00.000000005Z", 5),
])
def test_alert_times_in_rfc3339_are_read_to_the_nanosecond(text, expected):
    assert record.alert_row(alert(time=text), None, None)[1] == expected


def test_an_alert_time_given_as_a_number_is_the_stored_time(db_path):
    with Store(db_path) as store:
        store.add_alert(alert(), None, [], time_ns=1795434141123456789)
        store.add_alert(alert(id="second"), None, [], time_ns=7)
    assert [row[0] for row in rows(db_path, "SELECT time FROM alerts ORDER BY seq")] == [1795434141123456789, 7]


def test_an_impossible_alert_time_is_an_error():
    with pytest.raises(ValueError):
        record.alert_row(alert(time="2026-13-23T11:42:21Z"), None, None)


# What a decoder yields: valid text, or undecodable bytes kept as surrogates (surrogateescape).
untrusted_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40) | st.binary(max_size=40).map(
    lambda raw: raw.decode("utf-8", "surrogateescape")
)


def shown_as(text: str) -> str:
    """Valid text is stored as is; undecodable bytes as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@settings(max_examples=60, deadline=None)
@given(comm=untrusted_text, args=st.lists(untrusted_text, max_size=3), path=untrusted_text)
def test_any_string_from_the_monitored_system_is_stored_exactly_or_escaped(tmp_path_factory, comm, args, path):
    db_path = str(tmp_path_factory.mktemp("prop") / "events.db")
    proc = Process(9, 9, comm=comm, args=tuple(args))
    event = Event("openat", proc, 3, {"name": path}, Fd(3, "file", path))
    with Store(db_path) as store:
        store.add_event(event, matched=True)
    (row,) = rows(db_path, "SELECT proc_name, proc_args, fd_name, extra FROM events")
    assert row["proc_name"] == shown_as(comm)
    assert row["proc_args"] == shown_as(" ".join(args))
    assert row["fd_name"] == shown_as(path)
    assert json.loads(row["extra"])["args"]["name"] == path  # JSON keeps even the surrogates exactly


def test_alert_records_of_the_alert_module_are_stored_with_their_id_and_time(db_path):
    from sentinel.actions.alert import HostIdentity, alert_record

    when = 1_795_434_141_123_456_789
    produced = alert_record(
        rule="Shell in container",
        priority="CRITICAL",
        output="shell in container x",
        tags=["container", "shell"],
        output_fields={"proc.name": "sh"},
        time_ns=when,
        host=HostIdentity("h1", "m", "b"),
        ruleset_version="1",
    )
    with Store(db_path) as store:
        assert store.add_alert(produced, None, []) == produced["id"]
        store.add_alert(produced, None, [])  # delivered twice: stored once
    (row,) = rows(db_path, "SELECT * FROM alerts")
    assert (row["id"], row["time"], row["priority"], row["hostname"]) == (produced["id"], when, "critical", "h1")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"flush_seconds": 0.0}, "flush_seconds"),
        ({"retention_days": -1.0}, "retention_days"),
        ({"max_bytes": -5}, "max_bytes"),
    ],
)
def test_unusable_store_settings_are_config_errors(db_path, change, message):
    from sentinel.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        Store(db_path, StoreConfig(**change))
    assert not os.path.exists(db_path)  # refused before anything is created


def test_store_process_that_cannot_open_the_store_reports_why(tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    path = str(blocked / "events.db")
    with pytest.raises(StoreError, match="is not a directory") as error:
        StoreWriter(path, StoreConfig(), separate_process=True)
    assert error.value.location.path == path


def test_store_process_opening_in_the_background_keeps_the_rows_accepted_meanwhile(db_path):
    writer = StoreWriter(db_path, StoreConfig(batch_size=10, flush_seconds=5), separate_process=True, wait=False)
    try:
        accepted = [writer.add_event(exec_event(pid), matched=False) for pid in range(1, 26)]  # two full batches
        writer.wait_open()
        writer.flush()
        assert writer.status()["dropped"] == 0
    finally:
        writer.close()
    assert [row[0] for row in rows(db_path, "SELECT id FROM events ORDER BY seq")] == accepted


def test_store_process_that_cannot_open_in_the_background_says_why_when_waited_for(db_path):
    os.makedirs(os.path.dirname(db_path))
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version = %d" % (SCHEMA_VERSION + 1))
    writer = StoreWriter(db_path, StoreConfig(), separate_process=True, wait=False)
    for _ in range(2):  # the same answer every time: the writer thread may have asked first
        with pytest.raises(StoreError, match="newer than this sentinel"):
            writer.wait_open()
    writer.close()  # nothing to flush there; returns at once


def test_the_store_process_starts_without_the_agent_s_heavy_modules():
    """Every module it imports is resident for the agent's lifetime: no BPF front end, rule
    compiler, CLI or logging stack (structlog pulls in rich) before it needs one. (sqlite-utils
    brings click along.)"""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, sentinel.actions.store; print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert not {"bcc", "structlog", "rich", "sentinel.cli", "sentinel.rules.ruleset", "sentinel.rules.compiler"} & set(loaded)


def test_the_store_process_is_the_only_process_the_writer_starts(db_path):
    def children() -> set[int]:
        found = set()
        for task in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % task) as listing:
                found.update(int(pid) for pid in listing.read().split())
        return found

    before = children()
    with StoreWriter(db_path, StoreConfig(), separate_process=True) as writer:
        assert children() - before == {writer.status()["store_process_pid"]}
