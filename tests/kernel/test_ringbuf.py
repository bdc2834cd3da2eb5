"""The ring buffer reader's walk over the kernel's layout: committed, discarded, busy and
wrapped records, on a memory image laid out as the kernel maps it."""

from __future__ import annotations

import struct

from sentinel.kernel.ringbuf import PAGE_SIZE, RingBufferReader

DATA_SIZE = 64
BUSY, DISCARDED = 1 << 31, 1 << 30


class Image:
    """Consumer page, producer page and data pages mapped twice, as bytearrays."""

    def __init__(self) -> None:
        self.consumer = bytearray(PAGE_SIZE)
        self.producer = bytearray(PAGE_SIZE + 2 * DATA_SIZE)
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

    def reader(self) -> RingBufferReader:
        reader = RingBufferReader.__new__(RingBufferReader)
        reader._size = DATA_SIZE
        reader._producer = self.producer
        reader._consumer = self.consumer
        return reader

    @property
    def consumed(self) -> int:
        return struct.unpack_from("<Q", self.consumer, 0)[0]


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
