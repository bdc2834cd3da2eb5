"""Kernel clocks -> wall-clock time, as a measured offset so the per-event cost is one int add.

The kernel stamps events with CLOCK_BOOTTIME (`bpf_ktime_get_boot_ns`) or CLOCK_MONOTONIC
(`bpf_ktime_get_ns`); alerts and the store want UTC. The offset between those clocks and
CLOCK_REALTIME is constant until NTP steps the wall clock (or, for MONOTONIC, the machine
suspends), so it is measured once, from the tightest of several samples, and re-measured
periodically by `maybe_remeasure()`.
"""

from __future__ import annotations

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

    Hot path: `boot_ns + clock.boot_offset_ns` (or `boot_to_utc_ns`); the pipeline calls
    `maybe_remeasure()` from its housekeeping so an NTP step is picked up within a minute.
    """

    __slots__ = ("boot_offset_ns", "mono_offset_ns", "remeasure_seconds", "_next_measure")

    def __init__(self, remeasure_seconds: float = DEFAULT_REMEASURE_SECONDS) -> None:
        self.remeasure_seconds = remeasure_seconds
        self.boot_offset_ns = 0
        self.mono_offset_ns = 0
        self._next_measure = 0.0
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
    """The process-wide clock, so the decoder and the store agree on one offset."""
    global _shared
    if _shared is None:
        _shared = WallClock()
    return _shared
