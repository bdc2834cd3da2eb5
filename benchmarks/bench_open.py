"""Cost of the open sensor on the densest open stream, and delivery under a storm, in one run.

A C loop (benchmarks/open_loop.c, compiled here with gcc, pinned to one CPU) opens and
closes one file N times. Prints, as ratios to the loop without any BPF program:
- an EMPTY program pair on the same hooks (sys_enter_openat + sys_exit_openat): the floor
  any tracepoint sensor pays;
- sentinel with the open filter keeping those opens in the kernel (the file is outside the
  rules' path prefixes): the cost of an uninteresting open, also as the exit program's mean
  run time from the kernel's BPF statistics (steadier than the loop when the machine is busy);
- sentinel with a selector dropping those opens before any path walk (rules that only match
  opens for writing; the loop opens for reading);
- sentinel with the filter off (every open decoded in this process);
- the filtered sensor plus the 32-bit syscall watch (a program on every syscall's entry);
and, for a storm of matching opens (every one passes the filter), the records delivered vs
generated and the records the kernel counted as lost (ring buffer full).

Run: .venv/bin/python -m benchmarks.bench_open [--iterations N] [--rounds R] [--storm N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from sentinel.config import Config
from sentinel.events import abi
from sentinel.events.interest import ACCMODES_WRITE, Interest, OpenSelectors
from sentinel.kernel import loader
from sentinel.sensor import Sensor

LOOP_SOURCE = Path(__file__).resolve().parent / "open_loop.c"
FILTERED_PATH = "/etc/hostname"  # outside the prefixes below: kept in the kernel
EMPTY_PROGRAMS = """
int snt_bench_enter(void *ctx) { return 0; }
int snt_bench_exit(void *ctx) { return 0; }
"""
CPU = 0


def build_loop(directory: str) -> str:
    binary = os.path.join(directory, "open_loop")
    subprocess.run(["gcc", "-O2", "-o", binary, str(LOOP_SOURCE)], check=True)
    return binary


def ns_per_open(binary: str, iterations: int, path: str) -> float:
    out = subprocess.run(["taskset", "-c", str(CPU), binary, str(iterations), path], check=True, capture_output=True, text=True)
    return float(out.stdout)


class EmptyPrograms:
    """Empty programs on sys_enter_openat / sys_exit_openat, attached on demand."""

    def __init__(self) -> None:
        self.bpf = loader.compile_text(EMPTY_PROGRAMS, ())

    def attach(self) -> None:
        self.bpf.attach_tracepoint(tp=b"syscalls:sys_enter_openat", fn_name=b"snt_bench_enter")
        self.bpf.attach_tracepoint(tp=b"syscalls:sys_exit_openat", fn_name=b"snt_bench_exit")

    def detach(self) -> None:
        self.bpf.detach_tracepoint(tp=b"syscalls:sys_enter_openat")
        self.bpf.detach_tracepoint(tp=b"syscalls:sys_exit_openat")


def with_sensor(interest: Interest, measure):
    sensor = Sensor(Config(), interest)
    sensor.start(bootstrap=False)
    try:
        return measure(sensor)
    finally:
        sensor.close()


def storm(binary: str, count: int, path: str) -> dict:
    """Run the loop on a matching path with the sensor draining in this process."""
    interest = Interest(event_types=frozenset({"openat"}), open_path_prefixes=(os.path.dirname(path) + "/",))

    def measure(sensor: Sensor) -> dict:
        child = subprocess.Popen(["taskset", "-c", str(CPU), binary, str(count), path], stdout=subprocess.PIPE, text=True)
        delivered = 0
        quiet_since = None
        while True:
            events = sensor.poll(0.05)
            delivered += sum(1 for e in events if e.type == "openat" and e.proc.pid == child.pid)
            if child.poll() is None:
                continue
            if events:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 1.0:
                break
        ns = float(child.stdout.read())
        seen, sent = sensor.open_counts()
        return {"delivered": delivered, "lost": sensor.lost().get(abi.OP_SYSCALL, 0), "ns": ns, "kernel_sent": sent}

    return with_sensor(interest, measure)


STATS_SWITCH = "/proc/sys/kernel/bpf_stats_enabled"


@contextlib.contextmanager
def program_stats():
    """Mean run time (ns) of each snt_sys_* program while the block runs, from the kernel's
    own BPF statistics: the in-kernel cost, which other load on the machine hardly moves."""
    def snapshot() -> dict[int, dict]:
        shown = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout)
        return {p["id"]: p for p in shown if p.get("name", "").startswith("snt_sys")}

    stats: dict[str, float] = {}
    previous = Path(STATS_SWITCH).read_text().strip()
    Path(STATS_SWITCH).write_text("1")
    try:
        before = snapshot()
        yield stats
        after = snapshot()
    finally:
        Path(STATS_SWITCH).write_text(previous)
    for prog_id, prog in after.items():
        runs = prog.get("run_cnt", 0) - before.get(prog_id, {}).get("run_cnt", 0)
        if runs:
            stats[prog["name"]] = (prog.get("run_time_ns", 0) - before.get(prog_id, {}).get("run_time_ns", 0)) / runs


def overheads(binary: str, iterations: int, rounds: int, matching: str) -> dict:
    """Per round, each configuration against the mean of the baselines just before and after
    it (the machine's speed drifts when other work runs); the median ratio over rounds."""
    lifecycle = Interest()
    configurations = {
        "filtered": Interest(event_types=frozenset({"openat"}), open_path_prefixes=(os.path.dirname(matching) + "/",)),
        "selector": Interest(event_types=frozenset({"openat"}), open_path_prefixes=(os.path.dirname(matching) + "/",),
                             open_selectors=OpenSelectors(accmodes=ACCMODES_WRITE)),
        "unfiltered": Interest(event_types=frozenset({"openat"})),
        "compat": Interest(event_types=frozenset({"openat", "compat_syscall"}), open_path_prefixes=(os.path.dirname(matching) + "/",)),
    }
    empty = EmptyPrograms()
    ratios: dict[str, list[float]] = {"empty": [], "filtered": [], "selector": [], "unfiltered": [], "compat": []}
    baselines = []
    sensor = Sensor(Config(), lifecycle)
    sensor.start(bootstrap=False)
    try:
        run = lambda: ns_per_open(binary, iterations, FILTERED_PATH)  # noqa: E731
        run()  # warm the page cache
        for _ in range(rounds):
            for name in ratios:
                before = run()
                if name == "empty":
                    empty.attach()
                else:
                    sensor.update_interest(configurations[name])
                measured = run()
                if name == "empty":
                    empty.detach()
                else:
                    sensor.update_interest(lifecycle)
                after = run()
                baselines += [before, after]
                ratios[name].append(measured / ((before + after) / 2))
        sensor.update_interest(configurations["selector"])
        with program_stats() as selector_stats:
            run()
        sensor.update_interest(configurations["filtered"])
        seen_before, sent_before = sensor.open_counts()
        with program_stats() as stats:
            run()
        seen, sent = sensor.open_counts()
    finally:
        sensor.close()
        empty.bpf.cleanup()
    result = {name: statistics.median(values) for name, values in ratios.items()}
    result["base_ns"] = statistics.median(baselines)
    result["filter_seen"], result["filter_sent"] = seen - seen_before, sent - sent_before
    result["exit_ns"] = stats.get("snt_sys_exit", 0.0)
    result["selector_exit_ns"] = selector_stats.get("snt_sys_exit", 0.0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--storm", type=int, default=300_000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-open-") as directory:
        binary = build_loop(directory)
        matching = os.path.join(directory, "match", "file")
        os.makedirs(os.path.dirname(matching))
        Path(matching).write_text("x")
        measured = overheads(binary, options.iterations, options.rounds, matching)
        stormed = storm(binary, options.storm, matching)
    print("open+close loop, %d iterations x %d rounds, CPU time per open, pinned to CPU %d" % (options.iterations, options.rounds, CPU))
    print("  no sensor                         %7.1f ns/open (median baseline)" % measured["base_ns"])
    print("  empty programs on the same hooks  %.2fx  (the floor)" % measured["empty"])
    print("  sentinel, opens filtered out      %.2fx  (exit program %.0f ns per open by the kernel's BPF stats; "
          "%d opens seen during one loop, %d sent)"
          % (measured["filtered"], measured["exit_ns"], measured["filter_seen"], measured["filter_sent"]))  # fmt: skip
    print("  sentinel, dropped by a selector   %.2fx  (exit program %.0f ns per open: access mode checked before the path walk)"
          % (measured["selector"], measured["selector_exit_ns"]))  # fmt: skip
    print("  sentinel, open filter off         %.2fx  (every open sent to userspace and decoded)" % measured["unfiltered"])
    print("  filtered + compat-syscall watch   %.2fx  (raw_syscalls:sys_enter on every syscall)" % measured["compat"])
    print("storm of %d matching opens (%.1f ns/open while draining)" % (options.storm, stormed["ns"]))
    print("  delivered %d of %d generated (%.1f%%), kernel sent %d, lost (ring buffer full) %d"
          % (stormed["delivered"], options.storm, 100.0 * stormed["delivered"] / options.storm, stormed["kernel_sent"], stormed["lost"]))  # fmt: skip


if __name__ == "__main__":
    main()
