"""Python mirror of bpf/include/sentinel_events.h: opcodes, flags, bounds and record layouts.

Each record layout is a table of (field, struct format) pairs from which the precompiled
`struct.Struct`, the size and the offsets follow. `c_static_asserts()` turns this module
into `_Static_assert`s that tests/events/test_abi_layout.py compiles with bcc together with
the header: changing one side only fails that test.

Clocks: record timestamps and exec ids use CLOCK_BOOTTIME (`bpf_ktime_get_boot_ns()` and
`task->start_boottime`). /proc/<pid>/stat's starttime is the same clock in ticks, so a
process seen in /proc and in a kernel record has the same start at tick precision
(compare with `same_start_ticks`, or `sentinel.enrich.procfs.same_start`).

Best-effort exec flags: F_EXE_MEMFD is set when the exe's dentry is named "memfd:..." on a
kernel-internal (MNT_INTERNAL) tmpfs/hugetlbfs mount, which is where memfd_create() puts
its files. F_EXE_UPPER is set when the exe is on overlayfs and its overlay inode has an
upper dentry (`struct ovl_inode.__upperdentry`); it needs struct ovl_inode in vmlinux BTF
(overlay built in, SENTINEL_HAVE_OVL_INODE), and stays clear where overlay is a module.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

ABI_VERSION = 1
EXEC_ID_CLOCK = "boottime"

# enum sentinel_op
OP_EXEC = 1
OP_EXEC_FAILED = 2
OP_CLONE = 3
OP_EXIT = 4
OP_CHDIR = 5
OP_SYSCALL = 16
OP_COMPAT = 17
OP_IO_URING = 18
OP_SLOTS = 64

# enum sentinel_syscall
SYSCALL_NONE = 0
SYSCALL_EXECVE = 1
SYSCALL_EXECVEAT = 2
SYSCALL_CLONE = 3
SYSCALL_CLONE3 = 4
SYSCALL_FORK = 5
SYSCALL_VFORK = 6
SYSCALL_CHDIR = 7
SYSCALL_FCHDIR = 8
# Falco event type of each syscall number above.
SYSCALL_EVENT_TYPES = {
    SYSCALL_EXECVE: "execve",
    SYSCALL_EXECVEAT: "execveat",
    SYSCALL_CLONE: "clone",
    SYSCALL_CLONE3: "clone3",
    SYSCALL_FORK: "fork",
    SYSCALL_VFORK: "vfork",
    SYSCALL_CHDIR: "chdir",
    SYSCALL_FCHDIR: "fchdir",
}

# bounds
COMM_LEN = 16
NAME_MAX = 256
PATH_DEPTH = 48
STR_MAX = 1024
ARGS_MAX = 4096
FAILED_ARGS = 16
ARG_MAX = 256
ENV_VARS = 256
ENV_VAR_MAX = 4096
ENV_NAME_MAX = 64
TAIL_MAX = 16384
TAIL_SLACK = 4096

# record flags (exec, exec_failed, chdir)
F_EXECVEAT = 1 << 0
F_EXE_MEMFD = 1 << 1
F_EXE_UPPER = 1 << 2
F_ARGS_TRUNC = 1 << 3
F_ENV_TRUNC = 1 << 4
F_EXEPATH_TRUNC = 1 << 5
F_CWD_TRUNC = 1 << 6
F_EXECFD = 1 << 7
F_NO_ENTER = 1 << 8
F_EXEPATH_DETACHED = 1 << 9
F_FCHDIR = 1 << 10
F_TAIL_FULL = 1 << 11
# clone flags
F_CLONE_THREAD = 1 << 0
F_CLONE_FLAGS = 1 << 1

# syscall descriptors (struct sentinel_sys_desc.flags): what the exit program reads
DESC_OPEN = 1 << 0
DESC_FD_RES = 1 << 1
DESC_STATE_BEFORE = 1 << 2
DESC_NEED_ADDR = 1 << 3
DESC_MSGHDR = 1 << 4
DESC_OTHER_PID = 1 << 5
DESC_BPF_ATTR = 1 << 6
DESC_OPEN_HOW = 1 << 7
DESC_ARGS_AT_EXIT = 1 << 8
DESC_CAPSET = 1 << 9
DESC_PIDFD = 1 << 10
# syscall record flags
F_SYS_PATH_TRUNC = 1 << 0
F_SYS_PATH_DETACHED = 1 << 1
F_SYS_BASE_TRUNC = 1 << 2
F_SYS_CONNECTED = 1 << 3
F_SYS_NAME_CHANGED = 1 << 4
F_SYS_FD = 1 << 5
F_SYS_SOCK = 1 << 6
F_SYS_LISTENING = 1 << 7
SOCKADDR_MAX = 128
BPF_NAME_LEN = 16
OPEN_PREFIX_MAX = 256
OPEN_FILTER_ENTRIES = 1024
OPEN_BASENAME_MAX = 64
OPEN_CGROUP_ENTRIES = 4096
OPEN_FIRST_COMPONENT_MAX = 40
OPEN_SEL_GLOBAL = 1
OPEN_SEL_ANY_PATH = 2
CGROUP_HOST = 1
CGROUP_CONTAINER = 2

# Every constant above that the header defines, by its C name (checked by the layout test).
C_CONSTANTS = {
    "SENTINEL_ABI_VERSION": ABI_VERSION,
    "SENTINEL_OP_EXEC": OP_EXEC,
    "SENTINEL_OP_EXEC_FAILED": OP_EXEC_FAILED,
    "SENTINEL_OP_CLONE": OP_CLONE,
    "SENTINEL_OP_EXIT": OP_EXIT,
    "SENTINEL_OP_CHDIR": OP_CHDIR,
    "SENTINEL_OP_SLOTS": OP_SLOTS,
    "SENTINEL_SYSCALL_NONE": SYSCALL_NONE,
    "SENTINEL_SYSCALL_EXECVE": SYSCALL_EXECVE,
    "SENTINEL_SYSCALL_EXECVEAT": SYSCALL_EXECVEAT,
    "SENTINEL_SYSCALL_CLONE": SYSCALL_CLONE,
    "SENTINEL_SYSCALL_CLONE3": SYSCALL_CLONE3,
    "SENTINEL_SYSCALL_FORK": SYSCALL_FORK,
    "SENTINEL_SYSCALL_VFORK": SYSCALL_VFORK,
    "SENTINEL_SYSCALL_CHDIR": SYSCALL_CHDIR,
    "SENTINEL_SYSCALL_FCHDIR": SYSCALL_FCHDIR,
    "SENTINEL_COMM_LEN": COMM_LEN,
    "SENTINEL_NAME_MAX": NAME_MAX,
    "SENTINEL_PATH_DEPTH": PATH_DEPTH,
    "SENTINEL_STR_MAX": STR_MAX,
    "SENTINEL_ARGS_MAX": ARGS_MAX,
    "SENTINEL_FAILED_ARGS": FAILED_ARGS,
    "SENTINEL_ARG_MAX": ARG_MAX,
    "SENTINEL_ENV_VARS": ENV_VARS,
    "SENTINEL_ENV_VAR_MAX": ENV_VAR_MAX,
    "SENTINEL_ENV_NAME_MAX": ENV_NAME_MAX,
    "SENTINEL_TAIL_MAX": TAIL_MAX,
    "SENTINEL_TAIL_SLACK": TAIL_SLACK,
    "SENTINEL_F_EXECVEAT": F_EXECVEAT,
    "SENTINEL_F_EXE_MEMFD": F_EXE_MEMFD,
    "SENTINEL_F_EXE_UPPER": F_EXE_UPPER,
    "SENTINEL_F_ARGS_TRUNC": F_ARGS_TRUNC,
    "SENTINEL_F_ENV_TRUNC": F_ENV_TRUNC,
    "SENTINEL_F_EXEPATH_TRUNC": F_EXEPATH_TRUNC,
    "SENTINEL_F_CWD_TRUNC": F_CWD_TRUNC,
    "SENTINEL_F_EXECFD": F_EXECFD,
    "SENTINEL_F_NO_ENTER": F_NO_ENTER,
    "SENTINEL_F_EXEPATH_DETACHED": F_EXEPATH_DETACHED,
    "SENTINEL_F_FCHDIR": F_FCHDIR,
    "SENTINEL_F_TAIL_FULL": F_TAIL_FULL,
    "SENTINEL_F_CLONE_THREAD": F_CLONE_THREAD,
    "SENTINEL_F_CLONE_FLAGS": F_CLONE_FLAGS,
    "SENTINEL_OP_SYSCALL": OP_SYSCALL,
    "SENTINEL_OP_COMPAT": OP_COMPAT,
    "SENTINEL_OP_IO_URING": OP_IO_URING,
    "SENTINEL_DESC_OPEN": DESC_OPEN,
    "SENTINEL_DESC_FD_RES": DESC_FD_RES,
    "SENTINEL_DESC_STATE_BEFORE": DESC_STATE_BEFORE,
    "SENTINEL_DESC_NEED_ADDR": DESC_NEED_ADDR,
    "SENTINEL_DESC_MSGHDR": DESC_MSGHDR,
    "SENTINEL_DESC_OTHER_PID": DESC_OTHER_PID,
    "SENTINEL_DESC_BPF_ATTR": DESC_BPF_ATTR,
    "SENTINEL_DESC_OPEN_HOW": DESC_OPEN_HOW,
    "SENTINEL_DESC_ARGS_AT_EXIT": DESC_ARGS_AT_EXIT,
    "SENTINEL_DESC_CAPSET": DESC_CAPSET,
    "SENTINEL_DESC_PIDFD": DESC_PIDFD,
    "SENTINEL_F_SYS_PATH_TRUNC": F_SYS_PATH_TRUNC,
    "SENTINEL_F_SYS_PATH_DETACHED": F_SYS_PATH_DETACHED,
    "SENTINEL_F_SYS_BASE_TRUNC": F_SYS_BASE_TRUNC,
    "SENTINEL_F_SYS_CONNECTED": F_SYS_CONNECTED,
    "SENTINEL_F_SYS_NAME_CHANGED": F_SYS_NAME_CHANGED,
    "SENTINEL_F_SYS_FD": F_SYS_FD,
    "SENTINEL_F_SYS_SOCK": F_SYS_SOCK,
    "SENTINEL_F_SYS_LISTENING": F_SYS_LISTENING,
    "SENTINEL_SOCKADDR_MAX": SOCKADDR_MAX,
    "SENTINEL_BPF_NAME_LEN": BPF_NAME_LEN,
    "SENTINEL_OPEN_PREFIX_MAX": OPEN_PREFIX_MAX,
    "SENTINEL_OPEN_FILTER_ENTRIES": OPEN_FILTER_ENTRIES,
    "SENTINEL_OPEN_BASENAME_MAX": OPEN_BASENAME_MAX,
    "SENTINEL_OPEN_CGROUP_ENTRIES": OPEN_CGROUP_ENTRIES,
    "SENTINEL_OPEN_FIRST_COMPONENT_MAX": OPEN_FIRST_COMPONENT_MAX,
    "SENTINEL_OPEN_SEL_GLOBAL": OPEN_SEL_GLOBAL,
    "SENTINEL_OPEN_SEL_ANY_PATH": OPEN_SEL_ANY_PATH,
    "SENTINEL_CGROUP_HOST": CGROUP_HOST,
    "SENTINEL_CGROUP_CONTAINER": CGROUP_CONTAINER,
}


@dataclass(frozen=True)
class Layout:
    """One C struct: its fields in order as (name, struct format). Padding is explicit."""

    c_name: str
    fields: tuple[tuple[str, str], ...]
    struct: struct.Struct = field(init=False, repr=False, compare=False)
    offsets: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fmt = "<" + "".join(f for _, f in self.fields)
        object.__setattr__(self, "struct", struct.Struct(fmt))
        offsets = {}
        position = 0
        for name, fmt_one in self.fields:
            offsets[name] = position
            position += struct.calcsize("<" + fmt_one)
        object.__setattr__(self, "offsets", offsets)

    @property
    def size(self) -> int:
        return self.struct.size

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)


HEADER = Layout(
    "sentinel_header",
    (
        ("op", "H"),
        ("abi", "H"),
        ("size", "I"),
        ("boot_ns", "Q"),
        ("start_ns", "Q"),
        ("cgroup_id", "Q"),
        ("pid", "I"),
        ("tid", "I"),
        ("cpu", "I"),
        ("_pad", "I"),
        ("comm", "%ds" % COMM_LEN),
    ),
)


def _with_header(c_name: str, body: tuple[tuple[str, str], ...]) -> Layout:
    """A record layout: the header's fields (prefixed `hdr.`, as C names them) then the body."""
    return Layout(c_name, tuple(("hdr." + name, fmt) for name, fmt in HEADER.fields) + body)


EXEC = _with_header(
    "sentinel_exec",
    (
        ("ppid", "I"),
        ("old_pid", "I"),
        ("parent_start_ns", "Q"),
        ("uid", "I"),
        ("gid", "I"),
        ("euid", "I"),
        ("egid", "I"),
        ("loginuid", "I"),
        ("vpid", "I"),
        ("pgid", "I"),
        ("vpgid", "I"),
        ("sid", "I"),
        ("tty", "I"),
        ("cap_permitted", "Q"),
        ("cap_effective", "Q"),
        ("cap_inheritable", "Q"),
        ("exe_ino", "Q"),
        ("exe_dev", "I"),
        ("exe_mode", "I"),
        ("exe_uid", "I"),
        ("exe_gid", "I"),
        ("exe_mtime_ns", "q"),
        ("exe_ctime_ns", "q"),
        ("flags", "I"),
        ("filename_len", "H"),
        ("interp_len", "H"),
        ("exepath_len", "H"),
        ("cwd_len", "H"),
        ("args_len", "H"),
        ("env_len", "H"),
        ("cgroups_key", "Q"),
    ),
)

EXEC_FAILED = _with_header(
    "sentinel_exec_failed",
    (
        ("res", "i"),
        ("flags", "I"),
        ("dirfd", "i"),
        ("at_flags", "I"),
        ("filename_len", "H"),
        ("args_len", "H"),
        ("_pad", "I"),
    ),
)

CLONE = _with_header(
    "sentinel_clone",
    (
        ("parent_pid", "I"),
        ("parent_tid", "I"),
        ("parent_start_ns", "Q"),
        ("clone_flags", "Q"),
        ("flags", "I"),
        ("syscall", "I"),
        ("vpid", "I"),
        ("_pad", "I"),
    ),
)

EXIT = _with_header("sentinel_exit", (("exit_code", "i"), ("_pad", "I")))

CHDIR = _with_header(
    "sentinel_chdir",
    (("res", "i"), ("flags", "I"), ("cwd_len", "H"), ("_pad", "6s")),
)

# What the exit program reads of one syscall (a map value, not a record): argument numbers
# are index + 1, 0 for none.
SYS_DESC = Layout(
    "sentinel_sys_desc",
    (
        ("str_args", "3s"),
        ("fd_arg", "B"),
        ("addr_arg", "B"),
        ("addr_len_arg", "B"),
        ("dirfd_arg", "B"),
        ("pid_arg", "B"),
        ("flags", "I"),
    ),
)

SYSCALL = _with_header(
    "sentinel_sys_event",
    (
        ("res", "q"),
        ("args", "48s"),
        ("nr", "I"),
        ("flags", "I"),
        ("fd", "i"),
        ("fd_mode", "I"),
        ("fd_ino", "Q"),
        ("fd_dev", "I"),
        ("fd_fmode", "I"),
        ("fd_oflags", "I"),
        ("bpf_prog_type", "I"),
        ("sock_family", "H"),
        ("sock_type", "H"),
        ("sock_protocol", "H"),
        ("lport", "H"),
        ("rport", "H"),
        ("sock_state", "B"),
        ("_pad1", "B"),
        ("laddr", "16s"),
        ("raddr", "16s"),
        ("bpf_prog_name", "%ds" % BPF_NAME_LEN),
        ("str0_len", "H"),
        ("str1_len", "H"),
        ("path_len", "H"),
        ("base_len", "H"),
        ("addr_len", "H"),
        ("unix_len", "H"),
        ("str2_len", "H"),
        ("_pad2", "6s"),
        ("target_pid", "i"),
        ("_pad3", "I"),
    ),
)

COMPAT = _with_header("sentinel_compat", (("args", "48s"), ("nr", "I"), ("_pad", "I")))

IO_URING = _with_header(
    "sentinel_io_uring",
    (("user_data", "Q"), ("req_flags", "Q"), ("opcode", "I"), ("sq_thread", "I")),
)

LAYOUTS = (HEADER, EXEC, EXEC_FAILED, CLONE, EXIT, CHDIR, SYS_DESC, SYSCALL, COMPAT, IO_URING)
# The body layout of each opcode.
RECORDS = {
    OP_EXEC: EXEC,
    OP_EXEC_FAILED: EXEC_FAILED,
    OP_CLONE: CLONE,
    OP_EXIT: EXIT,
    OP_CHDIR: CHDIR,
    OP_SYSCALL: SYSCALL,
    OP_COMPAT: COMPAT,
    OP_IO_URING: IO_URING,
}

# What the header-only prefix of any record unpacks to: (op, abi, size).
PREFIX = struct.Struct("<HHI")

CLK_TCK = os.sysconf("SC_CLK_TCK")


def start_ticks(start_ns: int) -> int:
    """A kernel exec-id start (ns, boot clock) in /proc/<pid>/stat starttime units."""
    return start_ns * CLK_TCK // 1_000_000_000


def same_start_ticks(kernel_start_ns: int, proc_ticks: int) -> bool:
    """Whether a kernel start time and a /proc starttime name the same process."""
    return start_ticks(kernel_start_ns) == proc_ticks


def c_static_asserts() -> str:
    """C `_Static_assert`s of every size, offset and constant this module claims."""
    lines = []
    for layout in LAYOUTS:
        tag = "struct %s" % layout.c_name
        lines.append(
            '_Static_assert(sizeof(%s) == %d, "sizeof %s: abi.py says %d");'
            % (tag, layout.size, layout.c_name, layout.size)
        )
        for name, offset in layout.offsets.items():
            lines.append(
                '_Static_assert(__builtin_offsetof(%s, %s) == %d, "%s.%s: abi.py says offset %d");'
                % (tag, name, offset, layout.c_name, name, offset)
            )
            size = struct.calcsize("<" + dict(layout.fields)[name])
            lines.append(
                '_Static_assert(sizeof(((%s *)0)->%s) == %d, "%s.%s: abi.py says size %d");'
                % (tag, name, size, layout.c_name, name, size)
            )
    for name, value in C_CONSTANTS.items():
        lines.append('_Static_assert((%s) == %d, "%s: abi.py says %d");' % (name, value, name, value))
    return "\n".join(lines) + "\n"
