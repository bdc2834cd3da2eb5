"""Compile and load sentinel's BPF object: the one function that turns bpf/*.c into a bcc.BPF.

Kernel differences are handled by SENTINEL_HAVE_* macros that sentinel.kernel.headers
probes from the running kernel's BTF (never from its version) and passes as cflags, so the
same C builds on kernels with real headers (Debian 6.1) and on header-less ones.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path

from sentinel.errors import KernelError
from sentinel.kernel import probe
from sentinel.log import get_logger

log = get_logger("sentinel.kernel.loader")

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
# bpf/ sits beside the package in a checkout and under /usr/share in a .deb install.
_BPF_DIR_CANDIDATES = (_PACKAGE_DIR.parent / "bpf", Path("/usr/share/sentinel/bpf"))
# The BPF sources compiled into sentinel's one object (they share maps and the ring buffer).
# The shared helpers come first and are part of the main text, not #included: bcc rewrites
# map calls (`map.lookup()`) and finds programs only in its main file.
SOURCES = ("include/sentinel_common.h", "process.bpf.c", "syscalls.bpf.c", "blind.bpf.c")


def bpf_dir() -> Path:
    for candidate in _BPF_DIR_CANDIDATES:
        if (candidate / "include" / "sentinel_events.h").is_file():
            return candidate
    raise KernelError("BPF sources not found (looked in %s)" % ", ".join(map(str, _BPF_DIR_CANDIDATES)))


BTF_PATH = "/sys/kernel/btf/vmlinux"
# Offsets of members of structs that are private to the kernel (never in its headers), read
# from BTF and passed as -D<macro>=<bytes>; the C side skips what has no macro.
BTF_MEMBER_OFFSETS = (
    ("SENTINEL_MOUNT_OFF_MNT", "mount", "mnt"),
    ("SENTINEL_MOUNT_OFF_PARENT", "mount", "mnt_parent"),
    ("SENTINEL_MOUNT_OFF_MOUNTPOINT", "mount", "mnt_mountpoint"),
    ("SENTINEL_OVL_OFF_VFS_INODE", "ovl_inode", "vfs_inode"),
    ("SENTINEL_OVL_OFF_UPPERDENTRY", "ovl_inode", "__upperdentry"),
)
_BTF_HEADER = struct.Struct("<HBBIIIII")
_BTF_TYPE = struct.Struct("<III")
_BTF_MEMBER = struct.Struct("<III")
_BTF_STRUCT = 4
# Bytes after the 12-byte common part of a BTF type: fixed by kind, plus per vlen entry.
_BTF_EXTRA = {1: 4, 3: 12, 14: 4, 17: 4}
_BTF_PER_VLEN = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}


def btf_member_offsets(wanted: dict[str, set[str]], btf_path: str = BTF_PATH) -> dict[tuple[str, str], int]:
    """Byte offsets of `wanted` {struct: {member}} in raw BTF, in one pass over its types.

    A small reader instead of `bpftool -j btf dump` (17 MB of JSON, ~1 s) because it runs
    at every start. Bitfield members are not supported (none is needed).
    """
    try:
        with open(btf_path, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, _str_len = _BTF_HEADER.unpack_from(data)
    if magic != 0xEB9F:
        raise KernelError("%s is not BTF (magic %#x)" % (btf_path, magic))
    strings = hdr_len + str_off

    def name_at(offset: int) -> str:
        start = strings + offset
        return data[start : data.index(b"\0", start)].decode()

    names = {name.encode() + b"\0": name for name in wanted}
    found: dict[tuple[str, str], int] = {}
    position, end = hdr_len + type_off, hdr_len + type_off + type_len
    remaining = set(wanted)
    while position < end and remaining:
        name_off, info, _size = _BTF_TYPE.unpack_from(data, position)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        body = position + 12
        position = body + _BTF_EXTRA.get(kind, 0) + _BTF_PER_VLEN.get(kind, 0) * vlen
        if kind != _BTF_STRUCT:
            continue
        struct_name = names.get(data[strings + name_off : strings + name_off + 64].split(b"\0", 1)[0] + b"\0")
        if struct_name not in remaining:
            continue
        remaining.discard(struct_name)
        bitfield_offsets = info >> 31  # kflag: offsets carry a bitfield size in the top byte
        for i in range(vlen):
            member_name_off, _type, offset = _BTF_MEMBER.unpack_from(data, body + 12 * i)
            member = name_at(member_name_off)
            if member in wanted[struct_name]:
                found[(struct_name, member)] = (offset & 0xFFFFFF if bitfield_offsets else offset) // 8
    return found


def private_layout_defines(btf_path: str = BTF_PATH) -> dict[str, int]:
    """BTF_MEMBER_OFFSETS resolved on this kernel (missing structs simply absent)."""
    wanted: dict[str, set[str]] = {}
    for _macro, struct_name, member in BTF_MEMBER_OFFSETS:
        wanted.setdefault(struct_name, set()).add(member)
    offsets = btf_member_offsets(wanted, btf_path)
    return {macro: offsets[(s, m)] for macro, s, m in BTF_MEMBER_OFFSETS if (s, m) in offsets}


TRACEFS = "/sys/kernel/tracing"
# Tracepoint fields whose offsets moved between kernels: read from the tracepoint's format
# file and passed as -D<macro>=<bytes>; the C side compiles the program empty without them.
TRACEPOINT_FIELD_OFFSETS = (
    ("SENTINEL_IOU_OFF_OPCODE", "io_uring/io_uring_submit_req", "opcode"),
    ("SENTINEL_IOU_OFF_USER_DATA", "io_uring/io_uring_submit_req", "user_data"),
    ("SENTINEL_IOU_OFF_FLAGS", "io_uring/io_uring_submit_req", "flags"),
    ("SENTINEL_IOU_OFF_SQ_THREAD", "io_uring/io_uring_submit_req", "sq_thread"),
)


def tracepoint_field_offsets(event: str, tracefs: str = TRACEFS) -> dict[str, int]:
    """{field: offset} of a tracepoint's format file; {} when the tracepoint does not exist."""
    try:
        text = Path(tracefs, "events", event, "format").read_text()
    except OSError:
        return {}
    offsets = {}
    for line in text.splitlines():
        parts = dict(p.strip().split(":", 1) for p in line.split(";") if ":" in p)
        declaration, offset = parts.get("field"), parts.get("offset")
        if declaration and offset:
            offsets[declaration.split()[-1].split("[")[0]] = int(offset)
    return offsets


def tracepoint_layout_defines(tracefs: str = TRACEFS) -> dict[str, int]:
    """TRACEPOINT_FIELD_OFFSETS resolved on this kernel (missing tracepoints simply absent)."""
    defines = {}
    formats: dict[str, dict[str, int]] = {}
    for macro, event, name in TRACEPOINT_FIELD_OFFSETS:
        if event not in formats:
            formats[event] = tracepoint_field_offsets(event, tracefs)
        if name in formats[event]:
            defines[macro] = formats[event][name]
    return defines


@dataclass(frozen=True)
class LoadedObject:
    bpf: object  # bcc.BPF
    compile_seconds: float
    cflags: tuple[str, ...]


def compose_sources(sources: tuple[str, ...], directory: Path) -> str:
    """One compilation unit from several bpf/*.bpf.c files.

    bcc only rewrites map calls and finds programs in its main file (not in #included
    files), so the files are joined; `#line` keeps compiler errors pointing at the real file.
    """
    parts = []
    for source in sources:
        path = directory / source
        parts.append('#line 1 "%s"\n%s' % (path, path.read_text()))
    return "\n".join(parts)


def load_object(sources: tuple[str, ...] = SOURCES, defines: dict[str, int] | None = None) -> LoadedObject:
    """Compile bpf/<sources> as one object with the feature macros and `defines`.

    Nothing is attached: the sensor attaches the programs its interest needs.
    """
    try:
        probe.ensure_kernel_filesystems()  # bcc attaches tracepoints through tracefs
    except OSError as exc:
        raise KernelError("cannot mount the kernel filesystems BPF needs: %s" % exc) from None
    directory = bpf_dir()
    defines = {**private_layout_defines(), **tracepoint_layout_defines(), **(defines or {})}
    cflags = (
        "-I%s" % (directory / "include"),
        "-I%s" % directory,
        "-Wno-unused-function",
        *("-D%s=%d" % item for item in sorted(defines.items())),
    )
    text = compose_sources(sources, directory)
    started = time.monotonic()
    bpf = compile_text(text, cflags)
    elapsed = time.monotonic() - started
    log.debug("bpf.compiled", sources=sources, seconds=round(elapsed, 3))
    return LoadedObject(bpf=bpf, compile_seconds=elapsed, cflags=cflags)


def compile_text(text: str, cflags: tuple[str, ...] | list[str]):
    """bcc.BPF(text=...) through sentinel.kernel.headers (real headers or the BTF tree, plus
    the SENTINEL_HAVE_* feature macros); bcc's bare exceptions become KernelError."""
    from sentinel.kernel import headers

    try:
        return headers.load_bpf(text, cflags=list(cflags))
    except KernelError:
        raise
    except Exception as exc:  # bcc raises bare Exception on compile/load failure
        raise KernelError("BPF program failed to compile or load: %s" % exc) from None
