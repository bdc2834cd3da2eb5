"""Syscall, compat and io_uring records -> Events, from records built with the ABI mirror;
and the syscall table against the system's own syscall numbers."""

from __future__ import annotations

import re
import socket
import struct
from pathlib import Path

import pytest

from sentinel.events import abi, syscalls
from sentinel.events.decode import Decoder
from sentinel.events.model import Process
from sentinel.events.sysdecode import fd_type, parse_sockaddr


class Table:
    """Just enough of the process table."""

    def __init__(self) -> None:
        self.proc = Process(1234, 99, comm="tester", euid=0)
        self.creds = []

    def lookup(self, pid, start_ns=0):
        return self.proc

    def update_creds(self, pid, start_ns, uid=None, euid=None, gid=None, egid=None):
        self.creds.append((uid, euid, gid, egid))
        return self.proc


def record(nr, res=0, args=(0,) * 6, flags=0, fd=-1, tail=(), **fields) -> bytes:
    """A sentinel_sys_event with its tail regions given as (length field, bytes) in tail order."""
    values = dict.fromkeys(abi.SYSCALL.names, 0)
    values.update({"hdr.op": abi.OP_SYSCALL, "hdr.abi": abi.ABI_VERSION, "hdr.pid": 1234, "hdr.tid": 1234,
                   "hdr.start_ns": 99, "hdr.comm": b"tester", "res": res, "nr": nr, "flags": flags, "fd": fd,
                   "args": struct.pack("<6Q", *(a & 0xFFFFFFFFFFFFFFFF for a in args))})  # fmt: skip
    for name in ("hdr.comm", "laddr", "raddr", "bpf_prog_name", "_pad2"):
        values.setdefault(name, b"")
        if values[name] == 0:
            values[name] = b""
    body_tail = b""
    for length_field, data in tail:
        values[length_field] = len(data)
        body_tail += data
    values.update(fields)
    values["hdr.size"] = abi.SYSCALL.size + len(body_tail)
    return abi.SYSCALL.struct.pack(*(values[n] for n in abi.SYSCALL.names)) + body_tail


@pytest.fixture
def table():
    return Table()


@pytest.fixture
def decoder(table):
    return Decoder(table, lambda ns: ns)


def test_successful_open_has_resolved_and_raw_names(decoder):
    data = record(
        257, res=5, args=(-100, 0, 0o1001, 0o644, 0, 0), flags=abi.F_SYS_FD, fd=5,
        fd_mode=0o100644, fd_ino=77, fd_fmode=0x100000,
        tail=(("path_len", b"/tmp/dir/file"), ("str0_len", b"../dir/file\0")),
    )  # fmt: skip
    event = decoder.decode(data)
    assert event.type == "openat" and event.res == 5
    assert list(event.args) == ["fd", "dirfd", "name", "flags", "mode"]
    assert event.args == {"fd": 5, "dirfd": -100, "name": "../dir/file", "flags": 0o1001, "mode": 0o644}
    assert (event.fd.num, event.fd.type, event.fd.name, event.fd.nameraw) == (5, "file", "/tmp/dir/file", "../dir/file")
    assert event.fd.created is True and event.fd.ino == 77


def test_failed_relative_open_is_joined_with_its_base(decoder):
    data = record(2, res=-2, tail=(("str0_len", b"sub/../missing\0"), ("base_len", b"/home/u")))
    event = decoder.decode(data)
    assert event.type == "open" and event.res == -2
    assert (event.fd.num, event.fd.name, event.fd.nameraw) == (-1, "/home/u/missing", "sub/../missing")
    assert event.fd.created is False


def test_ipv4_connect_and_accept_names(decoder):
    sockaddr = struct.pack("<H", socket.AF_INET) + struct.pack(">H", 80) + socket.inet_aton("10.1.2.3") + bytes(8)
    connect = decoder.decode(record(
        42, res=-115, args=(3, 0, 16, 0, 0, 0), flags=abi.F_SYS_FD | abi.F_SYS_SOCK, fd=3, fd_mode=0o140777,
        sock_family=socket.AF_INET, sock_type=1, sock_protocol=6, lport=40000, rport=80,
        laddr=socket.inet_aton("192.168.1.5"), raddr=socket.inet_aton("10.1.2.3"), tail=(("addr_len", sockaddr),),
    ))  # fmt: skip
    assert connect.fd.name == "192.168.1.5:40000->10.1.2.3:80"
    assert (connect.fd.typechar, connect.fd.l4proto, connect.fd.is_server) == ("4", "tcp", False)
    assert connect.args == {"fd": 3, "addr": "10.1.2.3:80"}
    accept = decoder.decode(record(
        288, res=7, args=(3, 0, 0, 0x80000, 0, 0), flags=abi.F_SYS_FD | abi.F_SYS_SOCK, fd=7, fd_mode=0o140777,
        sock_family=socket.AF_INET, sock_type=1, sock_protocol=6, lport=80, rport=40000,
        laddr=socket.inet_aton("10.1.2.3"), raddr=socket.inet_aton("192.168.1.5"),
    ))  # fmt: skip
    assert accept.fd.is_server and accept.fd.name == "192.168.1.5:40000->10.1.2.3:80"
    assert (accept.fd.sip, accept.fd.sport, accept.fd.cip, accept.fd.cport) == ("10.1.2.3", 80, "192.168.1.5", 40000)
    assert accept.args == {"fd": 7, "flags": 0x80000}


def test_udp_sendto_peer_comes_from_the_address_argument(decoder):
    sockaddr = struct.pack("<H", socket.AF_INET6) + struct.pack(">H", 53) + bytes(4) + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + bytes(4)
    event = decoder.decode(record(
        44, res=12, args=(4, 0, 12, 0, 0, 28), flags=abi.F_SYS_FD | abi.F_SYS_SOCK | abi.F_SYS_NAME_CHANGED, fd=4,
        fd_mode=0o140777, sock_family=socket.AF_INET6, sock_type=2, sock_protocol=17, lport=5353,
        tail=(("addr_len", sockaddr),),
    ))  # fmt: skip
    assert event.fd.typechar == "6" and event.fd.l4proto == "udp"
    assert (event.fd.rip, event.fd.rport) == ("2001:db8::1", 53)
    assert event.fd.name == ":::5353->2001:db8::1:53"
    assert event.fd.name_changed is True and event.fd.connected is False
    assert event.args == {"fd": 4, "size": 12, "addr": "2001:db8::1:53"}


def test_setuid_follows_in_the_process_table(decoder, table):
    decoder.decode(record(105, res=0, args=(1000, 0, 0, 0, 0, 0)))
    decoder.decode(record(117, res=0, args=(-1, 1001, -1, 0, 0, 0)))
    decoder.decode(record(105, res=-1, args=(0, 0, 0, 0, 0, 0)))  # failed: nothing changes
    assert table.creds == [(1000, 1000, None, None), (None, 1001, None, None)]


def test_bpf_prog_load_name(decoder):
    event = decoder.decode(record(321, res=9, args=(5, 0, 128, 0, 0, 0), bpf_prog_type=1, bpf_prog_name=b"snt_x"))
    assert event.args == {"cmd": 5, "size": 128, "prog_type": 1, "prog_name": "snt_x"}


def test_compat_and_io_uring_records(decoder):
    header = {"hdr.abi": abi.ABI_VERSION, "hdr.pid": 1234, "hdr.tid": 1234, "hdr.comm": b"x", "hdr.start_ns": 99}

    def pack(layout, op, **fields):
        values = dict.fromkeys(layout.names, 0)
        values.update(header, **{"hdr.op": op, "hdr.size": layout.size}, **fields)
        return layout.struct.pack(*(values[n] for n in layout.names))

    compat = decoder.decode(pack(abi.COMPAT, abi.OP_COMPAT, nr=5, args=struct.pack("<6Q", 0x404040, 0, 0, 0, 0, 0)))
    assert compat.type == "compat_syscall"
    assert (compat.args["nr"], compat.args["name"], compat.args["arg0"]) == (5, "open", 0x404040)
    uring = decoder.decode(pack(abi.IO_URING, abi.OP_IO_URING, opcode=18, user_data=7))
    assert uring.type == "io_uring_submit" and uring.args["op"] == "OPENAT" and uring.args["user_data"] == 7


def test_unknown_syscall_number_is_dropped_not_raised(decoder):
    assert decoder.decode(record(9999)) is None
    assert decoder.dropped == 1


@pytest.mark.parametrize(
    "raw, expected",
    [
        (struct.pack("<H", socket.AF_UNIX) + b"/run/x.sock\0\0\0", (socket.AF_UNIX, "/run/x.sock", 0)),
        (struct.pack("<H", socket.AF_UNIX) + b"\0abstract", (socket.AF_UNIX, "@abstract", 0)),
        (b"\x02", (0, "", 0)),
    ],
)
def test_parse_sockaddr(raw, expected):
    assert parse_sockaddr(raw) == expected


def test_fd_types_from_mode_and_name():
    assert fd_type(0o040755, "/etc", 0) == "directory"
    assert fd_type(0o010600, "", 0) == "pipe"
    assert fd_type(0o100777, "/memfd:x", 0) == "memfd"
    assert fd_type(0o600, "/[eventfd]", 0) == "event"
    assert fd_type(0o140777, "", socket.AF_UNIX) == "unix"


UNISTD_64 = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


def test_syscall_numbers_match_the_system_headers():
    defined = dict(
        (name, int(nr)) for name, nr in re.findall(r"#define __NR_(\w+) (\d+)", UNISTD_64.read_text())
    )
    checked = 0
    for spec in syscalls.SYSCALLS:
        # the tracepoint is named after the kernel function (umount), the number after the syscall
        name = spec.name if spec.name == "umount2" else spec.tracepoint or spec.name
        if name in defined:  # headers older than the syscall (fchmodat2) do not define it
            assert defined[name] == spec.nr, spec.name
            checked += 1
    assert checked >= len(syscalls.SYSCALLS) - 2


def test_every_descriptor_fits_the_c_struct():
    for spec in syscalls.SYSCALLS:
        fields = spec.descriptor()
        packed = abi.SYS_DESC.struct.pack(*(fields[n] for n in abi.SYS_DESC.names))
        assert len(packed) == abi.SYS_DESC.size
        assert all(0 <= i <= 6 for i in spec.string_args)
    assert syscalls.BY_NR[257].descriptor()["dirfd_arg"] == 1
    assert syscalls.BY_NR[44].descriptor()["addr_arg"] == 5 and syscalls.BY_NR[44].descriptor()["addr_len_arg"] == 6


@pytest.mark.parametrize(
    "nr, res, args, expected",
    [
        (33, 9, (3, 9, 0, 0, 0, 0), [("fd", 9), ("oldfd", 3), ("newfd", 9)]),  # dup2: the result fd first
        (288, 7, (3, 0, 0, 0x800, 0, 0), [("fd", 7), ("flags", 0x800)]),  # accept4
        (2, -2, (0, 0o100, 0o600, 0, 0, 0), [("fd", -2), ("name", ""), ("flags", 0o100), ("mode", 0o600)]),  # open
        (83, 0, (0, 0o755, 0, 0, 0, 0), [("path", ""), ("mode", 0o755)]),  # mkdir: no fd argument
    ],
)
def test_argument_order_puts_a_result_fd_first(decoder, nr, res, args, expected):
    event = decoder.decode(record(nr, res=res, args=args))
    assert list(event.args.items()) == expected
