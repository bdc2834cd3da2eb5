"""The kernel half of enforcement: bpf/enforce.bpf.c (+ lsm.bpf.c), fanotify marks and kills.

`KernelEnforcer` turns DenyEntry objects into map entries or fanotify marks with the
mechanism the probes chose (sentinel.kernel.probe.enforcement_mechanisms), attaches each
program only while a map it reads has entries, and kills processes through the snt_kill
map (checked at the next syscall entry) with pidfd_send_signal as a backstop for sleepers.

Scopes: an entry's uid/cgroup scope goes into the map value, which holds the scopes of
every entry sharing its key (the programs check the caller's real uid and cgroup v2 id
against them); a scope cgroup is resolved to its id when installed and re-resolved with
the paths. Inode entries (exec_ino, open_ino) are keys with the device given, or dev 0 for
any device: the programs look a file up by (ino, dev) and then by (ino, 0). fanotify can
only mark a file reached by a path, so an inode deny uses the kill-at-exec / kill-at-open
programs on this host (and the LSM hooks where they load).

Replaced paths: a PathWatcher (inotify on the directories of the files, directories and
scope cgroups the entries name) calls refresh() as soon as one changes; refresh() moves
each entry to the object its path names now. A 30 s periodic refresh is the backstop.

Lifetime: cgroup programs are attached with the legacy call (BPF_F_ALLOW_MULTI) and would
outlive the agent, so `close()` detaches them (fail-open) unless keep_on_exit: then the
cgroup programs stay attached, and the maps and the exec-kill raw tracepoint link are
pinned under PIN_DIR, so exec, open-by-directory and network denies stay active until the
next agent starts and removes them (hygiene.cleanup_leftovers) before installing its own.
fanotify marks (specific files) and the kill map's tracepoint do not survive the process.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import select
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sentinel.actions.enforce_plan import ANY_UID, DenyEntry, Scope
from sentinel.errors import KernelError
from sentinel.kernel.fanotify import Denial, FanotifyDenier
from sentinel.log import get_logger

log = get_logger("sentinel.actions.enforce_kernel")

BPF_F_ALLOW_MULTI = 1 << 1
PIN_DIR = "/sys/fs/bpf/sentinel"
BACKSTOP_SECONDS = 0.05  # a process still alive this long after a kill decision gets pidfd_send_signal
# Attaching the sys_enter program costs ~13 ms (every thread gets the syscall-tracepoint
# flag): it stays attached this long after the kill map empties, so a burst pays it once.
KILL_CHECK_LINGER_SECONDS = 2.0

# cgroup sock_addr programs: (function, bcc attach type name)
SOCK_ADDR_PROGRAMS = (
    ("snt_connect4", "CGROUP_INET4_CONNECT"),
    ("snt_connect6", "CGROUP_INET6_CONNECT"),
    ("snt_sendmsg4", "CGROUP_UDP4_SENDMSG"),
    ("snt_sendmsg6", "CGROUP_UDP6_SENDMSG"),
)
OPEN_EXIT_TRACEPOINTS = ("syscalls:sys_exit_open", "syscalls:sys_exit_openat", "syscalls:sys_exit_openat2", "syscalls:sys_exit_creat")
PINNED_MAPS = ("snt_deny_exec_ino", "snt_deny_exec_dir", "snt_deny_exec_comm", "snt_deny_open_ino",
               "snt_deny_open_dir", "snt_deny_net", "snt_enf_config", "snt_allow_exe")


# struct snt_deny_value in bpf/enforce.bpf.c
MAX_SCOPES = 8
ANY_UID_KERNEL = 0xFFFFFFFF
SCOPE_BELOW = 1
EVERYONE_KERNEL = (0, ANY_UID_KERNEL, 0, 0)


def _fanotify_kind(entry: DenyEntry) -> str:
    return "exec" if entry.kind == "exec_file" else "open"


def _net_contains(outer_key: object, inner_key: object) -> bool:
    """Whether the snt_deny_net key `outer_key` covers `inner_key` (same port bytes, shorter
    or equal prefix of the address)."""
    (outer_bits, outer), (inner_bits, inner) = outer_key, inner_key  # type: ignore[misc]
    if outer[:2] != inner[:2] or outer_bits > inner_bits:
        return False
    address_bits = outer_bits - 16
    outer_net = ipaddress.IPv6Network((outer[2:18], address_bits), strict=False)
    return ipaddress.IPv6Address(inner[2:18]) in outer_net


def _scopes_text(value) -> str:
    """A deny value's scopes as `sentinel enforce list` shows them."""
    if not value.nscopes:
        return "everyone"
    parts = []
    for slot in value.scopes[:value.nscopes]:
        who = [] if slot.uid == ANY_UID_KERNEL else ["uid=%d" % slot.uid]
        if slot.cgroup_id:
            who.append("%s=%d" % ("below-cgroup" if slot.flags & SCOPE_BELOW else "cgroup", slot.cgroup_id))
        parts.append("+".join(who) or "everyone")
    return ",".join(parts)


def kernel_dev(st_dev: int) -> int:
    """The kernel's dev_t (MKDEV: major << 20 | minor) of a stat() st_dev."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def net_key_bytes(network: str, port: int) -> tuple[int, bytes]:
    """(prefixlen, data) of an snt_deny_net key: port (network order) + 16-byte address."""
    net = ipaddress.ip_network(network, strict=False)
    if net.version == 4:
        address = ipaddress.IPv6Address("::ffff:" + str(net.network_address)).packed
        bits = 96 + net.prefixlen
    else:
        address, bits = net.network_address.packed, net.prefixlen
    if port:
        return 16 + bits, struct.pack("!H", port) + address + b"\0\0"
    return 16 + bits, b"\0\0" + address + b"\0\0"


def process_start_ns(pid: int) -> int | None:
    """The process's start time as the kernel's start_boottime, to tick precision (from /proc)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19]) * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))


def process_state(pid: int) -> str:
    """The one-letter state of /proc/<pid>/stat (R running, S/D asleep, T stopped), "" if gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def same_process(pid: int, start_ns: int) -> bool:
    """True when `pid` is still the process image that started at `start_ns` (not a reused pid)."""
    seen = process_start_ns(pid)
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return seen is not None and abs(seen - start_ns) < 2 * tick


@dataclass
class KillResult:
    pid: int
    start_ns: int
    decided_ns: int  # CLOCK_MONOTONIC when the kill was decided
    dead_ns: int = 0  # CLOCK_MONOTONIC when the process was seen gone
    backstop: bool = False  # pidfd_send_signal was needed
    event_time_ns: int = 0  # wall clock of the event that led to the kill (0: none)
    dead_time_ns: int = 0  # wall clock when the process was seen gone
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def latency_ms(self) -> float:
        return (self.dead_ns - self.decided_ns) / 1e6 if self.dead_ns else -1.0

    @property
    def event_to_death_ms(self) -> float:
        return (self.dead_time_ns - self.event_time_ns) / 1e6 if self.dead_time_ns and self.event_time_ns else -1.0


class KernelEnforcer:
    """Loads the enforcement programs and keeps maps, marks and attachments in step with entries."""

    def __init__(
        self,
        mechanisms: dict[str, tuple[str, ...]],
        *,
        agent_pid: int | None = None,
        cgroup_path: str | None = None,
        keep_on_exit: bool = False,
        on_denial: Callable[[Denial], None] | None = None,
        on_kill_done: Callable[[KillResult], None] | None = None,
        pin_dir: str = PIN_DIR,
        network_scopes: bool | None = None,
    ) -> None:
        """network_scopes: whether the cgroup sock_addr programs check scopes (they need
        the uid/cgroup helpers there); None tries, and falls back to unscoped programs."""
        from sentinel.kernel.probe import cgroup2_mount

        self.mechanisms = mechanisms
        self.agent_pid = agent_pid or os.getpid()
        self.lsm = "lsm" in mechanisms.get("deny_exec", ())
        self.cgroup_root = cgroup2_mount()  # scope cgroups are paths under it
        self.cgroup_path = cgroup_path or self.cgroup_root  # where the sock_addr programs attach
        self.keep_on_exit = keep_on_exit
        self.pin_dir = pin_dir
        self.on_kill_done = on_kill_done
        self._lock = threading.RLock()
        # entry -> [(map name, key, kernel scope)] as installed now
        self._installed: dict[DenyEntry, list[tuple[str, object, tuple[int, int, int, int]]]] = {}
        # (map name, key) -> {entry: kernel scope}: the entries a kernel key serves
        self._holders: dict[tuple[str, object], dict[DenyEntry, tuple[int, int, int, int]]] = {}
        self._watcher = None
        self._attached: set[str] = set()
        self._cgroup_fd: int | None = None
        self._sock_fns: dict[str, object] = {}
        self._kills: dict[int, KillResult] = {}
        self._last_kill = 0.0  # monotonic time the kill map last had an entry
        self._pidfds: dict[int, int] = {}  # pidfd -> pid
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._closed = False
        self.bpf = self._load(network_scopes)
        self._write_config()
        self.fanotify: FanotifyDenier | None = None
        if not self.lsm and "fanotify" in mechanisms.get("deny_exec", ()) + mechanisms.get("deny_open", ()):
            self.fanotify = FanotifyDenier(on_denial or (lambda denial: None), frozenset({self.agent_pid}))
        self._reaper = threading.Thread(target=self._reap_loop, name="sentinel-kill-reaper", daemon=True)
        self._reaper.start()
        from sentinel.actions.enforce_watch import PathWatcher

        self._watcher = PathWatcher(self.refresh)

    # ------------------------------------------------------------------ loading
    def _load(self, network_scopes: bool | None):
        """The programs, with scope checks in the cgroup sock_addr programs where the kernel
        gives them the caller's uid and cgroup (every program type has them since 6.1);
        where it does not, the same programs without (scoped network denies are refused)."""
        self.network_scopes = network_scopes is not False or self.lsm
        try:
            return self._compile_and_load()
        except KernelError as exc:
            if network_scopes is not None or self.lsm:
                raise
            log.warning("enforce.network_scopes_unavailable", error=str(exc))
            self.network_scopes = False
            return self._compile_and_load()

    def _compile_and_load(self):
        from bcc import BPF

        from sentinel.kernel import loader

        sources = ("enforce.bpf.c", "lsm.bpf.c") if self.lsm else ("enforce.bpf.c",)
        directory = loader.bpf_dir()
        text = loader.compose_sources(sources, directory)
        cflags = ["-I%s" % (directory / "include"), "-Wno-unused-function"]
        if not self.network_scopes:
            cflags.append("-DSNT_NET_UNSCOPED")
        bpf = loader.compile_text(text, cflags)
        try:
            # Loaded now, so attaching later (the first entry, the first kill) takes no compile.
            bpf.load_func(b"snt_exec_kill", BPF.RAW_TRACEPOINT)
            bpf.load_func(b"snt_kill_check", BPF.RAW_TRACEPOINT)
            bpf.load_func(b"snt_open_kill", BPF.TRACEPOINT)
            if not self.lsm:
                from bcc import BPFAttachType

                for name, attach in SOCK_ADDR_PROGRAMS:
                    attach_type = getattr(BPFAttachType, attach)
                    self._sock_fns[name] = (bpf.load_func(name.encode(), BPF.CGROUP_SOCK_ADDR, attach_type=attach_type), attach_type)
        except Exception as exc:
            bpf.cleanup()
            raise KernelError("enforcement programs did not load: %s" % exc) from None
        return bpf

    def _write_config(self) -> None:
        table = self.bpf[b"snt_enf_config"]
        value = table.Leaf()
        value.agent_pid = self.agent_pid
        table[ctypes.c_int(0)] = value

    # ------------------------------------------------------------------ entries
    def mechanism_for(self, entry: DenyEntry) -> str:
        """The mechanism this host uses for one entry (shown by `sentinel enforce list`)."""
        if self.lsm:
            return "lsm"
        if entry.kind == "net":
            return "cgroup-sock-addr"
        if entry.kind in ("exec_file", "open_file") and self.fanotify is not None:
            wanted = "deny_exec" if entry.kind == "exec_file" else "deny_open"
            if "fanotify" in self.mechanisms.get(wanted, ()):
                return "fanotify"
        return "kill-at-exec" if entry.kind.startswith("exec") else "kill-at-open"

    def add(self, entry: DenyEntry) -> None:
        with self._lock:
            if entry in self._installed:
                return
            mechanism = self.mechanism_for(entry)
            if entry.kind == "net" and not entry.scope.everyone and not self.network_scopes:
                raise KernelError("%s: this kernel's cgroup sock_addr programs cannot read the caller's uid and cgroup" % entry)
            if mechanism == "fanotify":
                assert self.fanotify is not None
                self.fanotify.deny(_fanotify_kind(entry), entry.target, entry.scope)
                self._installed[entry] = []
            else:
                try:
                    self._install(entry, self._map_entries(entry))
                except KernelError:
                    self._uninstall(entry)  # the key keeps the scopes it had
                    del self._installed[entry]
                    raise
            self._sync_attachments()
            log.info("enforce.entry_added", entry=str(entry), mechanism=mechanism)
        self._watch_paths()

    def remove(self, entry: DenyEntry) -> None:
        with self._lock:
            keys = self._installed.get(entry)
            if keys is None:
                return
            if self.mechanism_for(entry) == "fanotify" and self.fanotify is not None:
                self.fanotify.allow(_fanotify_kind(entry), entry.target, entry.scope)
            self._uninstall(entry)
            del self._installed[entry]
            self._sync_attachments()
            log.info("enforce.entry_removed", entry=str(entry))
        self._watch_paths()

    def entries(self) -> list[DenyEntry]:
        with self._lock:
            return sorted(self._installed)

    def refresh(self) -> None:
        """Re-resolve what names a kernel object by path (files, directories, scope cgroups):
        a replaced file or directory, or a recreated cgroup, is followed."""
        with self._lock:
            for entry in list(self._installed):
                if self.mechanism_for(entry) == "fanotify":
                    continue
                fresh = self._map_entries(entry)
                if fresh != self._installed[entry]:
                    self._uninstall(entry)
                    try:
                        self._install(entry, fresh)
                    except KernelError as exc:
                        self._uninstall(entry)
                        log.error("enforce.entry_lost", entry=str(entry), error=str(exc))
            self._sync_attachments()
        if self.fanotify is not None:
            self.fanotify.refresh()
        self._watch_paths()

    def watched_paths(self) -> set[str]:
        """Paths whose replacement changes what is enforced (for the inotify watcher)."""
        with self._lock:
            paths = set()
            for entry in self._installed:
                if entry.kind in ("exec_file", "exec_dir", "open_file", "open_dir"):
                    paths.add(entry.target)
                if entry.scope.cgroup and self.cgroup_root is not None:
                    paths.add(self.cgroup_root.rstrip("/") + entry.scope.cgroup)
            return paths

    def _watch_paths(self) -> None:
        watcher = self._watcher
        if watcher is not None:
            watcher.watch(self.watched_paths())

    # map entries: one kernel key can be needed by several entries (same file, different
    # scopes); its value holds the union of their scopes, rewritten on every change.
    def _install(self, entry: DenyEntry, found: list[tuple[str, object, tuple[int, int, int, int]]]) -> None:
        self._installed[entry] = found
        for map_name, key, kernel_scope in found:
            self._holders.setdefault((map_name, key), {})[entry] = kernel_scope
        self._rewrite({(map_name, key) for map_name, key, _ in found})

    def _uninstall(self, entry: DenyEntry) -> None:
        touched = set()
        for map_name, key, _ in self._installed.get(entry, []):
            holders = self._holders.get((map_name, key), {})
            holders.pop(entry, None)
            if not holders:
                self._holders.pop((map_name, key), None)
            touched.add((map_name, key))
        self._installed[entry] = []
        self._rewrite(touched)

    def _rewrite(self, keys: set[tuple[str, object]]) -> None:
        """Write (or delete) the value of each key from the scopes of the entries needing it.
        Network keys: the trie answers with the longest prefix only, so every net value also
        carries the scopes of the shorter prefixes (same port) that contain it."""
        if any(map_name == "snt_deny_net" for map_name, _ in keys):
            keys = set(keys) | {k for k in self._holders if k[0] == "snt_deny_net"}
        for map_name, key in sorted(keys, key=repr):
            holders = self._holders.get((map_name, key))
            if not holders:
                self._map_delete(map_name, key)
                continue
            scopes = set(holders.values())
            if map_name == "snt_deny_net":
                for (other_map, other_key), other in self._holders.items():
                    if other_map == "snt_deny_net" and _net_contains(other_key, key):
                        scopes |= set(other.values())
            self._map_set(map_name, key, scopes)

    def _kernel_scope(self, scope: Scope) -> tuple[int, int, int, int] | None:
        """(cgroup id, uid, cgroup level, flags) of a scope; None when its cgroup does not
        exist now (nobody can be in it: nothing to install until it appears)."""
        uid = ANY_UID_KERNEL if scope.uid == ANY_UID else scope.uid
        if not scope.cgroup:
            return (0, uid, 0, 0)
        if self.cgroup_root is None:
            raise KernelError("cannot scope a deny to cgroup %s: cgroup v2 is not mounted" % scope.cgroup)
        try:
            cgroup_id = os.stat(self.cgroup_root.rstrip("/") + scope.cgroup).st_ino
        except OSError:
            return None
        level = len([part for part in scope.cgroup.split("/") if part])
        return (cgroup_id, uid, level, SCOPE_BELOW if scope.below else 0)

    def _map_entries(self, entry: DenyEntry) -> list[tuple[str, object, tuple[int, int, int, int]]]:
        """(map name, key, kernel scope) of an entry as the system is now ([]: nothing to install)."""
        kernel_scope = self._kernel_scope(entry.scope)
        if kernel_scope is None:
            return []
        if entry.kind == "net":
            return [("snt_deny_net", net_key_bytes(entry.target, entry.port), kernel_scope)]
        if entry.kind == "exec_name":
            return [("snt_deny_exec_comm", entry.target.encode(), kernel_scope)]
        if entry.kind in ("exec_ino", "open_ino"):
            ino, _, dev = entry.target.partition(":")
            map_name = "snt_deny_exec_ino" if entry.kind == "exec_ino" else "snt_deny_open_ino"
            return [(map_name, (int(ino), int(dev or 0)), kernel_scope)]
        map_name = {"exec_file": "snt_deny_exec_ino", "exec_dir": "snt_deny_exec_dir",
                    "open_file": "snt_deny_open_ino", "open_dir": "snt_deny_open_dir"}[entry.kind]
        try:
            st = os.stat(entry.target)
        except OSError:
            return []  # not there now: refresh() adds it when it appears
        return [(map_name, (st.st_ino, kernel_dev(st.st_dev)), kernel_scope)]

    def _key(self, table, map_name: str, key: object):
        k = table.Key()
        if map_name == "snt_deny_net":
            prefixlen, data = key  # type: ignore[misc]
            k.prefixlen = prefixlen
            ctypes.memmove(ctypes.addressof(k) + type(k).data.offset, data, len(data))
        elif map_name == "snt_deny_exec_comm":
            ctypes.memmove(ctypes.addressof(k) + type(k).comm.offset, key, len(key))  # type: ignore[arg-type]
        else:
            k.ino, k.dev = key  # type: ignore[misc]
        return k

    def _map_set(self, map_name: str, key: object, scopes: set[tuple[int, int, int, int]]) -> None:
        table = self.bpf[map_name.encode()]
        k = self._key(table, map_name, key)
        value = table.Leaf()
        try:
            value.hits = table[k].hits  # keep the count across a scope change
        except KeyError:
            value.hits = 0
        if EVERYONE_KERNEL not in scopes:
            if len(scopes) > MAX_SCOPES:
                raise KernelError("%d scopes on one %s entry (at most %d)" % (len(scopes), map_name, MAX_SCOPES))
            for i, (cgroup_id, uid, level, flags) in enumerate(sorted(scopes)):
                slot = value.scopes[i]
                slot.cgroup_id, slot.uid, slot.cgroup_level, slot.flags = cgroup_id, uid, level, flags
            value.nscopes = len(scopes)
        table[k] = value

    def _map_delete(self, map_name: str, key: object) -> None:
        table = self.bpf[map_name.encode()]
        try:
            del table[self._key(table, map_name, key)]
        except KeyError:
            pass

    def set_allowed_exes(self, paths: tuple[str, ...]) -> None:
        """Executables the kill-at-exec and LSM programs never act on (config allow_exepaths)."""
        table = self.bpf[b"snt_allow_exe"]
        table.clear()
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            table[self._key(table, "snt_allow_exe", (st.st_ino, kernel_dev(st.st_dev)))] = ctypes.c_uint64(0)

    # ------------------------------------------------------------------ attachments
    def _sync_attachments(self) -> None:
        """Attach each program while its maps have entries; detach it when they are empty."""
        kinds = {entry.kind for entry, keys in self._installed.items() if keys}
        if self.lsm:
            wanted: set[str] = set()  # the LSM programs are attached for the object's lifetime
        else:
            wanted = set()
            if kinds & {"exec_name", "exec_dir", "exec_file", "exec_ino"}:
                wanted.add("exec_kill")
            if kinds & {"open_dir", "open_file", "open_ino"}:
                wanted.add("open_kill")
            if "net" in kinds:
                wanted.add("sock_addr")
        if self._kills:
            self._last_kill = time.monotonic()
        if self._kills or time.monotonic() - self._last_kill < KILL_CHECK_LINGER_SECONDS:
            wanted.add("kill_check")
        for name in sorted(wanted - self._attached):
            getattr(self, "_attach_" + name)()
            self._attached.add(name)
        for name in sorted(self._attached - wanted):
            getattr(self, "_detach_" + name)()
            self._attached.discard(name)

    def _attach_exec_kill(self) -> None:
        self.bpf.attach_raw_tracepoint(tp=b"sched_process_exec", fn_name=b"snt_exec_kill")

    def _detach_exec_kill(self) -> None:
        self.bpf.detach_raw_tracepoint(tp=b"sched_process_exec")

    def _attach_kill_check(self) -> None:
        self.bpf.attach_raw_tracepoint(tp=b"sys_enter", fn_name=b"snt_kill_check")

    def _detach_kill_check(self) -> None:
        self.bpf.detach_raw_tracepoint(tp=b"sys_enter")

    def _attach_open_kill(self) -> None:
        for tp in OPEN_EXIT_TRACEPOINTS:
            try:
                self.bpf.attach_tracepoint(tp=tp.encode(), fn_name=b"snt_open_kill")
            except Exception:  # open/creat do not exist on every architecture
                log.debug("enforce.tracepoint_missing", tracepoint=tp)

    def _detach_open_kill(self) -> None:
        for tp in OPEN_EXIT_TRACEPOINTS:
            try:
                self.bpf.detach_tracepoint(tp=tp.encode())
            except Exception:
                pass

    def _attach_sock_addr(self) -> None:
        from bcc import BPF

        if self.cgroup_path is None:
            raise KernelError("cannot deny network access: cgroup v2 is not mounted")
        self._cgroup_fd = os.open(self.cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        for fn, attach_type in self._sock_fns.values():
            BPF.attach_func(fn, self._cgroup_fd, attach_type, BPF_F_ALLOW_MULTI)

    def _detach_sock_addr(self) -> None:
        from bcc import BPF

        if self._cgroup_fd is None:
            return
        for fn, attach_type in self._sock_fns.values():
            try:
                BPF.detach_func(fn, self._cgroup_fd, attach_type)
            except Exception as exc:
                log.warning("enforce.detach_failed", error=str(exc))
        os.close(self._cgroup_fd)
        self._cgroup_fd = None

    # ------------------------------------------------------------------ kills
    def kill(self, pid: int, start_ns: int, event_time_ns: int = 0) -> KillResult:
        """Kill the process image (pid, start_ns): at its next syscall entry, or by pidfd.

        The caller has already checked safety; a pid that now belongs to another process
        (start time differs) is never signalled.
        """
        result = KillResult(pid, start_ns, time.monotonic_ns(), event_time_ns=event_time_ns)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            result.dead_ns = result.decided_ns
            result.done.set()
            return result
        if not same_process(pid, start_ns):
            os.close(pidfd)
            raise KernelError("pid %d is no longer the process to kill (pid reused)" % pid)
        with self._lock:
            table = self.bpf[b"snt_kill"]
            value = table.Leaf()
            value.start_ns = start_ns
            value.hits = 0
            table[ctypes.c_uint32(pid)] = value
            self._kills[pidfd] = result
            self._sync_attachments()
        if process_state(pid) in ("S", "D", "T", "t"):
            # Asleep or stopped: no syscall entry is coming soon, signal it now.
            result.backstop = True
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.write(self._wake_write, b"k")
        return result

    def _reap_loop(self) -> None:
        """Waits on the pidfds of processes being killed; signals the ones still alive after
        BACKSTOP_SECONDS (asleep: no syscall entry to catch) and forgets the dead."""
        while not self._closed:
            with self._lock:
                pending = dict(self._kills)
            fds = [self._wake_read, *pending]
            readable, _, _ = select.select(fds, [], [], BACKSTOP_SECONDS / 2)
            now = time.monotonic_ns()
            if not pending and "kill_check" in self._attached:
                with self._lock:
                    if not self._closed:
                        self._sync_attachments()  # detaches once the linger is over
            if self._wake_read in readable:
                try:
                    os.read(self._wake_read, 4096)
                except BlockingIOError:
                    pass
            for pidfd, result in pending.items():
                if pidfd in readable:
                    result.dead_ns = now
                    result.dead_time_ns = time.time_ns()
                    self._forget_kill(pidfd, result)
                elif not result.backstop and now - result.decided_ns > BACKSTOP_SECONDS * 1e9:
                    result.backstop = True
                    try:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def _forget_kill(self, pidfd: int, result: KillResult) -> None:
        with self._lock:
            self._kills.pop(pidfd, None)
            os.close(pidfd)
            if not any(r.pid == result.pid for r in self._kills.values()):
                try:
                    del self.bpf[b"snt_kill"][ctypes.c_uint32(result.pid)]
                except KeyError:
                    pass
            if not self._closed:
                self._sync_attachments()
        result.done.set()
        if self.on_kill_done is not None:
            self.on_kill_done(result)

    # ------------------------------------------------------------------ listing / lifetime
    def map_contents(self) -> dict[str, list[dict[str, object]]]:
        """Every entry of the deny and kill maps as the kernel holds them now, with hit counts."""
        out: dict[str, list[dict[str, object]]] = {}
        for map_name in ("snt_deny_exec_ino", "snt_deny_exec_dir", "snt_deny_open_ino", "snt_deny_open_dir"):
            out[map_name] = [{"ino": k.ino, "dev": "%d:%d" % (k.dev >> 20, k.dev & 0xFFFFF) if k.dev else "any",
                              "hits": v.hits, "scopes": _scopes_text(v)}
                             for k, v in self.bpf[map_name.encode()].items()]
        out["snt_deny_exec_comm"] = [{"comm": bytes(k.comm).rstrip(b"\0").decode(errors="replace"), "hits": v.hits,
                                      "scopes": _scopes_text(v)}
                                     for k, v in self.bpf[b"snt_deny_exec_comm"].items()]
        net = []
        for k, v in self.bpf[b"snt_deny_net"].items():
            data = bytes(k.data)
            port = struct.unpack("!H", data[:2])[0]
            address = ipaddress.IPv6Address(data[2:18])
            bits = k.prefixlen - 16
            if address.ipv4_mapped is not None and bits >= 96:
                target = "%s/%d" % (address.ipv4_mapped, bits - 96)
            else:
                target = "%s/%d" % (address, bits)
            net.append({"network": target, "port": port or "any", "hits": v.hits, "scopes": _scopes_text(v)})
        out["snt_deny_net"] = net
        out["snt_kill"] = [{"pid": k.value, "start_ns": v.start_ns, "hits": v.hits} for k, v in self.bpf[b"snt_kill"].items()]
        if self.fanotify is not None:
            out["fanotify"] = self.fanotify.entries()  # type: ignore[assignment]
        return out

    def attached(self) -> list[str]:
        return sorted(self._attached) + (["lsm"] if self.lsm else [])

    def close(self) -> list[str]:
        """Detach everything (fail-open), or with keep_on_exit pin what can outlive us.

        Returns what stays active in the kernel after this process exits.
        """
        if self._watcher is not None:
            self._watcher.close()  # first: its thread may be waiting for the lock to refresh
            self._watcher = None
        with self._lock:
            self._closed = True
            os.write(self._wake_write, b"x")
            kept: list[str] = []
            if self.fanotify is not None:
                self.fanotify.close()
            if self.keep_on_exit and not self.lsm:
                kept = self._pin()
                if "sock_addr" in self._attached and self._cgroup_fd is not None:
                    os.close(self._cgroup_fd)  # the programs stay attached to the cgroup
                    self._cgroup_fd = None
                    self._attached.discard("sock_addr")
            if "sock_addr" in self._attached:
                self._detach_sock_addr()
            self._attached.clear()
            for pidfd in list(self._kills):
                os.close(pidfd)
            self._kills.clear()
            self.bpf.cleanup()
        self._reaper.join(timeout=2)
        os.close(self._wake_read)
        os.close(self._wake_write)
        if kept:
            log.warning("enforce.kept_on_exit", kept=kept)
        return kept

    def take_over_pins(self) -> list[str]:
        """Unpin what an earlier agent kept (keep_on_exit) once this one enforces: its pinned
        programs and maps go away with their last reference."""
        removed = []
        if os.path.isdir(self.pin_dir):
            for name in sorted(os.listdir(self.pin_dir)):
                os.unlink(os.path.join(self.pin_dir, name))
                removed.append(name)
        if removed:
            log.info("enforce.pins_taken_over", pins=removed)
        return removed

    def _pin(self) -> list[str]:
        from bcc.libbcc import lib

        os.makedirs(self.pin_dir, exist_ok=True)
        kept = []
        for map_name in PINNED_MAPS:
            path = os.path.join(self.pin_dir, map_name)
            if lib.bpf_obj_pin(self.bpf[map_name.encode()].get_fd(), path.encode()) == 0:
                kept.append("map " + map_name)
        fd = self.bpf.raw_tracepoint_fds.get(b"sched_process_exec")
        if fd is not None:
            path = os.path.join(self.pin_dir, "snt_exec_kill_link")
            if lib.bpf_obj_pin(fd, path.encode()) == 0:
                kept.append("kill-at-exec (raw tracepoint link pinned)")
        if "sock_addr" in self._attached:
            kept.append("cgroup connect/sendmsg denies on %s" % self.cgroup_path)
        return kept
