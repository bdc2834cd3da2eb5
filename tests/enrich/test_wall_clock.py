"""Kernel clock -> UTC conversion."""

from __future__ import annotations

import time

from sentinel.enrich.clock import WallClock, wall_clock


def test_boot_and_monotonic_convert_to_now():
    clock = WallClock()
    boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    now = time.time_ns()
    assert abs(clock.boot_to_utc_ns(boot) - now) < 2_000_000
    assert abs(clock.mono_to_utc_ns(mono) - now) < 2_000_000
    suspended = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert abs(clock.boot_minus_mono_ns - suspended) < 1_000_000


def test_remeasure_only_when_due():
    clock = WallClock(remeasure_seconds=3600)
    assert not clock.maybe_remeasure()
    clock.boot_offset_ns += 10**12  # as if NTP had stepped the wall clock since
    clock.remeasure_seconds = 0
    clock.remeasure()
    assert clock.maybe_remeasure()
    assert abs(clock.boot_to_utc_ns(time.clock_gettime_ns(time.CLOCK_BOOTTIME)) - time.time_ns()) < 2_000_000


def test_shared_instance():
    assert wall_clock() is wall_clock()
