"""The SQLite event store: what the agent keeps, how it is written, and how long it is kept.

Writers: `Store` writes synchronously (tests, tools, the store process); `StoreWriter` is
what the agent uses: the caller's thread only copies each record into a row, a writer thread
writes batches (by size or age), applies retention between batches and keeps counters for
`sentinel status`. With `separate_process=True` the batches are pickled to a child process
that owns the database, so SQLite's work runs on another core.

The hot path uses the sqlite3 module's `executemany` inside one transaction per batch:
measured with benchmarks/bench_store.py it inserts the same rows 2.3x to 4.5x as fast as
sqlite-utils' `insert_all` (which needs a dict per row and re-derives its SQL per chunk).
sqlite-utils serves the rest (schema, migrations, queries).

Readers (`open_readonly`) use a `mode=ro` URI: WAL mode lets them read while the agent
writes. With `store.group` set the directory, database, -wal and -shm files are readable by
that group, so analysts need no root.
"""

from __future__ import annotations

import gc
import grp
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from sentinel.actions import record
from sentinel.actions.store_schema import MIGRATIONS, SCHEMA_VERSION, migrate
from sentinel.config import Config, StoreConfig
from sentinel.errors import ConfigError, SourceLocation, StoreError
from sentinel.events.model import Event, Process


def _log() -> Any:
    """The module's logger, made on first use: the store process logs only around retention
    and so starts without structlog and what it pulls in (8 MB of its RSS)."""
    from sentinel.log import get_logger

    return get_logger("sentinel.store")


# The sqlite3 module binds None as NULL only after a failed adapter search, which raises and
# formats an AttributeError (__conform__) for every None parameter; an event row has about
# six. With an adapter registered for None's type the search ends at a dict lookup and a C
# call returning None: the same NULL, 7% fewer instructions per event in the store process.
sqlite3.register_adapter(type(None), {}.get)

_NS_PER_DAY = 86_400 * 1_000_000_000
# Rows removed per retention statement: short transactions, so the writer is never held up long.
RETENTION_CHUNK = 5_000
# Size retention stops at this fraction of max_bytes, so it does not run again at once.
_SIZE_LOW_WATER = 0.9
_VACUUM_STEP_PAGES = 2048
_ERROR_LOG_SECONDS = 10.0


def _placeholders(columns: Sequence[str]) -> str:
    return ", ".join("?" * len(columns))


_INSERT_EVENTS = "INSERT INTO events (%s) VALUES (%s)" % (", ".join(record.EVENT_COLUMNS), _placeholders(record.EVENT_COLUMNS))
_INSERT_ALERTS = "INSERT OR IGNORE INTO alerts (%s) VALUES (%s)" % (
    ", ".join(record.ALERT_COLUMNS),
    _placeholders(record.ALERT_COLUMNS),
)
_INSERT_ACTIONS = "INSERT OR IGNORE INTO actions (%s) VALUES (%s)" % (
    ", ".join(record.ACTION_COLUMNS),
    _placeholders(record.ACTION_COLUMNS),
)
_UPSERT_PROCESSES = "INSERT INTO processes (%s) VALUES (%s) ON CONFLICT (pid, start_ns) DO UPDATE SET %s" % (
    ", ".join(record.PROCESS_COLUMNS),
    _placeholders(record.PROCESS_COLUMNS),
    ", ".join("%s = excluded.%s" % (c, c) for c in record.PROCESS_COLUMNS if c not in ("pid", "start_ns")),
)


class StoragePolicy:
    """Which events are kept: every one a rule matched, plus the types in `always_store`."""

    __slots__ = ("always",)

    def __init__(self, always_store: Iterable[str] = StoreConfig.always_store) -> None:
        self.always = frozenset(always_store)

    @classmethod
    def from_config(cls, config: StoreConfig) -> StoragePolicy:
        return cls(config.always_store)

    def wants(self, event_type: str, matched: bool) -> bool:
        return matched or event_type in self.always


@dataclass
class Batch:
    """Rows waiting to be written together; picklable, so it can go to the store process."""

    events: list = field(default_factory=list)
    alerts: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    processes: dict = field(default_factory=dict)  # exec id -> row: repeated upserts collapse

    def __len__(self) -> int:
        return len(self.events) + len(self.alerts) + len(self.actions) + len(self.processes)


class RowBuffer:
    """Turns records into rows and holds them until the next flush; shared by both writers."""

    def __init__(self, policy: StoragePolicy) -> None:
        self.policy = policy
        self.pending = Batch()
        self.oldest = 0.0  # time.monotonic() of the first row in `pending`; 0.0 while it is empty

    def add_event(self, event: Event, matched: bool) -> str | None:
        if not matched and event.type not in self.policy.always:
            return None
        event_id = record.new_id()
        self._note_first()
        self.pending.events.append(record.event_row(event, event_id, matched))
        return event_id

    def add_alert(self, alert: dict[str, Any], event_id: str | None, ancestry: Sequence[Any] | None,
                  time_ns: int | None = None) -> str:
        row = record.alert_row(alert, event_id, ancestry, time_ns)
        self._note_first()
        self.pending.alerts.append(row)
        return row[0]

    def add_action(self, kind: str, target: str, **details: Any) -> str:
        row = record.action_row(kind, target, **details)
        self._note_first()
        self.pending.actions.append(row)
        return row[0]

    def upsert_process(self, proc: Process) -> None:
        self._note_first()
        self.pending.processes[(proc.pid, proc.start_ns)] = record.process_row(proc)

    def _note_first(self) -> None:
        if not self.oldest:
            self.oldest = time.monotonic()

    def take(self) -> Batch:
        batch, self.pending = self.pending, Batch()
        self.oldest = 0.0
        return batch

    def requeue(self, batch: Batch) -> None:
        """Put a batch's alerts, actions and processes back in front of what is pending."""
        if batch.alerts or batch.actions or batch.processes:
            self._note_first()
        self.pending.alerts[:0] = batch.alerts
        self.pending.actions[:0] = batch.actions
        self.pending.processes = {**batch.processes, **self.pending.processes}


def _utf8_safe(value: Any) -> Any:
    """Strings that cannot be UTF-8 (undecodable bytes smuggled in as surrogates) as \\xNN text."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def _utf8_safe_rows(rows: Iterable[Sequence[Any]]) -> list[tuple]:
    return [tuple(_utf8_safe(value) for value in row) for row in rows]


def _group_id(group: str, path: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise StoreError("store.group %r: no such group" % group, SourceLocation(path)) from None


def _share_with_group(path: str, gid: int, mode: int) -> None:
    os.chown(path, -1, gid)
    os.chmod(path, mode)


def _prepare_location(path: str, group: str) -> int | None:
    """Create the directory and an empty database file with the right owner and modes.

    Without a group the database is private (0600): it holds command lines and paths. With
    one, the group may read it (0640) and traverse a directory sentinel created (0750); a
    directory someone else owns, or a sticky one like /tmp, is left as it is.
    """
    gid = _group_id(group, path) if group else None
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise StoreError("cannot create the event store: %s is not a directory" % directory, SourceLocation(path))
    created = not os.path.isdir(directory)
    try:
        os.makedirs(directory, mode=0o750 if gid is not None else 0o700, exist_ok=True)
        if gid is not None:
            info = os.stat(directory)
            if created or (info.st_uid == os.geteuid() and not info.st_mode & stat.S_ISVTX):
                os.chown(directory, -1, gid)
                os.chmod(directory, stat.S_IMODE(info.st_mode) | 0o050)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640 if gid is not None else 0o600)
        try:
            if gid is not None:
                os.fchown(fd, -1, gid)
                os.fchmod(fd, 0o640)
        finally:
            os.close(fd)
    except OSError as exc:
        where = exc.filename or path
        raise StoreError("cannot create or open the event store: %s: %s" % (where, exc.strerror or exc), SourceLocation(path)) from None
    return gid


def check_config(config: StoreConfig) -> None:
    """Values the types allow but the store cannot work with."""
    problems = []
    if config.batch_size < 1:
        problems.append("store.batch_size must be at least 1")
    if config.flush_seconds <= 0:
        problems.append("store.flush_seconds must be more than 0")
    if config.retention_days <= 0:
        problems.append("store.retention_days must be more than 0")
    if config.max_bytes < 0:
        problems.append("store.max_bytes must be 0 (no limit) or more")
    if problems:
        raise ConfigError("; ".join(problems))


class Store:
    """One read-write connection to the store; single writer. Not thread-safe: the agent
    uses it through StoreWriter (one thread) or the store process."""

    def __init__(
        self,
        path: str,
        config: StoreConfig = StoreConfig(),
        *,
        policy: StoragePolicy | None = None,
        migrations=MIGRATIONS,
    ) -> None:
        self.path = path
        self.config = config
        check_config(config)
        self._gid = _prepare_location(path, config.group)
        try:
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        except sqlite3.Error as exc:
            raise StoreError("cannot open the event store: %s" % exc, SourceLocation(path)) from None
        try:
            # Takes effect only on a new, empty file (before WAL writes its header); retention
            # relies on it to give space back without a full VACUUM.
            self.conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self.conn.execute("PRAGMA journal_mode = WAL").fetchone()
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.db = sqlite_utils.Database(self.conn)
            migrate(self.db, path, migrations)
        except StoreError:
            self.conn.close()
            raise
        except sqlite3.Error as exc:
            self.conn.close()
            raise StoreError("cannot open the event store: %s" % exc, SourceLocation(path)) from None
        self._share_side_files()
        self.buffer = RowBuffer(policy or StoragePolicy.from_config(config))
        self._size_floor = 0
        self.closed = False

    @classmethod
    def from_config(cls, config: Config) -> Store:
        return cls(config.db_path, config.store)

    def _share_side_files(self) -> None:
        """SQLite copies the database's mode to -wal/-shm; make sure of it (a stale one may differ)."""
        if self._gid is None:
            return
        for suffix in ("-wal", "-shm"):
            side = self.path + suffix
            if os.path.exists(side):
                _share_with_group(side, self._gid, 0o640)

    # Writer API (synchronous): rows collect in memory and go out by batch_size or flush().

    def add_event(self, event: Event, matched: bool) -> str | None:
        event_id = self.buffer.add_event(event, matched)
        if event_id is not None and len(self.buffer.pending.events) >= self.config.batch_size:
            self.flush()
        return event_id

    def add_alert(self, alert: dict[str, Any], event_id: str | None = None, ancestry: Sequence[Any] | None = None,
                  time_ns: int | None = None) -> str:
        """time_ns: the alert's time when the caller has it as a number (else read from the record)."""
        return self.buffer.add_alert(alert, event_id, ancestry, time_ns)

    def add_action(self, kind: str, target: str, **details: Any) -> str:
        """Record an enforcement or operator action; details: rule, mode, outcome, detail, alert_id."""
        return self.buffer.add_action(kind, target, **details)

    def upsert_process(self, proc: Process) -> None:
        self.buffer.upsert_process(proc)

    def flush(self) -> int:
        return self.write(self.buffer.take())

    def write(self, batch: Batch) -> int:
        """Write one batch in one transaction, then keep the size under max_bytes; returns
        the number of rows written."""
        if not batch:
            return 0
        written = self._write_batch(batch)
        if self._over_size():
            self._release_space({"events_for_size": self._delete_for_size()})
        return written

    def _write_batch(self, batch: Batch) -> int:
        finished = Batch(record.finish_event_rows(batch.events), record.finish_alert_rows(batch.alerts),
                         batch.actions, batch.processes)
        try:
            self._write_rows(finished)
        except UnicodeEncodeError:
            # Rare: a string that is not valid UTF-8. Only then pay for checking every value.
            self._write_rows(
                Batch(
                    events=_utf8_safe_rows(finished.events),
                    alerts=_utf8_safe_rows(finished.alerts),
                    actions=_utf8_safe_rows(batch.actions),
                    processes={key: tuple(map(_utf8_safe, row)) for key, row in batch.processes.items()},
                ),
            )
        return len(batch)

    def _write_rows(self, batch: Batch) -> None:
        """One transaction; the rows' JSON columns are already encoded."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            if batch.events:
                conn.executemany(_INSERT_EVENTS, batch.events)
            if batch.processes:
                conn.executemany(_UPSERT_PROCESSES, batch.processes.values())
            if batch.alerts:
                conn.executemany(_INSERT_ALERTS, batch.alerts)
            if batch.actions:
                conn.executemany(_INSERT_ACTIONS, batch.actions)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def acknowledge(self, alert_ids: Sequence[str], by: str = "") -> int:
        """Mark alerts as seen by an analyst; recorded as an `ack` action."""
        with_ids = list(alert_ids)
        self.conn.execute("BEGIN")
        changed = 0
        for alert_id in with_ids:
            changed += self.conn.execute(
                "UPDATE alerts SET acknowledged = 1 WHERE id = ? AND acknowledged = 0", (alert_id,)
            ).rowcount
            self.conn.execute(
                "INSERT INTO actions (%s) VALUES (%s)" % (", ".join(record.ACTION_COLUMNS), _placeholders(record.ACTION_COLUMNS)),
                record.action_row("ack", alert_id, mode="audit", outcome="acknowledged", detail=by or None, alert_id=alert_id),
            )
        self.conn.execute("COMMIT")
        return changed

    # Retention: run off the hot path (StoreWriter calls it between batches).

    def used_bytes(self) -> int:
        page_size, page_count, free = (
            self.conn.execute("PRAGMA %s" % name).fetchone()[0] for name in ("page_size", "page_count", "freelist_count")
        )
        return (page_count - free) * page_size

    def _delete_in_chunks(self, select_sql: str, params: tuple, table: str) -> int:
        total = 0
        while True:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                deleted = self.conn.execute(
                    "DELETE FROM %s WHERE seq IN (%s LIMIT %d)" % (table, select_sql, RETENTION_CHUNK), params
                ).rowcount
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
            total += deleted
            if deleted < RETENTION_CHUNK:
                return total

    def apply_retention(self, now_ns: int | None = None) -> dict[str, int]:
        """Delete by age (everything older than retention_days), then by size; give the space back."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        cutoff = now_ns - int(self.config.retention_days * _NS_PER_DAY)
        deleted = {
            table: self._delete_in_chunks("SELECT seq FROM %s WHERE time < ? ORDER BY time" % table, (cutoff,), table)
            for table in ("events", "alerts", "actions")
        }
        with self.conn:
            deleted["processes"] = self.conn.execute("DELETE FROM processes WHERE seen < ?", (cutoff,)).rowcount
        deleted["events_for_size"] = self._delete_for_size()
        self._release_space(deleted)
        return deleted

    def _over_size(self) -> bool:
        """Cheap (three pragmas): checked after every batch, so a busy store never overshoots."""
        if not self.config.max_bytes:
            return False
        used = self.used_bytes()
        # When only alert-linked events are left, wait for 10% growth before trying again.
        return used > self.config.max_bytes and used > self._size_floor * 1.1

    def _delete_for_size(self) -> int:
        """Delete the oldest events no alert links to until the data is under 90% of max_bytes."""
        if not self._over_size():
            return 0
        low_water = self.config.max_bytes * _SIZE_LOW_WATER
        # The newest batch_size events are spared: alerts on them may still be on the way.
        newest_kept = self.conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        unalerted = (
            "SELECT seq FROM events WHERE seq <= %d AND NOT EXISTS "
            "(SELECT 1 FROM alerts WHERE alerts.event_id = events.id) ORDER BY seq"
            % (newest_kept - self.config.batch_size)
        )
        stored = self.conn.execute("SELECT count(*) FROM events").fetchone()[0]
        bytes_per_event = max(self.used_bytes() // max(stored, 1), 1)
        total = 0
        while (used := self.used_bytes()) > low_water:
            # Estimate how many rows free enough space, so a small store is not emptied.
            chunk = min(RETENTION_CHUNK, (used - int(low_water)) // bytes_per_event + 1)
            self.conn.execute("BEGIN IMMEDIATE")
            count = self.conn.execute("DELETE FROM events WHERE seq IN (%s LIMIT %d)" % (unalerted, chunk)).rowcount
            self.conn.execute("COMMIT")
            total += count
            if count == 0:
                self._size_floor = used
                _log().warning("store.retention.alerts_exceed_max_bytes", **{"store.path": self.path, "store.bytes": used})
                break
        return total

    def _release_space(self, deleted: dict[str, int]) -> None:
        if not any(deleted.values()):
            return
        # Give pages back a few MB at a time: each step is a short write transaction.
        while self.conn.execute("PRAGMA freelist_count").fetchone()[0]:
            self.conn.execute("PRAGMA incremental_vacuum(%d)" % _VACUUM_STEP_PAGES).fetchall()
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        _log().info("store.retention", **{"store.path": self.path, **{"deleted." + k: v for k, v in deleted.items()}})

    def close(self) -> None:
        """Write what is pending, then leave a file readers can open without write access."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            # Out of WAL mode, read-only users can open the file while the agent is stopped
            # (a WAL database needs its -shm, which they cannot create). Fails harmlessly if a
            # reader is inside the database right now.
            self.conn.execute("PRAGMA journal_mode = DELETE").fetchall()
        except sqlite3.OperationalError:
            pass
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_readonly(path: str) -> sqlite_utils.Database:
    """A read-only connection for queries, the TUI and the forwarder; never blocks the writer."""
    try:
        os.stat(path)
    except FileNotFoundError:
        raise StoreError("no event store here (is the agent running with this store.path?)", SourceLocation(path)) from None
    except PermissionError:
        raise StoreError(
            "permission denied (readers need to be in the group named by store.group)", SourceLocation(path)
        ) from None
    uri = "file:%s?mode=ro" % urllib.parse.quote(os.path.abspath(path))
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA query_only = 1")
        found = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise StoreError("cannot open the event store: %s" % exc, SourceLocation(path)) from None
    if found > SCHEMA_VERSION:
        conn.close()
        raise StoreError(
            "database schema version %d is newer than this sentinel understands (%d)" % (found, SCHEMA_VERSION),
            SourceLocation(path),
        )
    return sqlite_utils.Database(conn)


# --- the agent's writer ----------------------------------------------------------------------


@dataclass
class WriterStats:
    """Counters for `sentinel status` (rows: events, alerts, actions and processes)."""

    queued: int = 0  # accepted into memory
    written: int = 0  # committed to the database
    dropped: int = 0  # lost: events shed while the queue was full, or rows of a failed write
    batches: int = 0
    errors: int = 0
    last_flush_seconds: float = 0.0  # time to write the last batch
    retention_runs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# The store process is a plain `python -c` (not multiprocessing's spawn, which re-imports the
# agent's main module, the CLI, and starts a resource-tracker process of its own: 14 MB RSS).
_STORE_PROCESS_ENTRY = "from sentinel.actions.store import serve_store_process; serve_store_process()"
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def serve_store_process() -> None:
    """Entry point of the store process: argv[1] is its end of the socket pair to the agent,
    whose first message is (path, StoreConfig)."""
    conn = multiprocessing.connection.Connection(int(sys.argv[1]))
    path, config = conn.recv()
    _store_process_main(path, config, conn)


def _store_process_main(path: str, config: StoreConfig, conn: multiprocessing.connection.Connection) -> None:
    """The store process: opens the database, writes each batch it receives, acks with a result."""
    # A stop signal for the whole group (systemd's default KillMode, `timeout`, Ctrl-C) must
    # not cut the store off before the agent has handed over its last batch: only the
    # agent's "close" (or its death, seen as EOF) ends this process.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        store = Store(path, config)
    except StoreError as exc:
        conn.send(("error", str(exc)))
        return
    conn.send(("ready", None))
    gc.freeze()  # the modules and the open database: never rescanned by a collection
    while True:
        # A batch is thousands of acyclic rows that refcounting frees as soon as it is
        # written; with the collector on, unpickling them ran collections over them for
        # nothing (about 1% of this process's instructions per event, callgrind).
        gc.disable()
        try:
            if not _serve_one(store, conn):
                return
        finally:
            gc.enable()


def _serve_one(store: Store, conn: multiprocessing.connection.Connection) -> bool:
    """Answer one request of the agent; False once the store is closed."""
    try:
        message, payload = conn.recv()
    except EOFError:  # the agent is gone without saying goodbye: every batch is committed
        store.close()
        return False
    if message == "close":
        store.close()
        conn.send(("closed", None))
        return False
    try:
        if message == "write":
            conn.send(("ok", store.write(payload)))
        elif message == "retention":
            conn.send(("ok", store.apply_retention()))
        elif message == "ack":
            conn.send(("ok", store.acknowledge(*payload)))
    except Exception as exc:  # reported to the agent, which counts and logs it
        conn.send(("error", "%s: %s" % (type(exc).__name__, exc)))
    return True


class _ProcessSink:
    """Sends batches to the store process and waits for each result (one batch in flight).

    If the process dies (the OOM killer, a crash), the request in flight fails and a new
    process is started, so the agent loses one batch, not its store.

    The process's start (a fresh interpreter, its imports, opening and migrating the
    database: a few hundred ms) can overlap the caller's own start: with `wait=False` the
    first request, or wait_open(), collects its answer.
    """

    def __init__(self, path: str, config: StoreConfig, *, wait: bool = True) -> None:
        self.path = path
        self.config = config
        self.restarts = 0
        # The common failures, found here without the cost of a process start.
        check_config(config)
        _prepare_location(path, config.group)
        self._spawn()
        if wait:
            self.wait_open()

    def _spawn(self) -> None:
        self._conn, child_end = multiprocessing.Pipe()
        # The same sentinel package as this process, wherever the interpreter would look first.
        python_path = os.pathsep.join(filter(None, (_PACKAGE_ROOT, os.environ.get("PYTHONPATH"))))
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _STORE_PROCESS_ENTRY, str(child_end.fileno())],
                pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONPATH=python_path),
            )
        except OSError as exc:
            self._conn.close()
            raise StoreError("cannot start the store process: %s" % exc, SourceLocation(self.path)) from None
        finally:
            child_end.close()
        try:
            self._conn.send((self.path, self.config))
        except OSError:
            pass  # it died at once: wait_open() reports it
        self._opened = False
        self._open_error: str | None = None

    def wait_open(self) -> None:
        """Block until the store process has opened the database; StoreError if it could not
        (every later call raises the same error)."""
        if self._opened:
            return
        if self._open_error is None:
            try:
                message, payload = self._conn.recv()
            except EOFError:
                message, payload = "error", "the store process exited while opening the store"
            if message != "error":
                self._opened = True
                return
            self.process.wait()
            self._open_error = payload
        raise StoreError(self._open_error)

    def _restart(self) -> None:
        self._conn.close()
        self._reap(1)
        self.restarts += 1
        self._spawn()
        self.wait_open()

    def _call(self, message: str, payload: Any = None) -> Any:
        self.wait_open()
        try:
            self._conn.send((message, payload))
            reply, result = self._conn.recv()
        except (EOFError, OSError) as exc:
            exit_code = self.process.poll()
            self._restart()
            raise StoreError(
                "the store process died (%s, exit code %s); started a new one" % (type(exc).__name__, exit_code),
                SourceLocation(self.path),
            ) from None
        if reply == "error":
            raise StoreError(result)
        return result

    def write(self, batch: Batch) -> int:
        # The extras and the alerts' JSON columns are encoded in the child: it has the spare core.
        try:
            return self._call("write", batch)
        except (pickle.PicklingError, TypeError, AttributeError):
            # A value the pipe cannot carry (a memoryview in args, say): JSON-encode here.
            # Pickling fails before anything is sent, so the pipe is still in step.
            batch.events = record.finish_event_rows(batch.events)
            batch.alerts = record.finish_alert_rows(batch.alerts)
            return self._call("write", batch)

    def apply_retention(self) -> dict[str, int]:
        return self._call("retention")

    def acknowledge(self, alert_ids: Sequence[str], by: str = "") -> int:
        return self._call("ack", (list(alert_ids), by))

    def close(self) -> None:
        try:
            self._call("close")
        except StoreError:
            pass  # it died: there is nothing left to flush there
        self._conn.close()
        self._reap(10)

    def _reap(self, timeout: float) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class StoreWriter:
    """The agent's store: cheap calls on the hot path, writes in a background thread.

    add_event() copies the event into a row under a lock and returns its id (alerts link to
    it); when batch_size events wait, or the oldest has waited flush_seconds, the thread
    writes them in one transaction. At most `max_batches` batches wait for the database;
    past that the events of new batches are dropped and counted (their alerts and actions
    are kept for the next batch), so a stuck disk never grows memory without bound or
    stalls detection. close() writes everything accepted before it.

    With `wait=False` a store process opens the database while the caller goes on (rows
    are accepted meanwhile); wait_open() then says whether it could.
    """

    def __init__(
        self,
        path: str,
        config: StoreConfig = StoreConfig(),
        *,
        separate_process: bool | None = None,
        max_batches: int = 32,
        retention_seconds: float = 300.0,
        wait: bool = True,
    ) -> None:
        self.path = path
        self.config = config
        self.stats = WriterStats()
        if separate_process is None:
            separate_process = config.separate_process
        self._sink: Store | _ProcessSink = _ProcessSink(path, config, wait=wait) if separate_process else Store(path, config)
        self._buffer = RowBuffer(StoragePolicy.from_config(config))
        self._lock = threading.Lock()
        self._batches: queue.Queue[Batch | None] = queue.Queue(max_batches)
        self._retention_seconds = retention_seconds
        self._last_retention = time.monotonic()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._closing = False
        self._last_error_logged = -_ERROR_LOG_SECONDS
        self._errors_unlogged = 0
        self._sink_lock = threading.Lock()  # the writer thread and acknowledge() share the sink
        self._thread = threading.Thread(target=self._run, name="sentinel-store-writer", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: Config, **options: Any) -> StoreWriter:
        return cls(config.db_path, config.store, **options)

    def wait_open(self) -> None:
        """Block until the database is open; if it cannot be, stop the writer and raise StoreError."""
        if not isinstance(self._sink, _ProcessSink):
            return
        try:
            with self._sink_lock:  # the writer thread may be waiting for the same answer
                self._sink.wait_open()
        except StoreError:
            self._closing = True
            self._batches.put(None)
            self._thread.join()
            self._sink.close()  # the pipe and the exited process
            raise

    # Hot path.

    def add_event(self, event: Event, matched: bool) -> str | None:
        if not matched and event.type not in self._buffer.policy.always:
            return None
        with self._lock:
            event_id = self._buffer.add_event(event, matched)
            full = len(self._buffer.pending.events) >= self.config.batch_size
            self.stats.queued += 1
        if full:
            self._hand_off()
        return event_id

    def add_alert(self, alert: dict[str, Any], event_id: str | None = None, ancestry: Sequence[Any] | None = None,
                  time_ns: int | None = None) -> str:
        """time_ns: the alert's time when the caller has it as a number (else read from the record)."""
        with self._lock:
            alert_id = self._buffer.add_alert(alert, event_id, ancestry, time_ns)
            self.stats.queued += 1
        return alert_id

    def add_action(self, kind: str, target: str, **details: Any) -> str:
        with self._lock:
            action_id = self._buffer.add_action(kind, target, **details)
            self.stats.queued += 1
        return action_id

    def upsert_process(self, proc: Process) -> None:
        with self._lock:
            self._buffer.upsert_process(proc)
            self.stats.queued += 1

    # Hand-off and the writer thread.

    def _hand_off(self) -> None:
        with self._lock:
            batch = self._buffer.take()
        if not batch:
            return
        with self._idle:
            self._in_flight += 1
        try:
            self._batches.put_nowait(batch)
        except queue.Full:
            # Shed the events; alerts, actions and processes are few and matter more: they
            # wait for the next batch (an alert may then link to an event that was shed).
            with self._lock:
                self.stats.dropped += len(batch.events)
                self._buffer.requeue(batch)
            self._batch_done()
            self._log_failure("store.events_dropped", None, len(batch.events))

    def _batch_done(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def _run(self) -> None:
        timeout = max(self.config.flush_seconds / 2, 0.01)
        while True:
            try:
                batch = self._batches.get(timeout=timeout)
            except queue.Empty:
                batch = None
                if self._buffer.pending and time.monotonic() - self._buffer.oldest >= self.config.flush_seconds:
                    self._hand_off()
                    continue
                self._maybe_apply_retention()
                continue
            if batch is None:
                return
            started = time.perf_counter()
            try:
                with self._sink_lock:
                    written = self._sink.write(batch)
            except Exception as exc:
                with self._lock:
                    self.stats.errors += 1
                    self.stats.dropped += len(batch)
                self._log_failure("store.write_failed", exc, len(batch))
            else:
                self.stats.written += written
                self.stats.batches += 1
                self.stats.last_flush_seconds = time.perf_counter() - started
            finally:
                self._batch_done()
            self._maybe_apply_retention()  # also under sustained load, when the queue never empties

    def _maybe_apply_retention(self) -> None:
        if time.monotonic() - self._last_retention < self._retention_seconds:
            return
        self._last_retention = time.monotonic()
        try:
            with self._sink_lock:
                self._sink.apply_retention()
            self.stats.retention_runs += 1
        except Exception as exc:
            with self._lock:
                self.stats.errors += 1
            self._log_failure("store.retention_failed", exc, 0)

    def _log_failure(self, event: str, exc: Exception | None, rows: int) -> None:
        """At most one line per _ERROR_LOG_SECONDS: a full disk fails every batch."""
        now = time.monotonic()
        if now - self._last_error_logged < _ERROR_LOG_SECONDS:
            self._errors_unlogged += 1
            return
        _log().error(
            event,
            **{
                "store.path": self.path,
                "error": "queue full" if exc is None else str(exc),
                "store.rows": rows,
                "store.errors_not_logged": self._errors_unlogged,
            },
        )
        self._last_error_logged = now
        self._errors_unlogged = 0

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything accepted so far; True when it is all committed (or dropped)."""
        self._hand_off_blocking()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def _hand_off_blocking(self) -> None:
        """Like _hand_off, but waits for room in the queue: used by flush and close, not the hot path."""
        with self._lock:
            batch = self._buffer.take()
        if batch:
            with self._idle:
                self._in_flight += 1
            self._batches.put(batch)

    def acknowledge(self, alert_ids: Sequence[str], by: str = "") -> int:
        """Mark alerts as seen (an operator's request through the control socket): written
        after everything accepted so far, so an alert raised a moment ago can be acknowledged."""
        self.flush()
        with self._sink_lock:
            return self._sink.acknowledge(alert_ids, by)

    def apply_retention(self) -> None:
        """Ask for retention at the writer's next idle moment."""
        self._last_retention = 0.0

    def close(self) -> None:
        """Flush everything accepted, stop the thread and close the database."""
        if self._closing:
            return
        self._closing = True
        self.flush()
        self._batches.put(None)
        self._thread.join()
        self._sink.close()

    def status(self) -> dict[str, Any]:
        status = {"path": self.path, "pending_batches": self._batches.qsize(), **self.stats.as_dict()}
        if isinstance(self._sink, _ProcessSink):
            status["store_process_pid"] = self._sink.process.pid
            status["store_process_restarts"] = self._sink.restarts
        return status

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
