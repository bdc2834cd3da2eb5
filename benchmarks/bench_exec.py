"""Exec stream through the process sensor: delivery, overhead, start time and memory, in one run.

Two copies of a C loop (benchmarks/exec_loop.c, compiled here with gcc) fork+exec
/bin/true N times each, in parallel, alternately without the sensor and with a freshly
started one (decoding and the process table running in this process, as in the agent).
Prints:
- exec events delivered vs generated (and records the kernel counted as lost);
- loop slowdown with the sensor vs without (wall time of the two loops against the mean of
  the baselines just before and after; the median over rounds);
- time to READY (Sensor.start() until every program is attached) and the compile share;
- RSS of this process with the sensor loaded (bcc's LLVM is most of it).

Run: .venv/bin/python -m benchmarks.bench_exec [--iterations N] [--copies C] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from sentinel.config import Config
from sentinel.events.interest import Interest
from sentinel.sensor import Sensor

TARGET = "/bin/true"
DEVNULL_STDOUT = [(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)]
LOOP_SOURCE = Path(__file__).resolve().parent / "exec_loop.c"


def build_loop(directory: str) -> str:
    binary = os.path.join(directory, "exec_loop")
    subprocess.run(["gcc", "-O2", "-o", binary, str(LOOP_SOURCE)], check=True)
    return binary


def run_loops(binary: str, iterations: int, copies: int, while_waiting=None) -> dict:
    """Start `copies` loops at once and reap them with wait4.

    Returns the wall seconds until all finished, the loops' pids, and the CPU seconds
    (user + system) of the loops and every /bin/true they reaped: the in-kernel cost of the
    BPF programs lands in that system time, which other load on the machine does not inflate
    the way it inflates wall time.
    """
    started = time.monotonic()
    pids = {
        os.posix_spawn(binary, [binary, str(iterations), TARGET], {"PATH": "/usr/bin:/bin"}, file_actions=DEVNULL_STDOUT)
        for _ in range(copies)
    }
    loop_pids = sorted(pids)
    cpu = 0.0
    while pids:
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid == 0:
            if while_waiting is not None:
                while_waiting()
            else:
                time.sleep(0.01)
            continue
        if pid in pids:
            pids.discard(pid)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit("exec loop failed with status %d" % os.waitstatus_to_exitcode(status))
            cpu += usage.ru_utime + usage.ru_stime
    return {"seconds": time.monotonic() - started, "pids": loop_pids, "cpu": cpu}


def rss_kb() -> tuple[int, int]:
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def sensor_round(binary: str, iterations: int, copies: int) -> dict:
    """One loop run with a freshly started sensor consuming; the sensor is closed after."""
    sensor = Sensor(Config(), Interest())
    sensor.start()
    events = []

    def consume() -> None:
        events.extend(sensor.poll(0.05))

    try:
        cpu_started = time.process_time()
        loops = run_loops(binary, iterations, copies, consume)
        drain_until = time.monotonic() + 2.0
        while time.monotonic() < drain_until:
            consume()
        sensor_cpu = time.process_time() - cpu_started
        parents = set(loops["pids"])
        rss, hwm = rss_kb()
        return {
            "seconds": loops["seconds"],
            "loop_cpu": loops["cpu"],
            "sensor_cpu": sensor_cpu,
            "delivered": sum(
                1
                for e in events
                if e.type == "execve" and e.res == 0 and e.proc.ppid in parents and e.proc.comm == "true"
            ),
            "exits": sum(1 for e in events if e.type == "procexit" and e.proc.ppid in parents),
            "events": len(events),
            "lost": sum(sensor.lost().values()),
            "dropped": sensor.decoder.dropped,
            "ready": sensor.ready_seconds,
            "compile": sensor.compile_seconds,
            "bootstrap": sensor.bootstrap_seconds or 0.0,
            "rss_kb": rss,
            "hwm_kb": hwm,
        }
    finally:
        sensor.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000, help="execs per loop copy")
    parser.add_argument("--copies", type=int, default=2, help="loops run in parallel")
    parser.add_argument("--rounds", type=int, default=3, help="alternating without/with sensor rounds")
    options = parser.parse_args()
    generated = options.iterations * options.copies

    workdir = tempfile.mkdtemp(prefix="sentinel-bench-exec-")
    baselines: list[float] = []
    rounds: list[dict] = []
    try:
        binary = build_loop(workdir)
        run_loops(binary, 200, options.copies)  # warm the page cache and the scheduler
        rss_before_kb, _ = rss_kb()
        for _ in range(options.rounds):
            baselines.append(run_loops(binary, options.iterations, options.copies))
            rounds.append(sensor_round(binary, options.iterations, options.copies))
        baselines.append(run_loops(binary, options.iterations, options.copies))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    # each sensor round against the mean of the baselines just before and after it
    def around(i: int, key: str) -> float:
        return (baselines[i][key] + baselines[i + 1][key]) / 2

    ratios = [r["seconds"] / around(i, "seconds") for i, r in enumerate(rounds)]
    cpu_ratios = [r["loop_cpu"] / around(i, "cpu") for i, r in enumerate(rounds)]
    print("exec loop: %d copies x %d fork+exec of %s, %d rounds" % (options.copies, options.iterations, TARGET, len(rounds)))
    for i, r in enumerate(rounds):
        print(
            "round %d: exec delivered %d/%d, procexit %d/%d, lost %d, dropped %d, events decoded %d; "
            "loop wall %.3fs vs %.3fs/%.3fs -> x%.3f; loop cpu %.3fs vs %.3fs/%.3fs -> x%.3f; sensor cpu %.3fs"
            % (
                i + 1, r["delivered"], generated, r["exits"], generated, r["lost"], r["dropped"], r["events"],
                r["seconds"], baselines[i]["seconds"], baselines[i + 1]["seconds"], ratios[i],
                r["loop_cpu"], baselines[i]["cpu"], baselines[i + 1]["cpu"], cpu_ratios[i], r["sensor_cpu"],
            )
        )  # fmt: skip
    delivered = sum(r["delivered"] for r in rounds)
    print(
        "exec events delivered / generated: %d / %d (%.2f%%); lost in kernel: %d"
        % (delivered, generated * len(rounds), 100.0 * delivered / (generated * len(rounds)), sum(r["lost"] for r in rounds))
    )
    print(
        "slowdown with the sensor (loop wall time): median x%.3f (rounds: %s)"
        % (statistics.median(ratios), ", ".join("%.3f" % x for x in ratios))
    )
    print(
        "in-kernel cost (loop + children cpu time): median x%.3f (rounds: %s)"
        % (statistics.median(cpu_ratios), ", ".join("%.3f" % x for x in cpu_ratios))
    )
    sensor_us = statistics.median(r["sensor_cpu"] / r["events"] * 1e6 for r in rounds)
    print("sensor process cpu per decoded event (poll thread + decoder + process table): %.1f us" % sensor_us)
    median_seconds = statistics.median(b["seconds"] for b in baselines)
    print("exec rate without the sensor: %.0f/s (%d loops)" % (generated / median_seconds, options.copies))
    print(
        "time to READY: min %.3fs, median %.3fs (compile min %.3fs); /proc bootstrap after READY: %.3fs"
        % (
            min(r["ready"] for r in rounds),
            statistics.median(r["ready"] for r in rounds),
            min(r["compile"] for r in rounds),
            statistics.median(r["bootstrap"] for r in rounds),
        )
    )
    print(
        "RSS: %.1f MB before the sensor, %.1f MB with it (peak %.1f MB)"
        % (rss_before_kb / 1024, rounds[0]["rss_kb"] / 1024, max(r["hwm_kb"] for r in rounds) / 1024)
    )


if __name__ == "__main__":
    main()
