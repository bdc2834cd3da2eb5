"""Falco's text for raw kernel values: flags, modes, errno names, capabilities, requests.

Rules compare these strings (`evt.arg.flags contains O_TRUNC`, `evt.res = ENOENT`,
`thread.cap_permitted contains CAP_SYS_ADMIN`), so they are rendered exactly as Falco renders
them: flag names in Falco's table order joined by `|`, enums by name.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
from functools import lru_cache

# Linux open(2) bits (x86_64 values).
O_ACCMODE = 0o3
O_CREAT = 0o100
O_EXCL = 0o200
O_NOCTTY = 0o400
O_TRUNC = 0o1000
O_APPEND = 0o2000
O_NONBLOCK = 0o4000
O_DSYNC = 0o10000
O_DIRECT = 0o40000
O_LARGEFILE = 0o100000
O_DIRECTORY = 0o200000
O_CLOEXEC = 0o2000000
O_SYNC = 0o4010000
O_TMPFILE = 0o20200000

# Falco's file_flags table order; the access mode takes the place of O_RDWR/O_WRONLY/O_RDONLY.
_OPEN_FLAG_ORDER = (
    ("O_LARGEFILE", O_LARGEFILE),
    ("O_DIRECTORY", O_DIRECTORY),
    ("O_DIRECT", O_DIRECT),
    ("O_TRUNC", O_TRUNC),
    ("O_SYNC", O_SYNC),
    ("O_NONBLOCK", O_NONBLOCK),
    ("O_EXCL", O_EXCL),
    ("O_DSYNC", O_DSYNC),
    ("O_APPEND", O_APPEND),
    ("O_CREAT", O_CREAT),
)
_ACCESS_MODES = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR", 3: "O_RDWR"}


@lru_cache(maxsize=1024)
def open_flags(flags: int) -> str:
    """`O_TRUNC|O_CREAT|O_WRONLY`: Falco's rendering of open(2) flags (its table order)."""
    names = []
    if flags & O_TMPFILE == O_TMPFILE:
        flags &= ~O_DIRECTORY
        tmpfile = True
    else:
        tmpfile = False
    for name, bit in _OPEN_FLAG_ORDER:
        if flags & bit == bit:
            names.append(name)
            flags &= ~bit
    names.append(_ACCESS_MODES[flags & O_ACCMODE])
    if flags & O_CLOEXEC:
        names.append("O_CLOEXEC")
    if tmpfile:
        names.append("O_TMPFILE")
    return "|".join(names)


def is_open_read(flags: int) -> bool:
    return flags & O_ACCMODE in (0, 2, 3)


def is_open_write(flags: int) -> bool:
    return flags & O_ACCMODE in (1, 2, 3)


# chmod(2) mode bits in Falco's table order.
_MODE_BITS = (
    ("S_IXOTH", 0o1),
    ("S_IWOTH", 0o2),
    ("S_IROTH", 0o4),
    ("S_IXGRP", 0o10),
    ("S_IWGRP", 0o20),
    ("S_IRGRP", 0o40),
    ("S_IXUSR", 0o100),
    ("S_IWUSR", 0o200),
    ("S_IRUSR", 0o400),
    ("S_ISVTX", 0o1000),
    ("S_ISGID", 0o2000),
    ("S_ISUID", 0o4000),
)


def mode_bits(mode: int) -> str:
    """`S_IXOTH|...|S_ISUID`: chmod modes as Falco renders them."""
    return "|".join(name for name, bit in _MODE_BITS if mode & bit)


def octal_mode(mode: int) -> str:
    """Modes of open/mkdir, which Falco renders in octal: `0644`."""
    return "0%o" % mode


def errno_name(res: int) -> str:
    """`SUCCESS` for res >= 0, else the errno name (`ENOENT`), as Falco's evt.res."""
    if res >= 0:
        return "SUCCESS"
    return errno.errorcode.get(-res, str(res))


PTRACE_REQUESTS = {
    0: "PTRACE_TRACEME", 1: "PTRACE_PEEKTEXT", 2: "PTRACE_PEEKDATA", 3: "PTRACE_PEEKUSR",
    4: "PTRACE_POKETEXT", 5: "PTRACE_POKEDATA", 6: "PTRACE_POKEUSR", 7: "PTRACE_CONT",
    8: "PTRACE_KILL", 9: "PTRACE_SINGLESTEP", 12: "PTRACE_GETREGS", 13: "PTRACE_SETREGS",
    14: "PTRACE_GETFPREGS", 15: "PTRACE_SETFPREGS", 16: "PTRACE_ATTACH", 17: "PTRACE_DETACH",
    18: "PTRACE_GETFPXREGS", 19: "PTRACE_SETFPXREGS", 24: "PTRACE_SYSCALL", 30: "PTRACE_ARCH_PRCTL",
    31: "PTRACE_SYSEMU", 32: "PTRACE_SYSEMU_SINGLESTEP", 33: "PTRACE_SINGLEBLOCK",
    0x4200: "PTRACE_SETOPTIONS", 0x4201: "PTRACE_GETEVENTMSG", 0x4202: "PTRACE_GETSIGINFO",
    0x4203: "PTRACE_SETSIGINFO", 0x4204: "PTRACE_GETREGSET", 0x4205: "PTRACE_SETREGSET",
    0x4206: "PTRACE_SEIZE", 0x4207: "PTRACE_INTERRUPT", 0x4208: "PTRACE_LISTEN",
    0x4209: "PTRACE_PEEKSIGINFO", 0x420A: "PTRACE_GETSIGMASK", 0x420B: "PTRACE_SETSIGMASK",
    0x420C: "PTRACE_SECCOMP_GET_FILTER",
}

BPF_COMMANDS = {
    0: "BPF_MAP_CREATE", 1: "BPF_MAP_LOOKUP_ELEM", 2: "BPF_MAP_UPDATE_ELEM", 3: "BPF_MAP_DELETE_ELEM",
    4: "BPF_MAP_GET_NEXT_KEY", 5: "BPF_PROG_LOAD", 6: "BPF_OBJ_PIN", 7: "BPF_OBJ_GET",
    8: "BPF_PROG_ATTACH", 9: "BPF_PROG_DETACH", 10: "BPF_PROG_TEST_RUN", 11: "BPF_PROG_GET_NEXT_ID",
    12: "BPF_MAP_GET_NEXT_ID", 13: "BPF_PROG_GET_FD_BY_ID", 14: "BPF_MAP_GET_FD_BY_ID",
    15: "BPF_OBJ_GET_INFO_BY_FD", 16: "BPF_PROG_QUERY", 17: "BPF_RAW_TRACEPOINT_OPEN",
    18: "BPF_BTF_LOAD", 19: "BPF_BTF_GET_FD_BY_ID", 20: "BPF_TASK_FD_QUERY",
    21: "BPF_MAP_LOOKUP_AND_DELETE_ELEM", 22: "BPF_MAP_FREEZE", 23: "BPF_BTF_GET_NEXT_ID",
    24: "BPF_MAP_LOOKUP_BATCH", 25: "BPF_MAP_LOOKUP_AND_DELETE_BATCH", 26: "BPF_MAP_UPDATE_BATCH",
    27: "BPF_MAP_DELETE_BATCH", 28: "BPF_LINK_CREATE", 29: "BPF_LINK_UPDATE",
    30: "BPF_LINK_GET_FD_BY_ID", 31: "BPF_LINK_GET_NEXT_ID", 32: "BPF_ENABLE_STATS",
    33: "BPF_ITER_CREATE", 34: "BPF_LINK_DETACH", 35: "BPF_PROG_BIND_MAP",
}

SOCKET_FAMILIES = {
    0: "AF_UNSPEC", 1: "AF_UNIX", 2: "AF_INET", 3: "AF_AX25", 4: "AF_IPX", 5: "AF_APPLETALK",
    6: "AF_NETROM", 7: "AF_BRIDGE", 8: "AF_ATMPVC", 9: "AF_X25", 10: "AF_INET6", 11: "AF_ROSE",
    12: "AF_DECnet", 13: "AF_NETBEUI", 14: "AF_SECURITY", 15: "AF_KEY", 16: "AF_NETLINK",
    17: "AF_PACKET", 18: "AF_ASH", 19: "AF_ECONET", 20: "AF_ATMSVC", 21: "AF_RDS", 22: "AF_SNA",
    23: "AF_IRDA", 24: "AF_PPPOX", 25: "AF_WANPIPE", 26: "AF_LLC", 27: "AF_IB", 28: "AF_MPLS",
    29: "AF_CAN", 30: "AF_TIPC", 31: "AF_BLUETOOTH", 32: "AF_IUCV", 33: "AF_RXRPC", 34: "AF_ISDN",
    35: "AF_PHONET", 36: "AF_IEEE802154", 37: "AF_CAIF", 38: "AF_ALG", 39: "AF_NFC", 40: "AF_VSOCK",
    41: "AF_KCM", 42: "AF_QIPCRTR", 43: "AF_SMC", 44: "AF_XDP",
}

CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)


@lru_cache(maxsize=4096)
def capabilities(mask: int) -> str:
    """`CAP_CHOWN CAP_DAC_OVERRIDE ...`: a capability mask as Falco renders it (space separated)."""
    return " ".join(name for bit, name in enumerate(CAPABILITIES) if mask >> bit & 1)


# clone/unshare/setns flags in Falco's clone_flags table order (kernel bit values).
CLONE_FLAGS = (
    ("CLONE_FILES", 0x400), ("CLONE_FS", 0x200), ("CLONE_IO", 0x80000000), ("CLONE_NEWIPC", 0x8000000),
    ("CLONE_NEWNET", 0x40000000), ("CLONE_NEWNS", 0x20000), ("CLONE_NEWPID", 0x20000000), ("CLONE_NEWUTS", 0x4000000),
    ("CLONE_PARENT", 0x8000), ("CLONE_PARENT_SETTID", 0x100000), ("CLONE_PTRACE", 0x2000), ("CLONE_SIGHAND", 0x800),
    ("CLONE_SYSVSEM", 0x40000), ("CLONE_THREAD", 0x10000), ("CLONE_UNTRACED", 0x800000), ("CLONE_VM", 0x100),
    ("CLONE_NEWUSER", 0x10000000), ("CLONE_CHILD_CLEARTID", 0x200000), ("CLONE_CHILD_SETTID", 0x1000000),
    ("CLONE_SETTLS", 0x80000), ("CLONE_VFORK", 0x4000), ("CLONE_NEWCGROUP", 0x2000000),
)
MEMFD_FLAGS = (("MFD_CLOEXEC", 1), ("MFD_ALLOW_SEALING", 2), ("MFD_HUGETLB", 4))
UNLINKAT_FLAGS = (("AT_REMOVEDIR", 0x200),)
PROT_FLAGS = (("PROT_READ", 1), ("PROT_WRITE", 2), ("PROT_EXEC", 4))
SOCKET_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET", 6: "SOCK_DCCP",
                10: "SOCK_PACKET"}


def flag_names(table: tuple[tuple[str, int], ...], value: int, none: str = "") -> str:
    """Names of the bits set, in the table's order, joined by `|` (`none` when no bit is)."""
    names = [name for name, bit in table if value & bit == bit]
    return "|".join(names) if names else none


def socket_type(value: int) -> str:
    names = [SOCKET_TYPES.get(value & 0xF, str(value & 0xF))]
    if value & 0o4000:
        names.append("SOCK_NONBLOCK")
    if value & 0o2000000:
        names.append("SOCK_CLOEXEC")
    return "|".join(names)


def enum_name(table: dict[int, str], value: object) -> str:
    if isinstance(value, int):
        return table.get(value, str(value))
    return str(value)


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str:
    """The host's name for a uid, or the number as text when the uid has no entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError, ValueError):
        return str(uid)


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError, ValueError):
        return str(gid)


@lru_cache(maxsize=4096)
def home_dir(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir
    except (KeyError, OverflowError, ValueError):
        return ""


@lru_cache(maxsize=4096)
def login_shell(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_shell
    except (KeyError, OverflowError, ValueError):
        return ""


def basename(path: str) -> str:
    return os.path.basename(path)
