"""The Prometheus endpoint serves the status counters; the watchdog pings systemd on time."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from sentinel.agent import Watchdog
from sentinel.errors import ConfigError
from sentinel.metrics import parse_listen, serve_metrics


class FakeAgent:
    def status(self):
        return {
            "counters": {"events": 1234},
            "kernel_lost": 7,
            "alerts_per_rule": {"Shell spawned by a web server": 3},
            "store": {"queued": 10, "written": 9, "dropped": 1, "last_flush_seconds": 0.002},
        }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_metrics_endpoint_serves_the_counters():
    port = free_port()
    server, thread = serve_metrics("127.0.0.1:%d" % port, FakeAgent())
    try:
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    finally:
        server.shutdown()
    assert "sentinel_events_total 1234.0" in body
    assert "sentinel_kernel_lost_records_total 7.0" in body
    assert 'sentinel_alerts_total{rule="Shell spawned by a web server"} 3.0' in body
    assert "sentinel_store_dropped_total 1.0" in body


@pytest.mark.parametrize("listen", ["9464", "localhost:http", ":"])
def test_bad_listen_address_is_a_config_error(listen):
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_listen(listen)


def test_watchdog_pings_at_half_the_interval(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    watchdog = Watchdog()
    assert watchdog.interval == 1.0
    watchdog.ping(100.0)
    assert receiver.recv(64) == b"WATCHDOG=1"
    watchdog.ping(100.5)  # too early: nothing sent
    watchdog.ping(101.0)
    assert receiver.recv(64) == b"WATCHDOG=1"
    receiver.settimeout(0.2)
    with pytest.raises(TimeoutError):
        receiver.recv(64)


def test_no_watchdog_without_systemd(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert Watchdog().interval is None
