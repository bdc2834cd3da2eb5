"""The TUI's queries without the UI: paging, the live tail, filters, ancestry, summary."""

from __future__ import annotations

import sqlite3

import pytest

from sentinel.actions.store import open_readonly
from sentinel.errors import RuleError
from sentinel.tui import data
from sentinel.tui.sample import NAMES, write_bulk


@pytest.fixture(scope="module")
def bulk(tmp_path_factory):
    path = tmp_path_factory.mktemp("bulk") / "events.db"
    write_bulk(str(path), 5000, now_ns=10**18 + 5000 * 1_000_000)
    return open_readonly(str(path))


def test_pages_are_keyset_by_seq_and_cover_every_row_once(bulk):
    query = data.ViewQuery(kind=data.EVENTS)
    seen, before = [], None
    while True:
        page = data.page(bulk, query, before_seq=before, limit=1500)
        seen += [row["seq"] for row in page.rows]
        if not page.more:
            break
        before = page.rows[-1]["seq"]
    assert seen == list(range(5000, 0, -1))


def test_filtered_pages_and_the_live_tail_use_the_same_where(bulk):
    query = data.ViewQuery(kind=data.EVENTS, condition="proc.name = %s" % NAMES[7])
    first = data.page(bulk, query, limit=10)
    assert {row["proc_name"] for row in first.rows} == {NAMES[7]} and first.more
    assert [row["seq"] for row in first.rows] == list(range(4958, 4458, -50))[:10]
    newer = data.newer(bulk, query, after_seq=first.rows[3]["seq"], limit=2)
    assert [row["seq"] for row in newer.rows] == [r["seq"] for r in first.rows[:2]] and newer.more
    assert data.newer(bulk, query, after_seq=first.rows[0]["seq"]).rows == []


def test_alerts_filter_through_their_event_and_by_quick_filters(bulk):
    # every alert is on a proc00 event (index % 1000 == 0)
    assert len(data.page(bulk, data.ViewQuery(condition="proc.name = proc00")).rows) == 5
    assert data.page(bulk, data.ViewQuery(condition="proc.name = proc01")).rows == []
    only = data.page(bulk, data.ViewQuery(rule="Bulk rule 6")).rows
    assert [row["rule"] for row in only] == ["Bulk rule 6"]  # alert of event 1000
    assert data.page(bulk, data.ViewQuery(min_priority="error")).rows == []
    assert len(data.page(bulk, data.ViewQuery(min_priority="warning")).rows) == 5
    assert len(data.page(bulk, data.ViewQuery(search="bulk alert 3000")).rows) == 1


def test_time_and_text_filters_on_events(bulk):
    newest = data.page(bulk, data.ViewQuery(kind=data.EVENTS), limit=1).rows[0]
    since = data.ViewQuery(kind=data.EVENTS, since_ns=newest["time"] - 9 * 1_000_000)
    assert len(data.page(bulk, since).rows) == 10
    text = data.ViewQuery(kind=data.EVENTS, search="file4321")
    assert [row["fd_name"] for row in data.page(bulk, text).rows] == ["/data/%s/file4321" % NAMES[4321 % 50]]


@pytest.mark.parametrize(
    "condition, column",
    [("proc.name =", 12), ("proc.name = x and", 18), ("nosuch.field = 1", 1), ("proc.name = 'open", 13)],
)
def test_bad_conditions_raise_with_their_column(condition, column):
    with pytest.raises(RuleError) as error:
        data.ViewQuery(condition=condition).where()
    assert error.value.location.col == column


def test_literals_are_parameters_never_sql():
    where, params = data.ViewQuery(kind=data.EVENTS, condition="proc.name = \"x'; DROP TABLE events; --\"").where()
    assert "DROP" not in where and params == ["x'; DROP TABLE events; --"]


def test_ancestry_walk_stops_at_a_loop_and_at_an_unknown_parent(tmp_path):
    from sentinel.actions.store import Store

    path = str(tmp_path / "loop.db")
    Store(path).close()
    conn = sqlite3.connect(path)
    rows = [(10, 1, 11, 1, "a"), (11, 1, 12, 1, "b"), (12, 1, 11, 1, "c"), (20, 1, 99, 5, "orphan")]
    conn.executemany("INSERT INTO processes (pid, start_ns, ppid, parent_start_ns, comm, seen) VALUES (?, ?, ?, ?, ?, 0)", rows)
    conn.commit()
    db = open_readonly(path)
    assert [a.comm for a in data.ancestry_from_processes(db, 10, 1)] == ["b", "c"]
    assert [(a.pid, a.comm) for a in data.ancestry_from_processes(db, 20, 1)] == [(99, "?")]
    assert data.ancestry_from_processes(db, 77, 1) == []


def test_summary_counts_a_bounded_window(bulk):
    now = 10**18 + 5000 * 1_000_000
    result = data.summary(bulk, minutes=2, now_ns=now)
    # 5000 events one a millisecond: all in the last minute's bucket
    assert result.events_per_second == [0.0, 5000 / 60.0]
    assert sum(sum(counts) for counts in result.alerts_per_rule.values()) == 5
    assert len(result.top_processes) == 10 and {count for _, count in result.top_processes} == {100}


def test_export_writes_every_column_with_json_decoded(bulk, tmp_path):
    rows = data.export_rows(bulk, data.ViewQuery(rule="Bulk rule 0"))
    assert rows and rows[0]["ancestry"] == [] and "output" in rows[0]
    out = tmp_path / "x.jsonl"
    assert data.write_json_lines(rows, str(out)) == len(rows)
