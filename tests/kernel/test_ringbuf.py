"""The ring buffer reader's walk over the kernel's layout (committed, discarded, busy and
wrapped records, on a memory image laid out as the kernel maps it), and the records that
wake it at once."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import sys
import time

import pytest
from enforce_helpers import eventually

from sentinel.config import Config, SensorConfig
from sentinel.events import abi
from sentinel.events.interest import PROCESS_LIFECYCLE, Interest
from sentinel.kernel import ringbuf
from sentinel.kernel.ringbuf import PAGE_SIZE, Ring, RingBufferReader, cpu_list
from sentinel.sensor import Sensor, urgent_ops

DATA_SIZE = 64
ORDER_OFFSET = 8
BUSY, DISCARDED = 1 << 31, 1 << 30


class Memory(bytearray):
    """A bytearray standing in for an mmap (the reader closes its maps when it stops)."""

    def close(self) -> None:
        pass


class Image:
    """Consumer page, producer page and data pages mapped twice, as bytearrays."""

    def __init__(self) -> None:
        self.consumer = Memory(PAGE_SIZE)
        self.producer = Memory(PAGE_SIZE + 2 * DATA_SIZE)
        self.position = 0

    def put(self, payload: bytes, flags: int = 0) -> None:
        record = struct.pack("<II", len(payload) | flags, 0) + payload
        record += b"\0" * (-len(record) % 8)
        for i, byte in enumerate(record):
            offset = (self.position + i) % DATA_SIZE
            self.producer[PAGE_SIZE + offset] = byte
            self.producer[PAGE_SIZE + DATA_SIZE + offset] = byte  # the second mapping
        self.position += len(record)
        struct.pack_into("<Q", self.producer, 0, self.position)

    def ring(self) -> Ring:
        return Ring(self.consumer, self.producer, DATA_SIZE)

    def reader(self, max_backlog_bytes: int = 1 << 20) -> RingBufferReader:
        return reader_of([self], max_backlog_bytes)

    @property
    def consumed(self) -> int:
        return struct.unpack_from("<Q", self.consumer, 0)[0]


def reader_of(images: list[Image], max_backlog_bytes: int = 1 << 20) -> RingBufferReader:
    """A reader of memory images (no fd: every epoll wait times out after poll_ms)."""
    rings = [image.ring() for image in images]
    return RingBufferReader(rings, ORDER_OFFSET, poll_ms=1, max_backlog_bytes=max_backlog_bytes, guard_ms=5)


def stamped(timestamp: int, text: bytes) -> bytes:
    """A payload with its timestamp at ORDER_OFFSET, as records carry boot_ns."""
    return struct.pack("<QQ", 0, timestamp) + text


def test_committed_records_in_order_and_discarded_ones_skipped():
    image = Image()
    image.put(b"first")
    image.put(b"thrown away", DISCARDED)
    image.put(b"third!!!")
    assert [bytes(r) for r in image.reader().drain()] == [b"first", b"third!!!"]
    assert image.consumed == image.position == 16 + 24 + 16


def test_a_record_across_the_end_of_the_data_pages_reads_whole():
    image = Image()
    reader = image.reader()
    image.put(b"a" * 40)
    assert [bytes(r) for r in reader.drain()] == [b"a" * 40]
    image.put(b"wraps around the end")  # starts at 48 of 64
    assert [bytes(r) for r in reader.drain()] == [b"wraps around the end"]
    assert image.consumed == 48 + 32


def test_reading_stops_at_a_record_still_being_written():
    image = Image()
    image.put(b"done")
    busy_at = image.position
    image.put(b"writing", BUSY)
    image.put(b"after")
    reader = image.reader()
    assert [bytes(r) for r in reader.drain()] == [b"done"]
    assert image.consumed == busy_at
    struct.pack_into("<I", image.producer, PAGE_SIZE + busy_at, len(b"writing"))  # committed
    assert [bytes(r) for r in reader.drain()] == [b"writing", b"after"]
    assert reader.drain() == []


def test_a_consumer_away_is_covered_by_the_guard_until_the_backlog_bound():
    """While the consumer does not ask, the guard thread drains into memory, up to the
    backlog bound; past it the ring is left to fill (the kernel then counts losses)
    instead of the reader's memory growing without bound. The consumer then gets it all,
    in order."""
    image = Image()
    reader = image.reader(max_backlog_bytes=8)
    reader.start()
    try:
        image.put(b"first")  # 5 bytes pending: under the bound, drained
        assert eventually(lambda: image.consumed == image.position)
        image.put(b"second")  # 11 bytes pending after this one: drained, then the bound holds
        assert eventually(lambda: image.consumed == image.position)
        image.put(b"third")
        time.sleep(0.05)
        assert image.consumed < image.position
        assert [bytes(r) for r in reader.take(timeout=1.0)] == [b"first", b"second", b"third"]
        assert image.consumed == image.position
        image.put(b"fourth")
        assert eventually(lambda: image.consumed == image.position)  # the bound is lifted
        assert [bytes(r) for r in reader.take(timeout=1.0)] == [b"fourth"]
    finally:
        reader.stop()


def test_records_of_several_rings_come_out_in_timestamp_order():
    """Each CPU's ring is in order by itself; a batch interleaves them by boot_ns."""
    first, second = Image(), Image()
    first.put(stamped(10, b"a"))
    second.put(stamped(11, b"b"))
    first.put(stamped(12, b"c"))
    reader = reader_of([first, second])
    assert [bytes(r)[16:] for r in reader.drain()] == [b"a", b"b", b"c"]
    second.put(stamped(13, b"d"))
    assert [bytes(r)[16:] for r in reader.drain()] == [b"d"]
    assert first.consumed == first.position and second.consumed == second.position


def test_a_ring_is_read_up_to_the_position_seen_before_any_record_was_taken():
    """What a CPU commits while another ring is being read waits for the next batch, so a
    batch never holds a later record of one CPU without the earlier ones of the others."""
    first = Image()
    first.put(stamped(1, b"x"))
    ring = first.ring()
    produced = ring.produced()
    first.put(stamped(2, b"y"))  # committed after the position was read
    assert [bytes(r)[16:] for r in ring.drain(produced)] == [b"x"]
    assert [bytes(r)[16:] for r in ring.drain(ring.produced())] == [b"y"]


def test_cpu_lists_as_sysfs_writes_them():
    assert cpu_list("0-1\n") == [0, 1]
    assert cpu_list("0,2-4,7") == [0, 2, 3, 4, 7]
    assert cpu_list("5") == [5]


def test_urgent_ops_name_the_records_that_carry_each_event_type():
    assert urgent_ops(frozenset({"execve"})) == {abi.OP_EXEC, abi.OP_EXEC_FAILED}
    assert urgent_ops(frozenset({"openat", "connect"})) == {abi.OP_SYSCALL}
    assert urgent_ops(frozenset({"procexit", "clone"})) == {abi.OP_EXIT, abi.OP_CLONE}
    assert urgent_ops(frozenset()) == frozenset()


FORKER = """
import os, time
while True:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    time.sleep(0.005)
"""


@pytest.mark.kernel
def test_a_kill_rules_event_rings_the_doorbell_while_other_records_wait_for_the_batch():
    """With a 1 s batch and records flowing (a process forking without exec), the rings are
    drained about once a second, not per record; an exec a kill rule matches rings the
    doorbell and arrives at once, every time. (Other execs on the host ring it too: drains
    are compared with the rings counted.)"""
    config = Config().replace(sensor=SensorConfig(batch_ms=1000))
    sensor = Sensor(config, Interest(event_types=PROCESS_LIFECYCLE, urgent_types=frozenset({"execve"})))
    sensor.start(bootstrap=False)
    forker = subprocess.Popen([sys.executable, "-c", FORKER])
    reader = sensor._reader
    bell_size = 16  # ring header + the u64 opcode

    def rings() -> int:
        return reader._doorbell.produced() // bell_size

    try:
        table = sensor._bpf[b"snt_urgent_ops"]
        assert {op for op in range(abi.OP_SLOTS) if table[ctypes.c_uint(op)].value} == {abi.OP_EXEC, abi.OP_EXEC_FAILED}
        assert eventually(lambda: any(e.type in ("vfork", "clone") for e in sensor.poll(0.05)))
        rings_before, drains_before, events = rings(), reader.drains, 0
        window_end = time.monotonic() + 2.5
        while time.monotonic() < window_end:
            events += len(sensor.poll(window_end - time.monotonic()))
        drains, rang = reader.drains - drains_before, rings() - rings_before
        assert events >= 100 and drains <= rang + 5, (events, drains, rang)
        for attempt in range(3):
            marker = "urgent-%d-%d" % (os.getpid(), attempt)
            rings_before = rings()
            child = subprocess.Popen(["/bin/sleep", "5", marker])
            spawned = time.monotonic()
            try:
                seen = False
                while not seen and time.monotonic() - spawned < 2.0:
                    seen = any(e.type == "execve" and marker in e.proc.args for e in sensor.poll(5.0))
                assert seen and time.monotonic() - spawned < 0.3, "exec %d waited for the 1 s batch" % attempt
                assert rings() > rings_before
            finally:
                child.kill()
                child.wait()
    finally:
        forker.kill()
        forker.wait()
        sensor.close()


@pytest.mark.kernel
def test_each_online_cpu_writes_its_own_ring():
    """An exec pinned to each online CPU lands in that CPU's ring, and the sensor delivers
    them all, in time order."""
    online = ringbuf.read_cpu_list("online")
    sensor = Sensor(Config(), Interest(event_types=PROCESS_LIFECYCLE))
    sensor.start(bootstrap=False)
    try:
        rings = sensor._reader._rings
        assert len(rings) == len(online) and len({ring.fd for ring in rings}) == len(online)
        outer = sensor._bpf[b"snt_rings"]
        assert len(outer) == ringbuf.cpu_slots()
        before = [ring.produced() for ring in rings]
        markers = {}
        for index, cpu in enumerate(online):
            markers[cpu] = "ring-%d-cpu-%d" % (os.getpid(), cpu)
            subprocess.run(["/bin/true", markers[cpu]], check=True, preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, {cpu}))
        arrived: list[str] = []
        deadline = time.monotonic() + 5
        while len(arrived) < len(markers) and time.monotonic() < deadline:
            for event in sensor.poll(0.1):
                arrived += [m for m in markers.values() if event.type == "execve" and m in event.proc.args]
        assert arrived == list(markers.values())
        assert all(ring.produced() > was for ring, was in zip(rings, before))
        assert sensor.lost() == {}
    finally:
        sensor.close()
