"""The process table: every known process by exec id (pid, start time), with ancestry.

Sensors hand it kernel exec records (`on_exec`), forks, exits, chdirs and credential
changes; every other record resolves its process with `lookup(pid, start_ns)`. At start,
`bootstrap()` feeds each running process from /proc through the same `on_exec` path, and
`reconcile()` periodically repairs what lost events got wrong.

Identity. A process keeps its exec id across execs (the kernel's start time belongs to the
task, not to the image), so the table holds one entry per process: its current image. An
exec builds a new Process; the children of the old image are re-pointed to the new one, so
`parent` is always the parent's current image, as Falco's `proc.pname` expects.
Start times from /proc are tick-truncated: they are compared with `same_start` and replaced
by the kernel's precise value the first time a kernel record names the process, so
enforcement maps keyed by (pid, start) see the kernel's own numbers.

Lifetime and memory. An exited process stays in the table for `process_exit_grace_seconds`
(late events from other CPUs still resolve) and for as long as it has live children. At
most `process_exited_max` exited entries stay: past it the oldest childless ones go early
(at 5,000 execs/s the grace alone would keep 25,000; late events arrive within
milliseconds, not seconds), while those with live children are kept whatever the count.
Past `process_table_max` entries, the oldest exited entries are evicted first, then the
oldest live ones, childless first (they come back from /proc on their next lookup). A
dropped exited entry with no live children lets go of its own parent, so chains of exited
ancestors (double forks) cannot grow without bound; ancestry of live processes is kept by
reference.

Absent processes. When a process is neither in the table nor in /proc (it exited before we
looked), `lookup` returns a placeholder that is not stored: empty strings for names and
paths, empty `container_id`, uids 0xFFFFFFFF and no parent. Empty strings are what the
field extractors treat as absent (rendered "<NA>", as Falco renders a missing thread), so
conditions such as `proc.name in (...)` or `container.id != host` stay false rather than
matching a made-up value. `is_placeholder()` tells them apart.

Not thread safe: one enrich thread owns the table (reconcile included).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterator

from sentinel.config import SensorConfig
from sentinel.enrich.clock import wall_clock
from sentinel.enrich.container import HOST, CgroupResolver
from sentinel.enrich.procfs import ProcFS, same_start, sees_host_pids
from sentinel.enrich.users import UserResolver
from sentinel.errors import ConfigError
from sentinel.events.model import Event, Process
from sentinel.log import get_logger

log = get_logger("sentinel.enrich.proctable")

UNKNOWN_ID = 0xFFFFFFFF
_SWEEP_SECONDS = 1.0
# Parents read from /proc while linking a child may themselves need their parent read;
# a chain deeper than this (or a cycle from racing pid reuse) is not followed further.
_MAX_LINK_DEPTH = 64
# How far into the live entries eviction looks for one without children.
_LEAF_SCAN = 64
# How many exited entries with live children one trim moves aside before giving up (the
# count may then exceed process_exited_max until they go).
_TRIM_SCAN = 64
# Exits this close together share one recorded exit time (the first one's); the grace period
# is counted from the end of the run, so no entry goes early.
_EPOCH_SECONDS = 0.1
# Reconcile checks this many live entries per step (~10 ms: one stat read each), then lets
# events through for _SLICE_GAP seconds.
_RECONCILE_SLICE = 1024
_SLICE_GAP = 0.05


def placeholder(pid: int, start_ns: int = 0) -> Process:
    """A process we know nothing about: every descriptive field absent."""
    proc = Process(pid, start_ns)
    proc.container_id = ""
    proc.uid = proc.gid = proc.euid = proc.egid = UNKNOWN_ID
    proc.exited = True
    return proc


def is_placeholder(proc: Process) -> bool:
    return proc.exited and not proc.comm and not proc.container_id


class ProcessTable:
    """Bounded table of processes keyed by exec id, with an index by pid for the live image."""

    def __init__(
        self,
        config: SensorConfig | None = None,
        procfs: ProcFS | None = None,
        users: UserResolver | None = None,
        cgroups: CgroupResolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = config if config is not None else SensorConfig()
        if config.process_table_max < 1:
            raise ConfigError("sensor.process_table_max must be at least 1, not %d" % config.process_table_max)
        self.max_entries = config.process_table_max
        self.exit_grace_seconds = config.process_exit_grace_seconds
        if config.process_exited_max < 0:
            raise ConfigError("sensor.process_exited_max must be at least 0, not %d" % config.process_exited_max)
        self.exited_max = config.process_exited_max
        self.reconcile_seconds = config.proc_reconcile_seconds
        self.procfs = procfs if procfs is not None else ProcFS(env_keep=config.env_keep)
        self.users = users if users is not None else UserResolver(proc_root=self.procfs.root)
        self.cgroups = cgroups if cgroups is not None else CgroupResolver(self.procfs.root)
        self._clock = clock
        if self.procfs.root == "/proc" and not sees_host_pids():
            log.warning(
                "proctable.foreign_pid_namespace",
                reason="/proc does not show the host's pids (run with the host pid namespace); "
                "processes read from it will not match kernel records",
            )
        self._live: dict[int, Process] = {}  # pid -> current image; order: last exec/fork
        self._exited: dict[tuple[int, int], Process] = {}  # exec id -> exited process
        # Exit order, for the grace period and the count bound: the exec ids (an id may
        # already be gone from _exited: skipped when reached), and [start time, count] of
        # each run of exits within _EPOCH_SECONDS. No per-entry time or tuple (a retained
        # exited process costs its Process and its index entries), and the oldest is a
        # popleft (a dict finds its first entry by skipping every slot deleted before it:
        # ~3 us per exit at 8,192 entries).
        self._exit_order: deque[tuple[int, int]] = deque()
        self._exit_epochs: deque[list] = deque()
        self._last_exited: dict[int, Process] = {}  # pid -> its most recent exited process
        self._children: dict[Process, set[Process]] = {}  # live children of a stored process
        self._link_depth = 0
        self._next_sweep = 0.0
        self._next_reconcile = clock() + self.reconcile_seconds
        self.reconcile_slice = _RECONCILE_SLICE
        self._pass: Iterator[None] | None = None
        self._reading_proc = False  # bootstrap or reconcile running: no nested reconcile
        self.hits = 0
        self.misses = 0
        self.refreshed = 0
        self.evicted = 0
        self.trimmed = 0  # exited entries dropped early by process_exited_max
        self.reconciled = 0
        self.placeholders = 0

    # ---- queries -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._live) + len(self._exited)

    def processes(self) -> Iterator[Process]:
        """Live processes, in order of their last exec or fork."""
        return iter(list(self._live.values()))

    def stats(self) -> dict[str, int]:
        """Counters for `sentinel status` and the metrics endpoint."""
        return {
            "live": len(self._live),
            "exited": len(self._exited),
            "hits": self.hits,
            "misses": self.misses,
            "refreshed": self.refreshed,
            "evicted": self.evicted,
            "trimmed": self.trimmed,
            "reconciled": self.reconciled,
            "placeholders": self.placeholders,
        }

    def lookup(self, pid: int, start_ns: int = 0) -> Process:
        """The process `pid` (the one started at `start_ns` when given); never raises.

        A mismatching start time means pid reuse or a missed exec/fork: /proc is read
        again. A process that is gone everywhere yields an unstored placeholder.
        """
        proc = self._live.get(pid)
        if proc is not None:
            if not start_ns or proc.start_ns == start_ns or self._adopt_start(proc, start_ns):
                self.hits += 1
                return proc
            if start_ns < proc.start_ns:
                # A late event of an older process that had this pid.
                older = self._find_exited(pid, start_ns)
                if older is not None:
                    self.hits += 1
                    return older
                return self._placeholder(pid, start_ns)
            self.refreshed += 1
            return self._refresh(pid, start_ns)
        if start_ns:
            exited = self._find_exited(pid, start_ns)
            if exited is not None:
                self.hits += 1
                return exited
        self.misses += 1
        found = self._refresh(pid, start_ns)
        if not start_ns and is_placeholder(found):
            return self._last_exited.get(pid, found)
        return found

    # ---- kernel records ------------------------------------------------------------------

    def on_exec(self, event: Event, parent_start_ns: int = 0, cgroups_key: int = 0) -> Process:
        """Install `event.proc` as the current image of its pid; returns the stored Process.

        Fills what the kernel record lacks (cgroup path and container id, user names) and
        links `parent` to the current image of `ppid` (read from /proc if unknown).
        `cgroups_key` (the kernel's css_set of the task, 0 if unknown) lets the cgroup be
        looked up instead of read.
        """
        proc = event.proc
        pid = proc.pid
        now = self._clock()
        previous = self._live.get(pid)
        if previous is not None and not (
            previous.start_ns == proc.start_ns or same_start(previous.start_ns, proc.start_ns)
        ):
            self._retire(previous, now)  # the pid was reused: its exit was missed
            previous = None
        if previous is not None and proc.from_proc:
            proc.start_ns = previous.start_ns  # ours is at least as precise as /proc's ticks
        proc.comm = sys.intern(proc.comm)
        proc.exepath = sys.intern(proc.exepath)
        proc.cwd = sys.intern(proc.cwd)
        self._fill_cgroup(proc, previous, cgroups_key)
        if not proc.cwd and previous is not None:
            proc.cwd = previous.cwd
        self._fill_names(proc)
        zombie = proc.from_proc and proc.exited  # /proc still lists it until it is reaped
        proc.exited = False
        proc.parent = parent = self._parent_of(proc, parent_start_ns)
        if parent is not None and parent.pid == proc.ppid:
            proc.ppid = parent.pid  # one int object for the whole family, not one per process

        if previous is not None:
            self._unlink_from_parent(previous)
            del self._live[pid]
            children = self._children.pop(previous, None)
            if children:
                for child in children:
                    if child.parent is previous:
                        child.parent = proc
                self._children[proc] = children
        self._live[pid] = proc
        self._link_to_parent(proc)
        event.proc = proc
        if zombie:
            self._retire(proc, now)
        self._after_insert(now)
        return proc

    def on_fork(
        self,
        parent_pid: int,
        parent_start_ns: int,
        child_pid: int,
        child_start_ns: int,
        is_thread: bool,
        boot_ns: int = 0,
        vpid: int = 0,
    ) -> Process | None:
        """A new process as a copy of its parent's image; None for a new thread.

        `boot_ns` (the event time) stands in for the child's start when the record lacks it.
        """
        if is_thread:
            return None
        start_ns = child_start_ns or boot_ns
        now = self._clock()
        existing = self._live.get(child_pid)
        if existing is not None:
            if existing.start_ns == start_ns or self._adopt_start(existing, start_ns):
                return existing  # already read from /proc before this record arrived
            self._retire(existing, now)
        parent = self.lookup(parent_pid, parent_start_ns)
        if is_placeholder(parent):
            # The parent is gone: the child itself may still be readable.
            fresh = self.procfs.read(child_pid)
            if fresh is not None and same_start(fresh.start_ns, start_ns):
                fresh.start_ns = start_ns
                return self.on_exec(Event("execve", fresh, boot_ns=start_ns))
        child = parent.copy_for_fork(child_pid, start_ns)
        child.ppid = parent_pid
        child.vpid = vpid or child_pid
        child.is_vpgid_leader = False
        if is_placeholder(parent):
            child.parent = None
        self._live[child_pid] = child
        self._link_to_parent(child)
        self._after_insert(now)
        return child

    def on_exit(self, pid: int, start_ns: int, exit_code: int, exit_signal: int) -> Process | None:
        """Mark the process exited; it stays resolvable for late events and ancestry."""
        proc = self._live.get(pid)
        if proc is None or not (not start_ns or proc.start_ns == start_ns or self._adopt_start(proc, start_ns)):
            proc = self._find_exited(pid, start_ns) if start_ns else self._last_exited.get(pid)
            if proc is None:
                return None
        else:
            self._retire(proc, self._clock())
        proc.exit_code = exit_code
        proc.exit_signal = exit_signal
        return proc

    def on_chdir(self, pid: int, start_ns: int, cwd: str) -> Process:
        proc = self.lookup(pid, start_ns)
        proc.cwd = sys.intern(cwd)
        return proc

    def update_creds(
        self,
        pid: int,
        start_ns: int,
        uid: int | None = None,
        euid: int | None = None,
        gid: int | None = None,
        egid: int | None = None,
    ) -> Process:
        """Apply a setuid/setgid-family change in place (None: unchanged); names follow."""
        proc = self.lookup(pid, start_ns)
        if is_placeholder(proc):
            return proc
        if uid is not None:
            proc.uid = uid
        if euid is not None:
            proc.euid = euid
        if gid is not None:
            proc.gid = gid
        if egid is not None:
            proc.egid = egid
        self._fill_names(proc)
        return proc

    # ---- /proc ---------------------------------------------------------------------------

    def bootstrap(self) -> list[Event]:
        """Install every running process, oldest first so that parents precede children.

        Returns the synthetic exec events (type "execve", `proc.from_proc` set, stamped with
        the process's start time) in the order they were applied, for a pipeline that wants
        to record the starting state.
        """
        to_utc_ns = wall_clock().boot_to_utc_ns
        fresh = [proc for proc in map(self.procfs.read, self.procfs.pids()) if proc is not None]
        fresh.sort(key=lambda proc: (proc.start_ns, proc.pid))
        events = []
        self._reading_proc = True
        try:
            for proc in fresh:
                event = Event("execve", proc, boot_ns=proc.start_ns, time_ns=to_utc_ns(proc.start_ns))
                self.on_exec(event)
                events.append(event)
        finally:
            self._reading_proc = False
        self._next_reconcile = self._clock() + self.reconcile_seconds  # /proc was just read
        return events

    def maybe_reconcile(self) -> bool:
        """Advance the periodic reconcile by one slice when it is due; True if it did work.

        A pass starts every `proc_reconcile_seconds` and checks `reconcile_slice` entries
        per call, `_SLICE_GAP` apart, so the events queued meanwhile never wait long. The
        table calls this itself after each fork or exec; an idle host needs the pipeline's
        housekeeping to call it."""
        now = self._clock()
        if now < self._next_reconcile or self._reading_proc:
            return False
        if self._pass is None:
            self._pass = self._reconcile_pass(self.reconcile_slice)
        self._reading_proc = True
        try:
            next(self._pass)
            self._next_reconcile = now + _SLICE_GAP
        except StopIteration:
            self._pass = None
            self._next_reconcile = now + self.reconcile_seconds
        finally:
            self._reading_proc = False
        return True

    def reconcile(self) -> int:
        """A whole reconcile pass at once (abandoning a partial one); how many entries changed."""
        self._pass = None
        self._reading_proc = True
        try:
            next(self._reconcile_pass(None))
        except StopIteration as done:
            self._next_reconcile = self._clock() + self.reconcile_seconds
            return done.value
        finally:
            self._reading_proc = False
        raise AssertionError("an unsliced pass does not pause")

    def _reconcile_pass(self, slice_size: int | None) -> Iterator[None]:
        """Make the live set agree with /proc: retire entries whose process is gone (or
        whose pid now holds another process), then add processes we never heard of.
        Pauses (yields) every `slice_size` entries; returns how many entries changed."""
        changed = 0
        checked = 0
        for pid, proc in list(self._live.items()):
            if self._live.get(pid) is not proc:
                continue  # replaced or retired by events handled during a pause
            start_ns = self.procfs.start_ns(pid)
            if start_ns is None or not same_start(start_ns, proc.start_ns):
                self._retire(proc, self._clock())
                changed += 1
            checked += 1
            if slice_size is not None and checked % slice_size == 0:
                yield
        present = self.procfs.pids()
        missing = [proc for proc in map(self.procfs.read, [pid for pid in present if pid not in self._live]) if proc]
        missing.sort(key=lambda proc: (proc.start_ns, proc.pid))
        for proc in missing:
            if proc.pid in self._live:
                continue  # installed meanwhile as the parent of another
            if proc.exited and self._find_exited(proc.pid, proc.start_ns) is not None:
                continue  # a zombie we already know has exited
            self.on_exec(Event("execve", proc, boot_ns=proc.start_ns))
            changed += 1
        self.reconciled += changed
        self._sweep(self._clock())
        return changed

    # ---- internals -----------------------------------------------------------------------

    def _adopt_start(self, proc: Process, start_ns: int) -> bool:
        """Same process at tick precision? Then keep the kernel's precise start."""
        if not same_start(proc.start_ns, start_ns):
            return False
        if proc.from_proc:
            proc.start_ns = start_ns
        return True

    def _find_exited(self, pid: int, start_ns: int) -> Process | None:
        exited = self._exited.get((pid, start_ns))
        if exited is not None:
            return exited
        last = self._last_exited.get(pid)
        if last is not None and same_start(last.start_ns, start_ns):
            return last
        return None

    def _placeholder(self, pid: int, start_ns: int) -> Process:
        self.placeholders += 1
        return placeholder(pid, start_ns)

    def _refresh(self, pid: int, start_ns: int) -> Process:
        """Read `pid` from /proc and install it; the requested process or a placeholder."""
        fresh = self.procfs.read(pid)
        if fresh is None:
            return self._placeholder(pid, start_ns)
        if start_ns:
            if same_start(fresh.start_ns, start_ns):
                fresh.start_ns = start_ns  # the kernel's value is the precise one
            elif fresh.start_ns < start_ns:
                # /proc shows an older process than the kernel named: the one asked for
                # already exited and this read raced with it. Leave the table alone.
                return self._placeholder(pid, start_ns)
            else:
                # The pid now holds a newer process: worth knowing, but not the one asked for.
                self.on_exec(Event("execve", fresh, boot_ns=fresh.start_ns))
                return self._placeholder(pid, start_ns)
        return self.on_exec(Event("execve", fresh, boot_ns=fresh.start_ns))

    def _parent_of(self, proc: Process, parent_start_ns: int) -> Process | None:
        ppid = proc.ppid
        if ppid <= 0 or ppid == proc.pid or self._link_depth >= _MAX_LINK_DEPTH:
            return None
        self._link_depth += 1
        try:
            parent = self.lookup(ppid, parent_start_ns)
        finally:
            self._link_depth -= 1
        return None if is_placeholder(parent) else parent

    def _fill_cgroup(self, proc: Process, previous: Process | None, cgroups_key: int = 0) -> None:
        if proc.cgroup:
            return
        info = self.cgroups.resolve(proc.pid, proc.cgroup_id, cgroups_key)
        if info is not None:
            proc.cgroup = info.path
            proc.container_id = info.container_id
        elif previous is not None:
            # Already gone: its fork-time copy is the best we have.
            proc.cgroup = previous.cgroup
            proc.container_id = previous.container_id

    def _fill_names(self, proc: Process) -> None:
        # The real ids, as the field registry's user.uid/user.name and group.gid/group.name.
        proc.user_name, proc.group_name, proc.login_name = self.users.names(
            proc.pid, proc.uid, proc.gid, proc.loginuid, proc.container_id == HOST  # on_host
        )

    def _link_to_parent(self, proc: Process) -> None:
        parent = proc.parent
        if parent is not None and not parent.exited:
            children = self._children.get(parent)
            if children is None:
                self._children[parent] = {proc}
            else:
                children.add(proc)

    def _unlink_from_parent(self, proc: Process) -> None:
        parent = proc.parent
        if parent is None:
            return
        children = self._children.get(parent)
        if children is not None:
            children.discard(proc)
            if not children:
                del self._children[parent]

    def _retire(self, proc: Process, now: float) -> None:
        """Live -> exited."""
        del self._live[proc.pid]
        proc.exited = True
        self._unlink_from_parent(proc)
        key = (proc.pid, proc.start_ns)
        self._exited[key] = proc
        self._last_exited[proc.pid] = proc
        self._queue_exited(key, now)
        if now >= self._next_sweep:
            self._sweep(now)
        if len(self._exited) > self.exited_max:
            self._trim_exited(key, now)

    def _queue_exited(self, key: tuple[int, int], now: float) -> None:
        """Append `key` to the exit order, in the run of exits of `now`."""
        self._exit_order.append(key)
        epochs = self._exit_epochs
        if epochs and now - epochs[-1][0] < _EPOCH_SECONDS:
            epochs[-1][1] += 1
        else:
            epochs.append([now, 1])

    def _pop_oldest(self) -> tuple[tuple[int, int], Process | None]:
        """The oldest exec id of the exit order, taken out of it, and its exited process
        (None when the entry is already gone)."""
        key = self._exit_order.popleft()
        epoch = self._exit_epochs[0]
        epoch[1] -= 1
        if not epoch[1]:
            self._exit_epochs.popleft()
        return key, self._exited.get(key)

    def _trim_exited(self, newest: tuple[int, int], now: float) -> None:
        """Back to `exited_max` exited entries, oldest first, never `newest` (its exit event
        is being built). One with live children moves to the young end instead: their
        clone and exec records still look it up. A trimmed process keeps its `parent`:
        events still in the pipeline may render its ancestry."""
        moved = 0
        while len(self._exited) > self.exited_max and moved < _TRIM_SCAN and self._exit_order[0] != newest:
            key, proc = self._pop_oldest()
            if proc is None:
                continue
            if proc in self._children:
                self._queue_exited(key, now)
                moved += 1
            else:
                self._forget_exited(key, proc)
                self.trimmed += 1

    def _forget_exited(self, key: tuple[int, int], proc: Process) -> None:
        del self._exited[key]
        if self._last_exited.get(proc.pid) is proc:
            del self._last_exited[proc.pid]

    def _drop_exited(self, key: tuple[int, int], proc: Process) -> None:
        self._forget_exited(key, proc)
        if self._children.pop(proc, None) is None:
            proc.parent = None  # nothing live needs its ancestry any more

    def _sweep(self, now: float) -> None:
        """Drop exited entries past their grace period that have no live children (those
        with live children go to the young end of the exit order, to be looked at again)."""
        self._next_sweep = now + _SWEEP_SECONDS
        deadline = now - self.exit_grace_seconds - _EPOCH_SECONDS
        epochs = self._exit_epochs
        while epochs and epochs[0][0] <= deadline:
            key, proc = self._pop_oldest()
            if proc is None:
                continue
            if proc in self._children:
                self._queue_exited(key, now)
            else:
                self._drop_exited(key, proc)

    def _after_insert(self, now: float) -> None:
        if now >= self._next_sweep and self._exited:
            self._sweep(now)
        excess = len(self._live) + len(self._exited) - self.max_entries
        while excess > 0:
            if self._exited:
                key, proc = self._pop_oldest()
                if proc is None:
                    continue
                self._drop_exited(key, proc)
            else:
                proc = self._oldest_live_leaf()
                del self._live[proc.pid]
                self._unlink_from_parent(proc)
                self._children.pop(proc, None)
            self.evicted += 1
            excess -= 1
        if now >= self._next_reconcile:
            self.maybe_reconcile()

    def _oldest_live_leaf(self) -> Process:
        """The live process to evict: the oldest without live children among the first few
        (parents are what new children link to; losing one costs a /proc read per child)."""
        oldest = None
        for scanned, proc in enumerate(self._live.values()):
            if oldest is None:
                oldest = proc
            if proc not in self._children:
                return proc
            if scanned >= _LEAF_SCAN:
                break
        assert oldest is not None
        return oldest
