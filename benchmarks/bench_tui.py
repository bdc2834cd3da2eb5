"""The TUI on a 1,000,000-event store: time to the first screen and from Enter on a filter to
its first page in the list, measured through Textual's Pilot (headless, the same app code).

    .venv/bin/python -m benchmarks.bench_tui [--events N] [--db PATH]

Targets: first screen < 1 s; an indexed filter (proc.name = x) < 200 ms. A `contains`
filter cannot use an index: it scans from the newest row until a page is full, so its cost
depends on how rare the match is (both a common and a rare one are shown).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from sentinel.tui import data
from sentinel.tui.app import SentinelApp
from sentinel.tui.sample import write_bulk

REPEATS = 3


async def _wait(pilot, predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the TUI did not show the page")
        await pilot.pause(0.002)


async def first_screen(db_path: str) -> float:
    started = time.perf_counter()
    app = SentinelApp(db_path, poll_seconds=3600)
    async with app.run_test(size=(120, 40)) as pilot:
        await _wait(pilot, app.first_page_shown.is_set)
        shown = time.perf_counter()
        assert app.rows, "the first page is empty"
        return shown - started


async def filter_times(db_path: str, kind_key: str, conditions: list[str]) -> dict[str, list[float]]:
    """Per condition: seconds from pressing Enter in the filter bar to the first page shown."""
    app = SentinelApp(db_path, poll_seconds=3600)
    results: dict[str, list[float]] = {c: [] for c in conditions}
    shown_at = [0.0]
    show_first_page = app.show_first_page

    def timed_show_first_page(*args):
        # Pilot.press() itself waits ~300 ms for the app to settle: time the page's arrival
        # in the table instead of press()'s return.
        show_first_page(*args)
        shown_at[0] = time.perf_counter()

    app.show_first_page = timed_show_first_page
    async with app.run_test(size=(120, 40)) as pilot:
        await _wait(pilot, app.first_page_shown.is_set)
        await pilot.press(kind_key)
        await _wait(pilot, app.first_page_shown.is_set)
        for _ in range(REPEATS):
            for condition in conditions:
                await pilot.press("c")  # clear, so every filter starts from the unfiltered view
                await _wait(pilot, lambda: not app.query_state.condition and app.first_page_shown.is_set())
                await pilot.press("f")
                app.query_one("#filter").value = condition
                started = time.perf_counter()
                await pilot.press("enter")
                await _wait(pilot, lambda: app.query_state.condition == condition and app.first_page_shown.is_set())
                results[condition].append(shown_at[0] - started)
                if not app.rows:
                    raise AssertionError("no rows for %r: the benchmark data does not match it" % condition)
    return results


def cold_start_in_tmux(db_path: str, run: int) -> float | None:
    """Seconds from starting `sentinel tui` (a new Python process) until a tmux terminal shows
    its first alert row; None without tmux."""
    if shutil.which("tmux") is None:
        return None
    session = "bench-tui-%d-%d" % (os.getpid(), run)
    command = "env -u COLUMNS -u LINES %s -m sentinel.cli tui --db %s" % (sys.executable, db_path)
    started = time.perf_counter()
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", command], check=True)
    try:
        while time.perf_counter() - started < 30:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
            if "Bulk rule" in screen:
                return time.perf_counter() - started
            time.sleep(0.01)
        raise TimeoutError("sentinel tui showed no alert in 30 s")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--db", help="reuse (or create) this store instead of a temporary one")
    options = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="bench-tui-")
    db_path = options.db or os.path.join(directory, "events.db")
    if not os.path.exists(db_path):
        started = time.perf_counter()
        write_bulk(db_path, options.events)
        print("wrote %d events (+ %d alerts) in %.1f s, %.0f MB" % (
            options.events, options.events // 1000, time.perf_counter() - started, os.path.getsize(db_path) / 1e6))
    starts = [asyncio.run(first_screen(db_path)) for _ in range(REPEATS)]
    print("time to first screen (app start -> alerts page shown): median %.0f ms (runs: %s)" % (
        statistics.median(starts) * 1000, ", ".join("%.0f" % (s * 1000) for s in starts)))
    colds = [cold_start_in_tmux(db_path, run) for run in range(REPEATS)]
    if colds[0] is not None:
        print("time to first screen (new `sentinel tui` process -> first alert row in tmux): median %.0f ms (runs: %s)" % (
            statistics.median(colds) * 1000, ", ".join("%.0f" % (c * 1000) for c in colds)))
    event_filters = [
        "proc.name = proc07",  # indexed: events_name_time
        "proc.name = proc07 and fd.name contains file9",  # indexed, then a check per row
        "fd.name contains 7",  # contains, common: a page fills after a few hundred rows
        "fd.name contains file999999",  # contains, rare: scans the whole table
    ]
    for condition, times in asyncio.run(filter_times(db_path, "2", event_filters)).items():
        print("events filter %-48r Enter -> first page: median %6.0f ms" % (condition, statistics.median(times) * 1000))
    db = data.open_store(db_path)
    summaries = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        result = data.summary(db)
        summaries.append(time.perf_counter() - started)
    print("summary (events/s a minute, alerts per rule, top processes) over %d events in its window: median %.0f ms" % (
        round(sum(result.events_per_second) * 60), statistics.median(summaries) * 1000))
    alert_filters = ["proc.name = proc00"]  # every alert is on a proc00 event  # alerts filter through their event (EXISTS on events.id)
    for condition, times in asyncio.run(filter_times(db_path, "1", alert_filters)).items():
        print("alerts filter %-48r Enter -> first page: median %6.0f ms" % (condition, statistics.median(times) * 1000))


if __name__ == "__main__":
    main()
