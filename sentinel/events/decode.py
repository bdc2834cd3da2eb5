"""Kernel records (bytes from the ring buffer) -> Events, once, with precompiled structs.

Dispatch is on the header opcode. Every record updates the process table (the lifecycle is
tracked whatever the rules want) and yields one Event in Falco's shape:
- exec: a fresh Process with every field the kernel sent, `Event("execve"|"execveat")`,
  then `table.on_exec(event)` links the parent and fills names / container id;
- failed exec: `Event("execve", res<0)` on the calling process (no new image);
- clone/fork/vfork/clone3: the parent's event with `res` = child tid; the table creates
  the child (threads are not processes and do not reach the table);
- procexit: when the last thread of a process exits;
- chdir/fchdir: the new cwd, resolved by the kernel.
- file, network and privilege syscalls, compat syscalls and io_uring submissions:
  sentinel.events.sysdecode.
Malformed records are dropped and counted (`dropped`), never raised into the poll loop.
"""

from __future__ import annotations

import stat
import struct
import sys
from functools import partial
from typing import Any, Callable, Protocol

from sentinel.events import abi, sysdecode
from sentinel.events.model import Event, Process, copy_process
from sentinel.log import get_logger

log = get_logger("sentinel.events.decode")

CAP_DAC_OVERRIDE = 1

# Bound once: attribute lookups per record add up at tens of thousands of records a second.
_ABI_VERSION = abi.ABI_VERSION
_CLONE_EVENT_TYPES = abi.SYSCALL_EVENT_TYPES
_PREFIX = abi.PREFIX.unpack_from
_EXEC, _EXEC_SIZE = abi.EXEC.struct.unpack_from, abi.EXEC.size
_EXEC_FAILED, _EXEC_FAILED_SIZE = abi.EXEC_FAILED.struct.unpack_from, abi.EXEC_FAILED.size
_CLONE = abi.CLONE.struct.unpack_from
_EXIT = abi.EXIT.struct.unpack_from
_CHDIR, _CHDIR_SIZE = abi.CHDIR.struct.unpack_from, abi.CHDIR.size
# Byte ranges of an exec record that identify its template: credentials (uid..loginuid),
# then pgid to the end of the fixed part (session, tty, caps, exe identity, flags, lengths).
_EXEC_CREDS = abi.EXEC.offsets["uid"]
_EXEC_VPID = abi.EXEC.offsets["vpid"]
_EXEC_PGID = abi.EXEC.offsets["pgid"]
# Exec templates and argv regions remembered, by count and by record bytes (a record's
# tail is up to 16 KiB: count alone would let unique environments pin 64 MiB); past
# either bound a cache starts over.
MAX_SHARED = 4096
MAX_SHARED_BYTES = 4 << 20


class ProcessTableLike(Protocol):
    """What the decoder needs from the process table (sentinel.enrich.proctable)."""

    def on_exec(self, event: Event, parent_start_ns: int = 0, cgroups_key: int = 0) -> Process: ...

    def on_fork(
        self,
        parent_pid: int,
        parent_start_ns: int,
        child_pid: int,
        child_start_ns: int,
        is_thread: bool,
        boot_ns: int = 0,
        vpid: int = 0,
    ) -> Process | None: ...

    def on_exit(self, pid: int, start_ns: int, exit_code: int, exit_signal: int) -> Process | None: ...

    def on_chdir(self, pid: int, start_ns: int, cwd: str) -> Process: ...

    def lookup(self, pid: int, start_ns: int = 0) -> Process: ...


def _text(raw: bytes) -> str:
    """Untrusted bytes from the monitored system: never fail, keep undecodable bytes."""
    return raw.decode("utf-8", "surrogateescape")


def _string(data: bytes, start: int, length: int) -> str:
    """A NUL-terminated string region of the tail."""
    return _text(data[start : start + length].split(b"\0", 1)[0])


def _path(data: bytes, start: int, length: int) -> str:
    """A path sent as NUL-terminated components, leaf first."""
    if length == 0:
        return "/"
    parts = data[start : start + length].split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    parts.reverse()
    return "/" + _text(b"/".join(parts))


def _strings(data: bytes, start: int, length: int) -> list[str]:
    """A NUL-separated list region (argv, environment); a cut last entry is kept."""
    raw = data[start : start + length]
    if not raw:
        return []
    items = raw.split(b"\0")
    if items[-1] == b"":
        items.pop()
    return [_text(item) for item in items]


def exe_writable(mode: int, uid: int, gid: int, euid: int, egid: int, cap_effective: int) -> bool:
    """Falco's proc.is_exe_writable: the process's credentials may write its executable."""
    if cap_effective >> CAP_DAC_OVERRIDE & 1:
        return True
    if uid == euid:
        return bool(mode & stat.S_IWUSR)
    if gid == egid:
        return bool(mode & stat.S_IWGRP)
    return bool(mode & stat.S_IWOTH)


def decode_exit_status(status: int) -> tuple[int, int, bool]:
    """wait(2) status -> (exit code, terminating signal, core dumped)."""
    return (status >> 8) & 0xFF, status & 0x7F, bool(status & 0x80)


class Decoder:
    """Turns raw records into Events and keeps the process table in step.

    `boot_to_utc_ns` converts the records' CLOCK_BOOTTIME stamps (a measured offset).
    """

    def __init__(self, table: ProcessTableLike, boot_to_utc_ns: Callable[[int], int]) -> None:
        self.table = table
        self.boot_to_utc_ns = boot_to_utc_ns
        self.decoded = 0
        self.dropped = 0
        self._next_num = 1
        self.max_shared = MAX_SHARED
        self.max_shared_bytes = MAX_SHARED_BYTES
        self._templates: dict[tuple, Process] = {}  # exec record key -> shared fields
        self._template_bytes = 0
        self._argvs: dict[bytes, tuple[str | None, tuple[str, ...]]] = {}  # args region -> argv
        self._argv_bytes = 0
        self._handlers = {
            abi.OP_EXEC: self._exec,
            abi.OP_EXEC_FAILED: self._exec_failed,
            abi.OP_CLONE: self._clone,
            abi.OP_EXIT: self._exit,
            abi.OP_CHDIR: self._chdir,
            # partial, not lambda: one Python frame less per record
            abi.OP_SYSCALL: partial(sysdecode.decode_syscall, self),
            abi.OP_COMPAT: partial(sysdecode.decode_compat, self),
            abi.OP_IO_URING: partial(sysdecode.decode_io_uring, self),
        }

    def register(self, op: int, handler: Callable[[bytes], Event | None]) -> None:
        """Other sensors add their record types here."""
        self._handlers[op] = handler

    def decode(self, data: bytes) -> Event | None:
        try:
            op, version, size = _PREFIX(data)
            handler = self._handlers.get(op)
            if handler is None or version != _ABI_VERSION or size > len(data):
                raise ValueError("op %d, abi %d, size %d of %d bytes" % (op, version, size, len(data)))
            event = handler(data)
        except (struct.error, ValueError, IndexError) as exc:
            self.dropped += 1
            log.debug("record.dropped", reason=str(exc), size=len(data))
            return None
        if event is not None:
            event.num = self._next_num
            self._next_num += 1
            self.decoded += 1
        return event

    def _process(self, pid: int, start_ns: int, tid: int, comm: bytes, proc: Process | None = None) -> Process:
        """The process a record is about. When the table knows nothing (an unstored
        placeholder), the record's own comm is still a fact worth keeping."""
        if proc is None:
            proc = self.table.lookup(pid, start_ns)
        if not proc.comm:
            proc.comm = _text(comm.split(b"\0", 1)[0])
        proc.tid = tid
        return proc

    def _exec(self, data: bytes) -> Event:
        """A new image. Everything but the process's identity comes from a shared
        template (see `_exec_template`), so a process costs its own object and ints only."""
        (
            _op, _abi, _size, boot_ns, start_ns, cgroup_id, pid, _tid, _cpu, _pad, comm,
            ppid, old_pid, parent_start_ns, _uid, _gid, _euid, _egid, _loginuid, vpid, _pgid, vpgid, _sid, _tty,
            _cap_permitted, _cap_effective, _cap_inheritable, _exe_ino, _exe_dev, _exe_mode, _exe_uid, _exe_gid,
            _exe_mtime_ns, _exe_ctime_ns, _flags,
            filename_len, interp_len, exepath_len, cwd_len, args_len, env_len, cgroups_key,
        ) = _EXEC(data)  # fmt: skip
        args_start = _EXEC_SIZE + filename_len + interp_len + exepath_len + cwd_len
        args_end = args_start + args_len
        env_end = args_end + env_len
        key = (cgroup_id, comm, data[_EXEC_CREDS:_EXEC_VPID], data[_EXEC_PGID:args_start], data[args_end:env_end])
        template = self._templates.get(key)
        if template is None:
            template = self._exec_template(data, key)
        raw_args = data[args_start:args_end]
        argv = self._argvs.get(raw_args)
        if argv is None:
            argv = self._argv(raw_args)
        proc = copy_process(template)
        proc.pid = pid
        proc.tid = old_pid if old_pid != pid else pid
        proc.ppid = ppid
        proc.start_ns = start_ns
        proc.vpid = pid if vpid == pid else vpid
        proc.is_vpgid_leader = vpid == vpgid
        proc.exe = template.filename if argv[0] is None else argv[0]
        proc.args = argv[1]
        event = Event(
            template.exec_syscall,
            proc,
            0,
            {"filename": template.filename},
            None,
            boot_ns,
            self.boot_to_utc_ns(boot_ns),
            old_pid,
        )
        self.table.on_exec(event, parent_start_ns, cgroups_key)  # may replace event.proc with the stored one
        return event

    def _exec_template(self, data: bytes, key: tuple) -> Process:
        """The fields of an exec record that are not the process's identity or its argv,
        decoded once per distinct (binary, credentials, cwd, environment, cgroup, session):
        a busy host execs the same few programs the same way again and again."""
        (
            _op, _abi, _size, _boot_ns, _start_ns, cgroup_id, _pid, _tid, _cpu, _pad, comm,
            _ppid, _old_pid, _parent_start_ns, uid, gid, euid, egid, loginuid, _vpid, pgid, vpgid, sid, tty,
            cap_permitted, cap_effective, cap_inheritable, exe_ino, exe_dev, exe_mode, exe_uid, exe_gid,
            exe_mtime_ns, exe_ctime_ns, flags,
            filename_len, interp_len, exepath_len, cwd_len, args_len, env_len, _cgroups_key,
        ) = _EXEC(data)  # fmt: skip
        position = _EXEC_SIZE
        filename = _string(data, position, filename_len)
        position += filename_len
        interp = _string(data, position, interp_len)
        position += interp_len
        exepath = _path(data, position, exepath_len)
        position += exepath_len
        cwd = _path(data, position, cwd_len)
        position += cwd_len + args_len
        env = _strings(data, position, env_len)
        proc = Process()
        proc.pgid = pgid
        proc.vpgid = vpgid
        proc.sid = sid
        proc.comm = sys.intern(_text(comm.split(b"\0", 1)[0]))
        proc.exepath = sys.intern(exepath)
        proc.filename = sys.intern(filename)
        proc.interpreter = interp if interp != filename else ""
        proc.args_truncated = bool(flags & abi.F_ARGS_TRUNC)
        proc.env = tuple(env)
        proc.cwd = sys.intern(cwd)
        proc.tty = tty
        proc.uid = uid
        proc.gid = gid
        proc.euid = euid
        proc.egid = egid
        proc.loginuid = loginuid
        proc.cap_permitted = cap_permitted
        proc.cap_effective = cap_effective
        proc.cap_inheritable = cap_inheritable
        proc.cgroup_id = cgroup_id
        proc.exe_ino = exe_ino
        proc.exe_dev = exe_dev
        proc.exe_mtime_ns = exe_mtime_ns
        proc.exe_ctime_ns = exe_ctime_ns
        proc.exe_from_memfd = bool(flags & abi.F_EXE_MEMFD)
        proc.exe_upper_layer = bool(flags & abi.F_EXE_UPPER)
        proc.exe_writable = exe_writable(exe_mode, exe_uid, exe_gid, euid, egid, cap_effective)
        proc.exec_syscall = "execveat" if flags & abi.F_EXECVEAT else "execve"
        size = len(key[2]) + len(key[3]) + len(key[4])
        if len(self._templates) >= self.max_shared or self._template_bytes + size > self.max_shared_bytes:
            self._templates.clear()
            self._template_bytes = 0
        self._templates[key] = proc
        self._template_bytes += size
        return proc

    def _argv(self, raw: bytes) -> tuple[str | None, tuple[str, ...]]:
        """(argv[0], argv[1:]) of an args region, argv[0] None when argv is empty; remembered."""
        argv = _strings(raw, 0, len(raw))
        decoded = (argv[0], tuple(argv[1:])) if argv else (None, ())
        if len(self._argvs) >= self.max_shared or self._argv_bytes + len(raw) > self.max_shared_bytes:
            self._argvs.clear()
            self._argv_bytes = 0
        self._argvs[raw] = decoded
        self._argv_bytes += len(raw)
        return decoded

    def _exec_failed(self, data: bytes) -> Event:
        (
            _op, _abi, _size, boot_ns, start_ns, _cgroup_id, pid, tid, _cpu, _pad, comm,
            res, flags, dirfd, at_flags, filename_len, args_len, _pad2,
        ) = _EXEC_FAILED(data)  # fmt: skip
        position = _EXEC_FAILED_SIZE
        filename = _string(data, position, filename_len)
        argv = _strings(data, position + filename_len, args_len)
        args: dict[str, Any] = {"filename": filename, "argv": tuple(argv)}
        syscall = "execve"
        if flags & abi.F_EXECVEAT:
            syscall = "execveat"
            args["dirfd"] = dirfd
            args["flags"] = at_flags
        proc = self._process(pid, start_ns, tid, comm)
        return Event(
            syscall, proc, res=res, args=args, boot_ns=boot_ns, time_ns=self.boot_to_utc_ns(boot_ns), tid=tid
        )

    def _clone(self, data: bytes) -> Event:
        (
            _op, _abi, _size, boot_ns, start_ns, _cgroup_id, pid, tid, _cpu, _pad, comm,
            parent_pid, parent_tid, parent_start_ns, clone_flags, flags, syscall, vpid, _pad2,
        ) = _CLONE(data)  # fmt: skip
        is_thread = bool(flags & abi.F_CLONE_THREAD)
        child = self.table.on_fork(parent_pid, parent_start_ns, pid, start_ns, is_thread, boot_ns, vpid)
        known = child.parent if child is not None else None
        if known is not None and known.pid == parent_pid and known.start_ns == parent_start_ns:
            parent = self._process(parent_pid, parent_start_ns, parent_tid, comm, known)  # no second lookup
        else:
            parent = self._process(parent_pid, parent_start_ns, parent_tid, comm)
        args: dict[str, Any] = {"child_pid": pid, "child_tid": tid, "is_thread": is_thread}
        if flags & abi.F_CLONE_FLAGS:
            args["flags"] = clone_flags
        event_type = _CLONE_EVENT_TYPES.get(syscall, "clone")
        # positional: a keyword call costs ~80 ns more, on every record
        return Event(event_type, parent, tid, args, None, boot_ns, self.boot_to_utc_ns(boot_ns), parent_tid)

    def _exit(self, data: bytes) -> Event:
        (
            _op, _abi, _size, boot_ns, start_ns, _cgroup_id, pid, tid, _cpu, _pad, comm,
            status, _pad2,
        ) = _EXIT(data)  # fmt: skip
        code, signal, core = decode_exit_status(status)
        proc = self._process(pid, start_ns, tid, comm, self.table.on_exit(pid, start_ns, code, signal))
        proc.exited = True
        proc.exit_code = code
        proc.exit_signal = signal
        args = {"status": code, "sig": signal, "core": core}
        return Event("procexit", proc, 0, args, None, boot_ns, self.boot_to_utc_ns(boot_ns), tid)

    def _chdir(self, data: bytes) -> Event:
        (
            _op, _abi, _size, boot_ns, start_ns, _cgroup_id, pid, tid, _cpu, _pad, comm,
            res, flags, cwd_len, _pad2,
        ) = _CHDIR(data)  # fmt: skip
        args: dict[str, Any] = {}
        if res == 0:
            cwd = _path(data, _CHDIR_SIZE, cwd_len)
            args["path"] = cwd
            proc = self._process(pid, start_ns, tid, comm, self.table.on_chdir(pid, start_ns, cwd))
        else:
            proc = self._process(pid, start_ns, tid, comm)
        return Event(
            "fchdir" if flags & abi.F_FCHDIR else "chdir",
            proc,
            res=res,
            args=args,
            boot_ns=boot_ns,
            time_ns=self.boot_to_utc_ns(boot_ns),
            tid=tid,
        )
