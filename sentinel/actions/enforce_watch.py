"""Follow the paths that deny entries name, with inotify on their directories.

A deny of a file, a directory or a cgroup is installed on the kernel object the path names
at that moment (an inode, a cgroup id). When the path is replaced (`mv new old`, delete and
recreate, a cgroup removed and made again), the entry must move to the new object. The
watcher puts an inotify watch on the directory holding each path (the nearest existing
ancestor while the path's directory itself is missing) and calls `on_change` as soon as a
name is created, moved or deleted there; `on_change` re-resolves every entry and calls
`watch()` again, so a directory that appears gets its own watch. A slow periodic call
(`backstop_seconds`) covers what inotify cannot see: a directory higher up renamed, a
filesystem mounted over a path.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable, Iterable

from inotify_simple import INotify, flags

from sentinel.log import get_logger

log = get_logger("sentinel.actions.enforce_watch")

# A name in the directory appears, goes or is replaced; or the directory itself goes.
WATCH_MASK = (flags.CREATE | flags.MOVED_TO | flags.MOVED_FROM | flags.DELETE
              | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR)
SETTLE_MS = 5  # events of one `mv` or `cp` arrive together: read them all, refresh once
# A busy watched directory (/tmp) must not turn into a stat() storm: at most one
# re-resolution per interval, the events of the interval folded into it.
MIN_REFRESH_INTERVAL = 0.05
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
        self._stop = threading.Event()
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.changes = 0  # on_change calls caused by inotify events (not the backstop)
        self._thread = threading.Thread(target=self._loop, name="sentinel-enforce-watch", daemon=True)
        self._thread.start()

    def watch(self, paths: Iterable[str]) -> None:
        """Watch exactly the directories of `paths` (watches no longer needed are removed)."""
        wanted = {watch_directory(path) for path in paths}
        with self._lock:
            if self._stop.is_set():
                return
            for directory in sorted(set(self._descriptors) - wanted):
                descriptor = self._descriptors.pop(directory)
                try:
                    self._inotify.rm_watch(descriptor)
                except OSError:
                    pass  # the directory went away and its watch with it
            for directory in sorted(wanted - set(self._descriptors)):
                try:
                    self._descriptors[directory] = self._inotify.add_watch(directory, WATCH_MASK)
                except OSError as exc:
                    log.warning("enforce.watch_failed", path=directory, error=str(exc))

    def watched(self) -> list[str]:
        with self._lock:
            return sorted(self._descriptors)

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._inotify.fileno(), select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        last_refresh = 0.0
        while True:
            ready = poller.poll(self.backstop_seconds * 1000)
            if self._stop.is_set():
                return
            if ready:
                pause = last_refresh + MIN_REFRESH_INTERVAL - time.monotonic()
                if pause > 0 and self._stop.wait(pause):
                    return
                events = self._inotify.read(timeout=SETTLE_MS)
                self._forget_removed(events)
                if all(event.mask == flags.IGNORED for event in events):
                    continue  # only watches removed by watch(): nothing changed on disk
                self.changes += 1
            last_refresh = time.monotonic()
            try:
                self.on_change()
            except Exception as exc:  # a failed re-resolution must not stop the watching
                log.warning("enforce.refresh_failed", error=str(exc))

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
