"""Reading one process from /proc/<pid>, for the bootstrap and for table misses.

Every file is read through a directory fd on /proc/<pid>: once that directory is open, a
reused pid cannot swap another process in underneath (lookups through it fail once the
process is gone), so all fields describe one process. Processes vanish at any moment:
each read tolerates ENOENT, ESRCH and EACCES, and only a missing `stat` means "gone".

Start times: /proc/<pid>/stat gives the start in clock ticks since boot, i.e. the kernel's
`start_boottime` truncated to 1/SC_CLK_TCK s. The kernel records keep full precision, so
identities from the two sources are compared with `same_start` at tick precision.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterable

from sentinel.enrich.container import CgroupInfo, parse_cgroup_cached
from sentinel.enrich.procio import read_at, readlink_at
from sentinel.events.abi import ARGS_MAX, ENV_VAR_MAX, ENV_VARS, EXEC_ID_CLOCK
from sentinel.events.decode import exe_writable
from sentinel.events.model import Process

CLK_TCK = os.sysconf("SC_CLK_TCK")
TICK_NS = 1_000_000_000 // CLK_TCK
# Two starts closer than this are the same process: one tick of /proc truncation, plus
# slack for the BOOTTIME-MONOTONIC offset measured in user space when the kernel ids use
# CLOCK_MONOTONIC. A pid cannot be reused within it (that takes pid_max forks).
SAME_START_TOLERANCE_NS = TICK_NS + 1_000_000

_MEMFD_PREFIX = "/memfd:"
_DELETED_SUFFIX = " (deleted)"


# The inode of the initial pid namespace (PROC_PID_INIT_INO), fixed by the kernel.
INITIAL_PID_NS_INO = 0xEFFFFFFC


def sees_host_pids(root: str = "/proc") -> bool:
    """Whether pids under `root` are the kernel's global pids, as in the sensor's records.

    An agent in a container without the host's pid namespace (`hostPID`) sees other
    numbers: nothing read from /proc would match a kernel record.
    """
    try:
        return (
            os.stat(root + "/self/ns/pid").st_ino == INITIAL_PID_NS_INO
            and int(os.readlink(root + "/self")) == os.getpid()
        )
    except (OSError, ValueError):
        return False


def same_start(a_ns: int, b_ns: int) -> bool:
    """True when two start times (one maybe from /proc, tick-truncated) name one process."""
    return -SAME_START_TOLERANCE_NS < a_ns - b_ns < SAME_START_TOLERANCE_NS


def kernel_dev(st_dev: int) -> int:
    """The kernel's internal dev_t (MKDEV: major << 20 | minor) of a user-space st_dev."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def tty_nr_to_kernel_dev(tty_nr: int) -> int:
    """/proc/<pid>/stat's tty_nr (new_encode_dev layout) -> kernel dev_t (major << 20 | minor)."""
    major = (tty_nr >> 8) & 0xFFF
    minor = (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    return (major << 20) | minor


def parse_stat(text: str) -> tuple[str, list[str]]:
    """(comm, fields from field 3 `state` on) of /proc/<pid>/stat; comm may hold ') '."""
    open_paren = text.index("(")
    close_paren = text.rindex(")")
    return text[open_paren + 1 : close_paren], text[close_paren + 2 :].split()


def parse_status(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


def split_nul(data: bytes) -> list[str]:
    """NUL-separated strings (cmdline, environ); the trailing empty string dropped."""
    if not data:
        return []
    if data.endswith(b"\0"):
        data = data[:-1]
    return [part.decode("utf-8", "surrogateescape") for part in data.split(b"\0")]


def strip_deleted(path: str) -> tuple[str, bool]:
    """(path without the kernel's " (deleted)" suffix, whether it had it)."""
    if path.endswith(_DELETED_SUFFIX):
        return path[: -len(_DELETED_SUFFIX)], True
    return path, False


class ProcFS:
    """Reads processes from a proc file system mounted at `root` (a fake tree in tests).

    `exec_id_clock` is the clock of the kernel's exec ids ("boottime" or "monotonic"):
    /proc start times are boot-relative and are shifted when the kernel uses MONOTONIC.
    """

    __slots__ = ("root", "env_keep", "clk_tck", "exec_id_clock")

    def __init__(
        self,
        root: str = "/proc",
        env_keep: Iterable[str] = (),
        clk_tck: int = CLK_TCK,
        exec_id_clock: str = EXEC_ID_CLOCK,
    ) -> None:
        if exec_id_clock not in ("boottime", "monotonic"):
            raise ValueError("exec_id_clock must be 'boottime' or 'monotonic', not %r" % (exec_id_clock,))
        self.root = root
        self.env_keep = frozenset(env_keep)
        self.clk_tck = clk_tck
        self.exec_id_clock = exec_id_clock

    def pids(self) -> list[int]:
        """Process ids (thread group leaders) present now."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        return [int(name) for name in names if name.isdigit()]

    def ticks_to_start_ns(self, ticks: int) -> int:
        start_ns = ticks * 1_000_000_000 // self.clk_tck
        if self.exec_id_clock == "monotonic":
            boot_minus_mono = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            start_ns -= boot_minus_mono
        return start_ns

    def start_ns(self, pid: int) -> int | None:
        """The exec-id start of `pid` from its stat alone (cheap); None if gone."""
        data = read_at(None, "%s/%d/stat" % (self.root, pid))
        if not data:
            return None
        try:
            _comm, fields = parse_stat(data.decode("utf-8", "surrogateescape"))
            return self.ticks_to_start_ns(int(fields[19]))
        except (ValueError, IndexError):
            return None

    def read(self, pid: int) -> Process | None:
        """The process `pid` as /proc shows it now (from_proc=True), or None if it is gone.

        Given a thread id (/proc/<tid> exists though it is not listed), the thread's group
        is read instead, with `tid` set: identity is the group leader's.
        """
        proc = self._read_one(pid)
        if proc is not None and proc.pid != pid:
            leader = self._read_one(proc.pid)
            if leader is not None:
                leader.tid = pid
            return leader
        return proc

    def _read_one(self, pid: int) -> Process | None:
        try:
            dir_fd = os.open("%s/%d" % (self.root, pid), os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            return self._read_dir(pid, dir_fd)
        finally:
            os.close(dir_fd)

    def _read_dir(self, pid: int, dir_fd: int) -> Process | None:
        data = read_at(dir_fd, "stat")
        if not data:
            return None
        try:
            comm, fields = parse_stat(data.decode("utf-8", "surrogateescape"))
            ppid, pgid, sid, tty_nr = (int(value) for value in fields[1:5])
            start_ticks = int(fields[19])
        except (ValueError, IndexError):
            return None
        proc = Process(pid, self.ticks_to_start_ns(start_ticks))
        proc.from_proc = True
        proc.exited = fields[0] in ("Z", "X")  # a zombie: exited, not yet reaped
        proc.comm = sys.intern(comm)
        proc.ppid = ppid
        proc.pgid = pgid
        proc.sid = sid
        proc.tty = tty_nr_to_kernel_dev(tty_nr) if tty_nr else 0
        proc.vpgid = pgid
        self._fill_status(proc, dir_fd)
        if proc.pid != pid:
            return proc  # a thread: read() goes on with its thread group
        self._fill_cmdline(proc, dir_fd)
        self._fill_paths(proc, dir_fd)
        if self.env_keep:
            proc.env = self._kept_env(dir_fd)
        loginuid = read_at(dir_fd, "loginuid")
        if loginuid:
            try:
                proc.loginuid = int(loginuid)
            except ValueError:
                pass
        cgroup = read_cgroup_at(dir_fd)
        if cgroup is not None:
            proc.cgroup = cgroup.path
            proc.container_id = cgroup.container_id
        return proc

    def _fill_status(self, proc: Process, dir_fd: int) -> None:
        data = read_at(dir_fd, "status")
        if not data:
            return
        status = parse_status(data.decode("utf-8", "surrogateescape"))
        try:
            uids = status["Uid"].split()
            gids = status["Gid"].split()
            proc.uid, proc.euid = int(uids[0]), int(uids[1])
            proc.gid, proc.egid = int(gids[0]), int(gids[1])
            proc.cap_inheritable = int(status.get("CapInh", "0"), 16)
            proc.cap_permitted = int(status.get("CapPrm", "0"), 16)
            proc.cap_effective = int(status.get("CapEff", "0"), 16)
            proc.pid = proc.tid = int(status.get("Tgid", proc.pid))  # differs in a thread's directory
            # NSpid/NSpgid list the ids from the outermost namespace in; the last is the
            # process's own view. Absent on kernels without pid namespaces.
            nspid = status.get("NSpid", "").split()
            nspgid = status.get("NSpgid", "").split()
            if nspid:
                proc.vpid = int(nspid[-1])
            if nspgid:
                proc.vpgid = int(nspgid[-1])
        except (KeyError, IndexError, ValueError):
            pass
        proc.is_vpgid_leader = proc.vpid == proc.vpgid

    def _fill_cmdline(self, proc: Process, dir_fd: int) -> None:
        # The same bound as the kernel side, so a process reads the same from both sources.
        data = read_at(dir_fd, "cmdline", limit=ARGS_MAX) or b""
        if len(data) > ARGS_MAX:
            data = data[:ARGS_MAX]
            proc.args_truncated = True
        argv = split_nul(data)
        if argv:
            proc.exe = argv[0]
            proc.args = tuple(argv[1:])

    def _fill_paths(self, proc: Process, dir_fd: int) -> None:
        exepath = readlink_at(dir_fd, "exe")
        if exepath:
            exepath, _deleted = strip_deleted(exepath)
            proc.exe_from_memfd = exepath.startswith(_MEMFD_PREFIX)
            proc.exepath = sys.intern(exepath)
            try:
                st = os.stat("exe", dir_fd=dir_fd)
            except OSError:
                st = None
            if st is not None:
                proc.exe_ino = st.st_ino
                proc.exe_dev = kernel_dev(st.st_dev)
                proc.exe_mtime_ns = st.st_mtime_ns
                proc.exe_ctime_ns = st.st_ctime_ns
                proc.exe_writable = exe_writable(
                    st.st_mode, st.st_uid, st.st_gid, proc.euid, proc.egid, proc.cap_effective
                )
                # overlayfs files have an anonymous device (major 0): only then is the
                # mount table worth reading
                if os.major(st.st_dev) == 0:
                    mountinfo = read_at(dir_fd, "mountinfo")
                    if mountinfo:
                        text = mountinfo.decode("utf-8", "surrogateescape")
                        proc.exe_upper_layer = exe_on_upper_layer(text, exepath)
        cwd = readlink_at(dir_fd, "cwd")
        if cwd:
            proc.cwd = sys.intern(strip_deleted(cwd)[0])

    def _kept_env(self, dir_fd: int) -> tuple[str, ...]:
        """Only the configured variables: other values never leave this function.

        Scanned within the kernel side's bounds (the first ENV_VARS entries, stopping at
        one of ENV_VAR_MAX bytes or more), so both sources keep the same variables."""
        kept = []
        for index, raw in enumerate((read_at(dir_fd, "environ") or b"").split(b"\0")):
            if index >= ENV_VARS or len(raw) + 1 >= ENV_VAR_MAX:
                break
            name, sep, _value = raw.partition(b"=")
            if sep and name.decode("utf-8", "surrogateescape") in self.env_keep:
                kept.append(raw.decode("utf-8", "surrogateescape"))
        return tuple(kept)


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape_mount_field(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    if "\\" not in field:
        return field
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def exe_on_upper_layer(mountinfo: str, exepath: str, exists: Callable[[str], bool] = os.path.lexists) -> bool:
    """Whether `exepath` (as the process sees it) is on the upper layer of an overlay mount
    (Falco's proc.is_exe_upper_layer: written or modified in the container, not in its image).

    The mount holding the path is the one with the longest mount point above it (the last
    listed wins: it is mounted over the others); when that is an overlay, the file is on the
    upper layer if it exists below `upperdir`.
    """
    best_point = ""
    best_fstype = ""
    best_options = ""
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            point = _unescape_mount_field(fields[4])
            fstype, options = fields[separator + 1], fields[separator + 3]
        except (ValueError, IndexError):
            continue
        inside = exepath == point or exepath.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best_point):
            best_point, best_fstype, best_options = point, fstype, options
    if best_fstype != "overlay":
        return False
    for option in best_options.split(","):
        if option.startswith("upperdir="):
            upper = _unescape_mount_field(option[len("upperdir=") :])
            relative = exepath[len(best_point.rstrip("/")) :].lstrip("/")
            return exists(os.path.join(upper, relative))
    return False  # a read-only overlay (lower layers only)


def read_cgroup_at(dir_fd: int) -> CgroupInfo | None:
    data = read_at(dir_fd, "cgroup")
    if not data:
        return None
    return parse_cgroup_cached(data)
