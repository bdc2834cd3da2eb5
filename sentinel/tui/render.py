"""Rows and details as Rich renderables; every string from the store goes through `safe()`.

Strings from the monitored system (paths, argv, comm, even rule output that quotes them) may
hold terminal escapes, invalid UTF-8 or Rich markup such as `[bold]`. They become `Text`
objects (never parsed as markup) of `escape_for_terminal` output (never interpreted by the
terminal).
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from sentinel.textsafe import escape_for_terminal
from sentinel.tui.data import ALERTS, EVENTS, Ancestor

PRIORITY_STYLES = {
    "emergency": "bold white on red",
    "alert": "bold white on red",
    "critical": "bold red",
    "error": "red",
    "warning": "yellow",
    "notice": "cyan",
    "informational": "green",
    "debug": "dim",
}
PRIORITY_SHORT = {
    "emergency": "EMERG",
    "alert": "ALERT",
    "critical": "CRIT",
    "error": "ERROR",
    "warning": "WARN",
    "notice": "NOTE",
    "informational": "INFO",
    "debug": "DEBUG",
}


def safe(value: Any, style: str = "") -> Text:
    """Any stored value as inert text: escaped for the terminal, never read as markup."""
    if value is None:
        return Text("", style=style)
    if isinstance(value, bytes):
        text = escape_for_terminal(value)
    elif isinstance(value, str):
        text = escape_for_terminal(value)
    else:
        text = escape_for_terminal(json.dumps(value, default=str) if isinstance(value, dict | list) else str(value))
    return Text(text, style=style, no_wrap=True, end="")


def clock(time_ns: Any) -> str:
    """HH:MM:SS in UTC, as the store's `ts` column."""
    if not isinstance(time_ns, int):
        return ""
    return time.strftime("%H:%M:%S", time.gmtime(time_ns / 1e9))


def stamp(time_ns: Any) -> str:
    if not isinstance(time_ns, int):
        return ""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time_ns // 1_000_000_000))
    return "%s.%06dZ" % (whole, (time_ns % 1_000_000_000) // 1000)


# Per column: key, label, minimum width, its share of the spare width, and the terminal
# width from which it is shown at all (0: always; everything with 0 fits 80 columns).
_LAYOUT: dict[str, tuple[tuple[str, str, int, int, int], ...]] = {
    ALERTS: (
        ("time", "time", 8, 0, 0),
        ("ack", "A", 1, 0, 0),
        ("priority", "prio", 5, 0, 0),
        ("rule", "rule", 22, 2, 0),
        ("output", "output", 20, 5, 0),
        ("enforcement", "enforced", 10, 0, 120),
    ),
    EVENTS: (
        ("time", "time", 8, 0, 0),
        ("evt_type", "type", 8, 0, 0),
        ("proc_pid", "pid", 7, 0, 0),
        ("proc_name", "proc", 12, 1, 0),
        ("evt_res", "res", 7, 0, 100),
        ("user_name", "user", 8, 0, 110),
        ("target", "cmdline / target", 20, 6, 0),
    ),
}


def columns_for(kind: str, width: int) -> list[tuple[str, str, int]]:
    """(key, label, width) of the columns that fit `width` cells (each column has 2 of padding)."""
    shown = [c for c in _LAYOUT[kind] if width >= c[4]]
    used = sum(c[2] + 2 for c in shown) + 2  # + the scroll bar
    spare = max(width - used, 0)
    weights = sum(c[3] for c in shown) or 1
    result = []
    for key, label, base, weight, _ in shown:
        result.append((key, label, base + spare * weight // weights))
    return result


def row_cells(kind: str, row: dict[str, Any], keys: list[str]) -> list[Text]:
    """The cells of one list row for the columns `keys`."""
    cells = []
    for key in keys:
        if key == "time":
            cells.append(Text(clock(row.get("time")), style="dim"))
        elif key == "ack":
            cells.append(Text("✓" if row.get("acknowledged") else " ", style="green"))
        elif key == "priority":
            priority = str(row.get("priority") or "")
            cells.append(Text(PRIORITY_SHORT.get(priority, priority[:5].upper()), style=PRIORITY_STYLES.get(priority, "")))
        elif key == "rule":
            cells.append(safe(row.get("rule"), PRIORITY_STYLES.get(str(row.get("priority")), "")))
        elif key == "target":
            target = row.get("fd_name") or row.get("proc_cmdline")
            cells.append(safe(target))
        elif key == "evt_res":
            cells.append(safe(row.get("evt_res"), "" if row.get("evt_res") in (None, "SUCCESS") else "red"))
        elif key == "evt_type":
            cells.append(safe(row.get("evt_type"), "bold" if row.get("matched") else ""))
        else:
            cells.append(safe(row.get(key)))
    return cells


def ancestry_tree(process_label: Text, ancestors: list[Ancestor]) -> Tree:
    """Root (oldest ancestor) at the top, the process itself at the deepest level."""
    labels = [_ancestor_label(a) for a in reversed(ancestors)] + [process_label]
    tree = Tree(labels[0], guide_style="dim")
    node = tree
    for label in labels[1:]:
        node = node.add(label)
    return tree


def _ancestor_label(ancestor: Ancestor) -> Text:
    label = Text(no_wrap=True, overflow="ellipsis")  # one line per process: the tree stays readable
    label.append(safe(ancestor.comm or "?", "bold"))
    label.append(" [%s] " % ("?" if ancestor.pid is None else ancestor.pid), style="dim")
    label.append(safe(ancestor.cmdline or ancestor.exepath))
    return label


def _fields_table(row: dict[str, Any], skip: frozenset[str] = frozenset()) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in row.items():
        if name in skip or value is None or value == "":
            continue
        cell = safe(value)
        cell.no_wrap = False
        table.add_row(safe(name, "bold cyan"), cell)
    return table


def alert_detail(
    alert: dict[str, Any],
    event: dict[str, Any] | None,
    ancestors: list[Ancestor],
    actions: list[dict[str, Any]],
) -> RenderableType:
    """Rule, output, tags, enforcement outcome, the process ancestry and every field."""
    priority = str(alert.get("priority") or "")
    parts: list[RenderableType] = []
    title = Text()
    title.append(PRIORITY_SHORT.get(priority, priority.upper()) + " ", style=PRIORITY_STYLES.get(priority, ""))
    title.append(safe(alert.get("rule"), "bold"))
    title.append("  " + stamp(alert.get("time")), style="dim")
    if alert.get("acknowledged"):
        title.append("  acknowledged", style="green")
    parts.append(title)
    output = safe(alert.get("output"))
    output.no_wrap = False
    parts.append(Text.assemble(("output: ", "bold"), output))
    parts.append(Text("process ancestry:", style="bold"))
    proc = event or {}
    own = Text(no_wrap=True, overflow="ellipsis")
    own.append(safe(proc.get("proc_name") or (alert.get("output_fields") or {}).get("proc.name") or "?", "bold yellow"))
    own.append(" [%s] " % (proc.get("proc_pid") or "?"), style="dim")
    own.append(safe(proc.get("proc_cmdline") or ""))
    parts.append(ancestry_tree(own, ancestors))
    tags = alert.get("tags")
    if tags:
        parts.append(Text.assemble(("tags: ", "bold"), safe(", ".join(str(t) for t in tags) if isinstance(tags, list) else tags)))
    enforcement = alert.get("enforcement")
    parts.append(Text.assemble(("enforcement: ", "bold"), safe(enforcement) if enforcement else Text("none recorded", style="dim")))
    for action in actions:
        line = "  %s %s %s -> %s" % (action.get("ts") or "", action.get("kind"), action.get("target") or "", action.get("outcome") or "")
        parts.append(safe(line, "magenta"))
    fields = alert.get("output_fields")
    if isinstance(fields, dict) and fields:
        parts.append(Text("output fields:", style="bold"))
        parts.append(_fields_table(fields))
    parts.append(Text("alert:", style="bold"))
    parts.append(_fields_table(alert, skip=frozenset({"output_fields", "ancestry", "output", "tags"})))
    if event:
        parts.append(Text("event:", style="bold"))
        parts.append(_fields_table(event))
    else:
        parts.append(Text("(the event that raised it is not stored)", style="dim"))
    return Group(*parts)


def event_detail(event: dict[str, Any], ancestors: list[Ancestor], alerts: list[dict[str, Any]] = ()) -> RenderableType:
    """The event's process ancestry, the alerts it raised (rule, output, enforcement), every field."""
    title = Text()
    title.append(safe(event.get("evt_type"), "bold"))
    title.append(" " + stamp(event.get("time")), style="dim")
    title.append(" matched a rule" if event.get("matched") else " stored by type", style="dim")
    own = Text(no_wrap=True, overflow="ellipsis")
    own.append(safe(event.get("proc_name") or "?", "bold yellow"))
    own.append(" [%s] " % (event.get("proc_pid") or "?"), style="dim")
    own.append(safe(event.get("proc_cmdline") or ""))
    parts: list[RenderableType] = [title, Text("process ancestry:", style="bold"), ancestry_tree(own, ancestors)]
    for alert in alerts:
        priority = str(alert.get("priority") or "")
        line = Text.assemble(
            ("alert: ", "bold"),
            (PRIORITY_SHORT.get(priority, priority.upper()) + " ", PRIORITY_STYLES.get(priority, "")),
            safe(alert.get("rule"), "bold"),
            " ",
            safe(alert.get("output")),
        )
        line.no_wrap = False
        parts.append(line)
        if alert.get("enforcement"):
            parts.append(Text.assemble(("  enforcement: ", "bold"), safe(alert.get("enforcement"))))
    parts += [Text("fields:", style="bold"), _fields_table(event)]
    return Group(*parts)


def error_with_caret(condition: str, message: str, column: int) -> Text:
    """The condition with a caret under the column of the mistake, then the message."""
    shown = escape_for_terminal(condition)
    # Escaping can lengthen what precedes the column: place the caret in the shown text.
    prefix = escape_for_terminal(condition[: max(column - 1, 0)])
    text = Text(shown + "\n", style="")
    text.append(" " * len(prefix) + "^ ", style="bold red")
    text.append(escape_for_terminal(message), style="red")
    return text
