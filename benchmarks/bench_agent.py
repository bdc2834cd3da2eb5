"""The whole agent on the real kernel, with the upstream Falco files and the default storage
policy: sustained throughput with zero loss, exec-loop slowdown, RSS and time to READY.

Prints, from one run:
- time to READY (process start to READY=1 on the notify socket) and RSS after load
  (the agent plus its store process);
- exec-loop slowdown: two parallel C loops fork+exec /bin/true, without the agent before
  and after, and with it (ratio of wall times, and of the loops' CPU times);
- throughput: a C load generator issues 60% open (half under /etc), 25% exec, 15% connect
  at increasing rates; for each rate, events the agent processed per second, events
  generated vs stored (execs and connects are stored by default policy: every one must be
  in SQLite), kernel ring-buffer losses and store drops. The highest rate with zero loss
  is the figure. Fork+exec throughput of the machine bounds the 25% exec share, so the
  generator's achieved rate is printed beside the target.

Run: .venv/bin/python -m benchmarks.bench_agent [--seconds 10] [--rates 50,100,200,400]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.bench_exec import build_loop, run_loops
from sentinel.control import request

REPO = Path(__file__).resolve().parents[1]
FALCO = REPO.parent / "shared" / "compat" / "falco"
MIX_SOURCE = Path(__file__).resolve().parent / "mix_load.c"


def rule_args() -> list[str]:
    args = ["--rules", str(REPO / "rules")]
    for name in ("falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml"):
        if (FALCO / name).exists():
            args += ["--rules", str(FALCO / name)]
    return args


class Agent:
    def __init__(self, workdir: Path, outputs: int = 0) -> None:
        self.workdir = workdir
        self.db = workdir / "events.db"
        self.socket = workdir / "control.sock"
        config = workdir / "sentinel.yaml"
        text = "control:\n  socket: %s\nlog_level: warning\n" % self.socket
        if outputs:
            # SIEM outputs that take every event, not only alerts: the heaviest forwarding load.
            text += "forward:\n  outbox: %s\noutputs:\n" % (workdir / "outbox.db")
            for number in range(outputs):
                text += "  - {name: out%d, type: jsonfile, path: %s, events: true}\n" % (number, workdir / ("out%d.jsonl" % number))
        config.write_text(text)
        notify_path = str(workdir / "notify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(180)
        started = time.monotonic()
        self.log = open(workdir / "agent.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sentinel.cli", "run", "--config", str(config), "--db", str(self.db),
             "--alerts-file", str(workdir / "alerts.json"), *rule_args()],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, NOTIFY_SOCKET=notify_path), cwd=REPO,
        )
        while b"READY=1" not in notify.recv(4096):
            pass
        self.ready_seconds = time.monotonic() - started
        notify.close()

    def status(self) -> dict:
        return request(str(self.socket), "status")

    def rss_mb(self) -> float:
        pids = [self.process.pid]
        store_pid = self.status().get("store", {}).get("store_process_pid")
        if store_pid:
            pids.append(store_pid)
        total = 0
        for pid in pids:
            for line in Path("/proc/%d/status" % pid).read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024

    def cpu_seconds(self) -> float:
        fields = Path("/proc/%d/stat" % self.process.pid).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)
        self.log.close()


def exec_slowdown(agent_dir: Path, loop: str, iterations: int) -> dict:
    before = run_loops(loop, iterations, 2)
    agent = Agent(agent_dir)
    try:
        during = run_loops(loop, iterations, 2)
        rss = agent.rss_mb()
        ready = agent.ready_seconds
    finally:
        agent.stop()
    after = run_loops(loop, iterations, 2)
    base_wall = (before["seconds"] + after["seconds"]) / 2
    base_cpu = (before["cpu"] + after["cpu"]) / 2
    return {
        "wall_ratio": during["seconds"] / base_wall,
        "cpu_ratio": during["cpu"] / base_cpu,
        "execs_per_second_without": 2 * iterations / base_wall,
        "rss_mb": rss,
        "ready_seconds": ready,
    }


def listener() -> tuple[socket.socket, threading.Event]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    stop = threading.Event()

    def accept_loop() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    threading.Thread(target=accept_loop, daemon=True).start()
    return server, stop


def stored(db: Path, since_ns: int, port: int) -> tuple[int, int]:
    with sqlite3.connect("file:%s?mode=ro" % db, uri=True) as conn:
        execs = conn.execute(
            "SELECT count(*) FROM events WHERE evt_type = 'execve' AND proc_exepath = '/usr/bin/true' AND time >= ?",
            (since_ns,),
        ).fetchone()[0]
        connects = conn.execute(
            "SELECT count(*) FROM events WHERE evt_type = 'connect' AND fd_rport = ? AND time >= ?", (port, since_ns)
        ).fetchone()[0]
    return execs, connects


def throughput(agent_dir: Path, mix: str, rates: list[int], seconds: float, outputs: int = 0) -> list[dict]:
    agent = Agent(agent_dir, outputs)
    server, stop_listener = listener()
    port = server.getsockname()[1]
    scratch = agent_dir / "scratch"
    scratch.write_text("x")
    rows = []
    try:
        for rate in rates:
            first = agent.status()
            cpu_before = agent.cpu_seconds()
            since = time.time_ns()
            out = subprocess.run([mix, str(seconds), str(rate), str(port), str(scratch)], capture_output=True, text=True, check=True)
            generated = json.loads(out.stdout)
            time.sleep(2.0)  # let the store's last batch land
            last = agent.status()
            cpu = agent.cpu_seconds() - cpu_before
            execs, connects = stored(agent.db, since, port)
            processed = last["counters"].get("events", 0) - first["counters"].get("events", 0)
            rows.append({
                "target_rounds_per_s": rate,
                "achieved_syscalls_per_s": (generated["opens"] + generated["execs"] + generated["connects"]) / generated["seconds"],
                "agent_events_per_s": processed / generated["seconds"],
                "agent_cpu_us_per_event": 1e6 * cpu / processed if processed else 0.0,
                "execs": "%d/%d" % (execs, generated["execs"]),
                "connects": "%d/%d" % (connects, generated["connects"]),
                "kernel_lost": last["kernel_lost"] - first["kernel_lost"],
                "store_dropped": last["store"].get("dropped", 0) - first["store"].get("dropped", 0),
                "zero_loss": execs == generated["execs"] and connects == generated["connects"]
                and last["kernel_lost"] == first["kernel_lost"],
            })
    finally:
        stop_listener.set()
        server.close()
        agent.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="50,100,200,400", help="generator rounds per second (20 syscalls each)")
    parser.add_argument("--exec-iterations", type=int, default=2000)
    parser.add_argument("--outputs", type=int, default=3, help="SIEM outputs (taking every event) for the forwarding overhead run")
    args = parser.parse_args()
    build_dir = tempfile.mkdtemp(prefix="sentinel-bench-agent-")
    try:
        loop = build_loop(build_dir)
        mix = os.path.join(build_dir, "mix_load")
        subprocess.run(["gcc", "-O2", "-o", mix, str(MIX_SOURCE)], check=True)
        slow_dir = Path(build_dir) / "slowdown"
        slow_dir.mkdir()
        result = exec_slowdown(slow_dir, loop, args.exec_iterations)
        print("time to READY: %.2f s   RSS (agent + store process): %.0f MB" % (result["ready_seconds"], result["rss_mb"]))
        print("exec loop (2 x %d fork+exec, %.0f execs/s without the agent): slowdown wall %.3fx, cpu %.3fx"
              % (args.exec_iterations, result["execs_per_second_without"], result["wall_ratio"], result["cpu_ratio"]))
        load_dir = Path(build_dir) / "throughput"
        load_dir.mkdir()
        rows = throughput(load_dir, mix, [int(r) for r in args.rates.split(",")], args.seconds)
        print("%8s %12s %12s %13s %13s %8s %8s %5s" % ("rounds/s", "syscalls/s", "agent evt/s", "execs", "connects", "k-lost", "dropped", "ok"))
        for row in rows:
            print("%8d %12.0f %12.0f %13s %13s %8d %8d %5s" % (
                row["target_rounds_per_s"], row["achieved_syscalls_per_s"], row["agent_events_per_s"], row["execs"],
                row["connects"], row["kernel_lost"], row["store_dropped"], row["zero_loss"]))
        best = max((r["agent_events_per_s"] for r in rows if r["zero_loss"]), default=0.0)
        print("highest sustained rate with zero loss: %.0f events/s" % best)
        if args.outputs:
            rate = [int(r) for r in args.rates.split(",")][0]
            fwd_dir = Path(build_dir) / "forwarding"
            fwd_dir.mkdir()
            with_outputs = throughput(fwd_dir, mix, [rate], args.seconds, outputs=args.outputs)[0]
            without = rows[0]
            print("forwarding every event to %d outputs at %d rounds/s: agent cpu %.1f us/event vs %.1f without (x%.2f), zero loss: %s"
                  % (args.outputs, rate, with_outputs["agent_cpu_us_per_event"], without["agent_cpu_us_per_event"],
                     with_outputs["agent_cpu_us_per_event"] / max(without["agent_cpu_us_per_event"], 1e-9), with_outputs["zero_loss"]))
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
