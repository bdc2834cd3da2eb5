"""Event-to-death latency of `action: kill` through the whole agent, measured in one run.

Starts the real agent (`sentinel run`, temporary database, enforce mode) with one kill rule
matching two uniquely named programs this benchmark compiles, then starts them one at a
time, >= 100 of each:
  busy     loops on getppid(): dies at its next syscall entry (snt_kill map + bpf_send_signal)
  sleeper  loops on nanosleep(1 s): no syscall entry comes, the agent's pidfd_send_signal does it

For every kill it measures, on the wall clock:
  exec -> death    from just before the benchmark's fork+exec to the pidfd becoming readable
  event -> death   from the exec event's kernel timestamp (the events table) to that moment
and splits event -> death with the agent's own record of each kill (kill_done action:
"dead X ms after the decision, Y ms after the event"):
  event -> decision  ring buffer (the kill rule's exec record wakes the reader at once;
                     other records wait up to sensor.batch_ms, set by --batch-ms), decode,
                     enrich, rule match, safety checks, kill map write
  decision -> death  the kill map / pidfd signal until the process is gone (agent's view)

Run: sudo .venv/bin/python -m benchmarks.bench_enforce_agent [--kills N]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_kill import compile_c, percentile

REPO = Path(__file__).resolve().parents[1]

BUSY_PROGRAM = r"""
#include <unistd.h>
int main(void) { for (;;) getppid(); }
"""

SLEEPER_PROGRAM = r"""
#include <time.h>
int main(void) { struct timespec s = {1, 0}; for (;;) nanosleep(&s, 0); }
"""

RULE = """
- rule: benchmark kill
  desc: kills the benchmark's uniquely named programs
  condition: evt.type in (execve, execveat) and proc.name in ({busy}, {sleeper})
  output: "killing %proc.name (%proc.pid)"
  priority: WARNING
  action: kill
  mode: enforce
"""

CONFIG = """control:
  socket: {socket}
sensor:
  batch_ms: {batch_ms}
store:
  flush_seconds: 0.1
enforce:
  mode: enforce
  max_kills_per_minute: 1000000
"""

KILL_DONE = re.compile(r"dead ([\d.]+) ms after the decision, ([\d.]+) ms after the event")


class Agent:
    """`sentinel run` in a work directory; ready once it notifies READY=1 (sd_notify)."""

    def __init__(self, work: Path, rules: Path, batch_ms: int) -> None:
        self.db = work / "events.db"
        config = work / "sentinel.yaml"
        config.write_text(CONFIG.format(socket=work / "control.sock", batch_ms=batch_ms))
        notify_path = str(work / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(notify_path)
        self.notify.settimeout(1)
        self.log_path = work / "agent.log"
        self.log = open(self.log_path, "wb")
        command = [sys.executable, "-m", "sentinel.cli", "run", "--config", str(config), "--db", str(self.db),
                   "--rules", str(rules), "--alerts-file", str(work / "alerts.json")]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
                                        env=dict(os.environ, NOTIFY_SOCKET=notify_path))

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if b"READY=1" in self.notify.recv(4096):
                    return
            except TimeoutError:
                pass
        raise SystemExit("the agent did not start; log:\n%s" % self.log_path.read_text()[-3000:])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.log.close()
        self.notify.close()
        return code


def kill_runs(program: str, count: int) -> list[tuple[int, int, int]]:
    """(pid, wall ns just before the exec, wall ns of death) of `count` runs the agent kills."""
    runs = []
    for _ in range(count):
        before = time.time_ns()
        proc = subprocess.Popen([program])
        pidfd = os.pidfd_open(proc.pid)
        readable, _, _ = select.select([pidfd], [], [], 10)
        dead = time.time_ns()
        os.close(pidfd)
        if not readable:
            proc.kill()
            proc.wait()
            raise SystemExit("the agent did not kill %s (pid %d) within 10 s" % (program, proc.pid))
        if proc.wait() != -signal.SIGKILL:
            raise SystemExit("pid %d ended with %s, not SIGKILL" % (proc.pid, proc.returncode))
        runs.append((proc.pid, before, dead))
        # One kill at a time (a latency, not a throughput), after a random pause: a fixed
        # one would phase-lock each exec to the ring buffer reader's batch_ms timer.
        time.sleep(random.uniform(0.005, 0.025))
    return runs


def recorded(db: Path, name: str) -> tuple[dict[int, int], dict[int, tuple[float, float]]]:
    """From the agent's database: exec event time by pid, and (decision->death,
    event->death) ms by pid from its kill_done records."""
    with sqlite3.connect(db) as conn:
        events = {pid: when for pid, when in conn.execute(
            "SELECT proc_pid, min(time) FROM events WHERE proc_name = ? AND evt_type IN ('execve', 'execveat') GROUP BY proc_pid", (name,))}
        deaths = {}
        for target, detail in conn.execute("SELECT target, detail FROM actions WHERE kind = 'kill_done'"):
            found = KILL_DONE.search(detail or "")
            if found and target.startswith("pid "):
                deaths[int(target.split()[1])] = (float(found.group(1)), float(found.group(2)))
    return events, deaths


def line(label: str, values: list[float]) -> str:
    if not values:
        return "  %-20s no samples" % label
    return "  %-20s median %7.2f ms  p99 %7.2f ms  max %7.2f ms  (n=%d)" % (
        label, statistics.median(values), percentile(values, 0.99), max(values), len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=120, help="kills of each program (>= 100 for a p99)")
    parser.add_argument("--batch-ms", type=int, default=None,
                        help="sensor.batch_ms: the longest wait of a lone event in the ring buffer (default: the configuration's)")
    args = parser.parse_args()
    from sentinel.config import SensorConfig

    batch_ms = args.batch_ms if args.batch_ms is not None else SensorConfig().batch_ms
    work = Path(tempfile.mkdtemp(prefix="sentinel-bench-enforce-"))
    tag = os.getpid() % 100000
    names = {"busy": "sntbusy%d" % tag, "sleeper": "sntsleep%d" % tag}
    agent = None
    try:
        compile_c(BUSY_PROGRAM, str(work / names["busy"]))
        compile_c(SLEEPER_PROGRAM, str(work / names["sleeper"]))
        rules = work / "rules.yaml"
        rules.write_text(RULE.format(**names))
        started = time.monotonic()
        agent = Agent(work, rules, batch_ms)
        agent.wait_ready()
        print("agent ready in %.1f s; %d kills of each program, one at a time; sensor.batch_ms %d; load average %.2f"
              % (time.monotonic() - started, args.kills, batch_ms, os.getloadavg()[0]))
        runs = {kind: kill_runs(str(work / name), args.kills) for kind, name in names.items()}
        time.sleep(1.0)  # the last records reach the store
        code = agent.stop()
        agent = None
        if code != 0:
            raise SystemExit("the agent exited with %d" % code)
        for kind, name in names.items():
            events, deaths = recorded(work / "events.db", name)
            exec_to_death = [(dead - before) / 1e6 for _, before, dead in runs[kind]]
            event_to_death = [(dead - events[pid]) / 1e6 for pid, _, dead in runs[kind] if pid in events]
            decision_to_death = [deaths[pid][0] for pid, _, _ in runs[kind] if pid in deaths]
            event_to_decision = [deaths[pid][1] - deaths[pid][0] for pid, _, _ in runs[kind] if pid in deaths]
            print("%s (%s):" % (kind, "caught at a syscall entry" if kind == "busy" else "pidfd_send_signal"))
            print(line("exec -> death", exec_to_death))
            print(line("event -> death", event_to_death))
            print(line("  event -> decision", event_to_decision))
            print(line("  decision -> death", decision_to_death))
            if len(event_to_death) < len(runs[kind]) or len(decision_to_death) < len(runs[kind]):
                print("  (records: %d exec events, %d kill_done of %d kills)" % (len(event_to_death), len(decision_to_death), len(runs[kind])))
    finally:
        if agent is not None:
            agent.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
