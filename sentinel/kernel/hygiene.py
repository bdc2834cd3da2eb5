"""Recognising sentinel's own BPF objects, and removing what a dead agent left behind.

Naming convention (binding for every C program and map sentinel loads):
    every C function that becomes a BPF program, and every map, is named `snt_<what>`,
    e.g. `snt_exec`, `snt_connect4`, `snt_events`.
The kernel keeps 15 characters of an object name (BPF_OBJ_NAME_LEN - 1). bpftool shows
the full program name (it reads the BTF function name bcc provides) but a truncated map
name (`snt_deny_exec_b`), so the short `snt_` prefix is what stays recognisable in both
and leaves 11 characters to tell objects apart. bcc's LSM_PROBE/TRACEPOINT_PROBE macros
generate names without the prefix: write plain functions and attach them explicitly
(bcc still derives tracepoint argument structs from the parameter type). BPF LSM
programs are the exception (bcc names them after the hook to find its BTF id): they are
BPF links, gone with the process, so they can never be leftovers.

What outlives the agent: programs attached to cgroups with the legacy attach call
(bcc's attach_func), and objects pinned under PIN_DIR. `cleanup_leftovers()` removes
exactly those, and only when the caller holds the kernel lock, so a running agent's
objects are never touched; a program some live process still holds (another tool, a
test, a second agent) is never touched either, whatever its name.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from sentinel.config import default_run_dir
from sentinel.errors import KernelError, SourceLocation
from sentinel.kernel.probe import cgroup2_mount
from sentinel.log import get_logger

log = get_logger("sentinel.kernel.hygiene")

NAME_PREFIX = "snt_"
PIN_DIR = "/sys/fs/bpf/sentinel"


def is_sentinel_name(name: str) -> bool:
    return name.startswith(NAME_PREFIX)


def names_breaking_convention(names: Iterable[str]) -> list[str]:
    """The names (C functions or maps about to be loaded) that bpftool would not show as
    sentinel's; the loader rejects a program text with any."""
    return sorted({n for n in names if not is_sentinel_name(n)})


# --------------------------------------------------------------------- the kernel lock


class KernelLock:
    """An flock held for as long as this agent owns its kernel objects.

    The kernel drops it when the process dies, so "lock is free" means "no live agent".
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> KernelLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def default_lock_path() -> str:
    return str(default_run_dir() / "kernel.lock")


def acquire_kernel_lock(path: str | None = None) -> KernelLock:
    """Take the kernel lock without waiting; KernelError names the pid that holds it."""
    path = path or default_lock_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise KernelError(
            "another sentinel agent (pid %s) owns the kernel objects" % holder, SourceLocation(path)
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    return KernelLock(path, fd)


# --------------------------------------------------------------------- listing


@dataclass(frozen=True)
class CgroupAttachment:
    cgroup: str
    prog_id: int
    attach_type: str  # bpftool's name, e.g. "cgroup_inet4_connect"
    attach_flags: str
    name: str


@dataclass(frozen=True)
class SentinelObjects:
    """sentinel-named objects in the kernel, as bpftool sees them."""

    programs: list[dict] = field(default_factory=list)  # bpftool -j prog show entries
    maps: list[dict] = field(default_factory=list)  # bpftool -j map show entries
    cgroup_attachments: list[CgroupAttachment] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)


def _bpftool_json(*args: str) -> list:
    result = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise KernelError("bpftool %s failed: %s" % (" ".join(args), (result.stderr or result.stdout).strip()))
    return json.loads(result.stdout.strip() or "[]")


def _cgroup_attachments(cgroup_root: str | None) -> list[CgroupAttachment]:
    root = cgroup_root or cgroup2_mount()
    if root is None:
        return []
    return [
        CgroupAttachment(
            cgroup=entry["cgroup"],
            prog_id=int(program["id"]),
            attach_type=program["attach_type"],
            attach_flags=program.get("attach_flags", ""),
            name=program.get("name", ""),
        )
        for entry in _bpftool_json("cgroup", "tree", root)
        for program in entry.get("programs", [])
    ]


def _pins(pin_dir: str) -> list[str]:
    found = []
    for directory, _, files in os.walk(pin_dir):
        found.extend(os.path.join(directory, f) for f in files)
    return sorted(found)


def list_sentinel_objects(cgroup_root: str | None = None, pin_dir: str = PIN_DIR) -> SentinelObjects:
    """Programs, maps and cgroup attachments named `snt_*`, and every pin under pin_dir."""
    return SentinelObjects(
        programs=[p for p in _bpftool_json("prog", "show") if is_sentinel_name(p.get("name", ""))],
        maps=[m for m in _bpftool_json("map", "show") if is_sentinel_name(m.get("name", ""))],
        cgroup_attachments=[a for a in _cgroup_attachments(cgroup_root) if is_sentinel_name(a.name)],
        pins=_pins(pin_dir),
    )


def programs_held_by_processes() -> dict[int, list[int]]:
    """prog id -> pids of live processes holding an fd to it (program or link fds)."""
    held: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fdinfo = "/proc/%s/fdinfo" % pid
        try:
            fds = os.listdir(fdinfo)
        except OSError:
            continue  # exited, or a kernel thread
        for fd in fds:
            try:
                with open(os.path.join(fdinfo, fd)) as f:
                    text = f.read()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("prog_id:"):
                    held.setdefault(int(line.split()[1]), []).append(int(pid))
    return held


# --------------------------------------------------------------------- cleanup


def cleanup_leftovers(
    lock: KernelLock | None = None,
    *,
    cgroup_root: str | None = None,
    pin_dir: str = PIN_DIR,
    keep_pins: bool = False,
    lock_path: str | None = None,
) -> list[str]:
    """Detach sentinel cgroup programs no live process holds and remove sentinel's pins.

    Needs the kernel lock: pass the one the agent holds, or it is taken for the duration
    (KernelError if another agent has it, and nothing is touched). Returns a line per
    object removed. `cgroup_root` limits the cgroup walk (tests use their own cgroup).
    """
    own_lock = lock is None
    if lock is None:
        lock = acquire_kernel_lock(lock_path)
    elif not lock.held:
        raise KernelError("cleanup_leftovers needs the kernel lock held", SourceLocation(lock.path))
    try:
        removed = _detach_orphans(cgroup_root)
        if not keep_pins:
            removed += _remove_pins(pin_dir)
    finally:
        if own_lock:
            lock.release()
    for line in removed:
        log.info("kernel.leftover_removed", object=line)
    return removed


def _detach_orphans(cgroup_root: str | None) -> list[str]:
    attachments = [a for a in _cgroup_attachments(cgroup_root) if is_sentinel_name(a.name)]
    if not attachments:
        return []
    held = programs_held_by_processes()
    removed = []
    for attachment in attachments:
        if attachment.prog_id in held:
            log.debug("kernel.leftover_kept", prog_id=attachment.prog_id, pids=held[attachment.prog_id])
            continue
        result = subprocess.run(
            ["bpftool", "cgroup", "detach", attachment.cgroup, attachment.attach_type, "id", str(attachment.prog_id)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            log.warning(
                "kernel.leftover_detach_failed",
                prog_id=attachment.prog_id,
                cgroup=attachment.cgroup,
                error=result.stderr.strip(),
            )
            continue
        removed.append(
            "cgroup program %s (id %d) %s on %s"
            % (attachment.name, attachment.prog_id, attachment.attach_type, attachment.cgroup)
        )
    return removed


def _remove_pins(pin_dir: str) -> list[str]:
    pins = _pins(pin_dir)
    if os.path.isdir(pin_dir):
        shutil.rmtree(pin_dir)  # unlinking a pin drops the kernel's reference to it
    return ["pin %s" % p for p in pins]
