"""Syscall records (file, network, privilege) and blind-spot records -> Events.

The kernel sends one generic record per traced syscall (abi.SYSCALL); which argument is a
path or a sockaddr, and its Falco name, comes from sentinel.events.syscalls. The fd the
event acts on (argument or result) was resolved in the kernel at the time of the event; its
path arrives root first. A failed call on a relative path also carries the directory it was
relative to (cwd or dirfd), so fd.name is absolute even when nothing was opened.
"""

from __future__ import annotations

import ipaddress
import posixpath
import socket
import struct
from typing import TYPE_CHECKING, Any

from sentinel.events import abi
from sentinel.events.model import Event, Fd
from sentinel.events.syscalls import BY_NR, I386_NAMES, ioring_op_name

if TYPE_CHECKING:
    from sentinel.events.decode import Decoder

_SYSCALL, _SYSCALL_SIZE = abi.SYSCALL.struct.unpack_from, abi.SYSCALL.size
_COMPAT = abi.COMPAT.struct.unpack_from
_IO_URING = abi.IO_URING.struct.unpack_from
_ARGS = struct.Struct("<6Q").unpack_from
_FAMILY = struct.Struct("<H").unpack_from
_PORT = struct.Struct(">H").unpack_from

FMODE_CREATED = 0x100000
IPPROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp", 255: "raw", 132: "sctp"}
SOCK_RAW = 3
_FD_FAMILIES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6", socket.AF_UNIX: "unix", 16: "netlink"}
# Anonymous-inode files, by the name the kernel gives their dentry.
_ANON_TYPES = (
    ("eventfd", "event"),
    ("eventpoll", "eventpoll"),
    ("signalfd", "signalfd"),
    ("timerfd", "timerfd"),
    ("inotify", "inotify"),
    ("bpf", "bpf"),
    ("userfaultfd", "userfaultfd"),
    ("io_uring", "io_uring"),
    ("pidfd", "pidfd"),
)
_SERVER_TYPES = frozenset({"accept", "accept4", "listen"})
_ADDR_PEER_TYPES = frozenset({"connect", "sendto", "sendmsg"})
_SIGNED_ARGS = frozenset({"dirfd", "olddirfd", "newdirfd", "olddir", "newdir", "linkdirfd", "fd", "oldfd", "newfd",
                          "pid", "tid", "uid", "gid", "ruid", "euid", "suid", "rgid", "egid", "sgid", "pidfd"})  # fmt: skip


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstring(data: bytes, start: int, length: int) -> str:
    return _text(data[start : start + length].split(b"\0", 1)[0])


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def parse_sockaddr(raw: bytes) -> tuple[int, str, int]:
    """(family, address, port) of a struct sockaddr; unix paths as the address ("@x": abstract)."""
    if len(raw) < 2:
        return 0, "", 0
    (family,) = _FAMILY(raw)
    if family == socket.AF_INET and len(raw) >= 8:
        return family, socket.inet_ntop(socket.AF_INET, raw[4:8]), _PORT(raw, 2)[0]
    if family == socket.AF_INET6 and len(raw) >= 24:
        return family, str(ipaddress.IPv6Address(raw[8:24])), _PORT(raw, 2)[0]
    if family == socket.AF_UNIX:
        path = raw[2:]
        if path[:1] == b"\0":
            return family, "@" + _text(path[1:].rstrip(b"\0")), 0
        return family, _text(path.split(b"\0", 1)[0]), 0
    return family, "", 0


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return str(ipaddress.IPv6Address(raw))


_S_IFMT, _S_IFREG, _S_IFDIR, _S_IFSOCK = 0o170000, 0o100000, 0o040000, 0o140000
_SIMPLE_TYPES = {0o040000: "directory", 0o010000: "pipe", 0o020000: "file", 0o060000: "file", 0o120000: "file"}


def fd_type(mode: int, path: str, family: int) -> str:
    """Falco's fd.type from the inode mode (and the socket family or anon-inode name)."""
    kind = mode & _S_IFMT
    if kind == _S_IFREG:
        return "memfd" if path.startswith("/memfd:") else "file"
    simple = _SIMPLE_TYPES.get(kind)
    if simple is not None:
        return simple
    if kind == _S_IFSOCK:
        return _FD_FAMILIES.get(family, "socket")
    for marker, name in _ANON_TYPES:  # anonymous inodes: no file type bits
        if marker in path:
            return name
    return "file"


def _socket_name(fd: Fd) -> str:
    if fd.type == "unix":
        return fd.name
    if fd.type == "ipv6":
        return "%s:%d->%s:%d" % (fd.cip, fd.cport, fd.sip, fd.sport)
    return "%s:%d->%s:%d" % (fd.cip, fd.cport, fd.sip, fd.sport)


_NUMBER, _SIGNED, _STRING = 0, 1, 2


def _arg_plan(spec) -> tuple[tuple[int, str, int], ...]:
    """(index, Falco name, how to read it) of the reported arguments, computed once per syscall."""
    plan = []
    for index, arg in enumerate(spec.args):
        name, _, kind = arg.partition(":")
        if name == "-" or kind in ("addr", "msg", "addrlen"):
            continue  # a sockaddr is reported as "addr", from its bytes
        plan.append((index, name, _STRING if kind == "s" else _SIGNED if name in _SIGNED_ARGS else _NUMBER))
    return tuple(plan)


_FD_RESULT_TYPES = frozenset({"dup", "dup2", "dup3", "accept", "accept4", "socket", "memfd_create", "userfaultfd",
                              "io_uring_setup", "pidfd_open", "pidfd_getfd"})  # fmt: skip


class _Plan:
    """What decoding a record of one syscall needs to know about it, computed once."""

    __slots__ = ("spec", "args", "is_open", "open_without_fd", "fd_first", "capset", "pidfd", "sets_creds")

    def __init__(self, spec) -> None:
        self.spec = spec
        self.args = _arg_plan(spec)
        self.is_open = bool(spec.flags & abi.DESC_OPEN)
        self.open_without_fd = self.is_open and bool(spec.string_args)  # a failed open still names a file
        # the result is an fd: Falco lists it first among the arguments
        self.fd_first = spec.name in _FD_RESULT_TYPES or self.is_open
        self.capset = bool(spec.flags & abi.DESC_CAPSET)
        self.pidfd = bool(spec.flags & abi.DESC_PIDFD)
        self.sets_creds = spec.name.startswith("set") and spec.name[3:] in _CRED_CHANGES


_F_SYS_FD, _F_SYS_SOCK, _F_SYS_NAME_CHANGED = abi.F_SYS_FD, abi.F_SYS_SOCK, abi.F_SYS_NAME_CHANGED
_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def decode_syscall(decoder: Decoder, data: bytes) -> Event | None:
    (
        _op, _abi, _size, boot_ns, start_ns, _cgroup_id, pid, tid, _cpu, _pad, comm,
        res, raw_args, nr, flags, fd_num, fd_mode, fd_ino, fd_dev, fd_fmode, fd_oflags, bpf_prog_type,
        sock_family, sock_type, sk_protocol, lport, rport, _sk_state, _pad1, laddr, raddr, bpf_prog_name,
        str0_len, str1_len, path_len, base_len, addr_len, unix_len, str2_len, _pad2, target_pid, _pad3,
    ) = _SYSCALL(data)  # fmt: skip
    plan = _PLANS.get(nr)
    if plan is None:
        raise ValueError("syscall record for untraced syscall %d" % nr)
    values = _ARGS(raw_args)
    position = _SYSCALL_SIZE
    path = _text(data[position : position + path_len]) if path_len else ""
    position += path_len
    unix_raw = data[position : position + unix_len]
    position += unix_len
    strings = []
    for length in (str0_len, str1_len, str2_len):
        if length:
            strings.append(_cstring(data, position, length))
            position += length
    base = _text(data[position : position + base_len]) if base_len else ""
    position += base_len
    addr_raw = data[position : position + addr_len]

    args: dict[str, Any] = {"fd": res} if plan.fd_first else {}
    first_string = strings[0] if strings else None
    string_index = 0
    for index, arg_name, kind in plan.args:
        if kind == _STRING:
            args[arg_name] = strings[string_index] if string_index < len(strings) else ""
            string_index += 1
        elif kind == _SIGNED:
            args[arg_name] = _signed32(values[index])
        else:
            args[arg_name] = values[index]
    event_type = plan.spec.name

    fd = None
    if flags & _F_SYS_FD:
        kind = fd_type(fd_mode, path, sock_family)
        if not path.strip("/"):
            path = _pseudo_name(kind, event_type, values, fd_ino)
        fd = Fd(fd_num, kind, path)
        fd.ino = fd_ino
        fd.dev = fd_dev
        fd.open_flags = fd_oflags
        if flags & _F_SYS_SOCK:
            _fill_socket(fd, event_type, flags, sock_family, sock_type, sk_protocol, lport, rport, laddr, raddr, unix_raw)
    elif first_string is not None and plan.open_without_fd:
        fd = Fd(-1, "file", "")
    if fd is not None and first_string is not None and fd.type in ("file", "directory", "memfd"):
        fd.nameraw = first_string
        if not fd.name:
            fd.name = _joined(base, first_string)
    if plan.is_open:
        fd_created = bool(fd_fmode & FMODE_CREATED) and res >= 0
        if fd is not None:
            fd.created = fd_created
            fd.open_flags = args.get("flags", fd.open_flags)
    if addr_raw:
        family, address, port = parse_sockaddr(addr_raw)
        args["addr"] = "%s:%d" % (address, port) if family in _INET_FAMILIES else address
        if fd is not None and event_type in _ADDR_PEER_TYPES and family in _INET_FAMILIES:
            if not fd.rport or event_type != "connect":
                fd.rip, fd.rport = address, port
                fd.name = _socket_name(fd)
        elif fd is not None and family == socket.AF_UNIX and not fd.name:
            fd.name = address
        if flags & _F_SYS_NAME_CHANGED and fd is not None:
            fd.name_changed = True
    if event_type == "bpf" and values[0] == 5:  # BPF_PROG_LOAD
        args["prog_type"] = bpf_prog_type
        args["prog_name"] = _text(bpf_prog_name.split(b"\0", 1)[0])
    if plan.pidfd and "pid" not in args:
        args["pid"] = target_pid or -1  # the pidfd's process, resolved in the kernel at the event

    proc = decoder._process(pid, start_ns, tid, comm)
    if plan.capset:
        # Falco's capset arguments: the sets the caller asked for (its own, once the call succeeded)
        args["cap_inheritable"], args["cap_permitted"], args["cap_effective"] = values[4], values[3], values[2]
        if res == 0:
            proc.cap_effective, proc.cap_permitted, proc.cap_inheritable = values[2], values[3], values[4]
    if res == 0 and plan.sets_creds:
        proc = _apply_creds(decoder, proc, event_type, args)
    # positional: a keyword call costs ~80 ns more, on every record
    return Event(event_type, proc, res, args, fd, boot_ns, decoder.boot_to_utc_ns(boot_ns), tid)


_NAMESPACES = ((0x00020000, "mnt"), (0x02000000, "cgroup"), (0x04000000, "uts"), (0x08000000, "ipc"),
               (0x10000000, "user"), (0x20000000, "pid"), (0x40000000, "net"), (0x00000080, "time"))  # fmt: skip


def _pseudo_name(kind: str, event_type: str, values: tuple[int, ...], ino: int) -> str:
    """The name the kernel generates for a file without a path (d_dname): pipe:[ino], net:[ino]."""
    if event_type == "setns":
        names = [name for bit, name in _NAMESPACES if values[1] & bit]
        return "%s:[%d]" % (names[0] if len(names) == 1 else "ns", ino)
    return "%s:[%d]" % (kind if kind == "pipe" else "anon_inode", ino)


def _joined(base: str, raw: str) -> str:
    if raw.startswith("/") or not base:
        return posixpath.normpath(raw) if raw.startswith("/") else raw
    return posixpath.normpath(base.rstrip("/") + "/" + raw)


def _fill_socket(fd, event_type, flags, family, sock_type, protocol, lport, rport, laddr, raddr, unix_raw) -> None:
    fd.family = family
    fd.l4proto = "raw" if sock_type == SOCK_RAW else IPPROTO_NAMES.get(protocol, "")
    fd.connected = bool(flags & abi.F_SYS_CONNECTED)
    fd.is_server = event_type in _SERVER_TYPES or bool(flags & abi.F_SYS_LISTENING)
    if family in (socket.AF_INET, socket.AF_INET6):
        fd.lip = _address(family, laddr)
        fd.rip = _address(family, raddr)
        fd.lport = lport
        fd.rport = rport
        fd.name = _socket_name(fd)
    elif family == socket.AF_UNIX:
        fd.name = parse_sockaddr(unix_raw)[1] if unix_raw else ""
        fd.l4proto = ""
    else:
        fd.name = ""


_CRED_CHANGES = frozenset({"uid", "gid", "reuid", "regid", "resuid", "resgid"})


def _apply_creds(decoder: Decoder, proc, event_type: str, args: dict[str, Any]):
    """Follow a successful setuid-family call in the process table (-1: unchanged)."""
    update = getattr(decoder.table, "update_creds", None)
    if update is None:
        return proc

    def given(name: str) -> int | None:
        value = args.get(name)
        return None if value is None or value == -1 else value & 0xFFFFFFFF

    if event_type == "setuid":
        uid = given("uid")
        privileged = proc.euid == 0
        return update(proc.pid, proc.start_ns, uid=uid if privileged else None, euid=uid)
    if event_type == "setgid":
        gid = given("gid")
        privileged = proc.euid == 0
        return update(proc.pid, proc.start_ns, gid=gid if privileged else None, egid=gid)
    if event_type in ("setreuid", "setresuid"):
        return update(proc.pid, proc.start_ns, uid=given("ruid"), euid=given("euid"))
    return update(proc.pid, proc.start_ns, gid=given("rgid"), egid=given("egid"))


def decode_compat(decoder: Decoder, data: bytes) -> Event:
    (
        _op, _abi, _size, boot_ns, start_ns, _cgroup_id, pid, tid, _cpu, _pad, comm,
        raw_args, nr, _pad2,
    ) = _COMPAT(data)  # fmt: skip
    proc = decoder._process(pid, start_ns, tid, comm)
    args = {"nr": nr, "name": I386_NAMES.get(nr, "")}
    args.update(("arg%d" % i, value) for i, value in enumerate(_ARGS(raw_args)))
    return Event("compat_syscall", proc, res=0, args=args, boot_ns=boot_ns, time_ns=decoder.boot_to_utc_ns(boot_ns), tid=tid)


def decode_io_uring(decoder: Decoder, data: bytes) -> Event:
    (
        _op, _abi, _size, boot_ns, start_ns, _cgroup_id, pid, tid, _cpu, _pad, comm,
        user_data, req_flags, opcode, sq_thread,
    ) = _IO_URING(data)  # fmt: skip
    proc = decoder._process(pid, start_ns, tid, comm)
    args = {
        "opcode": opcode,
        "op": ioring_op_name(opcode),
        "user_data": user_data,
        "flags": req_flags,
        "sq_thread": bool(sq_thread),
    }
    return Event("io_uring_submit", proc, res=0, args=args, boot_ns=boot_ns, time_ns=decoder.boot_to_utc_ns(boot_ns), tid=tid)


_PLANS = {nr: _Plan(spec) for nr, spec in BY_NR.items()}
