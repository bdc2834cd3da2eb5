"""Drain sentinel's per-CPU BPF ring buffers in a dedicated thread by reading their memory.

Each ring is mmapped as the kernel lays it out (a consumer page we write, a producer page
and the data pages mapped twice in a row so a record never wraps) and read in place: one
slice per record, no ctypes callback per record as in bcc's ring_buffer__poll (measured
~1.5 us each). The kernel side wakes this thread only once per batch of records per CPU
(SENTINEL_WAKEUP_BATCH); between wakeups the thread drains the rings every `poll_ms`,
which bounds the delay of a lone event. Batches are handed to the consumer, which decodes.
When the consumer falls `max_backlog_bytes` behind, the thread stops draining: the rings
fill and the kernel counts what it cannot queue (snt_lost), instead of this process
growing without bound.

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
from collections import deque

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
_BPF_MAP_TYPE_RINGBUF = 27


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
        producer, data_start, mask = self.producer, PAGE_SIZE, self.size - 1
        consumed = was_consumed = _POSITION.unpack_from(self.consumer, 0)[0]
        records = []
        append = records.append
        length_at = _LENGTH.unpack_from
        while consumed < produced:
            start = data_start + (consumed & mask)
            length = length_at(producer, start)[0]
            if length & _BUSY:
                break  # records after a busy one wait until it is committed, as in libbpf
            size = length & ~(_BUSY | _DISCARDED)
            if not length & _DISCARDED:
                append(producer[start + _HEADER_SIZE : start + _HEADER_SIZE + size])
            consumed += (size + _HEADER_SIZE + 7) & ~7
        if consumed != was_consumed:
            _POSITION.pack_into(self.consumer, 0, consumed)
        return records

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

    model = bpf[template.encode()]
    size = int(model.max_entries)
    online = [cpu for cpu in read_cpu_list("online") if cpu < slots] or [0]
    fds = [model.map_fd]
    rings = [Ring.map(model.map_fd, size)]
    try:
        for _cpu in online[1:]:
            fd = lib.bcc_create_map(_BPF_MAP_TYPE_RINGBUF, template.encode(), 0, 0, size, 0)
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
    """Drains `rings` into time-ordered batches; `take()` returns the records seen so far."""

    def __init__(
        self, rings: list[Ring], order_offset: int, poll_ms: int = 10, max_backlog_bytes: int = 64 << 20
    ) -> None:
        if not rings:
            raise KernelError("no ring buffer to read")
        self._rings = rings
        self._order_offset = order_offset
        self._poll_seconds = poll_ms / 1000.0
        self._epoll = select.epoll()
        for ring in rings:
            if ring.fd is not None:
                self._epoll.register(ring.fd, select.EPOLLIN)
        self._batches: deque[list[bytes]] = deque()
        self._max_backlog = max_backlog_bytes
        # bytes drained (written by the reader thread only) and taken (by the consumer only):
        # one writer each, so the backlog, their difference, is exact without a lock
        self._drained_bytes = 0
        self._taken_bytes = 0
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.records = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sentinel-ringbuf", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait = self._epoll.poll
        while not self._stopping.is_set():
            wait(self._poll_seconds)
            if self._drained_bytes - self._taken_bytes >= self._max_backlog:
                self._stopping.wait(self._poll_seconds)  # let the consumer catch up
                continue
            batch = self.drain()
            if batch:
                self.records += len(batch)
                self._drained_bytes += sum(map(len, batch))
                self._batches.append(batch)
                self._ready.set()

    def drain(self) -> list[bytes]:
        """Every committed record of every ring, in timestamp order."""
        rings = self._rings
        positions = [ring.produced() for ring in rings]
        if len(rings) == 1:
            return rings[0].drain(positions[0])
        per_ring = [records for ring, produced in zip(rings, positions) if (records := ring.drain(produced))]
        if len(per_ring) == 1:
            return per_ring[0]
        offset, timestamp_at = self._order_offset, _TIMESTAMP.unpack_from
        merged = [record for records in per_ring for record in records]
        # each ring's records are (nearly) sorted already: timsort merges the runs
        merged.sort(key=lambda record: timestamp_at(record, offset)[0])
        return merged

    def take(self, timeout: float | None = None) -> list[bytes]:
        """Every record received since the last call; waits up to `timeout` for the first."""
        if not self._batches and timeout:
            self._ready.wait(timeout)
        self._ready.clear()
        records: list[bytes] = []
        while self._batches:
            records.extend(self._batches.popleft())
        self._taken_bytes += sum(map(len, records))
        return records

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._epoll.close()
        for ring in self._rings:
            ring.close()
