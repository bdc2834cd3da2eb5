"""`sentinel ps`: the running processes as the process table sees them.

What rules will be told about a process (its ancestry, user names resolved in its own root,
container id, cgroup) can be checked here without loading anything into the kernel: the
table is bootstrapped from /proc exactly as the agent does at start.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sentinel.events.model import Process
from sentinel.textsafe import escape_for_terminal


def process_record(proc: Process) -> dict[str, Any]:
    """JSON-friendly view of one process, with the pids of its ancestors nearest first."""
    return {
        "pid": proc.pid,
        "ppid": proc.ppid,
        "start_ns": proc.start_ns,
        "comm": proc.comm,
        "exepath": proc.exepath,
        "args": list(proc.args),
        "cwd": proc.cwd,
        "uid": proc.uid,
        "user": proc.user_name,
        "gid": proc.gid,
        "group": proc.group_name,
        "loginuid": proc.loginuid,
        "login": proc.login_name,
        "container_id": proc.container_id,
        "cgroup": proc.cgroup,
        "tty": proc.tty,
        "ancestors": [ancestor.pid for ancestor in proc.ancestors()],
    }


def _line(proc: Process, depth: int) -> str:
    command = " ".join([proc.exepath or "[%s]" % proc.comm, *proc.args])
    where = "" if proc.container_id == "host" else "  container=%s" % proc.container_id
    return "%7d %-10s %s%s%s" % (
        proc.pid,
        escape_for_terminal(proc.user_name or str(proc.uid))[:10],
        "  " * depth,
        escape_for_terminal(command),
        where,
    )


def format_tree(processes: Iterable[Process], width: int | None = None) -> Iterator[str]:
    """Lines of a process tree (children under their parent, by start time); processes whose
    parent is not among `processes` are roots. Lines are cut at `width` characters if given."""
    procs = sorted(processes, key=lambda proc: (proc.start_ns, proc.pid))
    present = {id(proc) for proc in procs}
    children: dict[int, list[Process]] = {}
    roots = []
    for proc in procs:
        if proc.parent is not None and id(proc.parent) in present:
            children.setdefault(id(proc.parent), []).append(proc)
        else:
            roots.append(proc)
    yield "%7s %-10s %s" % ("PID", "USER", "COMMAND")
    stack = [(root, 0) for root in reversed(roots)]
    while stack:
        proc, depth = stack.pop()
        line = _line(proc, depth)
        yield line if width is None or len(line) <= width else line[: max(width - 1, 0)] + "…"
        stack.extend((child, depth + 1) for child in reversed(children.get(id(proc), ())))


def select(processes: Iterable[Process], container: str | None = None, pid: int | None = None) -> list[Process]:
    """The processes of one container (its id or `host`), or one process and its ancestors."""
    procs = list(processes)
    if container is not None:
        procs = [proc for proc in procs if proc.container_id == container[:12]]
    if pid is not None:
        chosen = next((proc for proc in procs if proc.pid == pid), None)
        procs = [] if chosen is None else [*reversed(list(chosen.ancestors())), chosen]
    return procs
