"""The records every stage after the decoder shares: Event, Process and Fd.

They are `__slots__` classes, not dataclasses: one is built per kernel record on the hot
path (a slots object costs ~0.4 us, a frozen dataclass ~1.6 us). Their attribute names are
the contract between the sensors (which fill them) and the rule engine's field registry
(which reads them); Falco's field names map onto them in `sentinel.rules.fields`.

Semantics follow Falco's, because the upstream rules compare against Falco's values:
- an Event is the *exit* side of a syscall with the enter arguments merged in (`evt.dir`
  is '<'), so `res` is always known;
- `Process` is the process after the event (for an exec: the new image);
- values are kept raw (ints for flags, modes, uids); rendering to Falco's strings
  (`O_RDONLY|O_CLOEXEC`, `ENOENT`, user names) happens in the field extractors.
"""

from __future__ import annotations

from typing import Any

# Falco's `fd.typechar` for each `fd.type`.
FD_TYPECHARS = {
    "file": "f",
    "directory": "d",
    "ipv4": "4",
    "ipv6": "6",
    "unix": "u",
    "pipe": "p",
    "event": "e",
    "signalfd": "s",
    "eventpoll": "l",
    "inotify": "i",
    "timerfd": "t",
    "netlink": "n",
    "bpf": "b",
    "userfaultfd": "u",
    "io_uring": "r",
    "memfd": "m",
    "pidfd": "P",
}


class Process:
    """One program image of one process: identity is `exec_id` = (pid, start time).

    A process that execs gets a new Process (same pid, its `parent` unchanged); fork creates a
    new one whose fields start as copies of the parent's. Owned by the process table, which
    updates credentials and cwd in place as the kernel reports them.
    """

    __slots__ = (
        "pid",  # tgid in the initial pid namespace
        "tid",  # the thread that last acted (the exec'ing thread for an exec)
        "ppid",
        "start_ns",  # task->start_boottime of the group leader: CLOCK_BOOTTIME ns (abi.EXEC_ID_CLOCK)
        "vpid",  # pid as seen in the process's own pid namespace
        "pgid",
        "vpgid",
        "sid",
        "comm",  # task->comm, <= 15 bytes: Falco's proc.name
        "exe",  # argv[0] as the program was started (Falco's proc.exe)
        "exepath",  # resolved path of the executable file (Falco's proc.exepath)
        "filename",  # bprm->filename: the path passed to execve
        "interpreter",  # for a script: the interpreter's path; else ""
        "args",  # tuple[str, ...]: argv[1:]
        "args_truncated",  # bool: argv longer than the kernel-side bound
        "env",  # tuple[str, ...]: "NAME=value" for the configured variable names only
        "cwd",
        "tty",  # controlling tty device number, 0 if none
        "uid",
        "gid",
        "euid",
        "egid",
        "loginuid",  # audit login uid; 0xFFFFFFFF (-1) when unset
        "cap_permitted",  # int bit mask
        "cap_effective",
        "cap_inheritable",
        "cgroup_id",  # cgroup v2 id (kernfs inode)
        "cgroup",  # cgroup path (v2, or v1 of the cpu/pids controller on hybrid hosts)
        "container_id",  # 12-hex short id, "host" outside containers
        "exe_ino",
        "exe_dev",  # kernel dev_t of the exe's superblock (MKDEV: major << 20 | minor)
        "exe_mtime_ns",
        "exe_ctime_ns",
        "exe_from_memfd",  # bool: the image was exec'd from a memfd_create file
        "exe_upper_layer",  # bool: the exe lives on an overlayfs upper layer
        "exe_writable",  # bool: the exe is writable by the process's user
        "is_vpgid_leader",
        "exec_syscall",  # "execve" / "execveat" / "" (bootstrap from /proc, fork)
        "parent",  # Process | None: the parent's current image
        "exited",  # bool
        "exit_code",
        "exit_signal",
        "from_proc",  # bool: bootstrapped from /proc (some fields are best-effort)
        "user_name",  # resolved in the process's own root where it differs
        "group_name",
        "login_name",
    )

    def __init__(self, pid: int = 0, start_ns: int = 0, **fields: Any) -> None:
        self.pid = pid
        self.tid = pid
        self.ppid = 0
        self.start_ns = start_ns
        self.vpid = pid
        self.pgid = 0
        self.vpgid = 0
        self.sid = 0
        self.comm = ""
        self.exe = ""
        self.exepath = ""
        self.filename = ""
        self.interpreter = ""
        self.args = ()
        self.args_truncated = False
        self.env = ()
        self.cwd = ""
        self.tty = 0
        self.uid = 0
        self.gid = 0
        self.euid = 0
        self.egid = 0
        self.loginuid = 0xFFFFFFFF
        self.cap_permitted = 0
        self.cap_effective = 0
        self.cap_inheritable = 0
        self.cgroup_id = 0
        self.cgroup = ""
        self.container_id = "host"
        self.exe_ino = 0
        self.exe_dev = 0
        self.exe_mtime_ns = 0
        self.exe_ctime_ns = 0
        self.exe_from_memfd = False
        self.exe_upper_layer = False
        self.exe_writable = False
        self.is_vpgid_leader = False
        self.exec_syscall = ""
        self.parent = None
        self.exited = False
        self.exit_code = 0
        self.exit_signal = 0
        self.from_proc = False
        self.user_name = ""
        self.group_name = ""
        self.login_name = ""
        for name, value in fields.items():
            setattr(self, name, value)

    @property
    def exec_id(self) -> tuple[int, int]:
        return (self.pid, self.start_ns)

    @property
    def cmdline(self) -> str:
        """Falco's proc.cmdline: the name followed by the arguments."""
        if not self.args:
            return self.comm
        return self.comm + " " + " ".join(self.args)

    def ancestors(self, limit: int = 64):
        """Parents, nearest first; bounded so that a corrupt chain cannot loop."""
        node = self.parent
        while node is not None and limit > 0:
            yield node
            node = node.parent
            limit -= 1

    def copy_for_fork(self, pid: int, start_ns: int) -> Process:
        child = copy_process(self)
        child.pid = pid
        child.tid = pid
        child.ppid = self.pid
        child.start_ns = start_ns
        child.parent = self
        child.exec_syscall = ""
        child.exited = False
        child.exit_code = 0
        child.exit_signal = 0
        child.from_proc = False
        return child

    def __repr__(self) -> str:
        return "Process(pid=%d, comm=%r, exepath=%r)" % (self.pid, self.comm, self.exepath)


def _slot_copier(cls):
    """A shallow copy of a slots instance in straight-line generated code: every fork
    copies a Process, and this is 3x faster than a getattr/setattr loop over the slots."""
    lines = ["def copy(source):", "    copy = new(cls)"]
    lines += ["    copy.%s = source.%s" % (name, name) for name in cls.__slots__]
    lines.append("    return copy")
    namespace = {"new": object.__new__, "cls": cls}
    exec("\n".join(lines), namespace)  # noqa: S102 - the text is built from slot names only
    return namespace["copy"]


# a shallow copy of a Process (forks, and exec records that share their decoded fields)
copy_process = _slot_copier(Process)


class Fd:
    """The file or socket an event acts on, resolved in the kernel at the time of the event."""

    __slots__ = (
        "num",  # fd number, -1 if none
        "type",  # a key of FD_TYPECHARS
        "name",  # resolved path, or "cip:cport->sip:sport" for sockets (Falco's fd.name)
        "nameraw",  # the path as the program passed it
        "ino",
        "dev",
        "open_flags",
        "created",  # bool: the open created the file (FMODE_CREATED)
        "l4proto",  # "tcp" / "udp" / "icmp" / "raw" / "" for non-sockets
        "family",  # AF_* number for sockets
        "lip",  # local address (str), port (int)
        "lport",
        "rip",  # remote address, port
        "rport",
        "is_server",  # bool: the local end is the server (accept / listen side)
        "connected",  # bool: the socket had a peer before this event
        "name_changed",  # bool: the event gave the socket a new peer (sendto to an address)
    )

    def __init__(self, num: int = -1, type: str = "file", name: str = "", **fields: Any) -> None:
        self.num = num
        self.type = type
        self.name = name
        self.nameraw = name
        self.ino = 0
        self.dev = 0
        self.open_flags = 0
        self.created = False
        self.l4proto = ""
        self.family = 0
        self.lip = ""
        self.lport = 0
        self.rip = ""
        self.rport = 0
        self.is_server = False
        self.connected = False
        self.name_changed = False
        for field, value in fields.items():
            setattr(self, field, value)

    @property
    def typechar(self) -> str:
        return FD_TYPECHARS.get(self.type, "o")

    @property
    def sip(self) -> str:
        return self.lip if self.is_server else self.rip

    @property
    def sport(self) -> int:
        return self.lport if self.is_server else self.rport

    @property
    def cip(self) -> str:
        return self.rip if self.is_server else self.lip

    @property
    def cport(self) -> int:
        return self.rport if self.is_server else self.lport

    def __repr__(self) -> str:
        return "Fd(num=%d, type=%r, name=%r)" % (self.num, self.type, self.name)


class Event:
    """One syscall (or kernel action) as seen at its exit, with its enter arguments merged.

    `type` is Falco's event type name (`execve`, `openat`, `connect`, `clone`, `procexit`,
    ...); `args` holds Falco's argument names (`flags`, `mode`, `name`, `path`, `oldpath`,
    `newpath`, `uid`, `request`, `cmd`, `domain`, `fd`, ...) with raw values.
    """

    __slots__ = ("num", "type", "boot_ns", "time_ns", "tid", "res", "args", "proc", "fd")

    def __init__(
        self,
        type: str,
        proc: Process,
        res: int = 0,
        args: dict[str, Any] | None = None,
        fd: Fd | None = None,
        boot_ns: int = 0,
        time_ns: int = 0,
        tid: int = 0,
        num: int = 0,
    ) -> None:
        self.num = num
        self.type = type
        self.boot_ns = boot_ns  # CLOCK_BOOTTIME ns from the kernel (bpf_ktime_get_boot_ns)
        self.time_ns = time_ns  # UTC ns since the epoch (boot clock + measured offset)
        self.tid = tid or proc.pid
        self.res = res
        self.args = args if args is not None else {}
        self.proc = proc
        self.fd = fd

    @property
    def dir(self) -> str:
        return "<"

    def __repr__(self) -> str:
        return "Event(%s, pid=%d, res=%d, args=%r, fd=%r)" % (
            self.type,
            self.proc.pid,
            self.res,
            self.args,
            self.fd,
        )
