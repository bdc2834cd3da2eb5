"""Process table: memory per process and the cost of each operation, measured in one run.

Prints:
- bytes per stored process (tracemalloc) for N processes built the way the sensor builds
  them (unique argv, exe paths and cwds from a realistic pool), with ancestry;
- bytes per retained exited process, and the table's memory for the exited processes of
  5 s at 5,000 execs/s, on processes decoded from kernel records of bench_exec's loop;
- the time of a full garbage-collector pass over such a table;
- the cost of lookup (hit, exited hit, placeholder), on_fork, on_exec (cgroup given by the
  kernel record, and read from /proc/<pid>/cgroup), on_exit;
- bootstrap and reconcile over this machine's /proc, and one reconcile step (the longest
  the pipeline waits for it).

Run: .venv/bin/python -m benchmarks.bench_proctable [--processes N]
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc

from benchmarks.bench_decode import loop_records, seeded_table
from sentinel.config import SensorConfig
from sentinel.enrich.proctable import ProcessTable
from sentinel.events.decode import Decoder
from sentinel.events.model import Event, Process

SECOND_NS = 1_000_000_000
EXEPATHS = [
    "/usr/bin/%s" % name for name in ("bash", "python3", "sleep", "cat", "grep", "sed", "awk", "curl", "git", "make")
]
CWDS = ["/", "/root", "/home/alice", "/srv/app", "/tmp"]


def kernel_exec(pid: int, start_ns: int, ppid: int, n: int) -> Event:
    exepath = EXEPATHS[n % len(EXEPATHS)]
    proc = Process(
        pid,
        start_ns,
        ppid=ppid,
        comm=exepath.rsplit("/", 1)[1],
        exe=exepath.rsplit("/", 1)[1],
        exepath=exepath,
        filename=exepath,
        args=("--job", "%d" % n, "/var/lib/app/input-%d.json" % n),
        cwd=CWDS[n % len(CWDS)],
        env=("PATH=/usr/local/bin:/usr/bin:/bin",),
        uid=1000,
        euid=1000,
        gid=1000,
        egid=1000,
        cgroup="/user.slice/user-1000.slice/session-1.scope",
        container_id="host",
        exec_syscall="execve",
    )
    return Event("execve", proc, boot_ns=start_ns)


def populate(table: ProcessTable, count: int, base_pid: int = 100_000) -> list[Process]:
    """`count` processes: shells (1 in 50) each with up to 49 children, under pid 1's image."""
    init = table.on_exec(kernel_exec(1, SECOND_NS, 0, 0))
    procs = []
    shell = init
    for n in range(count):
        pid = base_pid + n
        start = 2 * SECOND_NS + n * 1000
        parent = init if n % 50 == 0 else shell
        table.on_fork(parent.pid, parent.start_ns, pid, start, False)
        proc = table.on_exec(kernel_exec(pid, start, parent.pid, n))
        if n % 50 == 0:
            shell = proc
        procs.append(proc)
    return procs


def measure_memory(count: int) -> float:
    table = ProcessTable(SensorConfig(process_table_max=count + 10))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    procs = populate(table, count)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # the `procs` list itself is the benchmark's, not the table's
    return (grown - (56 + 8 * len(procs))) / count


def measure_exited(execs: int, retained_max: int | None = None) -> tuple[float, int]:
    """(bytes per retained exited process, how many are retained) after `execs` fork+exec+exit
    of bench_exec's loop decoded from kernel records: what 5 s of exited processes cost
    the agent. tracemalloc, after a warm-up that fills the decoder's shared caches."""
    records = loop_records(execs + 100)
    table = seeded_table(records)()
    if retained_max is not None:
        table.exited_max = retained_max
    decode = Decoder(table, lambda ns: ns).decode
    for record in records[:300]:
        decode(record)
    exited_before = table.stats()["exited"]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for record in records[300:]:
        decode(record)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    retained = table.stats()["exited"] - exited_before
    return grown / retained, table.stats()["exited"]


def per_op_us(fn, repeat: int) -> float:
    started = time.perf_counter()
    for i in range(repeat):
        fn(i)
    return (time.perf_counter() - started) / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=50_000)
    count = parser.parse_args().processes

    print("memory: %.0f bytes per process (%d processes, tracemalloc)" % (measure_memory(count), count))
    config = SensorConfig()
    rate, grace = 5_000, config.process_exit_grace_seconds
    execs = int(rate * grace)
    per_exited, retained = measure_exited(execs, retained_max=execs + 1000)
    print(
        "memory: %.0f bytes per retained exited process (%d execs of bench_exec's loop decoded from"
        " records, every exited one retained, tracemalloc)" % (per_exited, retained)
    )
    per_exited, retained = measure_exited(execs)
    print(
        "memory at %d execs/s for the %.0f s grace: %d exited processes retained (process_exited_max %d),"
        " %.0f bytes each, %.1f MB"
        % (rate, grace, retained, config.process_exited_max, per_exited, per_exited * retained / 1e6)
    )

    table = ProcessTable(SensorConfig(process_table_max=count * 3))
    procs = populate(table, count)
    started = time.perf_counter()
    gc.collect()
    print(
        "full gc pass over the table: %.0f ms (a pipeline pause whenever gen 2 runs)"
        % ((time.perf_counter() - started) * 1e3)
    )
    sample = procs[count // 2]
    print(
        "lookup hit (pid, start):   %.2f us" % per_op_us(lambda i: table.lookup(sample.pid, sample.start_ns), 200_000)
    )
    print("lookup hit (pid only):     %.2f us" % per_op_us(lambda i: table.lookup(sample.pid), 200_000))

    base = 1_000_000
    fork_us = per_op_us(lambda i: table.on_fork(sample.pid, sample.start_ns, base + i, 10**15 + i, False), 20_000)
    print("on_fork:                   %.2f us" % fork_us)
    execs = [kernel_exec(base + i, 10**15 + i, sample.pid, i) for i in range(20_000)]
    exec_us = per_op_us(lambda i: table.on_exec(execs[i]), 20_000)
    print("on_exec (kernel cgroup):   %.2f us" % exec_us)
    exit_us = per_op_us(lambda i: table.on_exit(base + i, 10**15 + i, 0, 0), 20_000)
    print("on_exit:                   %.2f us" % exit_us)
    retained = min(20_000, table.exited_max)  # the most recent exits: the others were trimmed

    def late_lookup(i: int) -> None:
        n = 19_999 - i % retained
        table.lookup(base + n, 10**15 + n)

    print("lookup exited (late evt):  %.2f us" % per_op_us(late_lookup, 20_000))

    me = table.lookup(os.getpid())

    own_execs = [kernel_exec(os.getpid(), me.start_ns, me.ppid, i) for i in range(5_000)]
    for event in own_execs:
        event.proc.cgroup = ""
    print("on_exec (cgroup from /proc): %.2f us" % per_op_us(lambda i: table.on_exec(own_execs[i]), 5_000))
    print("lookup gone -> placeholder: %.2f us" % per_op_us(lambda i: table.lookup(4_000_000 + i, 5), 5_000))

    fresh = ProcessTable()
    started = time.perf_counter()
    events = fresh.bootstrap()
    bootstrap_ms = (time.perf_counter() - started) * 1e3
    each_us = bootstrap_ms * 1e3 / len(events)
    print("bootstrap of this machine: %.1f ms for %d processes (%.0f us each)" % (bootstrap_ms, len(events), each_us))
    started = time.perf_counter()
    fresh.reconcile()
    print("reconcile of this machine: %.1f ms" % ((time.perf_counter() - started) * 1e3))
    pid = os.getpid()
    slice_size = fresh.reconcile_slice
    step_ms = per_op_us(lambda i: fresh.procfs.start_ns(pid), slice_size) * slice_size / 1e3
    print("reconcile step (%d live entries, one stat read each): %.1f ms" % (slice_size, step_ms))
    print("counters:", table.stats())


if __name__ == "__main__":
    main()
