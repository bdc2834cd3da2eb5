"""The sensor: loads sentinel's BPF object, attaches what the interest needs, yields Events.

Programs are declared as data (PROGRAMS): which function, which hook, for which event
types. The process lifecycle (PROCESS_LIFECYCLE) is always attached because the process
table needs it; everything else only when the rules ask for it. Filters live in BPF maps
that userspace fills; the C text is never generated.

    sensor = Sensor(config, interest, table)
    sensor.start()                  # compile, fill maps, attach, start polling
    for event in sensor.events():   # decoded Events; the table is kept up to date
        ...
    sensor.close()                  # detach everything
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass
from typing import Iterator

from sentinel.config import Config
from sentinel.errors import ConfigError, KernelError
from sentinel.events import abi, syscalls
from sentinel.events.decode import Decoder, ProcessTableLike
from sentinel.events.interest import PROCESS_LIFECYCLE, Interest, cgroup_classes, plan_open_filter
from sentinel.events.model import Event
from sentinel.kernel import loader
from sentinel.kernel import ringbuf
from sentinel.kernel.ringbuf import RingBufferReader
from sentinel.log import get_logger

log = get_logger("sentinel.sensor")

RAW_TRACEPOINT = "raw_tracepoint"
TRACEPOINT = "tracepoint"


@dataclass(frozen=True)
class Program:
    """One BPF program of bpf/*.bpf.c and the hook it attaches to."""

    name: str
    kind: str  # RAW_TRACEPOINT or TRACEPOINT
    target: str  # "sched_process_exec" or "syscalls:sys_enter_execve"
    event_types: frozenset[str]
    optional: bool = False  # a hook some kernels lack: skipped (and logged) when absent


_EXEC = frozenset({"execve", "execveat"})
_CLONE = frozenset({"clone", "clone3", "fork", "vfork"})
# The record opcodes that carry each event type not sent as a generic syscall record.
_OPS_OF_TYPE = {
    **{t: (abi.OP_EXEC, abi.OP_EXEC_FAILED) for t in _EXEC},
    **{t: (abi.OP_CLONE,) for t in _CLONE},
    "procexit": (abi.OP_EXIT,),
    "chdir": (abi.OP_CHDIR,),
    "fchdir": (abi.OP_CHDIR,),
    "compat_syscall": (abi.OP_COMPAT,),
    "io_uring_submit": (abi.OP_IO_URING,),
}


def urgent_ops(event_types: frozenset[str]) -> frozenset[int]:
    """Record opcodes that carry `event_types` (any other type is a generic syscall record)."""
    return frozenset(op for event_type in event_types for op in _OPS_OF_TYPE.get(event_type, (abi.OP_SYSCALL,)))

PROGRAMS: tuple[Program, ...] = (
    Program("snt_exec", RAW_TRACEPOINT, "sched_process_exec", _EXEC),
    Program("snt_execve_enter", TRACEPOINT, "syscalls:sys_enter_execve", _EXEC),
    Program("snt_execveat_enter", TRACEPOINT, "syscalls:sys_enter_execveat", _EXEC),
    Program("snt_execve_exit", TRACEPOINT, "syscalls:sys_exit_execve", _EXEC),
    Program("snt_execveat_exit", TRACEPOINT, "syscalls:sys_exit_execveat", _EXEC),
    Program("snt_fork", RAW_TRACEPOINT, "sched_process_fork", _CLONE),
    Program("snt_clone_enter", TRACEPOINT, "syscalls:sys_enter_clone", _CLONE),
    Program("snt_clone3_enter", TRACEPOINT, "syscalls:sys_enter_clone3", _CLONE),
    Program("snt_fork_enter", TRACEPOINT, "syscalls:sys_enter_fork", _CLONE),
    Program("snt_vfork_enter", TRACEPOINT, "syscalls:sys_enter_vfork", _CLONE),
    Program("snt_exit", RAW_TRACEPOINT, "sched_process_exit", frozenset({"procexit"})),
    Program("snt_chdir_exit", TRACEPOINT, "syscalls:sys_exit_chdir", frozenset({"chdir"})),
    Program("snt_fchdir_exit", TRACEPOINT, "syscalls:sys_exit_fchdir", frozenset({"fchdir"})),
    # file, network and privilege syscalls: one entry and one exit program attached to the
    # tracepoints of each syscall the rules want (sentinel.events.syscalls describes them);
    # a syscall the kernel does not have (openat2 before 5.6, fchmodat2 before 6.6) is skipped
    *(
        Program(name, TRACEPOINT, target, frozenset({spec.name}), optional=True)
        for spec in syscalls.SYSCALLS
        for name, target in zip(("snt_sys_enter", "snt_sys_exit"), syscalls.tracepoints(spec))
        if name == "snt_sys_exit" or not spec.flags & abi.DESC_ARGS_AT_EXIT
    ),
    Program(
        "snt_sys_thread_exit",
        TRACEPOINT,
        "sched:sched_process_exit",
        frozenset(s.name for s in syscalls.SYSCALLS if not s.flags & abi.DESC_ARGS_AT_EXIT),
    ),
    # the blind spots of syscalls:*
    Program("snt_compat_enter", RAW_TRACEPOINT, "sys_enter", frozenset({"compat_syscall"})),
    Program("snt_io_uring_submit", TRACEPOINT, "io_uring:io_uring_submit_req", frozenset({"io_uring_submit"}), True),
)


def programs_for(event_types: frozenset[str]) -> tuple[Program, ...]:
    """The programs needed for `event_types` plus the always-on process lifecycle."""
    wanted = event_types | PROCESS_LIFECYCLE
    return tuple(p for p in PROGRAMS if p.event_types & wanted)


def tracepoint_exists(target: str) -> bool:
    """Whether tracefs has the tracepoint "category:name"."""
    category, _, name = target.partition(":")
    return os.path.isdir(os.path.join(loader.TRACEFS, "events", category, name))


def env_keep_keys(names: tuple[str, ...]) -> list[bytes]:
    """The "NAME=" prefixes of the environment filter; a name that cannot match is an error."""
    keys = []
    for name in names:
        key = name.encode() + b"="
        if not name or "=" in name or "\0" in name or len(key) > abi.ENV_NAME_MAX:
            raise ConfigError(
                "sensor.env_keep: %r is not a variable name of at most %d bytes" % (name, abi.ENV_NAME_MAX - 1)
            )
        keys.append(key)
    return keys


class Sensor:
    """Owns the loaded BPF object, its attachments, the ring buffer reader and the decoder."""

    def __init__(
        self, config: Config, interest: Interest, table: ProcessTableLike | None = None, clock=None
    ) -> None:
        if clock is None:
            from sentinel.enrich.clock import wall_clock

            clock = wall_clock()
        if table is None:
            from sentinel.enrich.proctable import ProcessTable

            table = ProcessTable(config.sensor)
        self.config = config
        self.interest = interest
        self.table = table
        self.clock = clock
        self.decoder = Decoder(table, clock.boot_to_utc_ns)
        self.ready_seconds: float | None = None  # start() to everything attached
        self.compile_seconds: float | None = None
        self.bootstrap_seconds: float | None = None
        self._bpf = None
        self._reader: RingBufferReader | None = None
        self._attached: dict[tuple[str, str], Program] = {}  # by (function, hook)

    # ---- lifecycle
    def start(self, bootstrap: bool = True) -> None:
        """Compile, fill the maps, attach, poll; then (`bootstrap`) read running processes
        from /proc into the table. Attaching first leaves no gap: a process started during
        the bootstrap is seen by the kernel side too."""
        started = time.monotonic()
        env_keys = env_keep_keys(self.config.sensor.env_keep)
        pages = self.config.sensor.ringbuf_pages  # checked by SensorConfig
        slots = ringbuf.cpu_slots()
        loaded = loader.load_object(defines={"SENTINEL_RINGBUF_PAGES": pages, "SENTINEL_CPU_SLOTS": slots})
        self._bpf = loaded.bpf
        self.compile_seconds = loaded.compile_seconds
        try:
            self._fill_env_keep(env_keys)
            self._fill_syscall_descriptors()
            self._fill_open_filter(self.interest)
            self._fill_urgent_ops(self.interest)
            rings = ringbuf.fill_cpu_rings(self._bpf, slots)
            doorbell = self._bpf[b"snt_doorbell"]
            self._reader = RingBufferReader(
                rings,
                abi.HEADER.offsets["boot_ns"],
                poll_ms=self.config.sensor.batch_ms,
                doorbell=ringbuf.Ring.map(doorbell.map_fd, int(doorbell.max_entries)),
            )
            self._reader.start()
            self._attach(programs_for(self.interest.event_types))
        except BaseException:
            self.close()
            raise
        self.ready_seconds = time.monotonic() - started
        if bootstrap and hasattr(self.table, "bootstrap"):
            self.table.bootstrap()
            self.bootstrap_seconds = time.monotonic() - started - self.ready_seconds
        log.info(
            "sensor.ready",
            programs=len(self._attached),
            seconds=round(self.ready_seconds, 3),
            compile_seconds=round(self.compile_seconds, 3),
        )

    def update_interest(self, interest: Interest) -> None:
        """Attach what the new interest needs, detach what it no longer does, refresh the filters."""
        wanted = {(p.name, p.target): p for p in programs_for(interest.event_types)}
        _in_parallel(self._detach, [p for k, p in self._attached.items() if k not in wanted])
        self._fill_open_filter(interest)
        self._fill_urgent_ops(interest)
        self._attach(tuple(p for k, p in wanted.items() if k not in self._attached))
        self.interest = interest

    def close(self) -> None:
        """Detach every program and free the BPF object; safe to call twice."""
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        def detach_or_warn(program: Program) -> None:
            try:
                self._detach(program)
            except KernelError as exc:
                log.warning("sensor.detach_failed", program=program.name, error=str(exc))

        _in_parallel(detach_or_warn, list(self._attached.values()))
        self._attached.clear()
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> Sensor:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---- events
    def poll(self, timeout: float = 0.1) -> list[Event]:
        """Decoded events received so far (waiting up to `timeout` for the first)."""
        if self._reader is None:
            raise KernelError("sensor is not started")
        self.clock.maybe_remeasure()  # pick up an NTP step of the wall clock
        decode = self.decoder.decode
        events = []
        for record in self._reader.take(timeout):
            event = decode(record)
            if event is not None:
                events.append(event)
        return events

    def events(self, timeout: float = 0.5) -> Iterator[Event]:
        """Events until close(); yields nothing while idle but keeps polling."""
        while self._reader is not None:
            yield from self.poll(timeout)

    @property
    def attached(self) -> tuple[str, ...]:
        """Names of the attached programs (a program serving several hooks appears once)."""
        return tuple(sorted({name for name, _target in self._attached}))

    @property
    def attached_hooks(self) -> tuple[str, ...]:
        return tuple(sorted(target for _name, target in self._attached))

    def open_counts(self) -> tuple[int, int]:
        """(opens the kernel saw, opens it sent to userspace) since start: the filter's effect."""
        if self._bpf is None:
            return (0, 0)
        table = self._bpf[b"snt_open_stats"]
        return tuple(sum(int(v) for v in table[ctypes.c_uint(i)]) for i in (0, 1))  # type: ignore[return-value]

    def lost(self) -> dict[int, int]:
        """Records the kernel could not queue (ring buffer full), per opcode."""
        if self._bpf is None:
            return {}
        table = self._bpf[b"snt_lost"]
        counts = {}
        # one bpf() lookup per opcode that exists, not per slot: each is a syscall the
        # sensor itself may be tracing
        for op in abi.RECORDS:
            total = sum(int(v) for v in table[ctypes.c_uint(op)])
            if total:
                counts[op] = total
        return counts

    def retried(self) -> int:
        """Records the ring buffer refused once and took on a retry (not lost)."""
        if self._bpf is None:
            return 0
        return sum(int(v) for v in self._bpf[b"snt_retried"][ctypes.c_uint(0)])

    @property
    def records_received(self) -> int:
        return self._reader.records if self._reader is not None else 0

    # ---- internals
    def _fill_env_keep(self, keys: list[bytes]) -> None:
        trie = self._bpf[b"snt_env_keep"]
        for key_bytes in keys:
            key = trie.Key()
            key.prefixlen = len(key_bytes) * 8
            ctypes.memmove(ctypes.addressof(key) + 4, key_bytes, len(key_bytes))
            trie[key] = ctypes.c_uint8(1)

    def _fill_syscall_descriptors(self) -> None:
        """What the syscall exit program reads for each traced syscall number."""
        table = self._bpf[b"snt_sys_desc"]
        for spec in syscalls.SYSCALLS:
            fields = spec.descriptor()
            value = table.Leaf()
            ctypes.memmove(ctypes.addressof(value), abi.SYS_DESC.struct.pack(*(fields[n] for n in abi.SYS_DESC.names)), abi.SYS_DESC.size)
            table[ctypes.c_uint(spec.nr)] = value

    def _fill_urgent_ops(self, interest: Interest) -> None:
        table = self._bpf[b"snt_urgent_ops"]
        urgent = urgent_ops(interest.urgent_types)
        for op in abi.RECORDS:  # the other slots stay 0
            table[ctypes.c_uint(op)] = ctypes.c_ubyte(op in urgent)

    def _fill_open_filter(self, interest: Interest) -> None:
        """The in-kernel open filter from the interest (interest.plan_open_filter): selectors,
        then path prefixes (LPM trie on the path the kernel resolved), file names, comms,
        created files. Over-approximates the rules, never narrows them."""
        from sentinel.enrich.container import parse_cgroup

        with open("/proc/self/cgroup") as own:
            hybrid = not parse_cgroup(own.read()).v2_only
        plan = plan_open_filter(interest, hybrid)
        if not plan.enabled and interest.wants_opens:
            log.info(
                "sensor.open_filter_off",
                cost="every open of the attached types reaches userspace (~5 us each to decode in Python)",
                reasons=list(plan.reasons),
            )
        names = (b"snt_open_prefixes", b"snt_open_comms", b"snt_open_basenames", b"snt_open_uids", b"snt_open_cgroups",
                 b"snt_open_first")  # fmt: skip
        trie, comms, basenames, uids, cgroups, firsts = (self._bpf[name] for name in names)
        for table in (trie, comms, basenames, uids, cgroups, firsts):
            table.clear()
        for raw in plan.first_components:
            key = firsts.Key()
            ctypes.memmove(ctypes.addressof(key), raw, len(raw))
            firsts[key] = ctypes.c_uint8(1)
        for raw in plan.basenames:
            key = basenames.Key()
            ctypes.memmove(ctypes.addressof(key), raw, len(raw))
            basenames[key] = ctypes.c_uint8(1)
        for raw in plan.prefixes:
            key = trie.Key()
            key.prefixlen = len(raw) * 8
            ctypes.memmove(ctypes.addressof(key) + 4, raw, len(raw))
            trie[key] = ctypes.c_uint8(plan.prefix_accmodes[raw])
        for raw in plan.comms:
            key = comms.Key()
            ctypes.memmove(ctypes.addressof(key), raw, len(raw))
            comms[key] = ctypes.c_uint8(1)
        for uid, bits in plan.uids.items():
            uids[ctypes.c_uint32(uid)] = ctypes.c_uint8(bits)
        if plan.drops_by_cgroup:
            from sentinel.kernel.probe import cgroup2_mount

            root = cgroup2_mount()
            for cgroup_id, kind in (cgroup_classes(root, hybrid, abi.OPEN_CGROUP_ENTRIES) if root else {}).items():
                cgroups[ctypes.c_uint64(cgroup_id)] = ctypes.c_uint8(kind)
        cfg = self._bpf[b"snt_open_cfg"]
        value = cfg.Leaf()
        for member, number in plan.cfg.items():
            setattr(value, member, number)
        cfg[ctypes.c_uint(0)] = value

    def _attach(self, programs: tuple[Program, ...]) -> None:
        present = []
        for program in programs:
            if program.optional and not tracepoint_exists(program.target):
                log.info("sensor.hook_absent", program=program.name, hook=program.target)
                continue
            present.append(program)
        # each function is loaded once, here, before the hooks are attached in parallel
        # (bcc's load cache is not safe against two threads loading one function)
        bcc_bpf = type(self._bpf)
        for name, kind in {(p.name, p.kind): None for p in present}:
            try:
                self._bpf.load_func(name.encode(), bcc_bpf.RAW_TRACEPOINT if kind == RAW_TRACEPOINT else bcc_bpf.TRACEPOINT)
            except Exception as exc:  # bcc raises bare Exception
                raise KernelError("cannot load %s: %s" % (name, exc)) from None
        _in_parallel(self._attach_one, present)

    def _attach_one(self, program: Program) -> None:
        try:
            if program.kind == RAW_TRACEPOINT:
                self._bpf.attach_raw_tracepoint(tp=program.target.encode(), fn_name=program.name.encode())
            else:
                self._bpf.attach_tracepoint(tp=program.target.encode(), fn_name=program.name.encode())
        except Exception as exc:  # bcc raises bare Exception
            raise KernelError("cannot attach %s to %s: %s" % (program.name, program.target, exc)) from None
        self._attached[(program.name, program.target)] = program

    def _detach(self, program: Program) -> None:
        try:
            if program.kind == RAW_TRACEPOINT:
                self._bpf.detach_raw_tracepoint(tp=program.target.encode())
            else:
                self._bpf.detach_tracepoint(tp=program.target.encode())
        except Exception as exc:
            raise KernelError("cannot detach %s from %s: %s" % (program.name, program.target, exc)) from None
        self._attached.pop((program.name, program.target), None)


# Attaching or detaching one tracepoint waits for the kernel (detaching waits ~70 ms for an
# RCU grace period, so 130 hooks took 9 s to stop in sequence); threads overlap the waits.
_HOOK_THREADS = 16


def _in_parallel(action, programs: list[Program]) -> None:
    """`action` on every program at once (bcc releases the GIL in its kernel calls); the
    first error is raised once all have been tried."""
    if not programs:
        return
    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(min(_HOOK_THREADS, len(programs)), thread_name_prefix="sentinel-hooks") as pool:
            failures = [future.exception() for future in [pool.submit(action, program) for program in programs]]
    except RuntimeError:  # no new thread (interpreter shutdown): one after the other
        failures = []
        for program in programs:
            try:
                action(program)
            except KernelError as exc:
                failures.append(exc)
    for failure in failures:
        if failure is not None:
            raise failure
