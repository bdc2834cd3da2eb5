"""The agent's CPU per event after the decoder, stage by stage, without the kernel.

Decoded events go through the agent's own `handle()` with the upstream Falco files plus the
shipped rules, the default storage policy and the store process, as `sentinel run` does.
Stages are told apart by running the same events through growing parts of the pipeline and
taking differences of CPU time (never wall time: the machine is shared):

- rules:         `Ruleset.match` alone (this thread's CPU time);
- alert:         `Agent.handle` with no store, minus rules (building, rendering and writing
                 the alerts of the matching rules);
- store encode:  `Agent.handle` with the store, minus the run without it: the agent process's
                 CPU (every thread: the hot path's rows and the writer thread's hand-off to
                 the store process);
- store process: the store process's CPU (/proc/<pid>/stat) for the same events.

Two event streams: `mix`, the shape of benchmarks/mix_load.c (60% open, half under /etc;
25% exec of a do-nothing binary; 15% loopback connect; no alerts; the scratch-file opens,
which the kernel filter drops on a real host, are kept: the conservative case), and `alerting`, the
synthetic stream of benchmarks/bench_rules.py (a third of its events raise an alert).
Each figure is the best of --rounds runs.

CPU time on a machine shared with other work is noisy; `--instructions` measures the same
stages in instructions per event instead (valgrind's callgrind, which counts them exactly):
the benchmark runs itself under callgrind, zeroes and dumps the counters around each stage
(client requests from benchmarks/callgrind_marks.c), and takes the store process's share as
the difference between a store process that served only the warm-up and one that also
served the measured events. Needs valgrind and its headers (Debian: valgrind).

    .venv/bin/python -m benchmarks.bench_agent_cpu [--events N] [--rounds R] [--rules-dir DIR]
    .venv/bin/python -m benchmarks.bench_agent_cpu --instructions [--events N]
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import glob
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.bench_rules import UPSTREAM_FILES, find_rules_dir, synthetic_events
from sentinel.actions.store import StoreWriter
from sentinel.agent import Agent
from sentinel.config import AlertsConfig, Config, StoreConfig
from sentinel.events.model import Event, Fd, Process

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_ETC_FILES = ("/etc/hostname", "/etc/hosts", "/etc/os-release", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf")
_O_RDONLY_CLOEXEC = 0o2000000
_AF_INET = 2
# Where bench_agent builds mix_load: not under /tmp, whose programs match "Execution from shared
# memory or temporary directory" (an alert for every exec would measure the alert path only).
BUILD_DIR = "/root/.cache/sentinel-bench-agent-x"


def mix_events(count: int, seed_time_ns: int = 1_790_000_000_000_000_000) -> list[Event]:
    """Events as the sensor decodes mix_load's syscalls: 12 opens, 5 execs, 3 connects per 20."""
    shell = Process(4000, 1_000, comm="bash", exe="-bash", exepath="/usr/bin/bash", ppid=1, cwd="/root")
    loader = Process(4100, 2_000, comm="mix_load", exe="./mix_load", exepath=BUILD_DIR + "/mix_load", parent=shell,
                     ppid=4000, args=("--seconds", "10", "--rate", "20000"), cwd="/root", loginuid=0)
    target = BUILD_DIR + "/exit_now"
    port = 40_000
    events: list[Event] = []
    for number in range(count):
        time_ns = seed_time_ns + number * 50_000
        slot = number % 20
        if slot < 12:
            path = _ETC_FILES[number % 6] if slot % 2 else BUILD_DIR + "/scratch/file%d" % (number % 64)
            fd = Fd(3, "file", path, open_flags=_O_RDONLY_CLOEXEC)
            events.append(Event("openat", loader, res=3, fd=fd, time_ns=time_ns, num=number,
                                args={"fd": 3, "dirfd": -100, "name": path, "flags": _O_RDONLY_CLOEXEC, "mode": 0}))
        elif slot < 17:
            child = Process(10_000 + number, 3_000 + number, comm="exit_now", exe=target, exepath=target, filename=target,
                            parent=loader, ppid=4100, cwd="/root", loginuid=0, exec_syscall="execve")
            events.append(Event("execve", child, res=0, args={"filename": target}, time_ns=time_ns, num=number))
        else:
            lport = 30_000 + number % 20_000
            fd = Fd(4, "ipv4", "127.0.0.1:%d->127.0.0.1:%d" % (lport, port), l4proto="tcp", lip="127.0.0.1",
                    lport=lport, rip="127.0.0.1", rport=port, family=_AF_INET)
            events.append(Event("connect", loader, res=0, fd=fd, time_ns=time_ns, num=number,
                                args={"fd": 4, "addr": "127.0.0.1:%d" % port}))
    return events


def process_cpu() -> float:
    """CPU seconds of this whole process (every thread: the store writer's too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pid_cpu(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def best_of(rounds: int, run: Callable[[], tuple[float, ...]]) -> tuple[float, ...]:
    """Per figure, the lowest of `rounds` runs (other load only ever adds)."""
    results = [run() for _ in range(rounds)]
    return tuple(min(values) for values in zip(*results))


def make_agent(directory: str, rules_dir: Path) -> Agent:
    config = Config(
        rules=(str(REPO / "rules"), *(str(rules_dir / name) for name in UPSTREAM_FILES)),
        store=StoreConfig(path=os.path.join(directory, "events.db")),
        alerts=AlertsConfig(file=os.path.join(directory, "alerts.json")),
    )
    agent = Agent(config)
    agent.load_rules()
    agent._open_store()
    agent._await_store()
    if agent.store is None:
        raise SystemExit("the store could not be opened: %s" % agent.store_error)
    return agent


def measure(agent: Agent, events: list[Event], rounds: int) -> dict[str, float]:
    """Microseconds of CPU per event for each stage (see the module docstring)."""
    count = len(events)
    store = agent.store
    match = agent.ruleset.match
    handle = agent.handle

    def rules_only() -> tuple[float, ...]:
        started = time.thread_time()
        for event in events:
            match(event)
        return (time.thread_time() - started,)

    def without_store() -> tuple[float, ...]:
        agent.store = None
        try:
            started = process_cpu()
            for event in events:
                handle(event)
            return (process_cpu() - started,)
        finally:
            agent.store = store

    def with_store() -> tuple[float, ...]:
        store.flush()
        store_pid = store._sink.process.pid
        started, store_started = process_cpu(), pid_cpu(store_pid)
        for event in events:
            handle(event)
        store.flush()
        return process_cpu() - started, pid_cpu(store_pid) - store_started

    for event in events[:2000]:  # warm: first-use imports, caches, the database's first pages
        handle(event)
    store.flush()
    alerts_before = agent.counters["alerts"]
    (rules,) = best_of(rounds, rules_only)
    (no_store,) = best_of(rounds, without_store)
    agent_total, store_process = best_of(rounds, with_store)
    alerts_per_run = (agent.counters["alerts"] - alerts_before) / (2 * rounds)  # rules_only raises none
    scale = 1e6 / count
    return {
        "rules": rules * scale,
        "alert": max(no_store - rules, 0.0) * scale,
        "store_encode": max(agent_total - no_store, 0.0) * scale,
        "agent_total": agent_total * scale,
        "store_process": store_process * scale,
        "alerts_per_event": alerts_per_run / count,
    }


_STREAMS = {"mix": mix_events, "alerting": synthetic_events}
_STAGE = re.compile(r"^desc: Trigger: Client Request: stage-(\w+)", re.M)


def stages_under_callgrind(marks_library: str, stream: str, count: int, rules_dir: Path) -> None:
    """The stages between callgrind marks (this process runs under callgrind)."""
    marks = ctypes.CDLL(marks_library)
    make = _STREAMS[stream]
    warm, events = make(500), make(count)
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-cpu-") as directory:
        agent = make_agent(directory, rules_dir)
        for event in warm:
            agent.handle(event)
        agent.store.close()  # the first store process: its start and the warm-up only
        # Batches by size, never by age: callgrind slows the agent down 50-fold.
        config = dataclasses.replace(agent.config.store, flush_seconds=3600.0)
        agent.store = store = StoreWriter(os.path.join(directory, "second.db"), config)
        for event in warm:
            agent.handle(event)
        store.flush()
        match, handle = agent.ruleset.match, agent.handle
        marks.marks_zero()
        for event in events:
            match(event)
        marks.marks_dump(b"stage-rules")
        agent.store = None
        marks.marks_zero()
        for event in events:
            handle(event)
        marks.marks_dump(b"stage-nostore")
        agent.store = store
        marks.marks_zero()
        for event in events:
            handle(event)
        store.flush()
        marks.marks_dump(b"stage-store")
        store.close()  # the second store process: start, warm-up and the measured events
        agent.alerts.close()


def _total_instructions(path: str) -> int:
    with open(path) as handle:
        for line in handle:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit("no instruction total in %s" % path)


def instructions_per_event(stream: str, count: int, rules_dir: Path, directory: str) -> dict[str, float]:
    """Run the stages of one stream under callgrind; instructions per event by stage."""
    library = os.path.join(directory, "callgrind_marks.so")
    if not os.path.exists(library):
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", library, str(REPO / "benchmarks" / "callgrind_marks.c")],
                       check=True)
    output = os.path.join(directory, stream)
    os.mkdir(output)
    command = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--callgrind-out-file=%s/cg.%%p.out" % output,
               sys.executable, "-m", "benchmarks.bench_agent_cpu", "--under-callgrind", library, "--stream", stream,
               "--events", str(count), "--rules-dir", str(rules_dir)]
    environment = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(REPO))
    subprocess.run(command, check=True, cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stages: dict[str, int] = {}
    store_processes = []
    for path in glob.glob(os.path.join(output, "cg.*.out*")):
        with open(path) as handle:
            head = handle.read(4000)
        stage = _STAGE.search(head)
        if stage:
            stages[stage.group(1)] = _total_instructions(path)
        elif "serve_store_process" in head:
            store_processes.append(path)
    if len(store_processes) != 2 or len(stages) != 3:
        raise SystemExit("callgrind output incomplete in %s" % output)
    first, second = sorted(store_processes, key=os.path.getmtime)
    return {
        "rules": stages["rules"] / count,
        "alert": (stages["nostore"] - stages["rules"]) / count,
        "store_encode": (stages["store"] - stages["nostore"]) / count,
        "agent_total": stages["store"] / count,
        "store_process": (_total_instructions(second) - _total_instructions(first)) / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=None, help="per stream (default 40,000; 5,000 with --instructions)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rules-dir", default=None)
    parser.add_argument("--instructions", action="store_true", help="instructions per event under callgrind")
    parser.add_argument("--under-callgrind", metavar="MARKS_LIBRARY", help=argparse.SUPPRESS)
    parser.add_argument("--stream", choices=sorted(_STREAMS), help=argparse.SUPPRESS)
    options = parser.parse_args()
    rules_dir = find_rules_dir(options.rules_dir)
    if options.under_callgrind:
        stages_under_callgrind(options.under_callgrind, options.stream, options.events, rules_dir)
        return
    if options.instructions:
        count = options.events or 5_000
        print("instructions per event after the decoder (callgrind, %d events per stream; upstream Falco files + rules/)"
              % count)
        print("%-9s %9s %9s %13s %12s %14s" % ("stream", "rules", "alert", "store encode", "agent total", "store process"))
        with tempfile.TemporaryDirectory(prefix="sentinel-bench-callgrind-") as directory:
            for name in _STREAMS:
                figures = instructions_per_event(name, count, rules_dir, directory)
                print("%-9s %9.0f %9.0f %13.0f %12.0f %14.0f" % (
                    name, figures["rules"], figures["alert"], figures["store_encode"], figures["agent_total"],
                    figures["store_process"]))
        return
    events_per_stream = options.events or 40_000
    streams = {name: make(events_per_stream) for name, make in _STREAMS.items()}
    with tempfile.TemporaryDirectory(prefix="sentinel-bench-cpu-") as directory:
        agent = make_agent(directory, rules_dir)
        try:
            print("CPU us per event after the decoder (best of %d runs of %d events; upstream Falco files + rules/)"
                  % (options.rounds, events_per_stream))
            print("%-9s %7s %7s %7s %13s %13s %14s" % ("stream", "alerts", "rules", "alert", "store encode",
                                                       "agent total", "store process"))
            for name, events in streams.items():
                figures = measure(agent, events, options.rounds)
                print("%-9s %6.1f%% %7.2f %7.2f %13.2f %13.2f %14.2f" % (
                    name, 100 * figures["alerts_per_event"], figures["rules"], figures["alert"], figures["store_encode"],
                    figures["agent_total"], figures["store_process"]))
                budget = 1e6 / (figures["agent_total"] or 1e-9)
                print("%-9s one core: %.0f events/s for the agent part, %.0f for the store process" % (
                    "", budget, 1e6 / (figures["store_process"] or 1e-9)))
        finally:
            agent.store.close()
            agent.alerts.close()


if __name__ == "__main__":
    main()
