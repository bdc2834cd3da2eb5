"""The durable outbox: every forwarded record is written here first, then delivered.

A separate SQLite file in WAL mode (the event store's writer never waits on a slow SIEM).
Records get a monotonically increasing `seq`; each output keeps a persisted cursor (the last
seq it has delivered or skipped) and only moves it after the receiver acknowledged. After a
restart delivery resumes from the cursors: at-least-once, with the record id for dedupe.

The outbox is bounded (rows and age). Rows every cursor has passed are deleted; rows that
fall out before some output reached them are counted per output as lost and reported by
`trim()` so the caller can raise a loss alert: nothing disappears silently.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from sentinel.actions.forward.formats import clean, clean_json
from sentinel.actions.forward.records import RecordFilter, severity_of
from sentinel.errors import SentinelError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    severity INTEGER NOT NULL,
    rule TEXT NOT NULL,
    tags TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_created ON records (created_ns);
CREATE TABLE IF NOT EXISTS cursors (
    output TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    lost INTEGER NOT NULL DEFAULT 0
);
"""


class OutboxError(SentinelError):
    """The outbox file cannot be opened or written."""


@dataclass(frozen=True)
class OutboxRow:
    """One stored record as a delivery thread reads it (filter columns beside the body)."""

    seq: int
    kind: str
    severity: int
    rule: str
    tags: tuple[str, ...]
    body: str

    def accepted_by(self, record_filter: RecordFilter) -> bool:
        return record_filter.accepts(self.kind, self.severity, self.rule, self.tags)

    @property
    def record(self) -> dict:
        return json.loads(self.body)


class Outbox:
    """SQLite outbox shared by one writer and one reader thread per output.

    Each thread gets its own connection (sqlite3 connections are not shared across threads).
    """

    def __init__(self, path: str | Path, *, max_rows: int = 1_000_000, max_age_seconds: float = 7 * 86400) -> None:
        self.path = str(path)
        self.max_rows = max_rows
        self.max_age_seconds = max_age_seconds
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise OutboxError("cannot open outbox %s: %s" % (self.path, exc)) from None

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    # ------------------------------------------------------------ writing
    def append(self, records: Iterable[dict]) -> int:
        """Store records in one transaction; returns the last seq (0 if none)."""
        now = time.time_ns()
        rows = []
        for record in records:
            rows.append(
                (
                    now,
                    clean(record.get("kind", "alert")),
                    severity_of(record),
                    clean(str(record.get("rule", ""))),
                    "\x1f".join(clean(str(tag)) for tag in record.get("tags", ())),
                    clean_json(record),
                )
            )
        if not rows:
            return 0
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO records (created_ns, kind, severity, rule, tags, body) VALUES (?, ?, ?, ?, ?, ?)", rows
            )
            (last,) = db.execute("SELECT seq FROM records ORDER BY seq DESC LIMIT 1").fetchone()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return last

    # ------------------------------------------------------------ reading
    def head(self) -> int:
        """The highest seq ever assigned (0 for an empty outbox)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        return row[0] if row else 0

    def read_after(self, seq: int, limit: int) -> list[OutboxRow]:
        rows = self._db.execute(
            "SELECT seq, kind, severity, rule, tags, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [OutboxRow(s, k, sev, r, tuple(t.split("\x1f")) if t else (), b) for s, k, sev, r, t, b in rows]

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    # ------------------------------------------------------------ cursors
    def register(self, output: str) -> int:
        """The persisted cursor of `output`; a new output starts at the current head."""
        db = self._db
        db.execute("INSERT OR IGNORE INTO cursors (output, seq) VALUES (?, ?)", (output, self.head()))
        return self.cursor(output)

    def cursor(self, output: str) -> int:
        row = self._db.execute("SELECT seq FROM cursors WHERE output = ?", (output,)).fetchone()
        return row[0] if row else 0

    def lost(self, output: str) -> int:
        row = self._db.execute("SELECT lost FROM cursors WHERE output = ?", (output,)).fetchone()
        return row[0] if row else 0

    def advance(self, output: str, seq: int) -> None:
        """Move a cursor forward (never back: a trim may already have moved it further)."""
        self._db.execute("UPDATE cursors SET seq = MAX(seq, ?) WHERE output = ?", (seq, output))

    # ------------------------------------------------------------ bounds
    def trim(self, filters: Mapping[str, RecordFilter], now_ns: int | None = None) -> dict[str, int]:
        """Delete delivered rows and enforce the bounds; returns {output: records lost now}.

        `filters` are the live outputs: a lost record is one its output would have sent. A
        batch in flight while its rows are trimmed is counted as lost even if it then gets
        through: the count errs on the side of reporting.
        """
        now_ns = time.time_ns() if now_ns is None else now_ns
        db = self._db
        losses: dict[str, int] = {}
        db.execute("BEGIN IMMEDIATE")
        try:
            head = self.head()
            cutoff = max(0, head - self.max_rows)
            aged = db.execute(
                "SELECT MAX(seq) FROM records WHERE created_ns < ?", (now_ns - int(self.max_age_seconds * 1e9),)
            ).fetchone()[0]
            cutoff = max(cutoff, aged or 0)
            cursors = {}
            for name in filters:
                row = db.execute("SELECT seq FROM cursors WHERE output = ?", (name,)).fetchone()
                cursors[name] = row[0] if row else head
            for name, record_filter in filters.items():
                if cursors[name] >= cutoff:
                    continue
                rows = db.execute(
                    "SELECT kind, severity, rule, tags FROM records WHERE seq > ? AND seq <= ?", (cursors[name], cutoff)
                ).fetchall()
                lost = sum(
                    1 for kind, sev, rule, tags in rows if record_filter.accepts(kind, sev, rule, tags.split("\x1f") if tags else ())
                )
                db.execute("UPDATE cursors SET seq = MAX(seq, ?), lost = lost + ? WHERE output = ?", (cutoff, lost, name))
                cursors[name] = cutoff
                if lost:
                    losses[name] = lost
            passed = min(cursors.values(), default=head)
            db.execute("DELETE FROM records WHERE seq <= ?", (max(passed, cutoff),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return losses


@dataclass(frozen=True)
class CursorStatus:
    """One output's position in the outbox, as `sentinel forward status` shows it."""

    output: str
    cursor: int
    head: int
    backlog: int  # records after the cursor (before the output's own filter)
    lost: int


def read_status(path: str | Path) -> list[CursorStatus]:
    """Cursors of every output, read-only (safe while the agent runs)."""
    if not Path(path).exists():
        raise OutboxError("no outbox at %s (nothing has been forwarded yet)" % path)
    db = sqlite3.connect("file:%s?mode=ro" % Path(path).resolve(), uri=True, timeout=10)
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
        head = row[0] if row else 0
        return [
            CursorStatus(name, seq, head, db.execute("SELECT COUNT(*) FROM records WHERE seq > ?", (seq,)).fetchone()[0], lost)
            for name, seq, lost in db.execute("SELECT output, seq, lost FROM cursors ORDER BY output").fetchall()
        ]
    except sqlite3.Error as exc:
        raise OutboxError("cannot read outbox %s: %s" % (path, exc)) from None
    finally:
        db.close()
