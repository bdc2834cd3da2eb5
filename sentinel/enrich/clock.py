"""Kernel clocks -> wall-clock time, as a measured offset so the per-event cost is one int add.

The kernel stamps events with CLOCK_BOOTTIME (`bpf_ktime_get_boot_ns`) or CLOCK_MONOTONIC
(`bpf_ktime_get_ns`); alerts and the store want UTC. The offset between those clocks and
CLOCK_REALTIME is constant until NTP steps the wall clock (or, for MONOTONIC, the machine
suspends), so it is measured once, from the tightest of several samples, and re-measured
periodically: by a background thread (`start_background`, on for the shared `wall_clock()`)
or by whoever calls `maybe_remeasure()`.
"""

from __future__ import annotations

import threading
import time

_SAMPLES = 9
DEFAULT_REMEASURE_SECONDS = 60.0


def _offset_to_realtime(clock_id: int, samples: int = _SAMPLES) -> int:
    """REALTIME - clock, from the sample whose two REALTIME reads bracket it most tightly."""
    best_width = None
    best_offset = 0
    gettime = time.clock_gettime_ns
    for _ in range(samples):
        before = gettime(time.CLOCK_REALTIME)
        kernel = gettime(clock_id)
        after = gettime(time.CLOCK_REALTIME)
        width = after - before
        if best_width is None or width < best_width:
            best_width = width
            best_offset = (before + after) // 2 - kernel
    return best_offset


class WallClock:
    """Converts kernel timestamps to UTC ns since the epoch.

    Hot path: `boot_ns + clock.boot_offset_ns` (or `boot_to_utc_ns`). Offsets are replaced
    by plain attribute stores, so readers on other threads see the old or the new one.
    """

    __slots__ = ("boot_offset_ns", "mono_offset_ns", "remeasure_seconds", "_next_measure", "_thread", "_stopping")

    def __init__(self, remeasure_seconds: float = DEFAULT_REMEASURE_SECONDS) -> None:
        self.remeasure_seconds = remeasure_seconds
        self.boot_offset_ns = 0
        self.mono_offset_ns = 0
        self._next_measure = 0.0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.remeasure()

    def remeasure(self) -> None:
        self.boot_offset_ns = _offset_to_realtime(time.CLOCK_BOOTTIME)
        self.mono_offset_ns = _offset_to_realtime(time.CLOCK_MONOTONIC)
        self._next_measure = time.monotonic() + self.remeasure_seconds

    def maybe_remeasure(self) -> bool:
        """Re-measure when the period has passed; True if it did."""
        if time.monotonic() < self._next_measure:
            return False
        self.remeasure()
        return True

    def start_background(self) -> None:
        """Re-measure every `remeasure_seconds` in a daemon thread, so an NTP step is
        picked up without any caller's help."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._remeasure_until_stopped, name="sentinel-wall-clock", daemon=True)
        self._thread.start()

    def stop_background(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join()
        self._thread = None

    def _remeasure_until_stopped(self) -> None:
        while not self._stopping.wait(self.remeasure_seconds):
            self.remeasure()

    def boot_to_utc_ns(self, boot_ns: int) -> int:
        return boot_ns + self.boot_offset_ns

    def mono_to_utc_ns(self, mono_ns: int) -> int:
        return mono_ns + self.mono_offset_ns

    @property
    def boot_minus_mono_ns(self) -> int:
        """Time spent suspended: CLOCK_BOOTTIME - CLOCK_MONOTONIC."""
        return self.mono_offset_ns - self.boot_offset_ns


_shared: WallClock | None = None


def wall_clock() -> WallClock:
    """The process-wide clock, so the decoder and the store agree on one offset; it keeps
    itself current from a background thread."""
    global _shared
    if _shared is None:
        _shared = WallClock()
        _shared.start_background()
    return _shared
