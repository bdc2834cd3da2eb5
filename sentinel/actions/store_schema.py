"""The store's schema as an ordered list of migrations; `PRAGMA user_version` is the version.

Opening a database runs the migrations it has not seen, each in its own transaction; a
database written by a newer sentinel is refused rather than misread. Never edit a shipped
migration: append a new one.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

from sentinel.errors import SourceLocation, StoreError

_EVENTS_V1 = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    time INTEGER NOT NULL,          -- ns since the epoch, UTC
    matched INTEGER NOT NULL,       -- 1: a rule matched it; 0: stored by type (always_store)
    evt_type TEXT NOT NULL,
    evt_rawres INTEGER,
    evt_res TEXT,
    thread_tid INTEGER,
    proc_pid INTEGER,
    proc_start_ns INTEGER,          -- with proc_pid: the exec id
    proc_vpid INTEGER,
    proc_ppid INTEGER,
    proc_name TEXT,
    proc_exe TEXT,
    proc_exepath TEXT,
    proc_args TEXT,
    proc_cwd TEXT,
    proc_tty INTEGER,
    proc_pname TEXT,
    proc_pexepath TEXT,
    proc_pcmdline TEXT,
    user_uid INTEGER,
    user_name TEXT,
    user_loginuid INTEGER,
    group_gid INTEGER,
    container_id TEXT,
    fd_num INTEGER,
    fd_type TEXT,
    fd_typechar TEXT,
    fd_name TEXT,
    fd_l4proto TEXT,
    fd_lip TEXT,
    fd_lport INTEGER,
    fd_rip TEXT,
    fd_rport INTEGER,
    fd_is_server INTEGER,
    extra TEXT,                     -- JSON: syscall args, fd and exe details, env, caps
    proc_cmdline TEXT GENERATED ALWAYS AS (
        CASE WHEN proc_args IS NULL OR proc_args = '' THEN proc_name ELSE proc_name || ' ' || proc_args END
    ) VIRTUAL,
    fd_sip TEXT GENERATED ALWAYS AS (CASE WHEN fd_is_server THEN fd_lip ELSE fd_rip END) VIRTUAL,
    fd_sport INTEGER GENERATED ALWAYS AS (CASE WHEN fd_is_server THEN fd_lport ELSE fd_rport END) VIRTUAL,
    fd_cip TEXT GENERATED ALWAYS AS (CASE WHEN fd_is_server THEN fd_rip ELSE fd_lip END) VIRTUAL,
    fd_cport INTEGER GENERATED ALWAYS AS (CASE WHEN fd_is_server THEN fd_rport ELSE fd_lport END) VIRTUAL,
    ts TEXT GENERATED ALWAYS AS (strftime('%Y-%m-%dT%H:%M:%fZ', time / 1e9, 'unixepoch')) VIRTUAL
)
"""

_ALERTS_V1 = """
CREATE TABLE alerts (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    time INTEGER NOT NULL,
    rule TEXT NOT NULL,
    priority TEXT NOT NULL,         -- Falco's priority, lower case
    source TEXT NOT NULL,
    hostname TEXT,
    output TEXT,
    tags TEXT,                      -- JSON list
    output_fields TEXT,             -- JSON object
    event_id TEXT,                  -- events.id of the event that matched
    ancestry TEXT,                  -- JSON list of {pid, comm, exepath, cmdline}, nearest first
    ts TEXT GENERATED ALWAYS AS (strftime('%Y-%m-%dT%H:%M:%fZ', time / 1e9, 'unixepoch')) VIRTUAL
)
"""

_PROCESSES_V1 = """
CREATE TABLE processes (
    pid INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    ppid INTEGER,
    parent_start_ns INTEGER,
    comm TEXT,
    exepath TEXT,
    cmdline TEXT,
    uid INTEGER,
    user_name TEXT,
    container_id TEXT,
    seen INTEGER NOT NULL,          -- ns since the epoch of the last exec seen
    PRIMARY KEY (pid, start_ns)
) WITHOUT ROWID
"""


def _v1_events_alerts_processes(db: sqlite_utils.Database) -> None:
    db.execute(_EVENTS_V1)
    db.execute(_ALERTS_V1)
    db.execute(_PROCESSES_V1)
    events = db["events"]
    # The TUI pages by time and filters by type, name and process; retention scans by time.
    events.create_index(["time"], index_name="events_time")
    events.create_index(["evt_type", "time"], index_name="events_type_time")
    events.create_index(["proc_name", "time"], index_name="events_name_time")
    events.create_index(["proc_pid", "proc_start_ns"], index_name="events_exec")
    alerts = db["alerts"]
    alerts.create_index(["time"], index_name="alerts_time")
    alerts.create_index(["rule", "time"], index_name="alerts_rule_time")
    alerts.create_index(["priority", "time"], index_name="alerts_priority_time")
    # Retention keeps events an alert links to: looked up per deleted chunk.
    alerts.create_index(["event_id"], index_name="alerts_event")
    db["processes"].create_index(["seen"], index_name="processes_seen")


def _v2_actions_and_alert_state(db: sqlite_utils.Database) -> None:
    """Enforcement is recorded: an actions table, and per alert its outcome and ack state."""
    db.execute(
        """
        CREATE TABLE actions (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            time INTEGER NOT NULL,
            kind TEXT NOT NULL,        -- kill / deny / ack / reload / ...
            target TEXT,
            rule TEXT,
            mode TEXT,                 -- audit / enforce
            outcome TEXT,
            detail TEXT,
            alert_id TEXT,
            ts TEXT GENERATED ALWAYS AS (strftime('%Y-%m-%dT%H:%M:%fZ', time / 1e9, 'unixepoch')) VIRTUAL
        )
        """
    )
    db["actions"].create_index(["time"], index_name="actions_time")
    db["actions"].create_index(["rule", "time"], index_name="actions_rule_time")
    db.execute("ALTER TABLE alerts ADD COLUMN acknowledged INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE alerts ADD COLUMN enforcement TEXT")


def _v3_fields_of_falco_macros(db: sqlite_utils.Database) -> None:
    """Fields Falco's macros test (`evt.dir = <`, `evt.is_open_read = true`, fd.directory),
    as generated columns: computed when read, so they cost no space and no insert time.
    Same meaning as the rule engine's extractors (a test compares them event by event)."""
    for definition in (
        "evt_dir TEXT GENERATED ALWAYS AS ('<') VIRTUAL",
        "evt_is_open_read INTEGER GENERATED ALWAYS AS ("
        "CASE WHEN evt_type IN ('open', 'openat', 'openat2', 'creat', 'open_by_handle_at') "
        "THEN (coalesce(json_extract(extra, '$.args.flags'), 0) & 3) != 1 END) VIRTUAL",
        "evt_is_open_write INTEGER GENERATED ALWAYS AS ("
        "CASE WHEN evt_type IN ('open', 'openat', 'openat2', 'creat', 'open_by_handle_at') "
        "THEN (coalesce(json_extract(extra, '$.args.flags'), 0) & 3) != 0 END) VIRTUAL",
        # rtrim(name, <name without '/'>) cuts the last path component, keeping its '/'.
        "fd_directory TEXT GENERATED ALWAYS AS ("
        "CASE WHEN fd_name IS NULL OR fd_name = '' THEN NULL WHEN fd_type = 'directory' THEN fd_name "
        "WHEN fd_type = 'file' THEN coalesce(nullif(rtrim(rtrim(fd_name, replace(fd_name, '/', '')), '/'), ''), '/') "
        "END) VIRTUAL",
        "fd_filename TEXT GENERATED ALWAYS AS ("
        "CASE WHEN fd_type IN ('file', 'directory') AND fd_name != '' "
        "THEN substr(fd_name, length(rtrim(fd_name, replace(fd_name, '/', ''))) + 1) END) VIRTUAL",
    ):
        db.execute("ALTER TABLE events ADD COLUMN " + definition)


def _v4_open_flags_false_outside_opens(db: sqlite_utils.Database) -> None:
    """evt.is_open_read/write are false (not absent) for events other than opens, and creat
    (which has no flags argument) is not an open with flags: the rule engine's meaning."""
    for name, excluded_mode in (("evt_is_open_read", 1), ("evt_is_open_write", 0)):
        db.execute("ALTER TABLE events DROP COLUMN " + name)
        db.execute(
            "ALTER TABLE events ADD COLUMN %s INTEGER GENERATED ALWAYS AS ("
            "evt_type IN ('open', 'openat', 'openat2', 'open_by_handle_at') "
            "AND (coalesce(json_extract(extra, '$.args.flags'), 0) & 3) != %d) VIRTUAL" % (name, excluded_mode)
        )


def _v5_open_flags_read_for_opens_only(db: sqlite_utils.Database) -> None:
    """Same values as v4, cheaper to insert: SQLite computes VIRTUAL columns on every INSERT
    too, and v4's `IN (...)` built a temporary b-tree per row and per column while the AND
    parsed the extras' JSON even for events that are not opens. As a CASE over equalities
    the JSON is read for opens only (measured with callgrind: the store process's
    instructions per event on bench_agent_cpu's mix went from ~90k to ~62k)."""
    opens = " OR ".join("evt_type = '%s'" % name for name in ("openat", "open", "openat2", "open_by_handle_at"))
    for name, excluded_mode in (("evt_is_open_read", 1), ("evt_is_open_write", 0)):
        db.execute("ALTER TABLE events DROP COLUMN " + name)
        db.execute(
            "ALTER TABLE events ADD COLUMN %s INTEGER GENERATED ALWAYS AS (CASE WHEN %s "
            "THEN (coalesce(json_extract(extra, '$.args.flags'), 0) & 3) != %d ELSE 0 END) VIRTUAL"
            % (name, opens, excluded_mode)
        )


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _v1_events_alerts_processes,
    _v2_actions_and_alert_state,
    _v3_fields_of_falco_macros,
    _v4_open_flags_false_outside_opens,
    _v5_open_flags_read_for_opens_only,
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite_utils.Database, path: str, migrations=MIGRATIONS) -> int:
    """Bring the database up to len(migrations); returns the version it had before.

    The connection must be in autocommit mode (isolation_level=None): each migration runs in
    an explicit transaction, so a failed one leaves the previous version intact.
    """
    found = schema_version(db)
    target = len(migrations)
    if found > target:
        raise StoreError(
            "database schema version %d is newer than this sentinel understands (%d); "
            "upgrade sentinel or point store.path at another file" % (found, target),
            SourceLocation(path),
        )
    for version in range(found, target):
        db.execute("BEGIN IMMEDIATE")
        try:
            migrations[version](db)
            db.execute("PRAGMA user_version = %d" % (version + 1))
        except Exception as exc:
            db.execute("ROLLBACK")
            raise StoreError(
                "migrating the schema to version %d failed (the file stays at version %d): %s" % (version + 1, version, exc),
                SourceLocation(path),
            ) from exc
        db.execute("COMMIT")
    return found
