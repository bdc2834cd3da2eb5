"""Follow the paths that deny entries name, with inotify on their directories.

A deny of a file, a directory or a cgroup is installed on the kernel object the path names
at that moment (an inode, a cgroup id). When the path is replaced (`mv new old`, delete and
recreate, a cgroup removed and made again), the entry must move to the new object. The
watcher puts an inotify watch on the directory holding each path (the nearest existing
ancestor while the path's directory itself is missing) and calls `on_change` as soon as one
of the watched names (or a directory on the way to one) is created, moved or deleted there;
other names in the same directory (a busy /tmp) cost a read and a set lookup, no refresh.
`on_change` re-resolves every entry and calls `watch()` again, so a directory that appears
gets its own watch. A slow periodic call
(`backstop_seconds`) covers what inotify cannot see: a directory higher up renamed, a
filesystem mounted over a path.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Iterable

from inotify_simple import INotify, flags

from sentinel.log import get_logger

log = get_logger("sentinel.actions.enforce_watch")

# A name in the directory appears, goes or is replaced; or the directory itself goes.
WATCH_MASK = (flags.CREATE | flags.MOVED_TO | flags.MOVED_FROM | flags.DELETE
              | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR)
SETTLE_MS = 5  # events of one `mv` or `cp` arrive together: read them all, refresh once
BACKSTOP_SECONDS = 30.0


def watch_directory(path: str) -> str:
    """The directory to watch for `path`: its parent, or the nearest ancestor that exists."""
    directory = os.path.dirname(os.path.normpath(path)) or "/"
    while not os.path.isdir(directory) and directory != "/":
        directory = os.path.dirname(directory)
    return directory


class PathWatcher:
    """One inotify instance and a thread that calls `on_change` when watched paths change."""

    def __init__(self, on_change: Callable[[], None], backstop_seconds: float = BACKSTOP_SECONDS) -> None:
        self.on_change = on_change
        self.backstop_seconds = backstop_seconds
        self._inotify = INotify(nonblocking=False)
        self._lock = threading.Lock()
        self._descriptors: dict[str, int] = {}  # directory -> watch descriptor
        self._directories: dict[int, str] = {}  # watch descriptor -> directory
        self._interesting: frozenset[str] = frozenset()  # the paths and every ancestor of them
        self._stop = threading.Event()
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.changes = 0  # on_change calls caused by inotify events (not the backstop)
        self._thread = threading.Thread(target=self._loop, name="sentinel-enforce-watch", daemon=True)
        self._thread.start()

    def watch(self, paths: Iterable[str]) -> None:
        """Watch exactly the directories of `paths` (watches no longer needed are removed)."""
        paths = [os.path.normpath(path) for path in paths]
        wanted = {watch_directory(path) for path in paths}
        interesting = set()
        for path in paths:
            while path not in interesting and path != "/":
                interesting.add(path)
                path = os.path.dirname(path)
        with self._lock:
            if self._stop.is_set():
                return
            self._interesting = frozenset(interesting)
            for directory in sorted(set(self._descriptors) - wanted):
                descriptor = self._descriptors.pop(directory)
                self._directories.pop(descriptor, None)
                try:
                    self._inotify.rm_watch(descriptor)
                except OSError:
                    pass  # the directory went away and its watch with it
            for directory in sorted(wanted - set(self._descriptors)):
                try:
                    descriptor = self._inotify.add_watch(directory, WATCH_MASK)
                    self._descriptors[directory] = descriptor
                    self._directories[descriptor] = directory
                except OSError as exc:
                    log.warning("enforce.watch_failed", path=directory, error=str(exc))

    def watched(self) -> list[str]:
        with self._lock:
            return sorted(self._descriptors)

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._inotify.fileno(), select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        while True:
            ready = poller.poll(self.backstop_seconds * 1000)
            if self._stop.is_set():
                return
            if ready:
                events = self._inotify.read(timeout=SETTLE_MS)
                relevant = self._relevant(events)
                self._forget_removed(events)
                if not relevant:
                    continue  # other names in a watched directory, or watches watch() removed
                self.changes += 1
            try:
                self.on_change()
            except Exception as exc:  # a failed re-resolution must not stop the watching
                log.warning("enforce.refresh_failed", error=str(exc))

    def _relevant(self, events: list) -> bool:
        """Whether an event names a watched path or a directory on the way to one, or is
        about a watched directory itself (moved or deleted)."""
        with self._lock:
            for event in events:
                directory = self._directories.get(event.wd)
                if event.mask & flags.IGNORED or directory is None:
                    continue  # a watch removed by watch() (or by the kernel, see below)
                if not event.name or os.path.join(directory, event.name) in self._interesting:
                    return True
        return False

    def _forget_removed(self, events: list) -> None:
        """Watches the kernel dropped (directory deleted: IN_IGNORED) are no longer ours, and
        a watched directory moved away no longer stands for its path: both are forgotten,
        so the next watch() puts a watch on whatever the path names now."""
        gone = {event.wd for event in events if event.mask & flags.IGNORED}
        moved = {event.wd for event in events if event.mask & flags.MOVE_SELF} - gone
        if gone or moved:
            with self._lock:
                for directory, descriptor in list(self._descriptors.items()):
                    if descriptor in gone | moved:
                        del self._descriptors[directory]
                        del self._directories[descriptor]
                for descriptor in moved:
                    try:
                        self._inotify.rm_watch(descriptor)
                    except OSError:
                        pass

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            self._descriptors.clear()
        os.write(self._stop_write, b"x")
        self._thread.join(timeout=5)
        self._inotify.close()
        os.close(self._stop_read)
        os.close(self._stop_write)
