"""Event store throughput: realistic exec/open/connect rows into SQLite, with a reader running.

Prints, from one run on this machine:
- the caller's cost per add_event (what the hot path pays),
- rows/s of raw executemany against sqlite-utils insert_all on the same rows (why the hot
  path uses executemany),
- end-to-end events/s through StoreWriter (thread) and StoreWriter(separate_process=True),
  each while another process queries the database every 50 ms,
- the share of one core the in-process writer needs for 20,000 events/s.

Run: .venv/bin/python -m benchmarks.bench_store [--events N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sqlite3
import tempfile
import time

import sqlite_utils

from sentinel.actions import record
from sentinel.actions.store import _INSERT_EVENTS, RowBuffer, StoragePolicy, Store, StoreWriter, open_readonly
from sentinel.config import StoreConfig
from sentinel.events.model import Event, Fd, Process

SECOND_NS = 1_000_000_000


def realistic_events(count: int) -> list[Event]:
    """A mix seen on a busy host: 40% execs, 40% opens (matched), 20% connects."""
    init = Process(1, 1, comm="systemd", exepath="/usr/lib/systemd/systemd", args=("--system",))
    shell = Process(
        4100,
        5 * SECOND_NS,
        comm="bash",
        exepath="/usr/bin/bash",
        args=("-c", "make -j2 all"),
        parent=init,
        ppid=1,
        user_name="builder",
        uid=1000,
        cwd="/home/builder/src/project",
    )
    events = []
    base = time.time_ns()
    for n in range(count):
        proc = Process(
            10_000 + n,
            (10 + n) * SECOND_NS,
            comm="cc1",
            exe="/usr/lib/gcc/x86_64-linux-gnu/12/cc1",
            exepath="/usr/lib/gcc/x86_64-linux-gnu/12/cc1",
            args=("-quiet", "-I", "include", "src/module_%d.c" % n, "-o", "/tmp/cc%06d.s" % n, "-O2", "-g"),
            parent=shell,
            ppid=shell.pid,
            uid=1000,
            gid=1000,
            user_name="builder",
            cwd="/home/builder/src/project",
            env=("PATH=/usr/local/bin:/usr/bin:/bin", "LD_LIBRARY_PATH=/opt/lib"),
            cap_permitted=0,
            exec_syscall="execve",
            filename="/usr/lib/gcc/x86_64-linux-gnu/12/cc1",
            exe_ino=1_234_567 + n,
        )
        kind = n % 5
        when = base + n * 1000
        if kind in (0, 1):
            event = Event("execve", proc, 0, {"filename": proc.filename}, time_ns=when)
        elif kind in (2, 3):
            fd = Fd(3, "file", "/home/builder/src/project/include/module_%d.h" % n, open_flags=0o2000000, ino=99 + n)
            event = Event("openat", proc, 3, {"flags": 0o2000000, "mode": 0, "dirfd": -100}, fd, time_ns=when)
        else:
            fd = Fd(
                4,
                "ipv4",
                "10.0.0.5:%d->93.184.216.34:443" % (40000 + n % 20000),
                l4proto="tcp",
                family=2,
                lip="10.0.0.5",
                lport=40000 + n % 20000,
                rip="93.184.216.34",
                rport=443,
            )
            event = Event("connect", proc, 0, {"addrlen": 16}, fd, time_ns=when)
        events.append(event)
    return events


def _reader(path: str, stop, counts) -> None:
    """Another process doing what the TUI does: count recent events by type, every 50 ms."""
    while not os.path.exists(path):
        time.sleep(0.01)
    db = open_readonly(path)
    while db.execute("PRAGMA user_version").fetchone()[0] == 0:  # the writer is still creating it
        time.sleep(0.01)
    queries, errors = 0, []
    while not stop.is_set():
        try:
            db.execute("SELECT evt_type, count(*) FROM events WHERE time > ? GROUP BY evt_type", (0,)).fetchall()
            db.execute("SELECT * FROM events ORDER BY time DESC LIMIT 50").fetchall()
            queries += 1
        except sqlite3.Error as exc:
            errors.append(str(exc))
        time.sleep(0.05)
    counts.put((queries, errors))


def _with_reader(path: str, work):
    context = multiprocessing.get_context("spawn")
    stop, counts = context.Event(), context.Queue()
    reader = context.Process(target=_reader, args=(path, stop, counts))
    reader.start()
    time.sleep(0.5)
    try:
        result = work()
    finally:
        stop.set()
        queries, errors = counts.get(timeout=60)
        if errors:
            print("reader errors:", sorted(set(errors)))
        reader.join()
    return result, queries


def bench_add_event(events: list[Event]) -> float:
    """µs per add_event() in the caller's thread (serialise to a row and append)."""
    buffer = RowBuffer(StoragePolicy())
    started = time.perf_counter()
    for event in events:
        buffer.add_event(event, True)
    return (time.perf_counter() - started) / len(events) * 1e6


def bench_raw_vs_insert_all(events: list[Event], directory: str) -> tuple[float, float]:
    rows = record.finish_event_rows([record.event_row(e, record.new_id(), True) for e in events])
    rates = []
    for name in ("raw", "insert_all"):
        path = os.path.join(directory, "compare-%s.db" % name)
        store = Store(path, StoreConfig())
        batch = StoreConfig().batch_size
        started = time.perf_counter()
        if name == "raw":
            for start in range(0, len(rows), batch):
                store.conn.execute("BEGIN")
                store.conn.executemany(_INSERT_EVENTS, rows[start : start + batch])
                store.conn.execute("COMMIT")
        else:
            db = sqlite_utils.Database(store.conn)
            dicts = [dict(zip(record.EVENT_COLUMNS, row)) for row in rows]
            started = time.perf_counter()  # building dicts is a cost of insert_all too, but be fair
            for start in range(0, len(dicts), batch):
                with db.conn:
                    db.conn.execute("BEGIN")
                    db["events"].insert_all(dicts[start : start + batch], batch_size=batch)
        rates.append(len(rows) / (time.perf_counter() - started))
        store.close()
    return rates[0], rates[1]


def _cpu_seconds_of(pid: int) -> float:
    """utime + stime of another process (the store process), from /proc."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_writer(events: list[Event], directory: str, separate_process: bool, rate: int | None) -> dict:
    """Offer `events` at `rate` per second (None: as fast as the caller can) to a StoreWriter.

    Unpaced, the queue is sized so nothing is dropped: that measures what SQLite sustains.
    Paced, the default queue is used: that shows whether the rate is sustainable.
    """
    mode = "process" if separate_process else "thread"
    path = os.path.join(directory, "writer-%s-%s.db" % (mode, rate or "max"))
    config = StoreConfig()

    def work():
        max_batches = 32 if rate else len(events) // config.batch_size + 2
        writer = StoreWriter(path, config, separate_process=separate_process, max_batches=max_batches)
        child = writer.status().get("store_process_pid")
        child_cpu_started = _cpu_seconds_of(child) if child else 0.0
        cpu_started = time.process_time()
        started = time.perf_counter()
        step = 200
        for first in range(0, len(events), step):
            if rate:
                due = started + first / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            for event in events[first : first + step]:
                writer.add_event(event, True)
        writer.flush()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        child_cpu = _cpu_seconds_of(child) - child_cpu_started if child else 0.0
        status = writer.status()
        writer.close()
        return {"elapsed_s": elapsed, "cpu_s": cpu, "child_cpu_s": child_cpu, **status}

    result, queries = _with_reader(path, work)
    result["reader_queries"] = queries
    with sqlite3.connect(path) as check:
        result["rows"] = check.execute("SELECT count(*) FROM events").fetchone()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=20_000, help="offered events/s for the paced runs")
    options = parser.parse_args()
    events = realistic_events(options.events)
    n = len(events)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as directory:
        per_add = bench_add_event(events)
        raw, insert_all = bench_raw_vs_insert_all(events, directory)
        runs = [
            (name, rate, bench_writer(events, directory, separate, rate))
            for rate in (None, options.rate)
            for name, separate in (("thread", False), ("process", True))
        ]
    print("events: %d (40%% execve, 40%% openat, 20%% connect), batch_size %d" % (n, StoreConfig().batch_size))
    print("add_event in the caller:      %6.2f us/event" % per_add)
    print("raw executemany:              %6.0f rows/s" % raw)
    print("sqlite-utils insert_all:      %6.0f rows/s  (raw / insert_all = %.2fx)" % (insert_all, raw / insert_all))
    for name, rate, result in runs:
        offered = "max" if rate is None else "%d/s" % rate
        print(
            "StoreWriter %-7s offered %-8s %6.0f events/s, %d stored, %d dropped; agent CPU %.1f us/event "
            "(%.0f%% of a core at %d/s), store process %.1f us/event; last batch %.0f ms; reader: %d rounds"
            % (
                name,
                offered,
                n / result["elapsed_s"],
                result["rows"],
                result["dropped"],
                result["cpu_s"] / n * 1e6,
                result["cpu_s"] / n * options.rate * 100,
                options.rate,
                result["child_cpu_s"] / n * 1e6,
                result["last_flush_seconds"] * 1e3,
                result["reader_queries"],
            )
        )


if __name__ == "__main__":
    main()
