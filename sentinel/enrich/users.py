"""uid/gid -> names, resolved in the process's own root filesystem.

A container has its own /etc/passwd: uid 1000 there is not the host's uid 1000. So names
come from `/proc/<pid>/root/etc/{passwd,group}` whenever the process's root directory is
not ours, cached per root (identified by the device and inode of that directory) and
re-read when the file's mtime changes (checked at most once per `recheck_seconds`).
Unknown ids give "" (the field extractor renders absent values); an unset loginuid
(4294967295) gives "".
"""

from __future__ import annotations

import os
import pwd
import sys
import time

UNSET_LOGINUID = 0xFFFFFFFF


def parse_id_file(text: str) -> dict[int, str]:
    """`name:passwd:id:...` lines (passwd and group share the layout) -> {id: name}.

    The first entry for an id wins, as getpwuid() returns it; malformed lines are skipped.
    """
    names: dict[int, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 3 or not fields[0]:
            continue
        try:
            number = int(fields[2])
        except ValueError:
            continue
        names.setdefault(number, sys.intern(fields[0]))
    return names


class _IdFile:
    """One passwd or group file of one root, re-read when its mtime changes."""

    __slots__ = ("relative", "names", "mtime_ns", "next_check")

    def __init__(self, relative: str) -> None:
        self.relative = relative
        self.names: dict[int, str] = {}
        self.mtime_ns = -1
        self.next_check = 0.0

    def refresh(self, root: str, now: float, recheck_seconds: float) -> None:
        if now < self.next_check:
            return
        self.next_check = now + recheck_seconds
        path = root.rstrip("/") + self.relative
        try:
            mtime_ns = os.stat(path).st_mtime_ns
            if mtime_ns == self.mtime_ns:
                return
            with open(path, "rb") as handle:
                text = handle.read().decode("utf-8", "surrogateescape")
        except OSError:
            # Gone or unreadable (the process exited, the root has no such file): keep
            # what we had; a root seen for the first time simply resolves nothing.
            return
        self.names = parse_id_file(text)
        self.mtime_ns = mtime_ns


class _RootUsers:
    __slots__ = ("passwd", "group")

    def __init__(self) -> None:
        self.passwd = _IdFile("/etc/passwd")
        self.group = _IdFile("/etc/group")


class UserResolver:
    """Names for the credentials of a process, in that process's root."""

    __slots__ = (
        "proc_root",
        "host_root",
        "recheck_seconds",
        "max_roots",
        "_host_key",
        "_roots",
        "_nss_cache",
        "_clock",
    )

    def __init__(
        self,
        proc_root: str = "/proc",
        host_root: str = "/",
        recheck_seconds: float = 1.0,
        max_roots: int = 1024,
        clock=time.monotonic,
    ) -> None:
        self.proc_root = proc_root
        self.host_root = host_root
        self.recheck_seconds = recheck_seconds
        self.max_roots = max_roots
        self._clock = clock
        host = os.stat(host_root)
        self._host_key = (host.st_dev, host.st_ino)
        self._roots: dict[tuple[int, int], _RootUsers] = {}
        self._nss_cache: dict[int, str] = {}

    def root_of(self, pid: int) -> tuple[tuple[int, int], str] | None:
        """(identity, path) of the root directory of `pid`; None if unreadable (gone)."""
        path = "%s/%d/root" % (self.proc_root, pid)
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino)
        if key == self._host_key:
            return key, self.host_root
        return key, path

    def names(self, pid: int, uid: int, gid: int, loginuid: int, on_host: bool = False) -> tuple[str, str, str]:
        """(user name, group name, login name). `on_host` skips finding the root (the
        caller knows the process is outside containers; chroots are then not looked into)."""
        if on_host:
            key, root = self._host_key, self.host_root
        else:
            found = self.root_of(pid)
            if found is None:
                return "", "", ""  # gone: its root, hence its user database, is unknown
            key, root = found
        users = self._roots.get(key)
        if users is None:
            if len(self._roots) >= self.max_roots:
                self._roots.clear()
            users = self._roots[key] = _RootUsers()
        now = self._clock()
        users.passwd.refresh(root, now, self.recheck_seconds)
        users.group.refresh(root, now, self.recheck_seconds)
        is_host = key == self._host_key
        user = self._user(users, uid, is_host)
        group = users.group.names.get(gid, "")
        if loginuid == UNSET_LOGINUID:
            login = ""
        elif loginuid == uid:
            login = user
        else:
            login = self._user(users, loginuid, is_host)
        return user, group, login

    def _user(self, users: _RootUsers, uid: int, is_host: bool) -> str:
        name = users.passwd.names.get(uid)
        if name is not None:
            return name
        if not is_host or self.host_root != "/":
            return ""
        # Host users can come from NSS (LDAP, sssd): ask once per uid, remember the answer.
        cached = self._nss_cache.get(uid)
        if cached is None:
            if len(self._nss_cache) >= 65536:
                self._nss_cache.clear()
            try:
                cached = sys.intern(pwd.getpwuid(uid).pw_name)
            except (KeyError, OverflowError):
                cached = ""
            self._nss_cache[uid] = cached
        return cached
