"""Read sentinel's per-CPU BPF ring buffers by mapping their memory.

Each ring is mmapped as the kernel lays it out (a consumer page we write, a producer page
and the data pages mapped twice in a row so a record never wraps) and read in place: one
copy of the committed span, then a slice per record, with no ctypes callback per record as
in bcc's ring_buffer__poll (measured ~1.5 us each).

Wakeups and thread handoffs cost ~100 us each on the VMs sentinel was measured on, so the
consumer drains the rings itself, in its own thread, when it asks for records (`take`):
- a record wakes a waiting consumer only when it lands in an empty ring (the kernel's
  adaptive notification), so an idle sensor costs nothing;
- after a drain that found records, the consumer waits `poll_ms` before the next one while
  the rings fill without waking anyone, unless the doorbell ring is written (urgent
  records: those a kill rule matches).
A guard thread drains into memory when the consumer has not drained for `guard_ms` (a rule
reload, a slow disk), so the kernel rings do not overflow meanwhile; past
`max_backlog_bytes` it stops, the rings fill and the kernel counts what it cannot queue
(snt_lost), instead of this process growing without bound.

Records of one CPU are in order in its ring; the rings are merged by the u64 timestamp at
`order_offset` of every record. The producer positions of all rings are read back to back
before any record is taken, so a batch does not hold a record without the ones other CPUs
committed before it (a child's exec without its fork), as it could if each ring were read
to its end in turn while the others went on filling.

bcc 0.26 has no lost-record callback: drops are counted in the kernel (snt_lost).
Reading positions without barriers is correct on x86-64 (stores are not reordered with
other stores nor loads with other loads), the only architecture sentinel's BPF targets.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import struct
import threading
import time

from sentinel.errors import KernelError
from sentinel.log import get_logger

log = get_logger("sentinel.kernel.ringbuf")

PAGE_SIZE = mmap.PAGESIZE
_BUSY = 1 << 31  # the producer reserved this record and has not committed it yet
_DISCARDED = 1 << 30
_HEADER_SIZE = 8  # u32 length with the two flag bits, u32 page offset
_POSITION = struct.Struct("<Q")
_LENGTH = struct.Struct("<I")
_TIMESTAMP = struct.Struct("<Q")


class Ring:
    """One BPF ring buffer's consumer page, producer page and doubly mapped data pages."""

    def __init__(self, consumer, producer, size: int, fd: int | None = None, owns_fd: bool = False) -> None:
        if size <= 0 or size & (size - 1):
            raise KernelError("ring buffer has size %d, not a power of two" % size)
        self.consumer = consumer
        self.producer = producer
        self.size = size
        self.fd = fd
        self._owns_fd = owns_fd

    @classmethod
    def map(cls, fd: int, size: int, owns_fd: bool = False) -> Ring:
        """mmap the ring buffer map behind `fd` (of `size` data bytes); `owns_fd`: close
        the fd with the ring (a map the caller created, not one bcc holds)."""
        try:
            consumer = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            producer = mmap.mmap(fd, PAGE_SIZE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE_SIZE)
        except OSError as exc:
            if owns_fd:
                os.close(fd)
            raise KernelError("cannot map ring buffer (fd %d): %s" % (fd, exc)) from None
        return cls(consumer, producer, size, fd, owns_fd)

    def produced(self) -> int:
        return _POSITION.unpack_from(self.producer, 0)[0]

    def drain(self, produced: int) -> list[bytes]:
        """Every committed record between the consumer position and `produced`; advances
        the consumer position past them."""
        consumed = _POSITION.unpack_from(self.consumer, 0)[0]
        if consumed >= produced:
            return []
        # one copy of the whole span (the data pages are mapped twice, so it never wraps),
        # then records are cut from that local copy: cheaper than reading each record from
        # memory another CPU just wrote
        start = PAGE_SIZE + (consumed & (self.size - 1))
        span = self.producer[start : start + (produced - consumed)]
        records = []
        append = records.append
        length_at = _LENGTH.unpack_from
        offset, end = 0, len(span)
        while offset < end:
            length = length_at(span, offset)[0]
            if length & _BUSY:
                break  # records after a busy one wait until it is committed, as in libbpf
            size = length & ~(_BUSY | _DISCARDED)
            if not length & _DISCARDED:
                append(span[offset + _HEADER_SIZE : offset + _HEADER_SIZE + size])
            offset += (size + _HEADER_SIZE + 7) & ~7
        if offset:
            _POSITION.pack_into(self.consumer, 0, consumed + offset)
        return records

    def skip(self) -> None:
        """Consume every record without reading it."""
        _POSITION.pack_into(self.consumer, 0, self.produced())

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()
        if self._owns_fd and self.fd is not None:
            os.close(self.fd)
            self.fd = None


def cpu_list(text: str) -> list[int]:
    """CPU numbers of a sysfs cpu list such as "0-3,8,10-11"."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def read_cpu_list(name: str) -> list[int]:
    """/sys/devices/system/cpu/<name> ("possible" or "online") as CPU numbers."""
    try:
        with open("/sys/devices/system/cpu/" + name) as f:
            return cpu_list(f.read())
    except (OSError, ValueError) as exc:
        raise KernelError("cannot read the %s CPUs: %s" % (name, exc)) from None


def cpu_slots() -> int:
    """Entries of the per-CPU ring array: one per CPU number the kernel may ever use."""
    return max(read_cpu_list("possible")) + 1


def fill_cpu_rings(bpf, slots: int, outer: str = "snt_rings", template: str = "snt_ring") -> list[Ring]:
    """Give every online CPU its own ring buffer in `outer` (an array of maps of `slots`),
    made like the `template` ring (which serves the first online CPU); CPUs that are not
    online now share those rings. Returns the rings, mapped."""
    from bcc.libbcc import lib
    from bcc.table import BPF_MAP_TYPE_RINGBUF

    model = bpf[template.encode()]
    size = int(model.max_entries)
    online = [cpu for cpu in read_cpu_list("online") if cpu < slots] or [0]
    fds = [model.map_fd]
    rings = [Ring.map(model.map_fd, size)]
    try:
        for _cpu in online[1:]:
            fd = lib.bcc_create_map(BPF_MAP_TYPE_RINGBUF, template.encode(), 0, 0, size, 0)
            if fd < 0:
                raise KernelError("cannot create a ring buffer of %d bytes for each CPU" % size)
            fds.append(fd)
            rings.append(Ring.map(fd, size, owns_fd=True))
        table = bpf[outer.encode()]
        ring_of_cpu = {cpu: index for index, cpu in enumerate(online)}
        for cpu in range(slots):
            index = ring_of_cpu.get(cpu, cpu % len(rings))
            table[ctypes.c_int(cpu)] = ctypes.c_int(fds[index])
    except BaseException:
        for ring in rings:
            ring.close()
        raise
    return rings


class RingBufferReader:
    """Time-ordered records of `rings`; `take()` returns the records committed so far.

    `doorbell`: a ring whose records only mean "drain now" (no content is read)."""

    def __init__(
        self,
        rings: list[Ring],
        order_offset: int,
        poll_ms: int,
        max_backlog_bytes: int = 64 << 20,
        doorbell: Ring | None = None,
        guard_ms: int = 250,
    ) -> None:
        if not rings:
            raise KernelError("no ring buffer to read")
        self._rings = rings
        self._doorbell = doorbell
        self._order_offset = order_offset
        self._poll_seconds = poll_ms / 1000.0
        # the guard never drains in the way of a consumer that is only waiting for its batch
        self._guard_seconds = max(guard_ms, 4 * poll_ms) / 1000.0
        # ready when any ring has records (woken by the adaptive wakeup of an empty ring)
        self._any_record = select.epoll()
        # ready when the doorbell rang: the wait between drains while records flow
        self._urgent_record = select.epoll()
        for ring in (*rings, doorbell):
            if ring is not None and ring.fd is not None:
                self._any_record.register(ring.fd, select.EPOLLIN)
        if doorbell is not None and doorbell.fd is not None:
            self._urgent_record.register(doorbell.fd, select.EPOLLIN)
        self._flowing = False  # the last drain found records: more are probably on their way
        self._lock = threading.Lock()  # one drainer at a time: the consumer or the guard
        self._last_drain = time.monotonic()
        # what the guard drained while the consumer was away, and its size in bytes
        self._backlog: list[bytes] = []
        self._backlog_bytes = 0
        self._max_backlog = max_backlog_bytes
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.records = 0
        self.drains = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._guard, name="sentinel-ringbuf", daemon=True)
        self._thread.start()

    def _guard(self) -> None:
        """Drain into memory while the consumer is away longer than guard_ms."""
        while not self._stopping.wait(self._guard_seconds):
            if time.monotonic() - self._last_drain < self._guard_seconds:
                continue
            if self._backlog_bytes >= self._max_backlog:
                continue  # the consumer is far behind: the kernel counts what overflows
            with self._lock:
                batch = self.drain()
                self._backlog += batch
                self._backlog_bytes += sum(map(len, batch))

    def drain(self) -> list[bytes]:
        """Every committed record of every ring, in timestamp order (callers hold the lock)."""
        self.drains += 1
        self._last_drain = time.monotonic()
        rings = self._rings
        positions = [ring.produced() for ring in rings]
        if len(rings) == 1:
            records = rings[0].drain(positions[0])
        else:
            per_ring = [records for ring, produced in zip(rings, positions) if (records := ring.drain(produced))]
            if len(per_ring) <= 1:
                records = per_ring[0] if per_ring else []
            else:
                offset, timestamp_at = self._order_offset, _TIMESTAMP.unpack_from
                records = [record for records in per_ring for record in records]
                # each ring's records are (nearly) sorted already: timsort merges the runs
                records.sort(key=lambda record: timestamp_at(record, offset)[0])
        self.records += len(records)
        return records

    def take(self, timeout: float | None = None) -> list[bytes]:
        """Every record committed since the last call; waits up to `timeout` for the first.
        While records flow, waits poll_ms (or `timeout` if shorter) before draining, unless
        an urgent record rings the doorbell."""
        deadline = time.monotonic() + (timeout or 0)
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            if remaining and self._flowing:
                self._urgent_record.poll(min(self._poll_seconds, remaining))
            elif remaining:
                self._any_record.poll(remaining)
            if self._doorbell is not None:
                self._doorbell.skip()
            with self._lock:
                records = self.drain()
                if self._backlog:
                    records = self._backlog + records
                    self._backlog, self._backlog_bytes = [], 0
            self._flowing = bool(records)
            if records or time.monotonic() >= deadline:
                return records

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._any_record.close()
        self._urgent_record.close()
        for ring in (*self._rings, self._doorbell):
            if ring is not None:
                ring.close()
