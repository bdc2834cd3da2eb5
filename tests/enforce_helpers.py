"""What the real-kernel enforcement tests (tests/enforce on this host, tests/lsm in the guest)
share: this kernel's mechanisms, polling, dual-stack sockets, and children started as another
uid or in a cgroup."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

# This kernel's fallbacks (BPF LSM programs do not load here).
MECHANISMS = {
    "deny_exec": ("fanotify", "kill-at-exec"),
    "deny_open": ("fanotify", "kill-at-open"),
    "deny_connect": ("cgroup-sock-addr",),
    "kill": ("bpf-send-signal",),
}


def eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll `check` until it is true or `seconds` pass (the enforcer's backstop refresh is
    30 s away, so a pass within a few seconds is inotify's doing)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def entering(uid: int | None = None, cgroup: str | None = None) -> Callable[[], None]:
    """A preexec_fn that moves the child into `cgroup` (a directory under the cgroup2
    mount), then drops to `uid`: in that order, as root may write cgroup.procs."""

    def before_exec() -> None:
        if cgroup is not None:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write("0")
        if uid is not None:
            os.setgid(uid)
            os.setuid(uid)

    return before_exec


def dual_stack_socket(kind: str) -> socket.socket:
    """A socket on a fresh port of :: that IPv4 peers reach too (as ::ffff:127.0.0.1); a TCP
    one listens."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 0))
    if kind == "tcp":
        s.listen(16)
    return s
