"""The whole agent on the real kernel, with the upstream Falco files and the default storage
policy: sustained throughput with zero loss, exec-loop slowdown, memory and time to READY.

Prints, from one run:
- time to READY (process start to READY=1 on the notify socket) and the agent's own account
  of its start phases (`sentinel status` start_seconds); the rest is interpreter start-up
  and imports;
- memory of the agent and of its store process, after start and after the load steps:
  VmRSS, and PSS (smaps_rollup), which splits the pages shared with other processes;
- exec-loop slowdown: two parallel C loops fork+exec /bin/true, without the agent before
  and after, and with it (ratio of wall times, and of the loops' CPU times), and per exec
  the events the agent handled and the CPU it and its store process spent;
- throughput: a C load generator (benchmarks/mix_load.c) offers 60% open (half under /etc),
  25% exec (vfork + exec of a static do-nothing binary), 15% connect (to its own loopback
  listener) at increasing rates of syscalls per second; for each step: the rate it really
  offered beside the target, events the agent processed per second, the events/s the rest
  of the host made just before the step (the agent sees every process), the CPU the agent
  and its store process spent per event, execs and connects generated vs stored (the
  default policy stores every one), kernel ring-buffer losses, store drops, and the catch-up
  time: from an exec right after the load until its event is in SQLite. A step passes when
  nothing was lost and the catch-up took at most CATCH_UP_SECONDS; steps go up until the
  agent falls behind twice (slow catch-up or store drops), then the gap between the best
  pass (or 0) and the first failure above it is halved twice. The highest passing rate is
  the figure; the highest rate the agent kept up with, losses aside, is printed beside it;
- with --profile, where the agent's consumer thread spends its time at that rate (cProfile
  on the thread that decodes, enriches, matches and stores; the agent runs in-process).

Run: .venv/bin/python -m benchmarks.bench_agent [--seconds 10] [--rates 5000,10000,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import socket
import statistics
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.bench_exec import build_loop, run_loops
from sentinel.config import SensorConfig
from sentinel.control import request

REPO = Path(__file__).resolve().parents[1]
FALCO = REPO.parent / "shared" / "compat" / "falco"
HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A step passes only if an exec right after the load is in SQLite within this long: the agent
# kept up (the store alone may hold an event up to flush_seconds, 0.5 s by default).
CATCH_UP_SECONDS = 1.5
# Past these, the agent is overwhelmed (its backlog waits in memory): the search stops there.
OVERWHELMED_SECONDS = 60.0
MEMORY_LIMIT_MB = 2048


def rule_paths() -> list[str]:
    paths = [str(REPO / "rules")]
    for name in ("falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml"):
        if (FALCO / name).exists():
            paths.append(str(FALCO / name))
    return paths


def build_tools(directory: str) -> tuple[str, str]:
    """The load generator and its exec target (static, no libc: an exec costs execve alone)."""
    mix = os.path.join(directory, "mix_load")
    target = os.path.join(directory, "exit_now")
    subprocess.run(["gcc", "-O2", "-o", mix, str(HERE / "mix_load.c")], check=True)
    subprocess.run(["gcc", "-static", "-nostdlib", "-O2", "-o", target, str(HERE / "exit_now.c")], check=True)
    return mix, target


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and PSS of one process, in MB."""
    figures = {}
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            figures["rss"] = int(line.split()[1]) / 1024
    for line in Path("/proc/%d/smaps_rollup" % pid).read_text().splitlines():
        if line.startswith("Pss:"):
            figures["pss"] = int(line.split()[1]) / 1024
    return figures


def cpu_seconds(pid: int) -> float:
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Agent:
    """`sentinel run` as a service would start it, with a notify socket to time READY."""

    def __init__(self, workdir: Path, outputs: int = 0, ringbuf_pages: int | None = None) -> None:
        self.workdir = workdir
        self.db = workdir / "events.db"
        self.socket = workdir / "control.sock"
        config = workdir / "sentinel.yaml"
        config.write_text(config_text(workdir, outputs, ringbuf_pages))
        notify_path = str(workdir / "notify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(180)
        started = time.monotonic()
        self.log = open(workdir / "agent.log", "wb")
        rules = [arg for path in rule_paths() for arg in ("--rules", path)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sentinel.cli", "run", "--config", str(config), "--db", str(self.db),
             "--alerts-file", str(workdir / "alerts.json"), *rules],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, NOTIFY_SOCKET=notify_path), cwd=REPO,
        )
        while b"READY=1" not in notify.recv(4096):
            pass
        self.ready_seconds = time.monotonic() - started
        notify.close()
        status = self.status()
        self.start_phases = status.get("start_seconds", {})
        self.store_pid = status.get("store", {}).get("store_process_pid")

    def status(self) -> dict:
        return request(str(self.socket), "status")

    def memory(self) -> dict[str, dict[str, float]]:
        figures = {"agent": memory_mb(self.process.pid)}
        if self.store_pid:
            figures["store"] = memory_mb(self.store_pid)
        return figures

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the agent and of its store process."""
        return cpu_seconds(self.process.pid), cpu_seconds(self.store_pid) if self.store_pid else 0.0

    def events(self) -> int:
        return self.status()["counters"].get("events", 0)

    def seconds_to_store(self, exepath: str, limit: float = OVERWHELMED_SECONDS) -> float:
        """Exec `exepath` (a copy of the do-nothing target) and return the seconds until its
        event is in SQLite: the agent's lag behind the kernel, batching included. Gives up
        (returns `limit`) after `limit` seconds, or at once if the agent's backlog has grown
        its memory past MEMORY_LIMIT_MB."""
        started = time.monotonic()
        subprocess.run([exepath], check=True)
        while time.monotonic() - started < limit:
            if memory_mb(self.process.pid)["rss"] > MEMORY_LIMIT_MB:
                return limit
            with sqlite3.connect("file:%s?mode=ro" % self.db, uri=True) as conn:
                if conn.execute("SELECT 1 FROM events WHERE proc_exepath = ? LIMIT 1", (exepath,)).fetchone():
                    return time.monotonic() - started
            time.sleep(0.02)
        return limit

    def background_rate(self, seconds: float = 1.0) -> float:
        """Events/s the agent processes from the rest of the host, measured while idle."""
        before = self.events()
        time.sleep(seconds)
        return (self.events() - before) / seconds

    def stop(self) -> None:
        """SIGTERM (the agent writes what it accepted); SIGKILL if it is still draining a backlog after 60 s."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def config_text(workdir: Path, outputs: int = 0, ringbuf_pages: int | None = None) -> str:
    text = "control:\n  socket: %s\nlog_level: warning\n" % (workdir / "control.sock")
    if ringbuf_pages:
        text += "sensor:\n  ringbuf_pages: %d\n" % ringbuf_pages
    if outputs:
        # SIEM outputs that take every event, not only alerts: the heaviest forwarding load.
        text += "forward:\n  outbox: %s\noutputs:\n" % (workdir / "outbox.db")
        for number in range(outputs):
            text += "  - {name: out%d, type: jsonfile, path: %s, events: true}\n" % (number, workdir / ("out%d.jsonl" % number))
    return text


def exec_slowdown(agent_dir: Path, loop: str, iterations: int, rounds: int) -> dict:
    """Loop runs without the agent (before it starts and after it stops) and with it running,
    `rounds` of each; ratios of the medians. The first run with the agent is a warm-up, not
    counted: right after READY the agent is still settling (bootstrap, first collections)."""
    without = [run_loops(loop, iterations, 2) for _ in range(rounds - rounds // 2)]
    agent = Agent(agent_dir)
    try:
        run_loops(loop, iterations, 2)
        (agent_cpu, store_cpu), events = agent.cpu(), agent.events()
        during = [run_loops(loop, iterations, 2) for _ in range(rounds)]
        time.sleep(2 * SensorConfig().batch_ms / 1000)  # the last batch read
        (agent_after, store_after), events_after = agent.cpu(), agent.events()
    finally:
        agent.stop()
    without += [run_loops(loop, iterations, 2) for _ in range(rounds // 2)]
    base_wall = statistics.median(run["seconds"] for run in without)
    base_cpu = statistics.median(run["cpu"] for run in without)
    return {
        "wall_ratio": statistics.median(run["seconds"] for run in during) / base_wall,
        "cpu_ratio": statistics.median(run["cpu"] for run in during) / base_cpu,
        "wall_ratios": [run["seconds"] / base_wall for run in during],
        "execs_per_second_without": 2 * iterations / base_wall,
        # what the agent did per exec (the host's other events included: few, on an idle host)
        "events_per_exec": (events_after - events) / (2 * iterations * rounds),
        "agent_us_per_exec": 1e6 * (agent_after - agent_cpu) / (2 * iterations * rounds),
        "store_us_per_exec": 1e6 * (store_after - store_cpu) / (2 * iterations * rounds),
    }


def stored(db: Path, since_ns: int, target: str, port: int) -> tuple[int, int]:
    with sqlite3.connect("file:%s?mode=ro" % db, uri=True) as conn:
        execs = conn.execute(
            "SELECT count(*) FROM events WHERE evt_type = 'execve' AND proc_exepath = ? AND time >= ?", (target, since_ns)
        ).fetchone()[0]
        connects = conn.execute(
            "SELECT count(*) FROM events WHERE evt_type = 'connect' AND fd_rport = ? AND time >= ?", (port, since_ns)
        ).fetchone()[0]
    return execs, connects


class Load:
    """One generator run against a running agent, and what the agent made of it."""

    def __init__(self, agent: Agent, mix: str, target: str, seconds: float, workers: int) -> None:
        self.agent = agent
        self.mix = mix
        self.target = target
        self.seconds = seconds
        self.workers = workers
        self.scratch = agent.workdir / "scratch"
        self.scratch.mkdir(exist_ok=True)
        self.markers = 0

    def marker(self) -> str:
        """A fresh path for the exec that closes a step (found in the store by its path)."""
        self.markers += 1
        path = str(self.agent.workdir / ("marker-%d" % self.markers))
        shutil.copy(self.target, path)
        return path

    def step(self, rate: int) -> dict:
        agent = self.agent
        agent.seconds_to_store(self.marker())  # whatever an earlier step left is written
        background = agent.background_rate()
        first = agent.status()
        agent_cpu, store_cpu = agent.cpu()
        since = time.time_ns()
        out = subprocess.run(
            [self.mix, str(self.seconds), str(rate), str(self.workers), self.target, str(self.scratch)],
            capture_output=True, text=True, check=True,
        )
        generated = json.loads(out.stdout)
        catch_up = agent.seconds_to_store(self.marker())
        agent_cpu, store_cpu = (now - before for now, before in zip(agent.cpu(), (agent_cpu, store_cpu)))
        last = agent.status()
        execs, connects = stored(agent.db, since, self.target, generated["port"])
        processed = last["counters"].get("events", 0) - first["counters"].get("events", 0)
        lost = last["kernel_lost"] - first["kernel_lost"]
        dropped = last["store"].get("dropped", 0) - first["store"].get("dropped", 0)
        zero_loss = (execs == generated["execs"] and connects == generated["connects"] and lost == 0 and dropped == 0
                     and generated["failures"] == 0)
        return {
            "target_per_s": rate,
            "offered_per_s": (generated["opens"] + generated["execs"] + generated["connects"]) / generated["seconds"],
            "agent_events_per_s": processed / generated["seconds"],
            "background_per_s": background,
            "agent_us_per_event": 1e6 * agent_cpu / processed if processed else 0.0,
            "store_us_per_event": 1e6 * store_cpu / processed if processed else 0.0,
            "agent_cpu_share": agent_cpu / (generated["seconds"] + catch_up),
            "execs": "%d/%d" % (execs, generated["execs"]),
            "connects": "%d/%d" % (connects, generated["connects"]),
            "kernel_lost": lost,
            "store_dropped": dropped,
            "catch_up_s": catch_up,
            "passed": zero_loss and catch_up <= CATCH_UP_SECONDS,
        }


def kept_up(row: dict) -> bool:
    """The agent caught up right after the step and its store dropped nothing (kernel losses aside)."""
    return row["catch_up_s"] <= CATCH_UP_SECONDS and row["store_dropped"] == 0


def search(load: Load, rates: list[int], refine: int = 2) -> list[dict]:
    """Rates in ascending order until the agent falls behind twice (a step lost by a few kernel
    records does not stop the climb: the rate it keeps up with is a figure too), then halve the
    gap above the best zero-loss pass (or 0) `refine` times."""
    rows = []
    behind = 0
    for rate in rates:
        rows.append(load.step(rate))
        print_row(rows[-1])
        if rows[-1]["catch_up_s"] >= OVERWHELMED_SECONDS:
            print("the agent is overwhelmed (no catch-up within %.0f s or RSS over %d MB): search stopped"
                  % (OVERWHELMED_SECONDS, MEMORY_LIMIT_MB))
            return rows
        behind += not kept_up(rows[-1])
        if behind >= 2:
            break
    for _ in range(refine):
        best = max((row["target_per_s"] for row in rows if row["passed"]), default=0)
        above = [row["target_per_s"] for row in rows if not row["passed"] and row["target_per_s"] > best]
        if not above:
            break
        middle = (best + min(above)) // 2
        if middle in {row["target_per_s"] for row in rows}:
            break
        rows.append(load.step(middle))
        print_row(rows[-1])
        if rows[-1]["catch_up_s"] >= OVERWHELMED_SECONDS:
            break
    return rows


HEADER = "%8s %9s %10s %8s %8s %8s %13s %13s %7s %7s %7s %5s" % (
    "target/s", "offered/s", "agent ev/s", "other/s", "agent us", "store us", "execs", "connects", "k-lost", "dropped",
    "catchup", "pass")


def print_row(row: dict) -> None:
    print("%8d %9.0f %10.0f %8.0f %8.1f %8.1f %13s %13s %7d %7d %6.1fs %5s" % (
        row["target_per_s"], row["offered_per_s"], row["agent_events_per_s"], row["background_per_s"], row["agent_us_per_event"],
        row["store_us_per_event"], row["execs"], row["connects"], row["kernel_lost"], row["store_dropped"],
        row["catch_up_s"], row["passed"]), flush=True)


def memory_line(memory: dict[str, dict[str, float]]) -> str:
    parts = ["%s RSS %.0f MB (PSS %.0f)" % (name, figures["rss"], figures["pss"]) for name, figures in memory.items()]
    total = sum(figures["rss"] for figures in memory.values())
    return "%s; together RSS %.0f MB" % (", ".join(parts), total)


# The consumer's work per event: decode (inside Sensor.poll), then Agent.handle = rules, store
# rows, process upserts, alerts; the percentages are of decode + handle.
CONSUMER_STAGES = {
    "decode": ("sentinel/events/decode.py", "decode"),
    "handle": ("sentinel/agent.py", "handle"),
    "rules": ("sentinel/rules/ruleset.py", "match"),
    "store": ("sentinel/actions/store.py", "add_event"),
    "process": ("sentinel/actions/store.py", "upsert_process"),
    "alerts": ("sentinel/agent.py", "raise_alert"),
}


def profile_consumer(workdir: Path, mix: str, target: str, rate: int, seconds: float, workers: int, top: int = 25) -> None:
    """Run the agent in this process with cProfile on its consumer thread, under the load."""
    import cProfile
    import pstats

    from sentinel import config as configuration
    from sentinel import log
    from sentinel.agent import Agent as InProcessAgent

    config_path = workdir / "sentinel.yaml"
    config_path.write_text(config_text(workdir))
    cfg = configuration.load(str(config_path), rules=tuple(rule_paths()))
    cfg = cfg.replace(
        store=dataclasses.replace(cfg.store, path=str(workdir / "events.db")),
        alerts=dataclasses.replace(cfg.alerts, file=str(workdir / "alerts.json")),
    )
    log.configure("warning")
    agent = InProcessAgent(cfg, str(config_path))
    agent.start()
    profiler = cProfile.Profile()

    def consume() -> None:
        profiler.enable()
        try:
            agent.run()
        finally:
            profiler.disable()

    consumer = threading.Thread(target=consume, name="consumer")
    consumer.start()
    scratch = workdir / "scratch"
    scratch.mkdir(exist_ok=True)
    try:
        subprocess.run([mix, str(seconds), str(rate), str(workers), target, str(scratch)], capture_output=True, check=True)
        time.sleep(1.0)
    finally:
        agent.stop()  # run() returns through shutdown(): programs detached, store flushed
        consumer.join()
    stats = pstats.Stats(profiler)
    events = 0
    cumulative: dict[tuple[str, str], float] = {}
    for (filename, _line, function), entry in stats.stats.items():  # type: ignore[attr-defined]
        key = (os.path.relpath(filename, REPO), function)
        cumulative[key] = cumulative.get(key, 0.0) + entry[3]
        if key == CONSUMER_STAGES["handle"]:
            events = entry[1]  # every event the consumer handled, the backlog drained at stop included
    busy = sum(cumulative.get(key, 0.0) for key in (CONSUMER_STAGES["decode"], CONSUMER_STAGES["handle"]))
    print("consumer thread at %d syscalls/s: %d events; time per stage (cProfile inflates every figure alike):"
          % (rate, events))
    for stage, key in CONSUMER_STAGES.items():
        seconds = cumulative.get(key, 0.0)
        print("  %-8s %-40s %6.1f us/event %5.1f%%" % (stage, "%s:%s" % key, 1e6 * seconds / max(events, 1), 100 * seconds / max(busy, 1e-9)))
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load step")
    parser.add_argument("--rates", default="5000,10000,15000,20000,25000,30000,40000",
                        help="target syscalls per second of the steps, ascending")
    parser.add_argument("--workers", type=int, default=2, help="generator processes sharing the rate")
    parser.add_argument("--ringbuf-pages", type=int, help="sensor.ringbuf_pages for the throughput steps (default: the configured one)")
    parser.add_argument("--exec-iterations", type=int, default=2000, help="0 skips the exec-loop slowdown")
    parser.add_argument("--exec-rounds", type=int, default=5, help="exec-loop runs with the agent (and as many without)")
    parser.add_argument("--outputs", type=int, default=3, help="SIEM outputs (taking every event) for the forwarding overhead run")
    parser.add_argument("--profile", type=int, nargs="?", const=-1, metavar="RATE",
                        help="profile the consumer thread at RATE syscalls/s (default: the best rate found)")
    args = parser.parse_args()
    rates = [int(rate) for rate in args.rates.split(",")]
    # Not under /tmp: programs run from there match "Execution from shared memory or temporary
    # directory", and an alert for every exec would measure the alert path instead.
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache.mkdir(parents=True, exist_ok=True)
    build_dir = tempfile.mkdtemp(prefix="sentinel-bench-agent-", dir=cache)
    try:
        loop = build_loop(build_dir)
        mix, target = build_tools(build_dir)
        if args.exec_iterations:
            slow_dir = Path(build_dir) / "slowdown"
            slow_dir.mkdir()
            result = exec_slowdown(slow_dir, loop, args.exec_iterations, args.exec_rounds)
            print("exec loop (2 x %d fork+exec, %.0f execs/s without the agent, median of %d runs with and %d without): "
                  "slowdown wall %.3fx (runs: %s), cpu %.3fx"
                  % (args.exec_iterations, result["execs_per_second_without"], args.exec_rounds, args.exec_rounds,
                     result["wall_ratio"], ", ".join("%.3f" % r for r in result["wall_ratios"]), result["cpu_ratio"]))
            print("  per exec: %.2f agent events, %.1f us agent CPU, %.1f us store process CPU"
                  % (result["events_per_exec"], result["agent_us_per_exec"], result["store_us_per_exec"]))

        load_dir = Path(build_dir) / "throughput"
        load_dir.mkdir()
        agent = Agent(load_dir, ringbuf_pages=args.ringbuf_pages)
        try:
            phases = agent.start_phases
            print("time to READY: %.2f s = %s + interpreter start and imports %.2f s" % (
                agent.ready_seconds, " + ".join("%s %.2f" % item for item in phases.items()),
                agent.ready_seconds - sum(phases.values())))
            print("memory after start: %s" % memory_line(agent.memory()))
            print("mix 60%% open / 25%% exec / 15%% connect, %d generator processes, %.0f s per step" % (args.workers, args.seconds))
            print(HEADER)
            rows = search(Load(agent, mix, target, args.seconds, args.workers), rates)
            print("memory after the load steps: %s" % memory_line(agent.memory()))
        finally:
            agent.stop()
        passed = [row for row in rows if row["passed"]]
        best = max(passed, key=lambda row: row["offered_per_s"], default=None)
        fastest = max((row for row in rows if kept_up(row)), key=lambda row: row["offered_per_s"], default=None)
        if fastest is not None:
            print("highest rate the agent kept up with (caught up, no store drops), losses aside: %.0f syscalls/s offered, "
                  "%.0f agent events/s, agent CPU %.1f us/event, %d kernel records lost, execs %s, connects %s"
                  % (fastest["offered_per_s"], fastest["agent_events_per_s"], fastest["agent_us_per_event"],
                     fastest["kernel_lost"], fastest["execs"], fastest["connects"]))
        if best is None:
            print("no step passed (zero loss, caught up within %.1f s)" % CATCH_UP_SECONDS)
        else:
            print("highest sustained rate with zero loss: %.0f syscalls/s offered (target %d), %.0f agent events/s, "
                  "agent CPU %.1f us/event (+ store process %.1f us/event), agent busy %.0f%% of a core"
                  % (best["offered_per_s"], best["target_per_s"], best["agent_events_per_s"], best["agent_us_per_event"],
                     best["store_us_per_event"], 100 * best["agent_cpu_share"]))

        if args.outputs:
            rate = rates[0]
            fwd_dir = Path(build_dir) / "forwarding"
            fwd_dir.mkdir()
            agent = Agent(fwd_dir, outputs=args.outputs)
            try:
                with_outputs = Load(agent, mix, target, args.seconds, args.workers).step(rate)
            finally:
                agent.stop()
            without = rows[0]
            print("forwarding every event to %d outputs at %d syscalls/s: agent cpu %.1f us/event vs %.1f without (x%.2f), passed: %s"
                  % (args.outputs, rate, with_outputs["agent_us_per_event"], without["agent_us_per_event"],
                     with_outputs["agent_us_per_event"] / max(without["agent_us_per_event"], 1e-9), with_outputs["passed"]))

        profile_rate = args.profile
        if profile_rate == -1:  # the best rate found; else the fastest the agent kept up with
            chosen = best or fastest
            profile_rate = chosen["target_per_s"] if chosen is not None else None
        if profile_rate:
            profile_dir = Path(build_dir) / "profile"
            profile_dir.mkdir()
            profile_consumer(profile_dir, mix, target, profile_rate, args.seconds, args.workers)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
