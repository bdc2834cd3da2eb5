"""The traced syscalls: Falco event type, native number, argument names, what the kernel reads.

One table (SYSCALLS) drives three things: the descriptors userspace writes into the BPF map
`snt_sys_desc` (which arguments are user strings, an fd, a sockaddr...), the tracepoints the
sensor attaches for an event type, and the argument names the decoder gives the values
(Falco's names: `evt.arg.name`, `evt.arg.path`, `evt.arg.oldpath`...).

Argument specs are the syscall's arguments in order: "name" (a number), "name:s" (a user
string read at exit), "name:fd" (an fd resolved in the kernel), "name:dirfd" (the directory
a relative path argument is relative to), "name:addr" / "name:addrlen" (a sockaddr and its
length), "name:msg" (a struct msghdr carrying the address), "name:pid" (a signal target),
"-" (an argument not reported).

Numbers are x86_64's (the only architecture the syscall numbers are given for);
I386_NAMES names the 32-bit numbers of the compat blind-spot events.
"""

from __future__ import annotations

from dataclasses import dataclass

from sentinel.events import abi


@dataclass(frozen=True)
class SyscallSpec:
    name: str  # Falco event type
    nr: int  # x86_64 syscall number
    args: tuple[str, ...]
    flags: int = 0  # abi.DESC_* beyond what the arg specs imply
    tracepoint: str = ""  # syscalls:sys_{enter,exit}_<tracepoint>, when it differs from name

    @property
    def arg_names(self) -> tuple[str, ...]:
        return tuple(spec.split(":")[0] for spec in self.args)

    def _index(self, kind: str) -> int:
        """Argument number (index + 1) of the first argument of `kind`, 0 if none."""
        for i, spec in enumerate(self.args):
            if spec.endswith(":" + kind):
                return i + 1
        return 0

    @property
    def string_args(self) -> tuple[int, ...]:
        return tuple(i + 1 for i, spec in enumerate(self.args) if spec.endswith(":s"))

    def descriptor(self) -> dict[str, int | bytes]:
        """The struct sentinel_sys_desc of this syscall, by field name."""
        strings = self.string_args
        if len(strings) > 3:
            raise ValueError("%s: at most 3 string arguments" % self.name)
        flags = self.flags
        addr = self._index("addr") or self._index("msg")
        if self._index("msg"):
            flags |= abi.DESC_MSGHDR
        if self._index("pid"):
            flags |= abi.DESC_OTHER_PID
        return {
            "str_args": bytes(strings).ljust(3, b"\0"),
            "fd_arg": self._index("fd"),
            "addr_arg": addr,
            "addr_len_arg": self._index("addrlen"),
            "dirfd_arg": self._index("dirfd"),
            "pid_arg": self._index("pid"),
            "flags": flags,
        }


_OPEN = abi.DESC_OPEN | abi.DESC_FD_RES | abi.DESC_ARGS_AT_EXIT
_SEND = abi.DESC_NEED_ADDR | abi.DESC_STATE_BEFORE

SYSCALLS: tuple[SyscallSpec, ...] = (
    # files
    SyscallSpec("open", 2, ("name:s", "flags", "mode"), _OPEN),
    SyscallSpec("openat", 257, ("dirfd:dirfd", "name:s", "flags", "mode"), _OPEN),
    SyscallSpec("openat2", 437, ("dirfd:dirfd", "name:s", "flags", "mode", "resolve"), _OPEN | abi.DESC_OPEN_HOW),
    SyscallSpec("creat", 85, ("name:s", "mode"), _OPEN),
    SyscallSpec("unlink", 87, ("path:s",)),
    SyscallSpec("unlinkat", 263, ("dirfd:dirfd", "name:s", "flags")),
    SyscallSpec("rmdir", 84, ("path:s",)),
    SyscallSpec("rename", 82, ("oldpath:s", "newpath:s")),
    SyscallSpec("renameat", 264, ("olddirfd:dirfd", "oldpath:s", "newdirfd", "newpath:s")),
    SyscallSpec("renameat2", 316, ("olddirfd:dirfd", "oldpath:s", "newdirfd", "newpath:s", "flags")),
    SyscallSpec("link", 86, ("oldpath:s", "newpath:s")),
    SyscallSpec("linkat", 265, ("olddir:dirfd", "oldpath:s", "newdir", "newpath:s", "flags")),
    SyscallSpec("symlink", 88, ("target:s", "linkpath:s")),
    SyscallSpec("symlinkat", 266, ("target:s", "linkdirfd", "linkpath:s")),
    SyscallSpec("mkdir", 83, ("path:s", "mode")),
    SyscallSpec("mkdirat", 258, ("dirfd:dirfd", "path:s", "mode")),
    SyscallSpec("chmod", 90, ("filename:s", "mode")),
    SyscallSpec("fchmod", 91, ("fd:fd", "mode")),
    SyscallSpec("fchmodat", 268, ("dirfd:dirfd", "filename:s", "mode")),
    SyscallSpec("fchmodat", 452, ("dirfd:dirfd", "filename:s", "mode", "flags"), tracepoint="fchmodat2"),
    SyscallSpec("chown", 92, ("path:s", "uid", "gid")),
    SyscallSpec("lchown", 94, ("path:s", "uid", "gid")),
    SyscallSpec("fchown", 93, ("fd:fd", "uid", "gid")),
    SyscallSpec("fchownat", 260, ("dirfd:dirfd", "pathname:s", "uid", "gid", "flags")),
    SyscallSpec("truncate", 76, ("path:s", "length")),
    SyscallSpec("ftruncate", 77, ("fd:fd", "length")),
    # network
    SyscallSpec("socket", 41, ("domain", "type", "proto"), abi.DESC_FD_RES),
    SyscallSpec("connect", 42, ("fd:fd", "addr:addr", "addrlen:addrlen"), abi.DESC_STATE_BEFORE),
    SyscallSpec("accept", 43, ("-", "-", "-"), abi.DESC_FD_RES),  # Falco: fd is the new socket
    SyscallSpec("accept4", 288, ("-", "-", "-", "flags"), abi.DESC_FD_RES),
    SyscallSpec("bind", 49, ("fd:fd", "addr:addr", "addrlen:addrlen")),
    SyscallSpec("listen", 50, ("fd:fd", "backlog")),
    SyscallSpec("sendto", 44, ("fd:fd", "-", "size", "-", "addr:addr", "addrlen:addrlen"), _SEND),
    SyscallSpec("sendmsg", 46, ("fd:fd", "msg:msg", "flags"), _SEND),
    SyscallSpec("dup", 32, ("oldfd",), abi.DESC_FD_RES),
    SyscallSpec("dup2", 33, ("oldfd", "newfd"), abi.DESC_FD_RES),
    SyscallSpec("dup3", 292, ("oldfd", "newfd", "flags"), abi.DESC_FD_RES),
    # privilege and tampering
    SyscallSpec("ptrace", 101, ("request", "pid", "-", "-")),
    SyscallSpec("setuid", 105, ("uid",)),
    SyscallSpec("setgid", 106, ("gid",)),
    SyscallSpec("setreuid", 113, ("ruid", "euid")),
    SyscallSpec("setregid", 114, ("rgid", "egid")),
    SyscallSpec("setresuid", 117, ("ruid", "euid", "suid")),
    SyscallSpec("setresgid", 119, ("rgid", "egid", "sgid")),
    SyscallSpec("capset", 126, ("-", "-"), abi.DESC_CAPSET),
    SyscallSpec("setns", 308, ("fd:fd", "nstype")),
    SyscallSpec("unshare", 272, ("flags",)),
    SyscallSpec("init_module", 175, ("-", "length", "uargs:s")),
    SyscallSpec("finit_module", 313, ("fd:fd", "uargs:s", "flags")),
    SyscallSpec("bpf", 321, ("cmd", "-", "size"), abi.DESC_BPF_ATTR),
    SyscallSpec("memfd_create", 319, ("name:s", "flags"), abi.DESC_FD_RES),
    SyscallSpec("mount", 165, ("dev:s", "dir:s", "type:s", "flags", "-")),
    SyscallSpec("umount2", 166, ("name:s", "flags"), tracepoint="umount"),
    SyscallSpec("userfaultfd", 323, ("flags",), abi.DESC_FD_RES),
    SyscallSpec("kill", 62, ("pid:pid", "sig")),
    SyscallSpec("tkill", 200, ("tid:pid", "sig")),
    SyscallSpec("tgkill", 234, ("pid:pid", "tid", "sig")),
    SyscallSpec("pidfd_send_signal", 424, ("pidfd:fd", "sig", "-", "flags"), abi.DESC_PIDFD),
    SyscallSpec("pidfd_open", 434, ("pid:pid", "flags"), abi.DESC_FD_RES | abi.DESC_PIDFD),
    SyscallSpec("pidfd_getfd", 438, ("pidfd:fd", "targetfd", "flags"), abi.DESC_PIDFD),
    SyscallSpec("prctl", 157, ("option", "arg2", "arg3", "arg4", "arg5")),
    SyscallSpec("io_uring_setup", 425, ("entries", "-"), abi.DESC_FD_RES),
)

BY_NR = {spec.nr: spec for spec in SYSCALLS}
# The event types of the open family (the ones the open filter applies to).
OPEN_TYPES = frozenset(spec.name for spec in SYSCALLS if spec.flags & abi.DESC_OPEN)
EVENT_TYPES = frozenset(spec.name for spec in SYSCALLS)

# i386 numbers of common syscalls, for the compat events (arch/x86/entry/syscalls/syscall_32.tbl).
I386_NAMES = {
    1: "exit",
    2: "fork",
    3: "read",
    4: "write",
    5: "open",
    6: "close",
    8: "creat",
    9: "link",
    10: "unlink",
    11: "execve",
    12: "chdir",
    15: "chmod",
    23: "setuid",
    26: "ptrace",
    37: "kill",
    38: "rename",
    39: "mkdir",
    40: "rmdir",
    41: "dup",
    46: "setgid",
    54: "ioctl",
    63: "dup2",
    83: "symlink",
    90: "mmap",
    102: "socketcall",
    120: "clone",
    125: "mprotect",
    128: "init_module",
    172: "prctl",
    190: "vfork",
    192: "mmap2",
    195: "stat64",
    213: "setuid32",
    214: "setgid32",
    252: "exit_group",
    295: "openat",
    301: "unlinkat",
    310: "unshare",
    322: "timerfd_create",
    346: "setns",
    350: "finit_module",
    356: "memfd_create",
    357: "bpf",
    358: "execveat",
    359: "socket",
    362: "connect",
    437: "openat2",
}

# IORING_OP_* names (include/uapi/linux/io_uring.h), for the io_uring events.
IORING_OPS = (
    "NOP", "READV", "WRITEV", "FSYNC", "READ_FIXED", "WRITE_FIXED", "POLL_ADD", "POLL_REMOVE",
    "SYNC_FILE_RANGE", "SENDMSG", "RECVMSG", "TIMEOUT", "TIMEOUT_REMOVE", "ACCEPT",
    "ASYNC_CANCEL", "LINK_TIMEOUT", "CONNECT", "FALLOCATE", "OPENAT", "CLOSE", "FILES_UPDATE",
    "STATX", "READ", "WRITE", "FADVISE", "MADVISE", "SEND", "RECV", "OPENAT2", "EPOLL_CTL",
    "SPLICE", "PROVIDE_BUFFERS", "REMOVE_BUFFERS", "TEE", "SHUTDOWN", "RENAMEAT", "UNLINKAT",
    "MKDIRAT", "SYMLINKAT", "LINKAT", "MSG_RING", "FSETXATTR", "SETXATTR", "FGETXATTR",
    "GETXATTR", "SOCKET", "URING_CMD", "SEND_ZC", "SENDMSG_ZC", "READ_MULTISHOT", "WAITID",
    "FUTEX_WAIT", "FUTEX_WAKE", "FUTEX_WAITV", "FIXED_FD_INSTALL", "FTRUNCATE", "BIND", "LISTEN",
)  # fmt: skip


def ioring_op_name(opcode: int) -> str:
    return IORING_OPS[opcode] if 0 <= opcode < len(IORING_OPS) else "OP_%d" % opcode


def tracepoints(spec: SyscallSpec) -> tuple[str, str]:
    """The (enter, exit) tracepoints of a syscall."""
    base = spec.tracepoint or spec.name
    return "syscalls:sys_enter_" + base, "syscalls:sys_exit_" + base
