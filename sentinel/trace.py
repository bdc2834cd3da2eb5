"""`sentinel trace`: live decoded events without rules, as columns or JSON lines.

Text that comes from the monitored system (comm, paths, argv) is escaped before it reaches
the terminal; JSON keeps it exact (undecodable bytes as \\udcXX surrogate escapes).
"""

from __future__ import annotations

import json
import time
from typing import Any

from sentinel.events.model import Event, Fd, Process
from sentinel.textsafe import escape_for_terminal

COLUMNS = ("TIME", "TYPE", "PID", "PPID", "COMM", "RES", "DETAIL")
_LINE = "%-15s %-9s %7s %7s %-15s %5s %s"


def process_dict(proc: Process) -> dict[str, Any]:
    """Every field of a Process; the parent as its exec id (the chain is the table's)."""
    fields = {}
    for name in Process.__slots__:
        value = getattr(proc, name)
        if name == "parent":
            value = list(value.exec_id) if value is not None else None
        elif isinstance(value, tuple):
            value = list(value)
        fields[name] = value
    return fields


def fd_dict(fd: Fd) -> dict[str, Any]:
    return {name: getattr(fd, name) for name in Fd.__slots__}


def event_dict(event: Event) -> dict[str, Any]:
    return {
        "num": event.num,
        "type": event.type,
        "time_ns": event.time_ns,
        "boot_ns": event.boot_ns,
        "tid": event.tid,
        "res": event.res,
        "args": {k: list(v) if isinstance(v, tuple) else v for k, v in event.args.items()},
        "proc": process_dict(event.proc),
        "fd": fd_dict(event.fd) if event.fd is not None else None,
    }


def format_json(event: Event) -> str:
    return json.dumps(event_dict(event), separators=(",", ":"))


def _detail(event: Event) -> str:
    if event.fd is not None:
        return event.fd.name
    proc = event.proc
    if event.type in ("execve", "execveat"):
        if event.res < 0:
            return str(event.args.get("filename", ""))
        return " ".join((proc.exepath, *proc.args))
    if event.type in ("chdir", "fchdir"):
        return str(event.args.get("path", ""))
    if event.type == "procexit":
        return "status=%s sig=%s" % (event.args.get("status"), event.args.get("sig"))
    if "child_pid" in event.args:
        return "child=%s%s" % (event.args["child_pid"], " thread" if event.args.get("is_thread") else "")
    return ""


def header_line() -> str:
    return _LINE % COLUMNS


def format_line(event: Event) -> str:
    seconds, nanos = divmod(event.time_ns, 1_000_000_000)
    stamp = time.strftime("%H:%M:%S", time.gmtime(seconds)) + ".%06d" % (nanos // 1000)
    proc = event.proc
    return _LINE % (
        stamp,
        event.type,
        proc.pid,
        proc.ppid,
        escape_for_terminal(proc.comm),
        event.res,
        escape_for_terminal(_detail(event)),
    )


def run(config, event_types: tuple[str, ...], as_json: bool, out) -> int:
    """Attach, print events until SIGINT/SIGTERM, detach. `out` is a text stream.

    READY=1 goes to $NOTIFY_SOCKET once everything is attached. Returns the exit status.
    """
    import signal
    import threading

    from sentinel.errors import ConfigError
    from sentinel.events.interest import Interest
    from sentinel.notify import notify
    from sentinel.sensor import PROGRAMS, Sensor

    known = frozenset().union(*(p.event_types for p in PROGRAMS))
    unknown = sorted(set(event_types) - known)
    if unknown:
        raise ConfigError("unknown event type(s) %s (known: %s)" % (", ".join(unknown), ", ".join(sorted(known))))
    wanted = frozenset(event_types)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    sensor = Sensor(config, Interest(event_types=wanted))
    try:
        sensor.start()
        notify("READY=1")
        if not as_json:
            out.write(header_line() + "\n")
        render = format_json if as_json else format_line
        while not stop.is_set():
            lines = [render(e) for e in sensor.poll(0.2) if not wanted or e.type in wanted]
            if lines:
                out.write("\n".join(lines) + "\n")
                out.flush()
    except BrokenPipeError:  # `sentinel trace | head`
        pass
    finally:
        notify("STOPPING=1")
        sensor.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
