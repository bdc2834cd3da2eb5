"""Rule engine throughput: events/s through the compiled upstream Falco rules on one core.

Synthetic mix: 60% opens (half under /etc or /root), 25% execs, 15% connects. Measured twice:
the three upstream files alone, and with 1,000 generated rules spread over event types in
the upstream files' proportions. Prints events/s and the ratio between the two.

    .venv/bin/python -m benchmarks.bench_rules [--events N] [--rules-dir DIR] [--with-sigma [DIR]]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from pathlib import Path

from sentinel.events.model import Event, Fd, Process
from sentinel.rules.ruleset import RuleSpec, Ruleset, compile_rules, load_rules

UPSTREAM_FILES = ("falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml")
_DEFAULT_DIRS = (Path(__file__).resolve().parent.parent.parent / "shared/compat/falco", Path("/usr/share/sentinel/compat/falco"))

_COMMS = ["bash", "python3", "nginx", "cat", "sshd", "cron", "systemd", "node", "java", "curl", "ls", "grep"]
_OPEN_PLAIN = ["/usr/lib/x86_64-linux-gnu/libc.so.6", "/proc/self/status", "/var/log/syslog", "/home/user/notes.txt",
               "/tmp/build/obj.o", "/usr/share/zoneinfo/UTC", "/dev/null", "/var/lib/app/data.db"]
_OPEN_SENSITIVE = ["/etc/passwd", "/etc/shadow", "/etc/ld.so.cache", "/etc/hosts", "/root/.bashrc", "/root/.ssh/id_rsa",
                   "/etc/nsswitch.conf", "/etc/ssl/certs/ca.pem"]
_EXES = ["/usr/bin/bash", "/usr/bin/ls", "/usr/bin/python3", "/usr/bin/curl", "/usr/sbin/nginx", "/usr/bin/grep"]


def synthetic_events(count: int, seed: int = 1) -> list[Event]:
    rng = random.Random(seed)
    init = Process(1, 1, comm="systemd", exe="/sbin/init", exepath="/usr/lib/systemd/systemd")
    shell = Process(100, 2, comm="bash", exe="-bash", exepath="/usr/bin/bash", parent=init, ppid=1, tty=34816)
    events = []
    for number in range(count):
        comm = rng.choice(_COMMS)
        proc = Process(1000 + number % 500, 10, comm=comm, exe=comm, exepath="/usr/bin/" + comm, parent=shell,
                       ppid=100, args=("-c", "x"), uid=rng.choice((0, 1000)), loginuid=rng.choice((0xFFFFFFFF, 1000)))
        roll = rng.random()
        if roll < 0.60:
            path = rng.choice(_OPEN_SENSITIVE if rng.random() < 0.5 else _OPEN_PLAIN)
            flags = rng.choice((0, 0o2000000, 0o1101, 0o102))
            fd = Fd(3, "file", path, open_flags=flags)
            events.append(Event("openat", proc, res=3, args={"flags": flags, "mode": 0o644, "name": path}, fd=fd, num=number))
        elif roll < 0.85:
            exe = rng.choice(_EXES)
            child = Process(proc.pid, 11, comm=exe.rsplit("/", 1)[1], exe=exe, exepath=exe, parent=shell, ppid=100,
                            args=("-la", "/tmp"), uid=proc.uid, tty=rng.choice((0, 34816)))
            events.append(Event("execve", child, res=0, args={}, num=number))
        else:
            fd = Fd(4, "ipv4", "10.0.0.5:40000->93.184.216.34:443", l4proto="tcp", lip="10.0.0.5", lport=40000,
                    rip=rng.choice(("93.184.216.34", "169.254.169.254", "192.168.1.1")), rport=rng.choice((443, 80, 4444)))
            events.append(Event("connect", proc, res=0, args={"fd": 4}, fd=fd, num=number))
    return events


def generated_rules(base: Ruleset, count: int, seed: int = 2) -> list[RuleSpec]:
    """`count` plausible rules over event types in the proportions of the upstream rules."""
    rng = random.Random(seed)
    weights: Counter[str] = Counter()
    for rule in base.enabled_rules:
        for event_type in rule.event_types or ():
            weights[event_type] += 1
    types = list(weights)
    chosen = rng.choices(types, weights=[weights[t] for t in types], k=count)
    specs = []
    for number, event_type in enumerate(chosen):
        if event_type in ("open", "openat", "openat2", "creat"):
            condition = ("evt.type = %s and fd.name startswith /opt/app%d/ and not proc.name in (shell_binaries)" % (event_type, number))
        elif event_type in ("execve", "execveat"):
            condition = "spawned_process and evt.type = %s and proc.name = tool%d and proc.pname in (shell_binaries)" % (event_type, number)
        elif event_type == "connect":
            condition = "evt.type = connect and fd.rport = %d and proc.name = client%d" % (10000 + number, number)
        else:
            condition = "evt.type = %s and proc.name = prog%d" % (event_type, number)
        specs.append(RuleSpec(name="generated %d" % number, condition=condition,
                              output="generated %d %%proc.name %%fd.name" % number, priority="notice"))
    return specs


def events_per_second(ruleset: Ruleset, events: list[Event], rounds: int = 5) -> tuple[float, int]:
    """Best of `rounds`, in CPU time of this thread: other processes on a busy machine do not
    count against the engine (the figure is what one core delivers)."""
    match = ruleset.match
    best = 0.0
    hits = 0
    for _ in range(rounds):
        hits = 0
        start = time.thread_time()
        for event in events:
            hits += len(match(event))
        elapsed = time.thread_time() - start
        best = max(best, len(events) / elapsed)
    return best, hits


def find_rules_dir(explicit: str | None) -> Path:
    for candidate in ([Path(explicit)] if explicit else list(_DEFAULT_DIRS)):
        if (candidate / UPSTREAM_FILES[0]).is_file():
            return candidate
    raise SystemExit("upstream Falco rule files not found; pass --rules-dir")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rules-dir", default=None)
    parser.add_argument("--with-sigma", nargs="?", const="", default=None, metavar="DIR",
                        help="also measure with the Sigma rules of DIR (default: the compat Sigma corpus) added")
    options = parser.parse_args()
    directory = find_rules_dir(options.rules_dir)
    events = synthetic_events(options.events)

    start = time.perf_counter()
    upstream = load_rules([str(directory / name) for name in UPSTREAM_FILES])
    load_seconds = time.perf_counter() - start
    rate, hits = events_per_second(upstream, events)
    print("upstream rules: %d enabled, loaded+compiled in %.2f s" % (len(upstream.enabled_rules), load_seconds))
    print("upstream:        %10.0f events/s  (%.2f us/event, %d matches in %d events)" % (rate, 1e6 / rate, hits, len(events)))

    start = time.perf_counter()
    bigger = compile_rules(generated_rules(upstream, 1000), base=upstream)
    compile_seconds = time.perf_counter() - start
    big_rate, big_hits = events_per_second(bigger, events)
    print("+1000 rules:     %10.0f events/s  (%.2f us/event, %d matches; compiled in %.2f s)" % (
        big_rate, 1e6 / big_rate, big_hits, compile_seconds))
    print("slowdown with 1000 extra rules: %.2fx" % (rate / big_rate))

    if options.with_sigma is not None:
        sigma_dir = Path(options.with_sigma) if options.with_sigma else directory.parent / "sigma"
        start = time.perf_counter()
        with_sigma = load_rules([str(directory / name) for name in UPSTREAM_FILES] + [str(sigma_dir)])
        sigma_seconds = time.perf_counter() - start
        sigma_rate, sigma_hits = events_per_second(with_sigma, events)
        print("+%d sigma rules: %10.0f events/s  (%.2f us/event, %d matches; loaded+compiled in %.2f s, %d skipped)" % (
            with_sigma.counts.get("sigma_rules", 0), sigma_rate, 1e6 / sigma_rate, sigma_hits, sigma_seconds,
            with_sigma.counts.get("sigma_skipped", 0)))
        print("slowdown with the sigma rules: %.2fx" % (rate / sigma_rate))


if __name__ == "__main__":
    main()
