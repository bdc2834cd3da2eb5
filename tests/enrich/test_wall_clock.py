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
    def error_ns() -> int:
        return abs(clock.boot_to_utc_ns(time.clock_gettime_ns(time.CLOCK_BOOTTIME)) - time.time_ns())

    clock = WallClock(remeasure_seconds=3600)
    clock.boot_offset_ns += 10**12  # as if NTP had stepped the wall clock since
    assert not clock.maybe_remeasure()
    assert error_ns() > 10**11
    clock.remeasure_seconds = 0
    clock.remeasure()
    clock.boot_offset_ns += 10**12
    assert clock.maybe_remeasure()  # due at once with a zero period
    assert error_ns() < 2_000_000


def test_background_thread_picks_up_a_step():
    clock = WallClock(remeasure_seconds=0.02)
    clock.start_background()
    try:
        clock.boot_offset_ns += 10**12  # as if NTP had stepped the wall clock
        deadline = time.monotonic() + 5
        while abs(clock.boot_to_utc_ns(time.clock_gettime_ns(time.CLOCK_BOOTTIME)) - time.time_ns()) > 2_000_000:
            assert time.monotonic() < deadline, "the step was never picked up"
            time.sleep(0.01)
    finally:
        clock.stop_background()
    assert clock._thread is None


def test_shared_instance_keeps_itself_current():
    shared = wall_clock()
    assert shared is wall_clock()
    assert shared._thread is not None and shared._thread.daemon
