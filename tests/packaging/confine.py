"""Run a command under the confinement sentinel.service asks systemd for, without systemd.

    python confine.py [--deny NAME,NAME...] -- COMMAND [ARG...]

Sets no_new_privs (NoNewPrivileges=yes) and installs the seccomp filter systemd builds for
MemoryDenyWriteExecute=yes (mmap with PROT_WRITE|PROT_EXEC, and mprotect, pkey_mprotect or
shmat asking for execute rights, fail with EPERM) and for a SystemCallFilter= deny list
with SystemCallErrorNumber=EPERM (the named system calls fail with EPERM), then execs
COMMAND. The capability bounding set is applied around this by `setpriv`. The filter is
x86_64 only; syscall numbers come from the kernel's uapi header.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import struct
import sys

PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
AUDIT_ARCH_X86_64 = 0xC000003E
# x86_64 syscall numbers
SYS_MMAP, SYS_MPROTECT, SYS_SHMAT, SYS_PKEY_MPROTECT = 9, 10, 30, 329

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1

# classic BPF opcodes
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
RET_K = 0x06  # BPF_RET | BPF_K

# struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6] (low word first on x86_64)
OFFSET_NR, OFFSET_ARCH = 0, 4


def _arg_low(index: int) -> int:
    return 16 + 8 * index


def _block(number: int, test: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """If nr == number: run `test`, which jumps over the next instruction to deny, else
    allows; any other nr skips the whole block."""
    body = [*test, (RET_K, 0, 0, SECCOMP_RET_ALLOW), (RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM)]
    return [(JEQ_K, 0, len(body), number), *body]


UNISTD_64 = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"


def syscall_numbers(header: str = UNISTD_64) -> dict[str, int]:
    numbers = {}
    with open(header) as text:
        for line in text:
            match = re.match(r"#define __NR_(\w+)\s+(\d+)", line)
            if match:
                numbers[match.group(1)] = int(match.group(2))
    return numbers


def mdwe_filter(denied: tuple[int, ...] = ()) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions; jumps are relative to the next one."""
    program = [
        (LD_W_ABS, 0, 0, OFFSET_ARCH),
        (JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (RET_K, 0, 0, SECCOMP_RET_ALLOW),  # a foreign arch: not ours to judge
        (LD_W_ABS, 0, 0, OFFSET_NR),
    ]
    for number in denied:
        program += [(JEQ_K, 0, 1, number), (RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM)]
    # mmap(addr, len, prot, ...): prot & (W|X) == W|X
    program += _block(
        SYS_MMAP,
        [
            (LD_W_ABS, 0, 0, _arg_low(2)),
            (AND_K, 0, 0, PROT_WRITE | PROT_EXEC),
            (JEQ_K, 1, 0, PROT_WRITE | PROT_EXEC),
        ],
    )
    # mprotect/pkey_mprotect(addr, len, prot): prot has X; shmat(id, addr, flags): SHM_EXEC.
    for number, bit in ((SYS_MPROTECT, PROT_EXEC), (SYS_PKEY_MPROTECT, PROT_EXEC), (SYS_SHMAT, SHM_EXEC)):
        program += _block(number, [(LD_W_ABS, 0, 0, _arg_low(2)), (JSET_K, 1, 0, bit)])
    program.append((RET_K, 0, 0, SECCOMP_RET_ALLOW))
    return program


def install(denied: tuple[int, ...] = ()) -> None:
    if platform.machine() != "x86_64":
        raise SystemExit("confine: the MemoryDenyWriteExecute filter is written for x86_64")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    program = mdwe_filter(denied)
    raw = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program), ctypes.addressof(buffer))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main(argv: list[str]) -> None:
    options, command = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    names = options[options.index("--deny") + 1].split(",") if "--deny" in options else []
    numbers = syscall_numbers()
    # names of other architectures' calls (e.g. clock_settime64) have no number here
    install(tuple(sorted({numbers[name] for name in names if name in numbers})))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
