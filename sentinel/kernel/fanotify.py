"""Deny exec or open of specific files with fanotify permission events (a real EPERM).

Only the marked inodes wait for an answer: each denied file gets an inode mark with
FAN_OPEN_EXEC_PERM (exec) and/or FAN_OPEN_PERM (open). A dedicated thread answers every
permission event at once from an in-memory set of (dev, ino); it never waits on the rest
of the agent (denials are handed over through a callback that must only enqueue). When
the agent exits, its fanotify fd closes and the kernel allows everything again (fail-open).

Paths are followed: `refresh()` re-resolves each path, and when a file was replaced (new
inode) the mark moves to the new file. The enforcer calls it when inotify reports a change
in the file's directory; the answering thread also runs it when idle for `refresh_seconds`
as a backstop. Marks are held through an O_PATH fd of the marked inode, so the old inode
can be unmarked after a rename.

A deny can be scoped (a real uid and/or a cgroup v2 path, see enforce_plan.Scope): the
event's pid is then checked before answering, from /proc/<pid>/status (real uid) and the
`0::` line of /proc/<pid>/cgroup, two small reads. The process waits in open/exec for the
answer, so it is there to read; if a fact cannot be read (the process is exiting), only
the facts that could be read decide, and a scope nothing contradicts is denied: a process
that is gone cannot use the answer, and one that hides its facts gets no benefit from it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sentinel.errors import KernelError
from sentinel.log import get_logger

log = get_logger("sentinel.kernel.fanotify")

FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_CONTENT = 0x4
FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_OPEN_PERM = 0x10000
FAN_OPEN_EXEC_PERM = 0x40000
FAN_ALLOW = 0x1
FAN_DENY = 0x2
FAN_NOFD = -1

# What each deny kind marks; an inode can carry both.
MASK_OF_KIND = {"exec": FAN_OPEN_EXEC_PERM, "open": FAN_OPEN_PERM}

_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_RESPONSE = struct.Struct("=iI")  # fd, response

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]


def _read_proc(pid: int, name: str) -> bytes | None:
    try:
        fd = os.open("/proc/%d/%s" % (pid, name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def process_uid(pid: int) -> int | None:
    """The real uid of `pid` (None if unreadable)."""
    status = _read_proc(pid, "status")
    if status is None:
        return None
    for line in status.split(b"\n"):
        if line.startswith(b"Uid:"):
            return int(line.split()[1])
    return None


def process_cgroup(pid: int) -> str | None:
    """The cgroup v2 path of `pid` (the `0::` line), None if unreadable."""
    text = _read_proc(pid, "cgroup")
    if text is None:
        return None
    for line in text.split(b"\n"):
        if line.startswith(b"0::"):
            return line[3:].decode(errors="replace")
    return None


def scopes_of(pid: int, scopes: frozenset) -> list:
    """The scopes among `scopes` (objects with uid, cgroup, below, everyone as in
    enforce_plan.Scope) that `pid` is in; a fact that cannot be read contradicts nothing.
    /proc is read only for what a scope asks, once."""
    found = [scope for scope in scopes if scope.everyone]
    uid: int | None = None
    cgroup: str | None = None
    uid_read = cgroup_read = False
    for scope in scopes:
        if scope.everyone:
            continue
        if scope.uid >= 0:
            if not uid_read:
                uid, uid_read = process_uid(pid), True
            if uid is not None and uid != scope.uid:
                continue
        if scope.cgroup:
            if not cgroup_read:
                cgroup, cgroup_read = process_cgroup(pid), True
            if cgroup is not None:
                if scope.below and (cgroup == scope.cgroup or not cgroup.startswith(scope.cgroup.rstrip("/") + "/")):
                    continue
                if not scope.below and cgroup != scope.cgroup:
                    continue
        found.append(scope)
    return found


@dataclass(frozen=True)
class Denial:
    kind: str  # exec | open
    path: str
    pid: int
    scopes: tuple = ()  # the deny scopes the process was found in


def file_identity(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


class _Everyone:
    """The scope of an unscoped deny."""

    uid = -1
    cgroup = ""
    below = False
    everyone = True

    def __str__(self) -> str:
        return "everyone"


_EVERYONE = _Everyone()


class _Marked:
    """One path being denied and the inode it is marked on now."""

    __slots__ = ("path", "kinds", "identity", "path_fd")

    def __init__(self, path: str) -> None:
        self.path = path
        self.kinds: dict[str, set[object]] = {}  # kind -> scopes
        self.identity: tuple[int, int] | None = None
        self.path_fd: int | None = None


class FanotifyDenier:
    """Answers permission events for marked files; `deny(kind, path)` / `allow(kind, path)`."""

    def __init__(self, on_denial: Callable[[Denial], None], protected_pids: frozenset[int] = frozenset(),
                 refresh_seconds: float = 30.0) -> None:
        fd = _libc.fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise KernelError("fanotify_init(FAN_CLASS_CONTENT): %s" % os.strerror(code))
        self.fd = fd
        self.on_denial = on_denial
        self.protected_pids = protected_pids | {1, os.getpid()}
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._by_path: dict[str, _Marked] = {}
        # (dev, ino) -> {kind: (path, scopes)}: what the answering thread reads
        self._denied: dict[tuple[int, int], dict[str, tuple[str, frozenset]]] = {}
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._answer_loop, name="sentinel-fanotify", daemon=True)
        self.answered = 0
        self.denied = 0
        self._thread.start()

    # ------------------------------------------------------------------ marks
    def deny(self, kind: str, path: str, scope: object = None) -> None:
        """Deny `kind` of `path` to the processes in `scope` (None: everyone)."""
        with self._lock:
            marked = self._by_path.setdefault(path, _Marked(path))
            new_kind = kind not in marked.kinds
            marked.kinds.setdefault(kind, set()).add(scope if scope is not None else _EVERYONE)
            self._remark(marked, force=new_kind)
            self._publish(marked)

    def allow(self, kind: str, path: str, scope: object = None) -> None:
        """Undo deny(kind, path, scope); the mark goes with the last scope of the last kind."""
        with self._lock:
            marked = self._by_path.get(path)
            if marked is None:
                return
            scopes = marked.kinds.get(kind, set())
            scopes.discard(scope if scope is not None else _EVERYONE)
            if not scopes:
                marked.kinds.pop(kind, None)
            if not marked.kinds:
                self._unmark(marked)
                del self._by_path[path]
            elif not scopes:
                self._remark(marked, force=True)
            else:
                self._publish(marked)

    def entries(self) -> list[dict[str, object]]:
        with self._lock:
            return [
                {"path": m.path, "kinds": {kind: sorted(map(str, scopes)) for kind, scopes in sorted(m.kinds.items())},
                 "dev": m.identity[0] if m.identity else None,
                 "ino": m.identity[1] if m.identity else None}
                for m in self._by_path.values()
            ]

    def refresh(self) -> None:
        """Follow replaced files: a path whose inode changed is re-marked on the new file."""
        with self._lock:
            for marked in list(self._by_path.values()):
                self._remark(marked)

    def _mask(self, kinds: set[str]) -> int:
        mask = 0
        for kind in kinds:
            mask |= MASK_OF_KIND[kind]
        return mask

    def _remark(self, marked: _Marked, force: bool = False) -> None:
        try:
            st = os.stat(marked.path)
        except OSError:
            self._unmark(marked)  # gone for now; marked again when it reappears
            return
        if not force and marked.identity == file_identity(st):
            return
        self._unmark(marked)
        try:
            path_fd = os.open(marked.path, os.O_PATH | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("fanotify.mark_failed", path=marked.path, error=str(exc))
            return
        identity = file_identity(os.fstat(path_fd))
        # Mark the inode through /proc/self/fd: the path fd names exactly the inode stat saw.
        proc_path = ("/proc/self/fd/%d" % path_fd).encode()
        if _libc.fanotify_mark(self.fd, FAN_MARK_ADD, self._mask(marked.kinds), -100, proc_path) != 0:
            code = ctypes.get_errno()
            os.close(path_fd)
            raise KernelError("fanotify_mark(%s): %s" % (marked.path, os.strerror(code)))
        marked.identity, marked.path_fd = identity, path_fd
        self._publish(marked)
        log.debug("fanotify.marked", path=marked.path, kinds=sorted(marked.kinds), ino=identity[1])

    def _publish(self, marked: _Marked) -> None:
        """What the answering thread reads for this inode (one dict assignment: atomic)."""
        if marked.identity is not None:
            self._denied[marked.identity] = {kind: (marked.path, frozenset(scopes)) for kind, scopes in marked.kinds.items()}

    def _unmark(self, marked: _Marked) -> None:
        if marked.path_fd is None:
            return
        proc_path = ("/proc/self/fd/%d" % marked.path_fd).encode()
        if _libc.fanotify_mark(self.fd, FAN_MARK_REMOVE, self._mask({"exec", "open"}), -100, proc_path) != 0:
            code = ctypes.get_errno()
            if code != errno.ENOENT:
                log.warning("fanotify.unmark_failed", path=marked.path, error=os.strerror(code))
        os.close(marked.path_fd)
        self._denied.pop(marked.identity, None)  # type: ignore[arg-type]
        marked.identity, marked.path_fd = None, None

    # ------------------------------------------------------------------ answering
    def _answer_loop(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        while True:
            ready = poller.poll(self.refresh_seconds * 1000)
            if any(fd == self._stop_read for fd, _ in ready):
                return
            if ready:
                self._answer_pending()
            else:
                try:
                    self.refresh()
                except Exception as exc:  # a marking error must not stop the answers
                    log.warning("fanotify.refresh_failed", error=str(exc))

    def _answer_pending(self) -> None:
        try:
            data = os.read(self.fd, 4096 * 4)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return
            raise
        offset = 0
        while offset + _METADATA.size <= len(data):
            event_len, _vers, _reserved, _meta_len, mask, event_fd, pid = _METADATA.unpack_from(data, offset)
            offset += event_len or _METADATA.size
            if event_fd == FAN_NOFD:
                continue
            self._answer(event_fd, mask, pid)

    def _answer(self, event_fd: int, mask: int, pid: int) -> None:
        verdict, denial = FAN_ALLOW, None
        try:
            kinds = self._denied.get(file_identity(os.fstat(event_fd)))
            kind = "exec" if mask & FAN_OPEN_EXEC_PERM else "open"
            if kinds and kind in kinds and pid not in self.protected_pids:
                path, scopes = kinds[kind]
                applied = scopes_of(pid, scopes)
                if applied:
                    verdict, denial = FAN_DENY, Denial(kind, path, pid, tuple(applied))
        finally:
            try:
                os.write(self.fd, _RESPONSE.pack(event_fd, verdict))
            finally:
                os.close(event_fd)
        self.answered += 1
        if denial is not None:
            self.denied += 1
            self.on_denial(denial)

    def close(self) -> None:
        """Stop answering and close the group: the kernel allows every marked file again."""
        if self.fd < 0:
            return
        os.write(self._stop_write, b"x")
        self._thread.join(timeout=5)
        with self._lock:
            for marked in self._by_path.values():
                if marked.path_fd is not None:
                    os.close(marked.path_fd)
                    marked.path_fd = None
            self._by_path.clear()
            self._denied.clear()
        os.close(self.fd)
        os.close(self._stop_read)
        os.close(self._stop_write)
        self.fd = -1
