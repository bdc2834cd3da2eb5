"""Reading the store: the queries behind `sentinel query`, `sentinel alerts`, `sentinel events`.

Everything here runs on a read-only connection (`open_readonly`), so an analyst's query can
never change the evidence. Strings from the monitored system are escaped before they reach
a terminal (`sentinel.textsafe`); JSON output escapes them by itself.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlite_utils

from sentinel.actions.record import FIELD_COLUMNS, PRIORITIES, normalise_priority
from sentinel.errors import ConfigError, SourceLocation, StoreError
from sentinel.textsafe import escape_for_terminal

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

ALERT_LIST_COLUMNS = ("ts", "priority", "rule", "output", "id", "event_id", "acknowledged", "enforcement")
EVENT_LIST_COLUMNS = (
    "ts",
    "evt_type",
    "evt_res",
    "proc_pid",
    "proc_name",
    "proc_cmdline",
    "fd_name",
    "user_name",
    "container_id",
    "matched",
    "id",
)
# --json shows every stored column; the table only what fits a terminal.
ALERT_DETAIL_COLUMNS = ("*",)
EVENT_DETAIL_COLUMNS = ("*",)
JSON_COLUMNS = frozenset({"tags", "output_fields", "ancestry", "extra", "detail"})


@dataclass(frozen=True)
class Result:
    columns: tuple[str, ...]
    rows: list[tuple]


def parse_since(text: str, now_ns: int | None = None) -> int:
    """`1h`, `30m`, `2d`, `1w` ago, or a time: `2026-11-23T10:00`, `2026-11-23` (UTC unless it
    carries an offset). Returns ns since the epoch."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    match = _DURATION.match(text)
    if match:
        return now_ns - int(float(match.group(1)) * _UNIT_SECONDS[match.group(2)] * 1_000_000_000)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            "--since %r: expected a duration (30m, 1h, 2d) or a time (2026-11-23T10:00)" % text,
            SourceLocation("--since"),
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def run_query(db: sqlite_utils.Database, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Result:
    """Run any SQL on the read-only connection; a write is refused with a clear error."""
    try:
        cursor = db.execute(sql, params)
        columns = tuple(d[0] for d in cursor.description or ())
        return Result(columns, cursor.fetchall())
    except sqlite3.OperationalError as exc:
        message = str(exc)
        if "readonly" in message or "read-only" in message or "query_only" in message:
            raise StoreError("the store is read-only here: queries cannot change it (%s)" % message) from None
        raise StoreError("SQL error: %s" % message, SourceLocation("query")) from None
    except sqlite3.Error as exc:
        raise StoreError("SQL error: %s" % exc, SourceLocation("query")) from None


def query_alerts(
    db: sqlite_utils.Database,
    *,
    since_ns: int | None = None,
    rule: str | None = None,
    priority: str | None = None,
    limit: int = 100,
    columns: Sequence[str] = ALERT_LIST_COLUMNS,
) -> Result:
    """Newest alerts first; `priority` means that priority or a more severe one."""
    where, params = [], []
    if since_ns is not None:
        where.append("time >= ?")
        params.append(since_ns)
    if rule:
        where.append("rule = ?")
        params.append(rule)
    if priority:
        name = normalise_priority(priority)
        if name not in PRIORITIES:
            raise ConfigError(
                "--priority %r: expected one of %s" % (priority, ", ".join(PRIORITIES)), SourceLocation("--priority")
            )
        allowed = PRIORITIES[: PRIORITIES.index(name) + 1]
        where.append("priority IN (%s)" % ", ".join("?" * len(allowed)))
        params.extend(allowed)
    sql = "SELECT %s FROM alerts%s ORDER BY time DESC LIMIT ?" % (
        ", ".join(columns),
        (" WHERE " + " AND ".join(where)) if where else "",
    )
    return run_query(db, sql, params + [limit])


def _load_to_sql():
    """The rule engine's SQL back end, imported on first use (the CLI starts faster without it)."""
    try:
        from sentinel.rules.sql import to_sql
    except ImportError:
        return None
    return to_sql


def filter_to_sql(condition: str, ruleset: Any = None) -> tuple[str, list[Any]]:
    """A condition in the rule language (`proc.name = curl and fd.sip != 10.0.0.1`) as SQL;
    with a loaded ruleset, its macros and lists may be used too."""
    to_sql = _load_to_sql()
    if to_sql is None:
        raise ConfigError("filter expressions need the rule engine's SQL back end, which is not installed")
    where, params = to_sql(condition, FIELD_COLUMNS, ruleset) if ruleset is not None else to_sql(condition, FIELD_COLUMNS)
    return where, list(params)


def query_events(
    db: sqlite_utils.Database,
    *,
    condition: str | None = None,
    ruleset: Any = None,
    since_ns: int | None = None,
    event_types: Sequence[str] = (),
    pid: int | None = None,
    comm: str | None = None,
    limit: int = 100,
    columns: Sequence[str] = EVENT_LIST_COLUMNS,
) -> Result:
    """Newest events first, filtered by options and optionally a rule-language condition."""
    where, params = [], []
    if condition:
        condition_sql, condition_params = filter_to_sql(condition, ruleset)
        where.append("(%s)" % condition_sql)
        params.extend(condition_params)
    if since_ns is not None:
        where.append("time >= ?")
        params.append(since_ns)
    if event_types:
        where.append("evt_type IN (%s)" % ", ".join("?" * len(event_types)))
        params.extend(event_types)
    if pid is not None:
        where.append("proc_pid = ?")
        params.append(pid)
    if comm:
        where.append("proc_name = ?")
        params.append(comm)
    sql = "SELECT %s FROM events%s ORDER BY time DESC LIMIT ?" % (
        ", ".join(columns),
        (" WHERE " + " AND ".join(where)) if where else "",
    )
    return run_query(db, sql, params + [limit])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return escape_for_terminal(value)
    return escape_for_terminal(str(value))


def format_table(result: Result, max_width: int = 80) -> str:
    """Aligned columns for a terminal; every value escaped, long ones cut with an ellipsis."""
    if not result.columns:
        return ""
    cells = [[_cell(value) for value in row] for row in result.rows]
    cells = [[text if len(text) <= max_width else text[: max_width - 1] + "…" for text in row] for row in cells]
    header = [escape_for_terminal(name) for name in result.columns]
    widths = [max([len(header[i])] + [len(row[i]) for row in cells]) for i in range(len(header))]
    lines = ["  ".join(name.ljust(width) for name, width in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend("  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in cells)
    return "\n".join(lines)


def _json_value(column: str, value: Any) -> Any:
    if column in JSON_COLUMNS and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def format_json_lines(result: Result) -> str:
    """One JSON object per row (JSON escapes control characters: safe on a terminal too)."""
    return "\n".join(
        json.dumps({column: _json_value(column, value) for column, value in zip(result.columns, row)})
        for row in result.rows
    )
