"""Kill latency and deny-before-first-instruction, measured on this kernel in one run.

1. Kill latency, from the kill decision (KernelEnforcer.kill: the snt_kill map entry) to
   the process's death (its pidfd becomes readable), median and p99 over >= 200 kills of
   a process busy in syscalls (caught at its next syscall entry by bpf_send_signal) and of
   a sleeping one (no syscall to catch: the pidfd_send_signal backstop).
2. A denied exec runs no instruction of the denied program: a small C program whose first
   action is to create a marker file is exec'd many times under a deny by name
   (kill-at-exec) and by file (fanotify); no marker may appear. A control run without the
   deny must create the marker, or the check proves nothing.

3. The cost of a scoped fanotify deny for a process OUT of its scope: a C program opens a
   file N times; the file unmarked (baseline), then marked with a deny scoped to another
   uid, then to another cgroup: every open waits for the agent's answer, which reads the
   opener's uid or cgroup from /proc and allows it. Printed per open, and as a ratio.

4. How soon a denied path replaced by rename() (what `mv` does) is denied again: from the
   rename to the fanotify mark (a file) or the kill-at-exec map key (a directory) being on
   the new inode, through the inotify watcher (the periodic re-check is 30 s away).

Run: sudo .venv/bin/python -m benchmarks.bench_kill [--kills N]
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from sentinel.actions.enforce_kernel import KernelEnforcer, process_start_ns
from sentinel.actions.enforce_plan import DenyEntry

MECHANISMS = {
    "deny_exec": ("fanotify", "kill-at-exec"),
    "deny_open": ("fanotify", "kill-at-open"),
    "deny_connect": ("cgroup-sock-addr",),
    "kill": ("bpf-send-signal",),
}

MARKER_PROGRAM = r"""
#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    /* first action: leave a trace that this program ran at all */
    int fd = open(argv[1], O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) close(fd);
    return 0;
}
"""

BUSY_PROGRAM = r"""
#include <unistd.h>
int main(void) { for (;;) getppid(); }
"""


def compile_c(source: str, path: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".c") as f:
        f.write(source)
        f.flush()
        subprocess.run(["gcc", "-O2", "-o", path, f.name], check=True)


OPEN_LOOP_PROGRAM = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = atoi(argv[2]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) { perror("open"); return 1; }
        close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n / 1000.0);
    return 0;
}
"""


def open_cost_us(program: str, path: str, opens: int) -> float:
    """Microseconds per open+close of `path`, measured inside the C program."""
    result = subprocess.run([program, path, str(opens)], preexec_fn=lambda: None, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise SystemExit("open loop failed: %s" % result.stderr)
    return float(result.stdout)


def follow_ms(kernel: KernelEnforcer, path: str, is_dir: bool, runs: int) -> list[float]:
    """Milliseconds from renaming a fresh file (or directory) onto `path` to the enforcer
    holding the new inode."""
    def holds(ino: int) -> bool:
        if is_dir:
            return any(row["ino"] == ino for row in kernel.map_contents()["snt_deny_exec_dir"])
        return any(row["ino"] == ino for row in kernel.fanotify.entries())

    delays = []
    for i in range(runs):
        fresh = "%s.new%d" % (path, i)
        if is_dir:
            os.mkdir(fresh)
        else:
            shutil.copy("/bin/true", fresh)
        ino = os.stat(fresh).st_ino
        if is_dir:
            shutil.rmtree(path)
        start = time.monotonic_ns()
        os.rename(fresh, path)
        while not holds(ino):
            if time.monotonic_ns() - start > 10e9:
                raise SystemExit("%s was not followed within 10 s" % path)
            time.sleep(0.0002)
        delays.append((time.monotonic_ns() - start) / 1e6)
    return delays


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def measure_kills(kernel: KernelEnforcer, argv: list[str], count: int) -> tuple[list[float], int]:
    """Latencies (ms) from kill decision to death, and how many needed the pidfd backstop."""
    latencies, backstops = [], 0
    for _ in range(count):
        proc = subprocess.Popen(argv)
        time.sleep(0.002)  # let it reach its loop or its sleep
        pidfd = os.pidfd_open(proc.pid)
        start = process_start_ns(proc.pid)
        decided = time.monotonic_ns()
        result = kernel.kill(proc.pid, start)
        select.select([pidfd], [], [], 5)
        dead = time.monotonic_ns()
        os.close(pidfd)
        proc.wait()
        result.done.wait(5)
        backstops += result.backstop
        if proc.returncode != -9:
            raise SystemExit("process %d ended with %s, not SIGKILL" % (proc.pid, proc.returncode))
        latencies.append((dead - decided) / 1e6)
    return latencies, backstops


def run_denied(path: str, marker: str, runs: int) -> tuple[int, int]:
    """(runs that created the marker, runs that failed to start or were killed)."""
    ran = stopped = 0
    for _ in range(runs):
        if os.path.exists(marker):
            os.unlink(marker)
        try:
            code = subprocess.run([path, marker], preexec_fn=lambda: None, timeout=10).returncode
        except PermissionError:
            code = "EPERM"
        ran += os.path.exists(marker)
        stopped += code in (-9, "EPERM")
    return ran, stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--exec-runs", type=int, default=100)
    parser.add_argument("--opens", type=int, default=5000)
    parser.add_argument("--follow-runs", type=int, default=100)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="sentinel-bench-kill-")
    kernel = KernelEnforcer(MECHANISMS)
    try:
        busy = os.path.join(work, "busy")
        compile_c(BUSY_PROGRAM, busy)
        busy_ms, busy_backstops = measure_kills(kernel, [busy], args.kills)
        sleep_ms, sleep_backstops = measure_kills(kernel, ["sleep", "60"], args.kills)
        print("kill latency, decision -> death (%d kills each)" % args.kills)
        for label, values, backstops in (("busy in syscalls", busy_ms, busy_backstops),
                                          ("asleep", sleep_ms, sleep_backstops)):
            print("  %-17s median %7.3f ms  p99 %7.3f ms  max %7.3f ms  pidfd backstop used %d/%d"
                  % (label, statistics.median(values), percentile(values, 0.99), max(values), backstops, len(values)))

        named = os.path.join(work, "sntbenchmark")
        by_file = os.path.join(work, "deniedfile")
        marker = os.path.join(work, "marker")
        compile_c(MARKER_PROGRAM, named)
        shutil.copy(named, by_file)
        control_ran, _ = run_denied(named, marker, 3)
        kernel.add(DenyEntry("exec_name", "sntbenchmark"))
        kernel.add(DenyEntry("exec_file", by_file))
        name_ran, name_stopped = run_denied(named, marker, args.exec_runs)
        file_ran, file_stopped = run_denied(by_file, marker, args.exec_runs)
        print("denied exec of a program whose first action creates a marker file")
        print("  control (no deny):            marker created %d/3" % control_ran)
        print("  by name (kill-at-exec):       marker created %d/%d, killed %d/%d"
              % (name_ran, args.exec_runs, name_stopped, args.exec_runs))
        print("  by file (fanotify, EPERM):    marker created %d/%d, refused %d/%d"
              % (file_ran, args.exec_runs, file_stopped, args.exec_runs))
        ok = control_ran == 3 and name_ran == 0 and file_ran == 0 and name_stopped == file_stopped == args.exec_runs
        print("no instruction of a denied program ran: %s" % ("yes" if ok else "NO"))
        if not ok:
            sys.exit(1)

        from sentinel.actions.enforce_plan import Scope

        opener, target = os.path.join(work, "openloop"), os.path.join(work, "scoped")
        compile_c(OPEN_LOOP_PROGRAM, opener)
        with open(target, "w") as f:
            f.write("x")
        baseline = open_cost_us(opener, target, args.opens)
        print("fanotify deny scoped away from the opener (root, root cgroup): %d opens each" % args.opens)
        print("  unmarked file:                %8.2f us per open" % baseline)
        for label, scope in (("scoped to uid 65533:", Scope(uid=65533)), ("scoped to another cgroup:", Scope(cgroup="/snt-bench-none"))):
            entry = DenyEntry("open_file", target, scope=scope)
            kernel.add(entry)
            cost = open_cost_us(opener, target, args.opens)
            kernel.remove(entry)
            print("  %-29s %8.2f us per open (x%.1f; the answer with its /proc read: %.1f us)" % (label, cost, cost / baseline, cost - baseline))

        followed_file, followed_dir = os.path.join(work, "followed"), os.path.join(work, "followeddir")
        shutil.copy("/bin/true", followed_file)
        os.mkdir(followed_dir)
        kernel.add(DenyEntry("exec_file", followed_file))
        kernel.add(DenyEntry("exec_dir", followed_dir))
        print("a denied path replaced by rename(), until the deny is on the new inode (%d renames each)" % args.follow_runs)
        for label, path, is_dir in (("file (fanotify mark):", followed_file, False), ("directory (kill-at-exec map):", followed_dir, True)):
            delays = follow_ms(kernel, path, is_dir, args.follow_runs)
            print("  %-29s median %6.2f ms  p99 %6.2f ms  max %6.2f ms" % (label, statistics.median(delays), percentile(delays, 0.99), max(delays)))
    finally:
        kernel.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
