"""Drain a BPF ring buffer in a dedicated thread; the consumer decodes, not the callback.

The bcc callback only copies the record's bytes into a batch (about 1 us each); the batch
is handed to the consumer after each poll, so the per-record cost on the kernel side of
the queue stays minimal and a slow consumer never stalls the ring buffer callback.
bcc 0.26 has no lost-record callback: drops are counted in the kernel (snt_lost).
"""

from __future__ import annotations

import ctypes
import threading
from collections import deque

from sentinel.log import get_logger

log = get_logger("sentinel.kernel.ringbuf")


class RingBufferReader:
    """Polls `map_name` of a loaded bcc.BPF; `take()` returns the records seen so far."""

    def __init__(self, bpf, map_name: str = "snt_events", poll_ms: int = 100) -> None:
        self._bpf = bpf
        self._poll_ms = poll_ms
        self._batches: deque[list[bytes]] = deque()
        self._pending: list[bytes] = []
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.records = 0
        self.poll_errors = 0
        string_at = ctypes.string_at
        pending_append = self._pending.append

        def on_record(_ctx, data, size):
            pending_append(string_at(data, size))

        self._callback = on_record  # bcc keeps only a weak reference to the ctypes callback
        bpf[map_name.encode()].open_ring_buffer(on_record)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sentinel-ringbuf", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poll = self._bpf.ring_buffer_poll
        while not self._stopping.is_set():
            try:
                poll(self._poll_ms)
            except Exception as exc:  # bcc raises bare Exception; keep draining
                self.poll_errors += 1
                log.warning("ringbuf.poll_failed", error=str(exc))
                self._stopping.wait(0.1)
            if self._pending:
                batch = self._pending[:]
                del self._pending[:]
                self.records += len(batch)
                self._batches.append(batch)
                self._ready.set()

    def take(self, timeout: float | None = None) -> list[bytes]:
        """Every record received since the last call; waits up to `timeout` for the first."""
        if not self._batches and timeout:
            self._ready.wait(timeout)
        self._ready.clear()
        records: list[bytes] = []
        while self._batches:
            records.extend(self._batches.popleft())
        return records

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
