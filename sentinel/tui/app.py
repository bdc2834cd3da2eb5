"""`sentinel tui`: browse the agent's alerts and events, live, from a read-only connection.

Threads: every query runs in a Textual thread worker and hands its result back with
`call_from_thread`; one lock serialises the workers' use of the single SQLite connection.
The live tail asks every half second for rows newer than the newest one shown. Actions
(kill, deny, acknowledge) go to the agent's control socket: the TUI never writes the store.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import get_current_worker

from sentinel.control import ControlError, request
from sentinel.errors import RuleError, SentinelError
from sentinel.tui import data
from sentinel.tui.render import alert_detail, columns_for, error_with_caret, event_detail, row_cells, safe
from sentinel.tui.screens import ConfirmScreen, ExportScreen, HelpScreen, SummaryScreen

POLL_SECONDS = 0.5
MAX_ROWS = 2000  # rows kept in the list; older ones are paged in again on demand
PRIORITY_STEPS = ("", "notice", "warning", "error", "critical")


class RowList(DataTable):
    """A row-cursor table where home/end go to the first/last row (a list, not a sheet)."""

    BINDINGS = [
        Binding("home", "scroll_top", "First", show=False),
        Binding("end", "scroll_bottom", "Last", show=False),
    ]

    class Resized(Message):
        """The list's own width changed (also seen when its screen comes back after a resize)."""

        def __init__(self, width: int) -> None:
            super().__init__()
            self.width = width

    def on_resize(self, event: events.Resize) -> None:
        self.post_message(self.Resized(event.size.width))


class SentinelApp(App[None]):
    """The event browser. `db_path` is read-only; `socket_path` is the agent's control socket."""

    CSS_PATH = "sentinel.tcss"
    TITLE = "sentinel"
    # The help screen lists these: the tooltip is the long description (one source for both).
    BINDINGS = [
        Binding("question_mark", "help", "Help", tooltip="this help"),
        Binding("q", "quit", "Quit", tooltip="quit"),
        Binding("v", "toggle_kind", "Alerts/Events", tooltip="switch between alerts and events"),
        Binding("1", "show_kind('alerts')", "Alerts", show=False, tooltip="alerts"),
        Binding("2", "show_kind('events')", "Events", show=False, tooltip="events"),
        Binding("f", "focus_filter", "Filter", tooltip="filter bar: a rule condition, Enter applies it"),
        Binding("slash", "search", "Search", show=False, tooltip="free-text search (the filter bar, starting with /)"),
        Binding("space", "toggle_pause", "Pause", tooltip="pause / resume the live tail"),
        Binding("escape", "close_detail", "Close", show=False, tooltip="close the details; leave the filter bar"),
        Binding("r", "quick_rule", "Rule", show=False, tooltip="only alerts of the selected alert's rule (again: off)"),
        Binding("n", "quick_process", "Process", show=False, tooltip="only the selected row's process name (again: off)"),
        Binding("P", "quick_priority", "Priority", show=False, tooltip="minimum priority: notice, warning, error, critical, any"),
        Binding("T", "quick_time", "Time range", show=False, tooltip="time range: last 15 min, 1 h, 24 h, all"),
        Binding("c", "clear_filters", "Clear", show=False, tooltip="clear every filter"),
        Binding("x", "surrounding_events", "Context", tooltip="the events of the selected process around that moment"),
        Binding("s", "summary", "Summary", tooltip="rates, alerts per rule, top processes, the agent's losses"),
        Binding("a", "acknowledge", "Ack", show=False, tooltip="acknowledge the selected alert (through the agent)"),
        Binding("K", "kill", "Kill", show=False, tooltip="kill the selected process (through the agent)"),
        Binding("D", "deny", "Deny", show=False, tooltip="deny executing the selected process's binary (through the agent)"),
        Binding("e", "export", "Export", show=False, tooltip="export the current view as JSON lines"),
    ]

    def __init__(self, db_path: str, socket_path: str = "", poll_seconds: float = POLL_SECONDS) -> None:
        super().__init__()
        self.db_path = db_path
        self.socket_path = socket_path
        self.poll_seconds = poll_seconds
        self.db = data.open_store(db_path)
        self.db_lock = threading.Lock()
        self.query_state = data.ViewQuery()
        self.rows: list[dict[str, Any]] = []
        self.more = False  # older rows exist beyond the last one shown
        self.generation = 0  # bumped per query change: results of an older query are dropped
        self.paused = False
        self.loading_older = False
        self.time_range = 0
        self.column_keys: list[str] = []
        self.detail_seq: int | None = None
        self.first_page_shown = threading.Event()  # for tests and the benchmark
        self.page_query_running = threading.Event()
        self.list_width = 80  # until the list reports its size

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        # Kept as attributes: messages may still arrive while the app shuts its screen down.
        self.status_bar = Static(id="status")
        self.filter_input = Input(
            placeholder="filter: proc.name = curl and fd.sip != 127.0.0.1   (/text: search)", id="filter", select_on_focus=False
        )
        self.filter_error = Static(id="filter-error")
        self.list_view = RowList(id="list", cursor_type="row", zebra_stripes=True)
        self.detail_view = Static(id="detail")
        self.detail_pane = VerticalScroll(self.detail_view, id="detail-pane")
        self.message_line = Static(id="message")
        yield self.status_bar
        yield self.filter_input
        yield self.filter_error
        yield self.list_view
        yield self.detail_pane
        yield self.message_line
        yield Footer()

    def on_mount(self) -> None:
        self.filter_error.display = False
        self.detail_pane.display = False
        self.list_view.focus()
        self.build_columns()
        self.reload()
        self.set_interval(self.poll_seconds, self.poll_new_rows)

    @on(RowList.Resized)
    def on_list_resized(self, event: RowList.Resized) -> None:
        if event.width != self.list_width:
            self.list_width = event.width
            self.build_columns()
            self.render_rows()

    @property
    def table(self) -> DataTable:
        return self.list_view

    def build_columns(self) -> None:
        columns = columns_for(self.query_state.kind, self.list_width)
        self.column_keys = [key for key, _, _ in columns]
        table = self.table
        table.clear(columns=True)
        for key, label, column_width in columns:
            table.add_column(label, width=column_width, key=key)

    def render_rows(self, keep_key: str | None = None, follow: bool = False) -> None:
        """Show self.rows; the cursor stays on the same row unless following the newest."""
        table = self.table
        if keep_key is None and table.row_count:
            keep_key = self.selected_key()
        table.clear()
        for row in self.rows:
            table.add_row(*row_cells(self.query_state.kind, row, self.column_keys), key=str(row["seq"]))
        if follow or keep_key is None:
            return
        for index, row in enumerate(self.rows):
            if str(row["seq"]) == keep_key:
                table.move_cursor(row=index, animate=False)
                break

    def update_status(self) -> None:
        kind = self.query_state.kind
        text = Text()
        text.append(" sentinel ", style="bold reverse")
        text.append(" ALERTS " if kind == data.ALERTS else " alerts ", style="bold" if kind == data.ALERTS else "dim")
        text.append(" EVENTS " if kind == data.EVENTS else " events ", style="bold" if kind == data.EVENTS else "dim")
        text.append(" PAUSED " if self.paused else " live ", style="bold black on yellow" if self.paused else "green")
        text.append(" %d%s rows " % (len(self.rows), "+" if self.more else ""))
        described = self.query_state.describe()
        if described:
            text.append_text(safe(described, "cyan"))
        self.status_bar.update(text)

    def show_message(self, message: str, error: bool = False) -> None:
        self.message_line.update(Text(message, style="bold red" if error else "green"))

    # ------------------------------------------------------------------ loading
    def set_query(self, query: data.ViewQuery) -> None:
        kind_changed = query.kind != self.query_state.kind
        self.query_state = query
        if kind_changed:
            self.close_detail()
            self.build_columns()
        self.reload()

    def reload(self) -> None:
        self.generation += 1
        self.first_page_shown.clear()
        if self.page_query_running.is_set():
            # The query it replaces may be a long scan (a rare `contains` on a big store):
            # stop it, so the new one does not wait for the lock behind it.
            self.db.conn.interrupt()
        self.load_first_page(self.query_state, self.generation)

    @work(thread=True, exclusive=True, group="load")
    def load_first_page(self, query: data.ViewQuery, generation: int) -> None:
        try:
            with self.db_lock:
                self.page_query_running.set()
                try:
                    result = data.page(self.db, query)
                finally:
                    self.page_query_running.clear()
        except SentinelError as exc:
            if generation == self.generation:  # an interrupted, superseded query is no error
                self.call_from_thread(self.show_message, str(exc), True)
            return
        if not get_current_worker().is_cancelled:
            self.call_from_thread(self.show_first_page, result, generation)

    def show_first_page(self, result: data.Page, generation: int) -> None:
        if generation != self.generation:
            return
        self.rows = result.rows
        self.more = result.more
        self.render_rows(follow=True)
        if self.rows:
            self.table.move_cursor(row=0, animate=False)
        self.update_status()
        self.first_page_shown.set()

    def poll_new_rows(self) -> None:
        if self.paused or not self.first_page_shown.is_set():
            return
        top = self.rows[0]["seq"] if self.rows else 0
        self.load_newer(self.query_state, self.generation, top)

    @work(thread=True, exclusive=True, group="tail")
    def load_newer(self, query: data.ViewQuery, generation: int, after_seq: int) -> None:
        try:
            with self.db_lock:
                result = data.newer(self.db, query, after_seq)
        except SentinelError:
            return  # the next poll tries again; a persistent error shows on reload
        if result.rows:
            self.call_from_thread(self.show_newer, result, generation, after_seq)

    def show_newer(self, result: data.Page, generation: int, after_seq: int) -> None:
        top = self.rows[0]["seq"] if self.rows else 0
        if generation != self.generation or self.paused or top != after_seq:
            return
        following = self.table.cursor_row <= 0
        if result.more:  # a burst larger than a page: start again from the newest page
            self.rows = result.rows
            self.more = True
            following = True
        else:
            self.rows = result.rows + self.rows
            if len(self.rows) > MAX_ROWS:
                del self.rows[MAX_ROWS:]
                self.more = True
        self.render_rows(follow=following)
        if following:
            self.table.move_cursor(row=0, animate=False)
        self.update_status()

    @on(DataTable.RowHighlighted, "#list")
    def on_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.cursor_row >= len(self.rows) - 1 and self.more and not self.loading_older and self.rows:
            self.loading_older = True
            self.load_older(self.query_state, self.generation, self.rows[-1]["seq"])
        if self.detail_pane.display and event.row_key is not None and event.row_key.value != str(self.detail_seq):
            self.load_detail(self.query_state.kind, int(event.row_key.value))

    @work(thread=True, exclusive=True, group="older")
    def load_older(self, query: data.ViewQuery, generation: int, before_seq: int) -> None:
        try:
            with self.db_lock:
                result = data.page(self.db, query, before_seq=before_seq)
        except SentinelError as exc:
            self.call_from_thread(self.show_message, str(exc), True)
            result = data.Page()
        self.call_from_thread(self.show_older, result, generation, before_seq)

    def show_older(self, result: data.Page, generation: int, before_seq: int) -> None:
        self.loading_older = False
        if generation != self.generation or not self.rows or self.rows[-1]["seq"] != before_seq:
            return
        self.more = result.more
        self.rows.extend(result.rows)
        kind = self.query_state.kind
        for row in result.rows:
            self.table.add_row(*row_cells(kind, row, self.column_keys), key=str(row["seq"]))
        self.update_status()

    # ------------------------------------------------------------------ selection and detail
    def selected_key(self) -> str | None:
        table = self.table
        if not table.row_count or table.cursor_row < 0:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def selected_row(self) -> dict[str, Any] | None:
        key = self.selected_key()
        if key is None:
            return None
        for row in self.rows:
            if str(row["seq"]) == key:
                return row
        return None

    @on(DataTable.RowSelected, "#list")
    def on_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            self.detail_pane.display = True
            self.load_detail(self.query_state.kind, int(event.row_key.value))

    @work(thread=True, exclusive=True, group="detail")
    def load_detail(self, kind: str, seq: int) -> None:
        try:
            with self.db_lock:
                renderable = self._detail_renderable(kind, seq)
        except SentinelError as exc:
            renderable = Text(str(exc), style="red")
        self.call_from_thread(self.show_detail, seq, renderable)

    def _detail_renderable(self, kind: str, seq: int) -> Any:
        row = data.full_row(self.db, kind, seq)
        if row is None:
            return Text("row %d is gone (retention?)" % seq, style="dim")
        if kind == data.ALERTS:
            event = data.event_by_id(self.db, row.get("event_id"))
            ancestors = data.ancestry_from_alert(row)
            if not ancestors and event is not None:
                ancestors = data.ancestry_from_processes(self.db, event.get("proc_pid"), event.get("proc_start_ns"))
            return alert_detail(row, event, ancestors, data.actions_for_alert(self.db, row["id"]))
        ancestors = data.ancestry_from_processes(self.db, row.get("proc_pid"), row.get("proc_start_ns"))
        return event_detail(row, ancestors, data.alerts_for_event(self.db, row["id"]))

    def show_detail(self, seq: int, renderable: Any) -> None:
        self.detail_seq = seq
        self.detail_view.update(renderable)
        self.detail_pane.scroll_home(animate=False)

    def action_close_detail(self) -> None:
        if self.focused is self.filter_input:
            self.table.focus()
            return
        self.close_detail()

    def close_detail(self) -> None:
        self.detail_pane.display = False
        self.detail_seq = None

    # ------------------------------------------------------------------ filters
    def action_focus_filter(self) -> None:
        self.filter_input.focus()

    def action_search(self) -> None:
        field = self.filter_input
        if not field.value.startswith("/"):
            field.value = "/"
        field.cursor_position = len(field.value)
        field.focus()

    @on(Input.Submitted, "#filter")
    def on_filter_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if text.startswith("/"):
            query = self.query_state.with_(search=text[1:], condition="")
        else:
            query = self.query_state.with_(condition=text, search="")
        error = self.filter_error
        try:
            query.where()
        except RuleError as exc:
            column = exc.location.col if exc.location is not None else 0
            error.update(error_with_caret(text, exc.message, column))
            error.display = True
            return
        error.display = False
        self.table.focus()
        self.set_query(query)

    def action_toggle_kind(self) -> None:
        self.action_show_kind(data.EVENTS if self.query_state.kind == data.ALERTS else data.ALERTS)

    def action_show_kind(self, kind: str) -> None:
        if kind != self.query_state.kind:
            self.set_query(self.query_state.with_(kind=kind, rule="", exec_id=None, time_window=None))

    def action_quick_rule(self) -> None:
        row = self.selected_row()
        if self.query_state.rule:
            self.set_query(self.query_state.with_(rule=""))
        elif row is not None and self.query_state.kind == data.ALERTS:
            self.set_query(self.query_state.with_(rule=row["rule"]))

    def action_quick_process(self) -> None:
        if self.query_state.proc_name:
            self.set_query(self.query_state.with_(proc_name=""))
            return
        row = self.selected_row()
        if row is None:
            return
        if self.query_state.kind == data.EVENTS:
            name = row.get("proc_name")
        else:
            self.quick_process_of_alert(row.get("event_id"))
            return
        if name:
            self.set_query(self.query_state.with_(proc_name=name))

    @work(thread=True, group="quick")
    def quick_process_of_alert(self, event_id: str | None) -> None:
        with self.db_lock:
            event = data.event_by_id(self.db, event_id)
        if event and event.get("proc_name"):
            self.call_from_thread(lambda: self.set_query(self.query_state.with_(proc_name=event["proc_name"])))

    def action_quick_priority(self) -> None:
        current = self.query_state.min_priority
        step = (PRIORITY_STEPS.index(current) + 1) % len(PRIORITY_STEPS) if current in PRIORITY_STEPS else 0
        self.set_query(self.query_state.with_(min_priority=PRIORITY_STEPS[step]))

    def action_quick_time(self) -> None:
        self.time_range = (self.time_range + 1) % len(data.TIME_RANGES)
        seconds = data.TIME_RANGES[self.time_range][1]
        since = None if seconds is None else time.time_ns() - seconds * data.NS
        self.set_query(self.query_state.with_(since_ns=since))

    def action_clear_filters(self) -> None:
        self.time_range = 0
        self.filter_input.value = ""
        self.filter_error.display = False
        self.set_query(data.ViewQuery(kind=self.query_state.kind))

    def action_surrounding_events(self) -> None:
        row = self.selected_row()
        if row is not None:
            self.surrounding_of(self.query_state.kind, row)

    @work(thread=True, group="quick")
    def surrounding_of(self, kind: str, row: dict[str, Any]) -> None:
        event: dict[str, Any] | None = row
        if kind == data.ALERTS:
            with self.db_lock:
                event = data.event_by_id(self.db, row.get("event_id"))
            if event is None:
                self.call_from_thread(self.show_message, "this alert has no stored event", True)
                return
        query = data.surrounding_events_query(event)
        self.call_from_thread(self.set_query, query)

    # ------------------------------------------------------------------ pause, help, summary
    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self.update_status()
        if not self.paused:
            self.poll_new_rows()

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.BINDINGS))

    def action_summary(self) -> None:
        self.push_screen(SummaryScreen(self.db_path, self.socket_path))

    # ------------------------------------------------------------------ actions through the agent
    def target_process(self, callback) -> None:
        """Find the selected row's process (pid, start_ns, name, exepath) and pass it on."""
        row = self.selected_row()
        if row is None:
            self.show_message("nothing selected", True)
            return
        self.resolve_process(self.query_state.kind, row, callback)

    @work(thread=True, group="quick")
    def resolve_process(self, kind: str, row: dict[str, Any], callback) -> None:
        with self.db_lock:
            event = data.event_by_id(self.db, row.get("event_id")) if kind == data.ALERTS else data.full_row(self.db, kind, row["seq"])
        if event is None or not event.get("proc_pid"):
            self.call_from_thread(self.show_message, "no process is recorded for this row", True)
            return
        alert_id = row.get("id") if kind == data.ALERTS else None
        self.call_from_thread(callback, event, alert_id)

    def action_kill(self) -> None:
        def confirm(event: dict[str, Any], alert_id: str | None) -> None:
            question = Text.assemble("Kill process ", safe(event.get("proc_name"), "bold"), " pid %s?" % event.get("proc_pid"))
            args = {"pid": event.get("proc_pid"), "start_ns": event.get("proc_start_ns"), "alert_id": alert_id}
            self.push_screen(ConfirmScreen(question), lambda yes: yes and self.send_command("kill", args))

        self.target_process(confirm)

    def action_deny(self) -> None:
        def confirm(event: dict[str, Any], alert_id: str | None) -> None:
            path = event.get("proc_exepath") or event.get("proc_exe")
            question = Text.assemble("Deny executing ", safe(path, "bold"), " from now on?")
            args = {"kind": "exec", "target": path, "alert_id": alert_id}
            self.push_screen(ConfirmScreen(question), lambda yes: yes and self.send_command("deny", args))

        self.target_process(confirm)

    def action_acknowledge(self) -> None:
        row = self.selected_row()
        if row is None or self.query_state.kind != data.ALERTS:
            self.show_message("select an alert to acknowledge", True)
            return
        question = Text.assemble("Acknowledge alert ", safe(row.get("rule"), "bold"), "?")
        self.push_screen(
            ConfirmScreen(question), lambda yes: yes and self.send_command("ack", {"alert_ids": [row["id"]]})
        )

    @work(thread=True, group="command")
    def send_command(self, command: str, args: dict[str, Any]) -> None:
        if not self.socket_path:
            self.call_from_thread(self.show_message, "%s: no control socket configured (--socket)" % command, True)
            return
        try:
            result = request(self.socket_path, command, timeout=10.0, **args)
        except (ControlError, OSError, ValueError) as exc:
            self.call_from_thread(self.show_message, "%s refused: %s" % (command, exc), True)
            return
        self.call_from_thread(self.show_message, "%s: %s" % (command, result))
        if command == "ack":
            self.call_from_thread(self.reload)

    # ------------------------------------------------------------------ export
    def action_export(self) -> None:
        default = os.path.join(os.getcwd(), "sentinel-%s-%s.jsonl" % (self.query_state.kind, time.strftime("%Y%m%dT%H%M%S")))
        self.push_screen(ExportScreen(default), lambda path: path and self.export_to(path))

    @work(thread=True, group="export")
    def export_to(self, path: str) -> None:
        try:
            with self.db_lock:
                rows = data.export_rows(self.db, self.query_state)
            count = data.write_json_lines(rows, path)
        except (SentinelError, OSError) as exc:
            self.call_from_thread(self.show_message, "export failed: %s" % exc, True)
            return
        self.call_from_thread(self.show_message, "exported %d rows to %s" % (count, path))


def run(db_path: str, socket_path: str = "") -> None:
    SentinelApp(db_path, socket_path).run()
