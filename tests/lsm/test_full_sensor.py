"""The whole sensor on the guest's kernel: every program of sentinel.sensor.PROGRAMS attached,
and an open and a loopback connect arriving decoded.

The guest runs an older kernel (Debian's 6.1) whose verifier refuses programs a newer one
accepts (its limits on pending branches and states are reached sooner), so a program that
loads on the development host can still fail there. The test needs no BPF LSM: it also runs
on the host, where it must pass too.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import pytest

from sentinel.config import Config
from sentinel.events.interest import Interest
from sentinel.sensor import PROGRAMS, Sensor, tracepoint_exists

pytestmark = pytest.mark.kernel

EVERY_EVENT_TYPE = frozenset().union(*(program.event_types for program in PROGRAMS))
WAIT_SECONDS = 20.0  # the guest runs under emulation


@pytest.fixture(scope="module")
def sensor():
    """One compile for the module (minutes in an emulated guest)."""
    sensor = Sensor(Config(), Interest(event_types=EVERY_EVENT_TYPE))
    sensor.start(bootstrap=False)
    yield sensor
    sensor.close()


def _wait_for(sensor: Sensor, predicates: dict) -> dict:
    """The first event matching each named predicate; fails naming those still missing."""
    found: dict = {}
    deadline = time.monotonic() + WAIT_SECONDS
    while len(found) < len(predicates):
        if time.monotonic() > deadline:
            missing = sorted(set(predicates) - set(found))
            raise AssertionError("no %s event within %.0fs" % (", ".join(missing), WAIT_SECONDS))
        for event in sensor.poll(0.1):
            for name, predicate in predicates.items():
                if name not in found and predicate(event):
                    found[name] = event
    return found


def test_every_program_attaches(sensor):
    present = [program for program in PROGRAMS if not program.optional or tracepoint_exists(program.target)]
    assert sensor.attached_hooks == tuple(sorted(program.target for program in present))
    assert sensor.attached == tuple(sorted({program.name for program in present}))


def test_an_open_and_a_loopback_connect_arrive_decoded(sensor, tmp_path):
    path = tmp_path / ("sentinel-open-%s" % uuid.uuid4().hex)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        path.write_text("x")
        with socket.socket() as client:
            client.connect(("127.0.0.1", port))
            client_port = client.getsockname()[1]
        mine = os.getpid()
        found = _wait_for(
            sensor,
            {
                "openat": lambda e: e.type == "openat" and e.proc.pid == mine and e.fd.name == str(path),
                "connect": lambda e: e.type == "connect" and e.proc.pid == mine and e.fd.rport == port,
            },
        )
    opened, connected = found["openat"], found["connect"]
    assert opened.res >= 0 and opened.fd.type == "file"
    assert opened.args["flags"] & os.O_CREAT
    assert connected.res == 0 and connected.fd.l4proto == "tcp"
    assert connected.fd.name == "127.0.0.1:%d->127.0.0.1:%d" % (client_port, port)
