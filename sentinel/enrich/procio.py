"""Reading /proc files that can vanish at any moment: a missing process is None, not an error."""

from __future__ import annotations

import os


def read_at(dir_fd: int | None, name: str, limit: int | None = None) -> bytes | None:
    """The file (`name` relative to `dir_fd`, or a path), or None when the process is gone
    or the file is unreadable to us (ENOENT, ESRCH, EACCES, ...). With `limit`, reading
    stops once more than `limit` bytes are in, so a caller can tell the file was longer."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        chunks = []
        total = 0
        while limit is None or total <= limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    except OSError:
        # ESRCH mid-read: the process exited between open and read.
        return None
    finally:
        os.close(fd)


def readlink_at(dir_fd: int, name: str) -> str:
    """The link's target, or "" when it cannot be read (gone, kernel thread, no access)."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return ""
