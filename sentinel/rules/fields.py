"""The field registry: every Falco field a condition or an output can use, in one table.

Each entry says the field's type, what it means, how its value is extracted from an
`sentinel.events.model.Event`, and where the kernel side gets it (`source`). The same table
drives the compiler (fields resolve to extractor functions at load time), `sentinel rules
fields` and docs/fields.md.

An extractor returns the value, or None when the event has none: Falco's "no value", for which
every comparison is false, `exists` is false and outputs show `<NA>`. Fields of kind "any"
(`proc.aname` without index, `fd.ip`, `fd.net`, `fd.port`) return a tuple of candidates and a
comparison is true when it holds for any of them, as in Falco. Fields of kind "list"
(`fd.types`) return a tuple and support `in` (subset) and `intersects`.
"""

from __future__ import annotations

import base64
import dataclasses
import time as _time
from dataclasses import dataclass
from typing import Any, Callable

from sentinel.events.model import Event, Process
from sentinel.rules import render

Extractor = Callable[[Event], Any]

NOT_ON_HOST = "not available on a host"

# Open family: Falco's evt.is_open_* and evt.arg.flags as open flags apply to these.
OPEN_EVENT_TYPES = frozenset({"open", "openat", "openat2", "creat", "open_by_handle_at"})
EXEC_EVENT_TYPES = frozenset({"execve", "execveat"})
CHMOD_EVENT_TYPES = frozenset({"chmod", "fchmod", "fchmodat"})

_EXEC_SOURCE = (
    "raw tracepoint sched_process_exec (new image), from the task and linux_binprm; copied to "
    "every later event of the process by the process table"
)


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str  # string, int, bool, ipaddr, ipnet, port, bytes, abstime, reltime
    doc: str
    source: str
    extract: Callable[..., Any]  # (event) or, for fields with an argument, (arg) -> extractor
    arg: str = "none"  # none | optional | required: whether `name[arg]` is accepted
    kind: str = "single"  # single | any | list
    absent: str = "<NA>"  # what the value is when the event has none
    inline: str = ""  # the extractor as a Python expression over `e`, for generated code

    def bind(self, arg: str | None) -> Extractor:
        """The extractor for this field with `arg`; raises ValueError for a bad argument."""
        if self.arg == "none":
            if arg is not None:
                raise ValueError("field '%s' takes no argument" % self.name)
            return self.extract
        if arg is None and self.arg == "required":
            raise ValueError("field '%s' requires an argument" % self.name)
        return self.extract(arg)

    def kind_with(self, arg: str | None) -> str:
        """Ancestor fields are "any" without an index, single with one."""
        if self.name in _ANCESTOR_FIELDS and arg is not None:
            return "single"
        if self.name == "fd.types" and arg is not None:
            return "single"
        return self.kind


REGISTRY: dict[str, FieldDef] = {}


def _field(name: str, type: str, doc: str, source: str, extract: Callable[..., Any], **options: Any) -> None:
    if name in REGISTRY:
        raise AssertionError("field defined twice: %s" % name)
    REGISTRY[name] = FieldDef(name, type, doc, source, extract, **options)


def _absent(_event: Event) -> None:
    return None


def lookup(name: str) -> FieldDef | None:
    return REGISTRY.get(name)


# ---------------------------------------------------------------------------------------------
# helpers over the process tree


def _parent(event: Event) -> Process | None:
    return event.proc.parent


def _ancestor(proc: Process, level: int) -> Process | None:
    node: Process | None = proc
    for _ in range(level):
        if node is None:
            return None
        node = node.parent
    return node


def _level(arg: str) -> int:
    try:
        level = int(arg)
    except ValueError:
        raise ValueError("expected a number as argument, got %r" % arg) from None
    if level < 0:
        raise ValueError("ancestor level must be >= 0, got %d" % level)
    return level


_ANCESTOR_FIELDS = {"proc.aname", "proc.apid", "proc.aexe", "proc.aexepath", "proc.acmdline"}


def _ancestor_field(name: str, getter: Callable[[Process], Any], doc: str) -> None:
    def bind(arg: str | None) -> Extractor:
        if arg is None:
            def any_ancestor(event: Event) -> tuple:
                return tuple(getter(node) for node in event.proc.ancestors())

            return any_ancestor
        level = _level(arg)

        def at_level(event: Event) -> Any:
            node = _ancestor(event.proc, level)
            return None if node is None else getter(node)

        return at_level

    _field(
        name,
        "int" if name == "proc.apid" else "string",
        doc,
        "process table: the parent chain built from exec/fork events and the /proc bootstrap "
        "(each ancestor's value as captured at its exec)",
        bind,
        arg="optional",
        kind="any",
    )


def _cmdline(proc: Process) -> str:
    return proc.cmdline


def _exeline(proc: Process) -> str:
    return proc.exe if not proc.args else proc.exe + " " + " ".join(proc.args)


# ---------------------------------------------------------------------------------------------
# proc.*

_field("proc.pid", "int", "process id (tgid)", "bpf_get_current_pid_tgid() >> 32 at the event", lambda e: e.proc.pid)
_field("proc.ppid", "int", "parent process id", "task->real_parent->tgid at exec/fork", lambda e: e.proc.ppid)
_field("proc.vpid", "int", "process id in its own pid namespace", "task's pid in its active pid namespace (pid->numbers[level])", lambda e: e.proc.vpid)
_field("proc.sid", "int", "session id", "task->signal->pids[PIDTYPE_SID] at exec", lambda e: e.proc.sid)
_field("proc.vpgid", "int", "process group id in its pid namespace", "task->signal->pids[PIDTYPE_PGID] at exec", lambda e: e.proc.vpgid)
_field("proc.name", "string", "process name: the executable's file name truncated to 15 bytes (task->comm)", "task->comm (bpf_get_current_comm) at the event", lambda e: e.proc.comm)
_field("proc.exe", "string", "argv[0] of the program, as it was started", "argv[0] read from the new mm's arg area at " + _EXEC_SOURCE, lambda e: e.proc.exe)
_field("proc.exepath", "string", "full path of the executable file", "bprm->file path (dentry walk) at " + _EXEC_SOURCE, lambda e: e.proc.exepath)
_field("proc.args", "string", "arguments (argv[1:]) joined by spaces", "mm->arg_start..arg_end read at " + _EXEC_SOURCE, lambda e: " ".join(e.proc.args))
_field("proc.cmdline", "string", "proc.name followed by the arguments", "task->comm and argv at " + _EXEC_SOURCE, lambda e: e.proc.cmdline)
_field("proc.exeline", "string", "proc.exe followed by the arguments", "argv at " + _EXEC_SOURCE, lambda e: _exeline(e.proc))
_field("proc.cmdnargs", "int", "number of arguments", "argv at " + _EXEC_SOURCE, lambda e: len(e.proc.args))
_field("proc.cmdlenargs", "int", "total length of the arguments", "argv at " + _EXEC_SOURCE, lambda e: sum(len(a) for a in e.proc.args) + max(len(e.proc.args) - 1, 0))
_field("proc.cwd", "string", "current working directory", "task->fs->pwd (dentry walk) at exec, updated at chdir/fchdir exit", lambda e: e.proc.cwd or None)
_field("proc.tty", "int", "controlling terminal device number, 0 if none", "task->signal->tty (dev number) at exec", lambda e: e.proc.tty)


def _env_value(arg: str | None) -> Extractor:
    if arg is None:
        return lambda e: " ".join(e.proc.env)
    prefix = arg + "="

    def one_variable(event: Event) -> str | None:
        for item in event.proc.env:
            if item.startswith(prefix):
                return item[len(prefix):]
        return None

    return one_variable


_field("proc.env", "string", "environment (only the kept variables), or one variable with [NAME]",
       "mm->env_start..env_end read at " + _EXEC_SOURCE + "; only the names in sensor.env_keep are kept",
       _env_value, arg="optional")
_field("proc.pname", "string", "parent's proc.name", "process table: the parent's comm", lambda e: None if e.proc.parent is None else e.proc.parent.comm)
_field("proc.pexe", "string", "parent's proc.exe", "process table: the parent's argv[0]", lambda e: None if e.proc.parent is None else e.proc.parent.exe)
_field("proc.pexepath", "string", "parent's proc.exepath", "process table: the parent's executable path", lambda e: None if e.proc.parent is None else e.proc.parent.exepath)
_field("proc.pcmdline", "string", "parent's proc.cmdline", "process table: the parent's comm and argv", lambda e: None if e.proc.parent is None else e.proc.parent.cmdline)
_field("proc.pexeline", "string", "parent's proc.exeline (sentinel extension: Sigma's ParentCommandLine)", "process table: the parent's argv[0] and arguments", lambda e: None if e.proc.parent is None else _exeline(e.proc.parent))
_field("proc.ppid.duration", "reltime", "nanoseconds since the parent started", "event time minus the parent's task->start_time", lambda e: None if e.proc.parent is None else e.boot_ns - e.proc.parent.start_ns)
_field("proc.duration", "reltime", "nanoseconds since the process started", "event time minus task->group_leader->start_time", lambda e: e.boot_ns - e.proc.start_ns)
_field("proc.start_ts", "abstime", "process start time (ns, monotonic clock since boot)", "task->group_leader->start_time", lambda e: e.proc.start_ns)
_ancestor_field("proc.aname", lambda p: p.comm, "name of an ancestor: [1] parent, [2] grandparent...; without index, any ancestor")
_ancestor_field("proc.apid", lambda p: p.pid, "pid of an ancestor ([N] as in proc.aname); without index, any ancestor")
_ancestor_field("proc.aexe", lambda p: p.exe, "proc.exe of an ancestor ([N]); without index, any ancestor")
_ancestor_field("proc.aexepath", lambda p: p.exepath, "proc.exepath of an ancestor ([N]); without index, any ancestor")
_ancestor_field("proc.acmdline", _cmdline, "proc.cmdline of an ancestor ([N]); without index, any ancestor")


def _session_leader(event: Event) -> Process | None:
    for node in (event.proc, *event.proc.ancestors()):
        if node.pid == node.sid:
            return node
    return None


def _vpgid_leader(event: Event) -> Process | None:
    for node in (event.proc, *event.proc.ancestors()):
        if node.is_vpgid_leader or (node.vpgid and node.vpid == node.vpgid):
            return node
    return None


_field("proc.sname", "string", "proc.name of the session leader", "process table: nearest ancestor whose pid is its session id", lambda e: (lambda n: None if n is None else n.comm)(_session_leader(e)))
_field("proc.vpgid.name", "string", "proc.name of the process group leader", "process table: nearest ancestor that leads its process group", lambda e: (lambda n: None if n is None else n.comm)(_vpgid_leader(e)))
_field("proc.vpgid.exe", "string", "proc.exe of the process group leader", "process table: nearest ancestor that leads its process group", lambda e: (lambda n: None if n is None else n.exe)(_vpgid_leader(e)))
_field("proc.vpgid.exepath", "string", "proc.exepath of the process group leader", "process table: nearest ancestor that leads its process group", lambda e: (lambda n: None if n is None else n.exepath)(_vpgid_leader(e)))
_field("proc.is_vpgid_leader", "bool", "the process leads its process group", "task->signal->pids[PIDTYPE_PGID] compared with the tgid at exec", lambda e: bool(e.proc.is_vpgid_leader or (e.proc.vpgid and e.proc.vpid == e.proc.vpgid)))
_field("proc.is_exe_writable", "bool", "the executable is writable by the process's user", "inode_permission(MAY_WRITE) equivalent on bprm->file's inode mode/uid at exec", lambda e: e.proc.exe_writable)
_field("proc.is_exe_upper_layer", "bool", "the executable lives on an overlayfs upper layer", "bprm->file's superblock magic is OVERLAYFS and the dentry's upper inode is set, at exec", lambda e: e.proc.exe_upper_layer)
_field("proc.is_exe_from_memfd", "bool", "the image was executed from a memfd_create file", "bprm->file's dentry name starts with 'memfd:' on the shmem mount, at exec", lambda e: e.proc.exe_from_memfd)
_field("proc.exe_ino", "int", "inode number of the executable", "bprm->file->f_inode->i_ino at exec", lambda e: e.proc.exe_ino)
_field("proc.exe_ino.mtime", "abstime", "modification time of the executable (ns since the epoch)", "bprm->file->f_inode->i_mtime at exec", lambda e: e.proc.exe_mtime_ns)
_field("proc.exe_ino.ctime", "abstime", "change time of the executable (ns since the epoch)", "bprm->file->f_inode->i_ctime at exec", lambda e: e.proc.exe_ctime_ns)
_field("proc.exe_ino.ctime_duration_proc_start", "reltime", "ns between the executable's ctime and the process start",
       "process start (epoch) minus the exe inode's i_ctime, at exec",
       lambda e: None if not e.proc.exe_ctime_ns or not e.time_ns else (e.time_ns - (e.boot_ns - e.proc.start_ns)) - e.proc.exe_ctime_ns)
_field("proc.exe_ino.ctime_duration_pidns_start", "reltime", "ns between the pid namespace start and the executable's ctime", NOT_ON_HOST + " (no pid namespace start time is captured): absent", _absent)
_field("proc.is_container_healthcheck", "bool", "the process is a container health check", NOT_ON_HOST + ": false", lambda e: False)
_field("proc.is_container_liveness_probe", "bool", "the process is a k8s liveness probe", NOT_ON_HOST + ": false", lambda e: False)
_field("proc.is_container_readiness_probe", "bool", "the process is a k8s readiness probe", NOT_ON_HOST + ": false", lambda e: False)
_field("proc.loginshellid", "int", "pid of the outermost shell ancestor", "process table: the furthest ancestor whose name is a shell", lambda e: _login_shell_pid(e))

_SHELLS = frozenset({"ash", "bash", "csh", "ksh", "sh", "tcsh", "zsh", "dash", "fish"})


def _login_shell_pid(event: Event) -> int | None:
    found = None
    for node in (event.proc, *event.proc.ancestors()):
        if node.comm in _SHELLS:
            found = node.pid
    return found


# ---------------------------------------------------------------------------------------------
# thread.*

_field("thread.tid", "int", "thread id", "bpf_get_current_pid_tgid() & 0xffffffff at the event", lambda e: e.tid)
_field("thread.vtid", "int", "thread id in its pid namespace", "task's pid in its active pid namespace", lambda e: e.proc.vpid if e.tid == e.proc.pid else e.tid)
_field("thread.cap_permitted", "string", "permitted capabilities, space separated (CAP_CHOWN CAP_SYS_ADMIN ...)", "task->cred->cap_permitted at exec, updated at capset/setuid exit", lambda e: render.capabilities(e.proc.cap_permitted))
_field("thread.cap_effective", "string", "effective capabilities, space separated", "task->cred->cap_effective at exec, updated at capset/setuid exit", lambda e: render.capabilities(e.proc.cap_effective))
_field("thread.cap_inheritable", "string", "inheritable capabilities, space separated", "task->cred->cap_inheritable at exec", lambda e: render.capabilities(e.proc.cap_inheritable))

# ---------------------------------------------------------------------------------------------
# user.* / group.*

_field("user.uid", "int", "real user id", "task->cred->uid at exec, updated at setuid/setresuid exit", lambda e: e.proc.uid)
_field("user.name", "string", "name of the real user", "task->cred->uid resolved through the passwd database of the process's root (cached)", lambda e: e.proc.user_name or render.user_name(e.proc.uid))
_field("user.loginuid", "int", "audit login uid, -1 when unset", "task->loginuid at exec (0xffffffff becomes -1)", lambda e: -1 if e.proc.loginuid in (0xFFFFFFFF, -1) else e.proc.loginuid)
_field("user.loginname", "string", "name of the login user", "task->loginuid resolved through passwd; absent when unset",
       lambda e: None if e.proc.loginuid in (0xFFFFFFFF, -1) else (e.proc.login_name or render.user_name(e.proc.loginuid)))
_field("user.homedir", "string", "home directory of the user", "passwd entry of task->cred->uid", lambda e: render.home_dir(e.proc.uid))
_field("user.shell", "string", "login shell of the user", "passwd entry of task->cred->uid", lambda e: render.login_shell(e.proc.uid))
_field("group.gid", "int", "real group id", "task->cred->gid at exec, updated at setgid exit", lambda e: e.proc.gid)
_field("group.name", "string", "name of the real group", "task->cred->gid resolved through the group database (cached)", lambda e: e.proc.group_name or render.group_name(e.proc.gid))

# ---------------------------------------------------------------------------------------------
# evt.*

_field("evt.type", "string", "event type (syscall name: openat, execve, connect...)", "the tracepoint that produced the event", lambda e: e.type)
_field("evt.dir", "string", "direction: always '<' (events are syscall exits with enter arguments merged)", "constant: sentinel emits one record per syscall, at exit", lambda e: "<")
_field("evt.num", "int", "event sequence number", "sensor counter, assigned when the record is decoded", lambda e: e.num)
_field("evt.time", "abstime", "event time, ns since the epoch", "bpf_ktime_get_boot_ns() at exit plus the boot-time offset measured at start", lambda e: e.time_ns)
_field("evt.rawtime", "abstime", "event time, ns since the epoch", "bpf_ktime_get_boot_ns() at exit plus the boot-time offset", lambda e: e.time_ns)


def _datetime(time_ns: int, with_date: bool) -> str:
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    text = _time.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S", _time.localtime(seconds))
    return "%s.%09d" % (text, nanos)


_field("evt.datetime", "string", "event date and time (local): 2026-11-23 11:42:21.123456789", "evt.time, formatted",
       lambda e: _datetime(e.time_ns, True))
_field("evt.time.iso8601", "string", "event time in UTC, ISO 8601: 2026-11-23T11:42:21.123456789Z", "evt.time, formatted",
       lambda e: _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(e.time_ns // 1_000_000_000)) + ".%09dZ" % (e.time_ns % 1_000_000_000))

# Outputs show some numeric fields as Falco prints them (conditions still compare numbers).
OUTPUT_FORMATS: dict[str, Callable[[Any], Any]] = {
    "evt.time": lambda value: None if value is None else _datetime(value, False),
}
_field("evt.res", "string", "result: SUCCESS, or the errno name (ENOENT...)", "syscall return value at sys_exit", lambda e: render.errno_name(e.res))
_field("evt.rawres", "int", "result as a number", "syscall return value at sys_exit", lambda e: e.res)
_field("evt.failed", "bool", "the syscall returned an error", "syscall return value < 0 at sys_exit", lambda e: e.res < 0)
_OPEN_FLAG_TYPES = frozenset({"open", "openat", "openat2", "open_by_handle_at"})  # creat has no flags argument


def _open_flags(event: Event) -> int:
    return event.args.get("flags", 0) if event.type in _OPEN_FLAG_TYPES else 0


def _is_open_exec(event: Event) -> bool:
    if event.type == "creat":
        return bool(event.args.get("mode", 0) & 0o111)
    if event.type not in _OPEN_FLAG_TYPES or event.type == "open_by_handle_at":
        return False
    flags = event.args.get("flags", 0)
    if flags & (render.O_CREAT | render.O_TMPFILE):
        return bool(event.args.get("mode", 0) & 0o111)
    return False


def _is_open_create(event: Event) -> bool:
    if event.type not in _OPEN_FLAG_TYPES:
        return False
    if event.fd is not None and event.fd.created:
        return True
    return bool(_open_flags(event) & render.O_TMPFILE == render.O_TMPFILE and event.res >= 0)


_field("evt.is_open_read", "bool", "an open for reading (O_RDONLY or O_RDWR); false for other events", "open flags from the syscall's saved user registers at sys_exit",
       lambda e: e.type in _OPEN_FLAG_TYPES and render.is_open_read(_open_flags(e)))
_field("evt.is_open_write", "bool", "an open for writing (O_WRONLY or O_RDWR); false for other events", "open flags from the syscall's saved user registers at sys_exit",
       lambda e: e.type in _OPEN_FLAG_TYPES and render.is_open_write(_open_flags(e)))
_field("evt.is_open_exec", "bool", "an open or creat that creates a file with an execute bit in its mode", "open flags and mode from the syscall's saved user registers at sys_exit", _is_open_exec)
_field("evt.is_open_create", "bool", "an open that created the file", "FMODE_CREATED on the new file at sys_exit (or O_TMPFILE and success)", _is_open_create)


def _render_arg(event: Event, name: str, value: Any) -> str:
    """Falco's text for argument `name` of this event type."""
    if value is None:
        return "<NA>"
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    event_type = event.type
    if name == "flags":
        if event_type in OPEN_EVENT_TYPES:
            return render.open_flags(value)
        if event_type in EXEC_EVENT_TYPES:
            return _exe_flags(event)
        if event_type in ("clone", "clone3", "fork", "vfork", "unshare"):
            return render.flag_names(render.CLONE_FLAGS, value)
        if event_type == "memfd_create":
            return render.flag_names(render.MEMFD_FLAGS, value)
        if event_type == "unlinkat":
            return render.flag_names(render.UNLINKAT_FLAGS, value)
    elif name == "nstype" and event_type == "setns":
        return render.flag_names(render.CLONE_FLAGS, value)
    elif name == "prot" and event_type in ("mmap", "mprotect"):
        return render.flag_names(render.PROT_FLAGS, value, none="PROT_NONE")
    elif name == "type" and event_type == "socket":
        return render.socket_type(value)
    elif name == "mode":
        if event_type in CHMOD_EVENT_TYPES:
            return render.mode_bits(value)
        return render.octal_mode(value)
    elif name in ("uid", "euid", "ruid", "suid"):
        return render.user_name(value)
    elif name in ("gid", "egid", "rgid", "sgid"):
        return render.group_name(value)
    elif name == "request" and event_type == "ptrace":
        return render.enum_name(render.PTRACE_REQUESTS, value)
    elif name == "cmd" and event_type == "bpf":
        return render.enum_name(render.BPF_COMMANDS, value)
    elif name in ("domain", "family"):
        return render.enum_name(render.SOCKET_FAMILIES, value)
    elif name in ("res", "res_or_fd") and isinstance(value, int) and value < 0:
        return render.errno_name(value)
    return str(value)


def _exe_flags(event: Event) -> str:
    proc = event.proc
    names = [name for name, on in (
        ("EXE_WRITABLE", proc.exe_writable),
        ("EXE_UPPER_LAYER", proc.exe_upper_layer),
        ("EXE_FROM_MEMFD", proc.exe_from_memfd),
    ) if on]
    return "|".join(names)


def _event_arg(arg: str) -> Extractor:
    """`evt.arg.NAME`, `evt.arg[NAME]` or `evt.arg[N]` (the Nth argument)."""
    if arg.isdigit():
        index = int(arg)

        def by_index(event: Event) -> str | None:
            names = list(event.args)
            if index >= len(names):
                return None
            return _render_arg(event, names[index], event.args[names[index]])

        return by_index

    def by_name(event: Event) -> str | None:
        if arg == "flags" and event.type in EXEC_EVENT_TYPES and "flags" not in event.args:
            return _exe_flags(event)
        value = event.args.get(arg, _MISSING)
        if value is _MISSING:
            if arg == "res" or arg == "res_or_fd":
                return render.errno_name(event.res) if event.res < 0 else str(event.res)
            return None
        return _render_arg(event, arg, value)

    return by_name


def _event_rawarg(arg: str) -> Extractor:
    def raw(event: Event) -> Any:
        return event.args.get(arg)

    return raw


_MISSING = object()

_field("evt.arg", "string", "an argument by name (evt.arg.flags, evt.arg[flags]) or position (evt.arg[0]), rendered as Falco renders it "
       "(open flags O_RDONLY|O_CLOEXEC, clone/unshare/setns CLONE_*, memfd MFD_*, mmap PROT_*, chmod modes S_ISUID..., uids as user names, ptrace requests, bpf commands, socket families and types)",
       "syscall arguments read at sys_enter and merged into the exit record; paths resolved at exit",
       _event_arg, arg="required")
_field("evt.rawarg", "string", "an argument by name, raw (numbers stay numbers)", "syscall arguments read at sys_enter", _event_rawarg, arg="required")
_field("evt.args", "string", "all arguments as name=value pairs", "syscall arguments read at sys_enter and exit",
       lambda e: " ".join("%s=%s" % (k, _render_arg(e, k, v)) for k, v in e.args.items()))
_field("evt.buffer", "bytes", "the data buffer of read/write-like events", "the data argument's first bytes copied at sys_exit (bounded); absent when not captured",
       lambda e: e.args.get("data"))
_field("evt.hostname", "string", "host name", "uname nodename of the agent's host", lambda e: _HOSTNAME)
_field("evt.source", "string", "event source: syscall", "constant", lambda e: "syscall")

import socket as _socket  # noqa: E402

_HOSTNAME = _socket.gethostname()

# ---------------------------------------------------------------------------------------------
# fd.*


def _fd_attr(attribute: str, skip_empty: bool = True) -> Extractor:
    def extract(event: Event) -> Any:
        fd = event.fd
        if fd is None:
            return None
        value = getattr(fd, attribute)
        if skip_empty and value in ("", None):
            return None
        return value

    return extract


def _socket_attr(attribute: str) -> Extractor:
    def extract(event: Event) -> Any:
        fd = event.fd
        if fd is None or fd.type not in ("ipv4", "ipv6"):
            return None
        return getattr(fd, attribute)

    return extract


def _fd_directory(event: Event) -> str | None:
    fd = event.fd
    if fd is None or fd.type not in ("file", "directory") or not fd.name:
        return None
    if fd.type == "directory":
        return fd.name
    head = fd.name.rpartition("/")[0]
    return head or "/"


def _fd_filename(event: Event) -> str | None:
    fd = event.fd
    if fd is None or fd.type not in ("file", "directory") or not fd.name:
        return None
    return fd.name.rpartition("/")[2]


def _both(first: str, second: str) -> Extractor:
    def extract(event: Event) -> tuple:
        fd = event.fd
        if fd is None or fd.type not in ("ipv4", "ipv6"):
            return ()
        return (getattr(fd, first), getattr(fd, second))

    return extract


def _fd_types(arg: str | None) -> Extractor:
    if arg is None:
        return lambda e: () if e.fd is None else (e.fd.type,)

    index = _level(arg)
    return lambda e: e.fd.type if e.fd is not None and e.fd.num == index else None


_SOCKET_SOURCE = ("socket of the fd (argument, or result for accept/dup), task->files->fdt->fd[n] -> sk->__sk_common (skc_family, "
                  "skc_rcv_saddr/skc_daddr or the v6 pair, skc_num/skc_dport) read at sys_exit; sendto/sendmsg peer from the address argument")
_FD_PATH_SOURCE = "path resolved at sys_exit from the new fd's file->f_path (bounded dentry/mount walk)"

_field("fd.num", "int", "file descriptor number", "syscall result (open) or fd argument (sys_enter)", lambda e: None if e.fd is None else e.fd.num)
_field("fd.type", "string", "fd type: file, directory, ipv4, ipv6, unix, pipe, event, signalfd, eventpoll, inotify, timerfd, netlink, bpf, memfd...",
       "file->f_inode->i_mode and socket family at sys_exit", _fd_attr("type"))
_field("fd.typechar", "string", "one-letter fd type (f, d, 4, 6, u, p...)", "derived from fd.type", lambda e: None if e.fd is None else e.fd.typechar)
_field("fd.types", "string", "types of the process's fds; [N] the type of fd N (only the event's own fd is known)", "derived from fd.type of the event's fd", _fd_types, arg="optional", kind="list")
_field("fd.name", "string", "full name: resolved path for files, cip:cport->sip:sport for sockets", _FD_PATH_SOURCE + "; sockets from " + _SOCKET_SOURCE, _fd_attr("name"))
_field("fd.nameraw", "string", "the path as the program passed it", "path argument read at sys_exit from user memory", _fd_attr("nameraw"))
_field("fd.directory", "string", "directory part of fd.name (files and directories)", "derived from fd.name", _fd_directory)
_field("fd.filename", "string", "file name part of fd.name (files and directories)", "derived from fd.name", _fd_filename)
_field("fd.ino", "int", "inode number", "file->f_inode->i_ino at sys_exit", _fd_attr("ino"))
_field("fd.dev", "int", "device number of the file's superblock", "file->f_inode->i_sb->s_dev at sys_exit", _fd_attr("dev"))
_field("fd.l4proto", "string", "transport protocol: tcp, udp, icmp, raw", "sk->sk_protocol at sys_exit", _fd_attr("l4proto"))
_field("fd.sockfamily", "string", "socket family: ip or unix", "sk->__sk_common.skc_family at sys_exit",
       lambda e: None if e.fd is None else {"ipv4": "ip", "ipv6": "ip", "unix": "unix"}.get(e.fd.type))
_field("fd.is_server", "bool", "the local end is the server", "accept/listen side of the socket at sys_exit", _socket_attr("is_server"))
_field("fd.connected", "bool", "the socket is connected", "socket state (TCP_ESTABLISHED) read at sys_enter: the socket had a peer before the event", _fd_attr("connected", skip_empty=False))
_field("fd.name_changed", "bool", "the event gave the fd a new name (e.g. sendto to a new peer)", "sendto/sendmsg address compared at sys_exit with the last one the socket sent to (kernel LRU map by struct sock)", _fd_attr("name_changed", skip_empty=False))
_field("fd.lip", "ipaddr", "local IP address", _SOCKET_SOURCE, _socket_attr("lip"))
_field("fd.rip", "ipaddr", "remote IP address", _SOCKET_SOURCE, _socket_attr("rip"))
_field("fd.sip", "ipaddr", "server IP address", _SOCKET_SOURCE, _socket_attr("sip"))
_field("fd.cip", "ipaddr", "client IP address", _SOCKET_SOURCE, _socket_attr("cip"))
_field("fd.ip", "ipaddr", "either IP address (client or server): true if either matches", _SOCKET_SOURCE, _both("cip", "sip"), kind="any")
_field("fd.lport", "port", "local port", _SOCKET_SOURCE, _socket_attr("lport"))
_field("fd.rport", "port", "remote port", _SOCKET_SOURCE, _socket_attr("rport"))
_field("fd.sport", "port", "server port", _SOCKET_SOURCE, _socket_attr("sport"))
_field("fd.cport", "port", "client port", _SOCKET_SOURCE, _socket_attr("cport"))
_field("fd.port", "port", "either port (client or server): true if either matches", _SOCKET_SOURCE, _both("cport", "sport"), kind="any")
_field("fd.net", "ipnet", "either IP address, compared with a CIDR (fd.net = 10.0.0.0/8)", _SOCKET_SOURCE, _both("cip", "sip"), kind="any")
_field("fd.lnet", "ipnet", "local IP address compared with a CIDR", _SOCKET_SOURCE, _socket_attr("lip"))
_field("fd.rnet", "ipnet", "remote IP address compared with a CIDR", _SOCKET_SOURCE, _socket_attr("rip"))
_field("fd.snet", "ipnet", "server IP address compared with a CIDR", _SOCKET_SOURCE, _socket_attr("sip"))
_field("fd.cnet", "ipnet", "client IP address compared with a CIDR", _SOCKET_SOURCE, _socket_attr("cip"))
_field("fd.proto", "string", "protocol of the server port (same as fd.l4proto here)", "sk->sk_protocol at sys_exit", _fd_attr("l4proto"))
for _end in ("sip", "cip", "rip", "lip"):
    _field("fd.%s.name" % _end, "string", "domain name of fd.%s" % _end,
           NOT_ON_HOST + " (no DNS correlation: the kernel sees addresses only): absent, <NA> in outputs", _absent)

# ---------------------------------------------------------------------------------------------
# fs.path.* (generic path fields over file-system events)

_PATH_ARGS = {
    "name": ("name", "path", "pathname", "filename", "oldpath", "target"),
    "source": ("oldpath", "target", "source"),
    "target": ("newpath", "linkpath", "target"),
}


def _fs_path(kind: str) -> Extractor:
    names = _PATH_ARGS[kind]

    def extract(event: Event) -> str | None:
        if kind == "name" and event.type in OPEN_EVENT_TYPES and event.fd is not None and event.fd.name:
            return event.fd.name
        for name in names:
            value = event.args.get(name)
            if isinstance(value, str) and value:
                return value
        return None

    return extract


_field("fs.path.name", "string", "the path a file-system event acts on", "path argument read at sys_exit (resolved for opens)", _fs_path("name"))
_field("fs.path.source", "string", "source path of rename/link events", "oldpath/target argument read at sys_exit", _fs_path("source"))
_field("fs.path.target", "string", "target path of rename/link events", "newpath/linkpath argument read at sys_exit", _fs_path("target"))

# ---------------------------------------------------------------------------------------------
# container.*


def _in_container(event: Event) -> bool:
    return event.proc.container_id not in ("host", "")


_CONTAINER_RUNTIME = (
    NOT_ON_HOST + " (needs the container runtime's API; sentinel reads only cgroups): absent, <NA> in outputs"
)

_field("proc.cgroup", "string", "cgroup v2 path of the process (sentinel extension; scopes deny rules)", "/proc/<pid>/cgroup `0::` line (v1 pids/cpu path on hosts without v2), at exec", lambda e: e.proc.cgroup)
_field("container.id", "string", "container id (12 hex), 'host' outside containers", "cgroup path of the task (v2, or v1 cpu/pids on hybrid hosts) parsed for a runtime id at exec", lambda e: e.proc.container_id)
_field("container.name", "string", "container name; 'host' outside containers", _CONTAINER_RUNTIME + "; 'host' for host processes", lambda e: None if _in_container(e) else "host")
_field("container.image", "string", "container image", _CONTAINER_RUNTIME, _absent)
_field("container.image.id", "string", "container image id", _CONTAINER_RUNTIME, _absent)
_field("container.image.repository", "string", "container image repository", _CONTAINER_RUNTIME, _absent)
_field("container.image.tag", "string", "container image tag", _CONTAINER_RUNTIME, _absent)
_field("container.image.digest", "string", "container image digest", _CONTAINER_RUNTIME, _absent)
_RUNTIME_MARKERS = (("docker", "docker"), ("cri-containerd", "containerd"), ("containerd", "containerd"),
                    ("crio", "cri-o"), ("libpod", "podman"), ("lxc", "lxc"))


def _container_type(event: Event) -> str | None:
    if not _in_container(event):
        return "host"
    cgroup = event.proc.cgroup
    for marker, runtime in _RUNTIME_MARKERS:
        if marker in cgroup:
            return runtime
    return None


_field("container.type", "string", "container runtime (docker, containerd, cri-o, podman, lxc); 'host' outside containers",
       "the task's cgroup path (docker-<id>.scope, cri-containerd-, crio-, libpod-) at exec; absent when no runtime is recognised",
       _container_type)
_field("container.privileged", "bool", "the container runs privileged", _CONTAINER_RUNTIME, _absent)
_field("container.start_ts", "abstime", "container start time", _CONTAINER_RUNTIME, _absent)
_field("container.mounts", "string", "container mounts", _CONTAINER_RUNTIME, _absent)
_field("container.mount.dest", "string", "mount of the container at a destination ([/path], glob allowed)", _CONTAINER_RUNTIME, lambda arg: _absent, arg="required")
_field("container.mount.source", "string", "mount of the container from a source ([/path])", _CONTAINER_RUNTIME, lambda arg: _absent, arg="required")
_field("container.info", "string", "summary for outputs: container_id=... container_name=...", "container.id and container.name",
       lambda e: "container_id=%s container_name=%s" % (e.proc.container_id, "host" if not _in_container(e) else "<NA>"))

for _name, _doc in (
    ("k8s.ns.name", "Kubernetes namespace"),
    ("k8s.pod.name", "Kubernetes pod name"),
    ("k8s.pod.id", "Kubernetes pod uid"),
    ("k8s.pod.uid", "Kubernetes pod uid"),
    ("k8s.pod.labels", "Kubernetes pod labels"),
    ("k8s.pod.ip", "Kubernetes pod IP"),
    ("k8s.deployment.name", "Kubernetes deployment name"),
    ("k8s.rc.name", "Kubernetes replication controller"),
    ("k8s.rs.name", "Kubernetes replica set"),
    ("k8s.svc.name", "Kubernetes service"),
):
    _field(_name, "string", _doc, NOT_ON_HOST + " (needs the container runtime and the Kubernetes API): absent, <NA> in outputs", _absent)
_field("k8s.pod.label", "string", "a Kubernetes pod label ([key])", NOT_ON_HOST + ": absent, <NA> in outputs", lambda arg: _absent, arg="required")


# Hot fields whose extraction the code generator writes inline (no call per event).
for _name, _code in (
    ("proc.name", "e.proc.comm"),
    ("proc.pid", "e.proc.pid"),
    ("proc.exe", "e.proc.exe"),
    ("proc.exepath", "e.proc.exepath"),
    ("evt.type", "e.type"),
    ("evt.rawres", "e.res"),
    ("user.uid", "e.proc.uid"),
):
    REGISTRY[_name] = dataclasses.replace(REGISTRY[_name], inline=_code)

# ---------------------------------------------------------------------------------------------
# transformers


def _b64(value: Any) -> Any:
    if value is None:
        return None
    raw = value.encode() if isinstance(value, str) else value
    try:
        return base64.b64decode(raw, validate=False).decode("utf-8", "replace")
    except ValueError:
        return None


TRANSFORMERS: dict[str, Callable[[Any], Any]] = {
    "tolower": lambda v: None if v is None else (v.lower() if isinstance(v, str) else v),
    "toupper": lambda v: None if v is None else (v.upper() if isinstance(v, str) else v),
    "b64": _b64,
    "basename": lambda v: None if v is None else render.basename(str(v)),
    "len": lambda v: None if v is None else len(v),
}


def transformed_type(field_type: str, transformers: tuple[str, ...]) -> str:
    """The type of a field after its transformers (`len` makes an int)."""
    if transformers and transformers[0] == "len":
        return "int"
    return field_type


def all_fields() -> list[FieldDef]:
    return sorted(REGISTRY.values(), key=lambda f: f.name)


def markdown() -> str:
    """docs/fields.md: the field map, generated from this registry."""
    lines = [
        "# Fields",
        "",
        "Generated by `sentinel rules fields --markdown` from `sentinel/rules/fields.py`; do not edit.",
        "",
        "Every field a rule condition or output can use. *Source* says where the kernel side gets",
        "the value; fields marked *not available on a host* have no source on a plain host and",
        "take the value given there (absent: comparisons are false, `exists` is false, outputs",
        "show `<NA>`).",
        "",
        "| field | type | description | source |",
        "|---|---|---|---|",
    ]
    for definition in all_fields():
        name = definition.name
        if definition.arg == "required":
            name += "[arg]"
        elif definition.arg == "optional":
            name += "[[arg]]"
        lines.append("| `%s` | %s | %s | %s |" % (
            name, definition.type, definition.doc.replace("|", "\\|"), definition.source.replace("|", "\\|")))
    lines.append("")
    return "\n".join(lines)
