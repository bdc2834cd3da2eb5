"""Container ids and the cgroup path of a process, from /proc/<pid>/cgroup.

Runtimes name the cgroup of a container after its id; the layouts differ by runtime and by
cgroup driver (cgroupfs vs systemd) and hosts may be hybrid (v1 controllers plus the v2
`0::` line), so every line is tried against one table of patterns. The first pattern that
matches any line wins; within a line the LAST match is taken, so nested layouts
(docker-in-docker) resolve to the innermost container, the one the process runs in. Ids
are shortened to 12 characters as Falco does; LXC containers are named, not hashed, and
keep their name.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from functools import lru_cache

from sentinel.enrich.procio import read_at

HOST = "host"
SHORT_ID_LEN = 12

_HEX64 = r"([0-9a-f]{64})"
_END = r"(?=/|$)"

# (runtime, pattern): group 1 is the container id. Checked in order.
CONTAINER_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (runtime, re.compile(pattern))
    for runtime, pattern in (
        # docker, cgroupfs driver (v1, and v2 without systemd): /docker/<id>
        ("docker", r"/docker/" + _HEX64 + _END),
        # docker, systemd driver: /system.slice/docker-<id>.scope
        ("docker", r"/docker-" + _HEX64 + r"\.scope" + _END),
        # containerd CRI, systemd driver: .../kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope
        ("containerd", r"/cri-containerd-" + _HEX64 + r"\.scope" + _END),
        # CRI-O: crio-<id>.scope (systemd) or crio-<id> (cgroupfs); crio-conmon-<id> is the monitor
        ("cri-o", r"/crio-" + _HEX64 + r"(?:\.scope)?" + _END),
        # podman: libpod-<id>.scope (systemd) or /libpod_parent/libpod-<id> (cgroupfs)
        ("podman", r"/libpod-" + _HEX64 + r"(?:\.scope)?" + _END),
        # nerdctl / containerd, systemd driver
        ("containerd", r"/nerdctl-" + _HEX64 + r"\.scope" + _END),
        # kubernetes, cgroupfs driver: /kubepods[/<qos>]/pod<uid>/<id>
        ("kubernetes", r"/kubepods(?:/[a-z]+)?/pod[0-9a-f_-]+/" + _HEX64 + _END),
        # containerd, cgroupfs driver, namespace "default" (nerdctl, ctr)
        ("containerd", r"^/default/" + _HEX64 + _END),
        # LXC / LXD: /lxc/<name> (lxc < 4), /lxc.payload.<name> or /lxc.payload/<name>
        ("lxc", r"^/lxc(?:/|\.payload[./])([^/]+)"),
    )
)


@dataclass(frozen=True)
class CgroupInfo:
    """What the process table keeps from /proc/<pid>/cgroup."""

    path: str  # the v2 path, else the v1 pids/cpu controller path
    container_id: str  # short id, or HOST
    runtime: str = ""  # key of CONTAINER_PATTERNS, "" on the host
    full_id: str = ""
    # Only a v2 hierarchy: the v2 cgroup id then decides the answer, so it may be cached by
    # that id. On hybrid hosts a container's v1 cgroups can differ while the v2 one is shared.
    v2_only: bool = False


def short_id(full_id: str) -> str:
    """Falco's container.id: 12 characters of a hex id; names (LXC) are kept whole."""
    if len(full_id) == 64:
        return full_id[:SHORT_ID_LEN]
    return full_id


def container_from_paths(paths: list[str]) -> tuple[str, str] | None:
    """(runtime, full id) of the first pattern matching any of `paths`, else None."""
    for runtime, pattern in CONTAINER_PATTERNS:
        for path in paths:
            matches = pattern.findall(path)
            if matches:
                return runtime, matches[-1]
    return None


# v1 controllers whose path is kept when the v2 path says nothing (hybrid hosts), by preference.
_V1_PATH_CONTROLLERS = ("pids", "cpu", "name=systemd")


def parse_cgroup(text: str) -> CgroupInfo:
    """Parse the text of /proc/<pid>/cgroup (`hierarchy:controllers:path` per line)."""
    v2_path = ""
    has_v2 = False
    v1_paths: dict[str, str] = {}
    paths: list[str] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        paths.append(path)
        if hierarchy == "0" and controllers == "":
            has_v2 = True
            v2_path = path
        else:
            for controller in controllers.split(","):
                v1_paths.setdefault(controller, path)
    stored = v2_path
    if stored in ("", "/"):
        for controller in _V1_PATH_CONTROLLERS:
            candidate = v1_paths.get(controller, "")
            if candidate not in ("", "/"):
                stored = candidate
                break
        else:
            stored = stored or next(iter(v1_paths.values()), "")
    v2_only = has_v2 and not v1_paths
    found = container_from_paths(paths)
    if found is None:
        return CgroupInfo(path=sys.intern(stored), container_id=HOST, v2_only=v2_only)
    runtime, full_id = found
    return CgroupInfo(
        path=sys.intern(stored),
        container_id=sys.intern(short_id(full_id)),
        runtime=runtime,
        full_id=full_id,
        v2_only=v2_only,
    )


def shows_our_pids(proc_root: str) -> bool:
    """`proc_root` is a procfs of our own pid namespace (its /self is us)."""
    try:
        return int(os.readlink(proc_root + "/self")) == os.getpid()
    except (OSError, ValueError):
        return False


def pid_exists(pid: int) -> bool:
    """A process (or zombie) has this pid in our pid namespace now."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, we may not signal it
    return True


@lru_cache(maxsize=4096)
def parse_cgroup_cached(data: bytes) -> CgroupInfo:
    """parse_cgroup of a file's bytes; most processes share a handful of cgroup files."""
    return parse_cgroup(data.decode("utf-8", "surrogateescape"))


class CgroupResolver:
    """Reads /proc/<pid>/cgroup once per set of cgroups, not once per exec (~13 us each).

    The answer is remembered per v2 cgroup id on v2-only hosts (there the id decides it),
    and on every host per kernel css_set (`cgroups_key`: the task's cgroups in all
    hierarchies, v1 included) together with the v2 id. A css_set freed and reallocated at
    the same address could stand for other v1 cgroups: such answers expire after
    `max_age` seconds.
    """

    __slots__ = ("proc_root", "max_cached", "max_age", "_clock", "_by_cgroup_id", "_by_css_set", "_own_proc")

    def __init__(self, proc_root: str = "/proc", max_cached: int = 8192, max_age: float = 60.0, clock=time.monotonic) -> None:
        self.proc_root = proc_root
        self.max_cached = max_cached
        self.max_age = max_age
        self._clock = clock
        self._by_cgroup_id: dict[int, CgroupInfo] = {}
        self._by_css_set: dict[tuple[int, int], tuple[CgroupInfo, float]] = {}
        # Our own pid namespace's /proc: its pids are the ones kill() sees, so a gone process
        # can be told by kill(pid, 0) (~1 us) instead of a failed open of /proc/<pid>/cgroup
        # (~5 us).
        self._own_proc = shows_our_pids(proc_root)

    def resolve(self, pid: int, cgroup_id: int = 0, cgroups_key: int = 0) -> CgroupInfo | None:
        """The cgroup of `pid`, or None when the process is gone."""
        if cgroup_id:
            cached = self._by_cgroup_id.get(cgroup_id)
            if cached is not None:
                return cached
        if cgroups_key:
            remembered = self._by_css_set.get((cgroups_key, cgroup_id))
            if remembered is not None and self._clock() - remembered[1] < self.max_age:
                return remembered[0]
        if self._own_proc and not pid_exists(pid):
            return None  # short-lived processes are often reaped before their exec is decoded
        data = read_at(None, "%s/%d/cgroup" % (self.proc_root, pid))
        if not data:
            return None
        info = parse_cgroup_cached(data)
        if cgroup_id and info.v2_only:
            if len(self._by_cgroup_id) >= self.max_cached:
                self._by_cgroup_id.clear()
            self._by_cgroup_id[cgroup_id] = info
        elif cgroups_key:
            if len(self._by_css_set) >= self.max_cached:
                self._by_css_set.clear()
            self._by_css_set[(cgroups_key, cgroup_id)] = (info, self._clock())
        return info
