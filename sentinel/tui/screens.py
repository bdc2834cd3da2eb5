"""The TUI's secondary screens: help, confirmation, export path prompt, activity summary."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Input, Label, Sparkline, Static

from sentinel.control import ControlError, request
from sentinel.tui import data
from sentinel.tui.render import safe


class HelpScreen(ModalScreen[None]):
    """Every key binding of the main screen, generated from its BINDINGS (one source)."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, bindings: list[Binding]) -> None:
        super().__init__()
        self.bindings_shown = bindings

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan")
        table.add_column()
        table.add_row("enter", "details of the selected row")
        for binding in self.bindings_shown:
            key = binding.key.replace("question_mark", "?").replace("slash", "/")
            table.add_row(key, binding.tooltip or binding.description)
        table.add_row("", "")
        table.add_row("filter bar", "rule language: proc.name = curl and fd.sip != 127.0.0.1")
        table.add_row("", "on alerts it tests the event that raised each alert")
        table.add_row("", "start with / for free-text search: /passwd")
        with Vertical(id="help"):
            yield Label("sentinel tui: keys", classes="title")
            yield Static(table)
            yield Label("escape closes", classes="hint")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no before an action that changes the host (kill, deny) or the record (ack)."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: Text) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(self.question)
            yield Button("Yes (y)", id="yes", variant="error")
            yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class ExportScreen(ModalScreen[str | None]):
    """Asks for the file the current view is written to, as JSON lines."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, default_path: str) -> None:
        super().__init__()
        self.default_path = default_path

    def compose(self) -> ComposeResult:
        with Vertical(id="export"):
            yield Label("Export the current view as JSON lines to:")
            yield Input(value=self.default_path, id="export-path")
            yield Label("enter writes, escape cancels", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class SummaryScreen(Screen[None]):
    """Events/s and alerts per rule over the last half hour, top processes, the agent's losses."""

    BINDINGS = [
        Binding("escape,s", "app.pop_screen", "Back"),
        Binding("ctrl+r", "refresh_summary", "Refresh"),
    ]
    MAX_RULES = 6

    REFRESH_SECONDS = 10.0

    def __init__(self, db_path: str, socket_path: str) -> None:
        super().__init__()
        # Its own connection: a summary of a busy store must not hold up the live list.
        self.db = data.open_store(db_path)
        self.socket_path = socket_path

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="summary"):
            yield Label("events/s, last 30 minutes (one bar a minute)", classes="title", id="eps-title")
            yield Sparkline([0], id="eps")
            yield Vertical(id="rules")
            yield Label("top processes (events, last 30 minutes)", classes="title", id="top-title")
            yield Static(id="top")
            yield Label("agent", classes="title")
            yield Static("asking the agent…", id="agent")
        yield Footer()

    def on_mount(self) -> None:
        self.action_refresh_summary()
        self.set_interval(self.REFRESH_SECONDS, self.action_refresh_summary)

    def action_refresh_summary(self) -> None:
        self.load_summary()
        self.load_agent_status()

    @work(thread=True, exclusive=True, group="summary")
    def load_summary(self) -> None:
        result = data.summary(self.db)
        self.app.call_from_thread(self.show_summary, result)

    def show_summary(self, result: data.Summary) -> None:
        rates = result.events_per_second
        self.query_one("#eps", Sparkline).data = rates
        self.query_one("#eps-title", Label).update(
            "events/s, last %d minutes (one bar a minute): now %.1f, peak %.1f" % (result.minutes, rates[-1], max(rates))
        )
        rules = self.query_one("#rules", Vertical)
        rules.remove_children()
        busiest = sorted(result.alerts_per_rule.items(), key=lambda item: -sum(item[1]))[: self.MAX_RULES]
        widgets = []
        for rule, counts in busiest:
            widgets.append(Label(Text.assemble(safe(rule, "bold"), "  %d alerts" % sum(counts))))
            widgets.append(Sparkline(counts, classes="rule-spark"))
        if not widgets:
            widgets.append(Label("no alerts in the last %d minutes" % result.minutes, classes="hint"))
        rules.mount_all(widgets)
        self.query_one("#top-title", Label).update(
            "top processes (newest %d events of the last %d minutes)" % (result.top_sample, result.minutes)
        )
        table = Table.grid(padding=(0, 2))
        table.add_column(justify="right")
        table.add_column()
        for name, count in result.top_processes:
            table.add_row(str(count), safe(name))
        self.query_one("#top", Static).update(table if result.top_processes else Text("no events", style="dim"))

    @work(thread=True, exclusive=True, group="agent-status")
    def load_agent_status(self) -> None:
        if not self.socket_path:
            self.app.call_from_thread(self.show_agent_status, None, "no control socket configured")
            return
        try:
            status = request(self.socket_path, "status", timeout=2.0)
        except (ControlError, OSError, ValueError) as exc:
            self.app.call_from_thread(self.show_agent_status, None, str(exc))
            return
        self.app.call_from_thread(self.show_agent_status, status, "")

    def show_agent_status(self, status: dict[str, Any] | None, error: str) -> None:
        widget = self.query_one("#agent", Static)
        if status is None:
            widget.update(Text.assemble(("agent not reachable", "bold red"), " (", safe(error), ")"))
            return
        store = status.get("store") or {}
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan")
        table.add_column()
        rows = (
            ("version", status.get("version")),
            ("uptime", "%s s" % status.get("uptime_seconds")),
            ("events/s (average)", status.get("events_per_second")),
            ("kernel records lost", status.get("kernel_lost")),
            ("records received", status.get("records_received")),
            ("store rows dropped", store.get("dropped")),
            ("store write errors", store.get("errors")),
        )
        for name, value in rows:
            table.add_row(name, safe(value))
        widget.update(table)
