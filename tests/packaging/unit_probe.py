"""What the agent does with its privileges, each tried once; prints one JSON object.

Run by test_systemd_unit.py under the unit's capability bounding set and its
MemoryDenyWriteExecute filter, to show the unit grants what the sensors need:

  exec_event     compile and load a tracepoint program with bcc (CAP_BPF, CAP_PERFMON),
                 see a child's exec through a ring buffer (a ctypes callback: W^X safe?)
  cgroup_attach  attach an allow-all cgroup/connect4 program to the cgroup2 root, as the
                 agent does, and detach it at once (CAP_NET_ADMIN)
  proc_exe       readlink /proc/<pid>/exe of a more privileged process, the pid given as
                 the only argument (CAP_SYS_PTRACE)
  fanotify_perm  fanotify_init(FAN_CLASS_CONTENT), used to deny exec/open (CAP_SYS_ADMIN)
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from typing import Callable

EXEC_PROGRAM = r"""
BPF_RINGBUF_OUTPUT(sentinel_probe_events, 8);
TRACEPOINT_PROBE(sched, sched_process_exec) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    sentinel_probe_events.ringbuf_output(&pid, sizeof(pid), 0);
    return 0;
}
"""

CONNECT_PROGRAM = r"""
int sentinel_probe_connect4(struct bpf_sock_addr *ctx) { return 1; }
"""

BPF_F_ALLOW_MULTI = 2
FAN_CLASS_CONTENT = 0x4
FAN_CLOEXEC = 0x1


def exec_event() -> str:
    from sentinel.kernel import headers

    program = headers.load_bpf(EXEC_PROGRAM)
    try:
        seen: list[int] = []

        def on_event(_ctx: object, data: int, _size: int) -> None:
            seen.append(ctypes.cast(data, ctypes.POINTER(ctypes.c_uint32))[0])

        program["sentinel_probe_events"].open_ring_buffer(on_event)
        child = subprocess.run(["/bin/true"], check=True)
        del child
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            program.ring_buffer_poll(100)
        return "exec seen" if seen else "no event"
    finally:
        program.cleanup()


def _cgroup2_mount() -> str:
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            before, _sep, after = line.partition(" - ")
            if after.split()[0] == "cgroup2":
                return before.split()[4]
    raise RuntimeError("no cgroup2 mount")


def cgroup_attach() -> str:
    from bcc import BPF, BPFAttachType

    from sentinel.kernel import headers

    program = headers.load_bpf(CONNECT_PROGRAM)
    try:
        function = program.load_func(
            "sentinel_probe_connect4", BPF.CGROUP_SOCK_ADDR, attach_type=BPFAttachType.CGROUP_INET4_CONNECT
        )
        descriptor = os.open(_cgroup2_mount(), os.O_RDONLY | os.O_DIRECTORY)
        try:
            program.attach_func(function, descriptor, BPFAttachType.CGROUP_INET4_CONNECT, BPF_F_ALLOW_MULTI)
            program.detach_func(function, descriptor, BPFAttachType.CGROUP_INET4_CONNECT)
        finally:
            os.close(descriptor)
        return "attached and detached"
    finally:
        program.cleanup()


def proc_exe() -> str:
    return os.readlink("/proc/%d/exe" % int(sys.argv[1]))


def fanotify_perm() -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, os.O_RDONLY)
    if descriptor < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    os.close(descriptor)
    return "permission group created"


PROBES: dict[str, Callable[[], str]] = {
    "exec_event": exec_event,
    "cgroup_attach": cgroup_attach,
    "proc_exe": proc_exe,
    "fanotify_perm": fanotify_perm,
}


def main() -> None:
    results = {}
    for name, probe in PROBES.items():
        try:
            results[name] = {"ok": True, "detail": probe()}
        except Exception as exc:  # every failure is a result to report, not a crash
            results[name] = {"ok": False, "detail": "%s: %s" % (type(exc).__name__, exc)}
        if results[name]["detail"] == "no event":
            results[name]["ok"] = False
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
