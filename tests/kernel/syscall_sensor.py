"""What the file, network and privilege kernel tests share: a sensor and a collector.

Each test module loads one Sensor for the event types it causes (compiling costs seconds)
and waits for its own events, recognised by the test process's pid and unique paths.
"""

from __future__ import annotations

import os
import time

from sentinel.config import Config
from sentinel.events.interest import Interest
from sentinel.sensor import Sensor

WAIT_SECONDS = 10.0


class Collector:
    """Polls a sensor and keeps every event, so tests can also search past ones."""

    def __init__(self, sensor: Sensor) -> None:
        self.sensor = sensor
        self.events = []

    def wait_for(self, predicate, timeout: float = WAIT_SECONDS):
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            if time.monotonic() > deadline:
                raise AssertionError("no matching event within %.0fs (%d events seen)" % (timeout, seen))
            self.events.extend(self.sensor.poll(0.1))

    def drain(self, seconds: float = 0.3) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.events.extend(self.sensor.poll(0.05))

    def mine(self, event_type: str):
        """Events of this type from the test process itself."""
        return [e for e in self.events if e.type == event_type and e.proc.pid == os.getpid()]


def start_sensor(event_types: set[str], bootstrap: bool = False, **interest) -> Sensor:
    sensor = Sensor(Config(), Interest(event_types=frozenset(event_types), **interest))
    sensor.start(bootstrap=bootstrap)
    return sensor
