"""The event browser driven through Textual's Pilot, on stores written by the store's writer."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys

from tui_helpers import screen_text, wait_for

from sentinel.control import ControlServer
from sentinel.errors import SentinelError
from sentinel.tui.app import SentinelApp
from sentinel.tui.sample import HOSTILE_NAME


def run(scenario, db_path, size=(100, 30), **options):
    """Run `scenario(app, pilot)` in a headless app of `size` on the store at db_path."""

    async def main():
        app = SentinelApp(str(db_path), poll_seconds=0.1, **options)
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, app.first_page_shown.is_set, what="the first page")
            await scenario(app, pilot)

    asyncio.run(main())


def rule_lines(app) -> list[str]:
    """The table's rows, as text."""
    table = app.table
    return [" ".join(str(cell) for cell in table.get_row_at(index)) for index in range(table.row_count)]


# --- navigation -------------------------------------------------------------------------------


def test_alerts_newest_first_and_cursor_moves_with_arrows(sample_db):
    async def scenario(app, pilot):
        lines = rule_lines(app)
        assert [line.split()[1] for line in lines] == ["NOTE", "CRIT", "WARN"]
        assert app.table.cursor_row == 0
        await pilot.press("down", "down")
        assert app.selected_row()["rule"] == "Read sensitive file untrusted"
        await pilot.press("up")
        assert app.selected_row()["priority"] == "critical"

    run(scenario, sample_db[0])


def test_priority_is_shown_by_colour(sample_db):
    async def scenario(app, pilot):
        priority_cells = [app.table.get_row_at(index)[2] for index in range(3)]
        assert [(cell.plain, cell.style) for cell in priority_cells] == [
            ("NOTE", "cyan"),
            ("CRIT", "bold red"),
            ("WARN", "yellow"),
        ]
        rule_cell = app.table.get_row_at(1)[3]
        assert rule_cell.style == "bold red"

    run(scenario, sample_db[0])


def test_switching_to_events_and_back(sample_db):
    async def scenario(app, pilot):
        await pilot.press("v")
        await wait_for(pilot, lambda: app.query_state.kind == "events" and app.first_page_shown.is_set())
        # 4 execs of the tree, 20 opens, /etc/shadow, the hostile exec, the notice's exec
        assert len(app.rows) == 27
        assert "EVENTS" in screen_text(app).splitlines()[0]
        await pilot.press("1")
        await wait_for(pilot, lambda: app.query_state.kind == "alerts" and app.first_page_shown.is_set())
        assert len(app.rows) == 3

    run(scenario, sample_db[0])


def test_columns_fit_80_and_grow_when_wider(sample_db):
    widths = {}

    async def measure(app, pilot):
        widths[app.size.width] = [column.width for column in app.table.columns.values()]
        assert max(len(line) for line in screen_text(app).splitlines()) <= app.size.width

    run(measure, sample_db[0], size=(80, 24))
    run(measure, sample_db[0], size=(140, 30))
    assert sum(widths[80]) + 2 * len(widths[80]) <= 80
    assert sum(widths[140]) > sum(widths[80])
    assert len(widths[140]) > len(widths[80])  # the enforcement column appears


def test_resizing_under_another_screen_relayouts_the_list_when_it_returns(sample_db):
    async def scenario(app, pilot):
        narrow = [column.width for column in app.table.columns.values()]
        await pilot.press("s")
        await wait_for(pilot, lambda: "top processes" in screen_text(app))
        await pilot.resize_terminal(140, 30)
        await pilot.pause(0.2)
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(app.table.columns) == len(narrow) + 1, what="the wide layout")
        assert max(len(line) for line in screen_text(app).splitlines()) <= 140
        assert app.table.row_count == 3

    run(scenario, sample_db[0], size=(80, 24))


# --- filtering --------------------------------------------------------------------------------


def test_condition_filter_on_events(sample_db):
    async def scenario(app, pilot):
        await pilot.press("2")
        await wait_for(pilot, lambda: app.query_state.kind == "events" and app.first_page_shown.is_set())
        await pilot.press("f", *"fd.name contains shadow and proc.name = curl", "enter")
        await wait_for(pilot, lambda: app.query_state.condition != "" and app.first_page_shown.is_set())
        assert [row["fd_name"] for row in app.rows] == ["/etc/shadow"]
        assert app.focused is app.table

    run(scenario, sample_db[0])


def test_condition_filter_on_alerts_uses_the_alerts_event(sample_db):
    async def scenario(app, pilot):
        await pilot.press("f", *"proc.name = curl", "enter")
        await wait_for(pilot, lambda: app.query_state.condition != "" and app.first_page_shown.is_set())
        assert [row["rule"] for row in app.rows] == ["Read sensitive file untrusted"]

    run(scenario, sample_db[0])


def test_invalid_filter_shows_the_error_at_its_column_and_keeps_the_rows(sample_db):
    async def scenario(app, pilot):
        await pilot.press("f", *"proc.name = curl and", "enter")
        await pilot.pause(0.2)
        error = app.query_one("#filter-error")
        assert error.display
        text = screen_text(app)
        lines = text.splitlines()
        caret_line = next(line for line in lines if "^" in line and "syntax error" in line)
        condition_line = lines[lines.index(caret_line) - 1]
        assert condition_line.strip() == "proc.name = curl and"
        # the caret sits after "and", where the parser wanted more
        assert caret_line.index("^") >= condition_line.index("and") + len("and")
        assert len(app.rows) == 3 and app.query_state.condition == ""
        # an unknown field names itself
        await pilot.press(*["backspace"] * 30, *"proc.nmae = x", "enter")
        await pilot.pause(0.2)
        assert "field 'proc.nmae' has no column" in screen_text(app)
        # a good filter clears the error
        await pilot.press(*["backspace"] * 30, *"proc.name = bash", "enter")
        await wait_for(pilot, lambda: app.query_state.condition == "proc.name = bash" and app.first_page_shown.is_set())
        assert not error.display
        assert [row["rule"] for row in app.rows] == ["Interactive shell"]

    run(scenario, sample_db[0])


def test_free_text_search_and_quick_filters(sample_db):
    async def scenario(app, pilot):
        await pilot.press("slash", *"shadow", "enter")
        await wait_for(pilot, lambda: app.query_state.search == "shadow" and app.first_page_shown.is_set())
        assert [row["rule"] for row in app.rows] == ["Read sensitive file untrusted"]
        await pilot.press("c")
        await wait_for(pilot, lambda: app.query_state.search == "" and app.first_page_shown.is_set())
        assert len(app.rows) == 3
        # priority: notice or worse (all three), then warning or worse, then error or worse
        await pilot.press("P", "P", "P")
        await wait_for(pilot, lambda: app.query_state.min_priority == "error" and app.first_page_shown.is_set())
        assert [row["priority"] for row in app.rows] == ["critical"]
        await pilot.press("P", "P")  # critical, then any
        await wait_for(pilot, lambda: app.query_state.min_priority == "" and app.first_page_shown.is_set())
        # rule of the selected alert
        await pilot.press("down", "r")
        await wait_for(pilot, lambda: app.query_state.rule != "" and app.first_page_shown.is_set())
        assert {row["rule"] for row in app.rows} == {"Run shell from tmp [bold]"}
        await pilot.press("r")
        await wait_for(pilot, lambda: app.query_state.rule == "" and app.first_page_shown.is_set())
        # process of the selected alert (through its event)
        await pilot.press("end", "n")
        await wait_for(pilot, lambda: app.query_state.proc_name == "curl" and app.first_page_shown.is_set())
        assert [row["rule"] for row in app.rows] == ["Read sensitive file untrusted"]
        # time range: the sample is minutes old, so 15 min keeps all of it
        await pilot.press("c", "T")
        await wait_for(pilot, lambda: app.query_state.since_ns is not None and app.first_page_shown.is_set())
        assert len(app.rows) == 3

    run(scenario, sample_db[0])


# --- detail and ancestry ----------------------------------------------------------------------


def test_alert_detail_shows_ancestry_tree_output_tags_and_fields(sample_db):
    async def scenario(app, pilot):
        await pilot.press("down", "down", "enter")
        await wait_for(pilot, lambda: app.detail_seq is not None, what="the detail pane")
        text = screen_text(app)
        assert "output: Sensitive file opened (file=/etc/shadow proc=curl)" in text
        assert "tags: mitre_execution, test" in text
        assert "enforcement: none recorded" in text
        tree = [line.strip() for line in text.splitlines() if "[10" in line or "systemd [1]" in line]
        assert tree[0].startswith("systemd [1]")
        assert tree[1].startswith("└── sshd [1001]")
        assert tree[2].startswith("└── bash [1002]")
        assert tree[3].startswith("└── curl [1003] curl -s http://example.test/x")
        # every field further down (the pane scrolls)
        pane = app.query_one("#detail-pane")
        pane.scroll_end(animate=False)
        await pilot.pause(0.1)
        assert "fd_name" in screen_text(app) and "/etc/shadow" in screen_text(app)
        await pilot.press("escape")
        assert not pane.display

    run(scenario, sample_db[0], size=(100, 50))


def test_event_detail_walks_the_processes_table(sample_db):
    async def scenario(app, pilot):
        await pilot.press("2")
        await wait_for(pilot, lambda: app.query_state.kind == "events" and app.first_page_shown.is_set())
        await pilot.press("f", *"proc.name = curl and evt.type = execve", "enter")
        await wait_for(pilot, lambda: app.query_state.condition != "" and app.first_page_shown.is_set())
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.detail_seq is not None)
        lines = [line.strip() for line in screen_text(app).splitlines()]
        start = lines.index("process ancestry:")
        assert lines[start + 1].startswith("systemd [1]")
        assert lines[start + 4].startswith("└── curl [1003]")
        # an event that raised an alert names it
        await pilot.press("escape", "f", *["backspace"] * 50, *"fd.name = /etc/shadow", "enter")
        await wait_for(pilot, lambda: app.query_state.condition == "fd.name = /etc/shadow" and app.first_page_shown.is_set())
        await pilot.press("enter")
        await wait_for(pilot, lambda: "alert: WARN Read sensitive file untrusted Sensitive file opened" in screen_text(app))

    run(scenario, sample_db[0], size=(100, 40))


def test_jump_from_alert_to_the_process_events_around_it(sample_db):
    async def scenario(app, pilot):
        await pilot.press("end", "x")  # the /etc/shadow alert of curl
        await wait_for(pilot, lambda: app.query_state.kind == "events" and app.first_page_shown.is_set())
        assert app.query_state.exec_id == (1003, 10**18 + 3)
        names = {row["proc_name"] for row in app.rows}
        assert names == {"curl"}
        # its exec (60 s before) is outside the ±60 s window's far end? no: inside; 20 opens + shadow + exec
        assert len(app.rows) == 22

    run(scenario, sample_db[0])


# --- live tail --------------------------------------------------------------------------------


def test_rows_written_by_another_process_appear_and_pause_holds_them(sample_db):
    db_path = sample_db[0]

    async def scenario(app, pilot):
        await pilot.press("2")
        await wait_for(pilot, lambda: app.query_state.kind == "events" and app.first_page_shown.is_set())
        before = len(app.rows)
        writer = subprocess.Popen([sys.executable, "-m", "sentinel.tui.sample", str(db_path), "--live", "30"])
        try:
            await wait_for(pilot, lambda: len(app.rows) >= before + 3, timeout=10, what="live rows")
            assert app.rows[0]["proc_name"] == "livewriter"
            assert "livewriter" in screen_text(app)
            assert app.table.cursor_row == 0  # following the newest
            await pilot.press("space")
            assert "PAUSED" in screen_text(app)
            held = len(app.rows)
            await pilot.pause(0.6)
            assert len(app.rows) == held
            await pilot.press("space")
            assert writer.wait(20) == 0
            await wait_for(pilot, lambda: len(app.rows) == before + 30, timeout=5, what="every live row")
        finally:
            writer.kill()
            writer.wait()
        seqs = [row["seq"] for row in app.rows]
        assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)

    run(scenario, db_path)


def test_older_rows_are_paged_in_at_the_bottom(tmp_path):
    from sentinel.tui.sample import write_bulk

    db_path = tmp_path / "bulk.db"
    write_bulk(str(db_path), 1000)

    async def scenario(app, pilot):
        await pilot.press("2")
        await wait_for(pilot, lambda: app.query_state.kind == "events" and app.first_page_shown.is_set())
        assert len(app.rows) == 200 and app.more
        await pilot.press("end")
        await wait_for(pilot, lambda: len(app.rows) == 400, what="the second page")
        seqs = [row["seq"] for row in app.rows]
        assert seqs == list(range(1000, 600, -1))

    run(scenario, db_path)


# --- hostile strings --------------------------------------------------------------------------


def test_hostile_strings_are_shown_escaped_never_interpreted(sample_db):
    db_path = sample_db[0]
    # A TEXT value that is not UTF-8 at all, as another tool might have written it.
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE events SET fd_name = CAST(? AS TEXT) WHERE fd_name = '/etc/shadow'", (b"/etc/\xff\xfe[blink]x\x1b[31m",))
    conn.commit()
    conn.close()

    async def scenario(app, pilot):
        await pilot.press("down", "enter")  # the alert of the hostile exec
        await wait_for(pilot, lambda: app.detail_seq is not None)
        text = screen_text(app)
        assert "\x1b" not in text and "\x07" not in text
        assert "ev\\x1b]0;pwned\\x07il" in text  # comm, in the ancestry tree and fields
        assert "Run shell from tmp [bold]" in text  # markup shown as typed
        assert "[red]arg\\x07" in text
        assert "\\x1b[2J[bold]x[/bold]" in text
        await pilot.press("2")
        await wait_for(pilot, lambda: app.query_state.kind == "events" and app.first_page_shown.is_set())
        await pilot.press("f", *"fd.name startswith /etc/", "enter")
        await wait_for(pilot, lambda: app.query_state.condition != "" and app.first_page_shown.is_set())
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.detail_seq is not None)
        text = screen_text(app)
        assert "/etc/\\xff\\xfe[blink]x\\x1b[31m" in text
        assert "\x1b" not in text

    run(scenario, db_path, size=(120, 60))
    assert HOSTILE_NAME.startswith("ev\x1b")


# --- actions and export -----------------------------------------------------------------------


def test_ack_goes_to_the_agent_after_confirmation_and_a_missing_command_shows_its_error(sample_db, tmp_path):
    received = []
    server = ControlServer(str(tmp_path / "control.sock"))
    server.register("ack", lambda request, peer: received.append(request) or {"acknowledged": len(request["alert_ids"])})
    server.start()

    async def scenario(app, pilot):
        await pilot.press("a")
        await wait_for(pilot, lambda: "Acknowledge alert" in screen_text(app), what="the confirmation")
        await pilot.press("n")
        await pilot.pause(0.2)
        assert received == []
        await pilot.press("a")
        await wait_for(pilot, lambda: "Acknowledge alert" in screen_text(app))
        await pilot.press("y")
        await wait_for(pilot, lambda: received, what="the ack request")
        assert received[0]["alert_ids"] == [sample_db[1]["notice"]]
        await wait_for(pilot, lambda: "ack: {'acknowledged': 1}" in screen_text(app))
        await pilot.press("K")
        await wait_for(pilot, lambda: "Kill process" in screen_text(app))
        await pilot.press("y")
        await wait_for(pilot, lambda: "kill refused: unknown command 'kill'" in screen_text(app), what="the agent's error")

    try:
        run(scenario, sample_db[0], socket_path=str(tmp_path / "control.sock"))
    finally:
        server.stop()


def test_kill_and_deny_carry_the_process_identity_to_the_agent(sample_db, tmp_path):
    received = []
    server = ControlServer(str(tmp_path / "control.sock"))
    for command in ("kill", "deny"):
        server.register(command, lambda request, peer: received.append(request) or "done")
    server.start()

    async def scenario(app, pilot):
        await pilot.press("end", "K")  # the /etc/shadow alert of curl
        await wait_for(pilot, lambda: "Kill process curl pid 1003?" in screen_text(app))
        await pilot.press("y")
        await wait_for(pilot, lambda: len(received) == 1)
        await pilot.press("D")
        await wait_for(pilot, lambda: "Deny executing /usr/bin/curl" in screen_text(app))
        await pilot.press("y")
        await wait_for(pilot, lambda: len(received) == 2)

    try:
        run(scenario, sample_db[0], socket_path=str(tmp_path / "control.sock"))
    finally:
        server.stop()
    alert_id = sample_db[1]["shadow"]
    assert received[0] == {"cmd": "kill", "pid": 1003, "start_ns": 10**18 + 3, "alert_id": alert_id}
    assert received[1] == {"cmd": "deny", "kind": "exec", "target": "/usr/bin/curl", "alert_id": alert_id}


def test_actions_without_an_agent_say_so(sample_db, tmp_path):
    async def scenario(app, pilot):
        await pilot.press("D")
        await wait_for(pilot, lambda: "Deny executing" in screen_text(app))
        await pilot.press("y")
        await wait_for(pilot, lambda: "deny refused: cannot reach the agent" in screen_text(app))

    run(scenario, sample_db[0], socket_path=str(tmp_path / "absent.sock"))


def test_export_writes_the_current_view_as_json_lines(sample_db, tmp_path):
    out = tmp_path / "view.jsonl"

    async def scenario(app, pilot):
        await pilot.press("P", "P", "e")  # warning or worse: two alerts
        await wait_for(pilot, lambda: "Export the current view" in screen_text(app))
        field = app.screen.query_one("#export-path")
        field.value = str(out)
        await pilot.press("enter")
        await wait_for(pilot, lambda: "exported 2 rows" in screen_text(app))

    run(scenario, sample_db[0])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["priority"] for row in rows] == ["critical", "warning"]
    assert isinstance(rows[0]["ancestry"], list) and rows[0]["ancestry"][0]["comm"] == "curl"


def test_summary_shows_the_agents_loss_counters_when_it_answers(sample_db, tmp_path):
    server = ControlServer(str(tmp_path / "control.sock"))
    status = {"version": "t", "uptime_seconds": 5, "events_per_second": 12.5, "kernel_lost": 4242, "records_received": 9}
    server.register("status", lambda request, peer: dict(status, store={"dropped": 17, "errors": 0}))
    server.start()

    async def scenario(app, pilot):
        await pilot.press("s")
        await wait_for(pilot, lambda: "kernel records lost" in screen_text(app), what="the agent's status")
        lines = screen_text(app).splitlines()
        assert any("kernel records lost" in line and "4242" in line for line in lines)
        assert any("store rows dropped" in line and "17" in line for line in lines)

    try:
        run(scenario, sample_db[0], size=(100, 60), socket_path=str(tmp_path / "control.sock"))
    finally:
        server.stop()


def test_a_burst_larger_than_a_page_replaces_the_list_with_the_newest_page(sample_db):
    db_path = sample_db[0]

    async def scenario(app, pilot):
        await pilot.press("2")
        await wait_for(pilot, lambda: app.query_state.kind == "events" and app.first_page_shown.is_set())
        await pilot.press("space")  # paused: the burst is written meanwhile
        subprocess.run([sys.executable, "-c", BURST % str(db_path)], check=True)
        await pilot.press("space")
        await wait_for(pilot, lambda: app.rows and app.rows[0]["fd_name"] == "/burst/299", what="the burst")
        assert len(app.rows) == 200 and app.more
        assert [row["fd_name"] for row in app.rows[:2]] == ["/burst/299", "/burst/298"]

    run(scenario, db_path)


BURST = """
import time
from sentinel.actions.store import Store
from sentinel.config import StoreConfig
from sentinel.tui.sample import open_event
from sentinel.events.model import Process
proc = Process(4000, 1, comm="burst")
with Store(%r, StoreConfig(always_store=("openat",))) as store:
    for index in range(300):
        store.add_event(open_event(proc, "/burst/%%d" %% index, time.time_ns()), matched=False)
"""


def test_help_and_summary_screens(sample_db):
    async def scenario(app, pilot):
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: "sentinel tui: keys" in screen_text(app))
        assert "pause / resume the live tail" in screen_text(app)
        await pilot.press("escape", "s")
        await wait_for(pilot, lambda: "top processes" in screen_text(app) and "curl" in screen_text(app))
        text = screen_text(app)
        assert "Read sensitive file untrusted  1 alerts" in text
        await wait_for(pilot, lambda: "agent not reachable" in screen_text(app))

    run(scenario, sample_db[0], size=(100, 50))


def test_a_missing_store_is_a_clear_error(tmp_path):
    try:
        SentinelApp(str(tmp_path / "nothing.db"))
    except SentinelError as exc:
        assert "no event store here" in str(exc)
    else:
        raise AssertionError("opened a store that does not exist")


def test_a_new_filter_interrupts_a_long_scan_it_replaces(tmp_path, monkeypatch):
    from sentinel.tui import data
    from sentinel.tui.sample import write_bulk

    db_path = tmp_path / "bulk.db"
    write_bulk(str(db_path), 200_000)
    outcomes = []
    page = data.page

    def recording_page(db, query, *args, **kwargs):
        try:
            result = page(db, query, *args, **kwargs)
        except SentinelError as exc:
            outcomes.append((query.condition, str(exc)))
            raise
        outcomes.append((query.condition, len(result.rows)))
        return result

    monkeypatch.setattr(data, "page", recording_page)

    async def scenario(app, pilot):
        await pilot.press("2")
        await wait_for(pilot, lambda: app.query_state.kind == "events" and app.first_page_shown.is_set())
        # A condition no row matches scans the whole table; the next filter must not wait for it.
        slow = "proc.cmdline glob '*a*b*c*d*e*f*g*h*i*j*k*l*m*n*o*p*q*r*s*t*u*v*w*x*y*z*'"
        app.set_query(app.query_state.with_(condition=slow))
        await wait_for(pilot, app.page_query_running.is_set, what="the scan to start")
        app.set_query(app.query_state.with_(condition="proc.name = proc03"))
        await wait_for(pilot, lambda: app.first_page_shown.is_set(), what="the replacing filter's page")
        assert {row["proc_name"] for row in app.rows} == {"proc03"}
        assert "interrupted" not in screen_text(app)

    run(scenario, db_path)
    slow_outcome = [outcome for condition, outcome in outcomes if condition.startswith("proc.cmdline glob")]
    assert slow_outcome == ["reading the store failed: interrupted"]
