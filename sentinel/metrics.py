"""Prometheus endpoint (optional, loopback by default): the same counters as `sentinel status`.

A custom collector reads the agent's counters at scrape time, so the hot path keeps
incrementing plain integers and never touches a metrics library.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from sentinel.errors import ConfigError


class AgentCollector:
    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def collect(self):
        status = self.agent.status()
        counters = status["counters"]
        events = CounterMetricFamily("sentinel_events", "Events decoded from the kernel")
        events.add_metric([], counters.get("events", 0))
        yield events
        lost = CounterMetricFamily("sentinel_kernel_lost_records", "Records the kernel could not queue (ring buffer full)")
        lost.add_metric([], status["kernel_lost"])
        yield lost
        alerts = CounterMetricFamily("sentinel_alerts", "Alerts raised, by rule", labels=["rule"])
        for rule, count in sorted(status["alerts_per_rule"].items()):
            alerts.add_metric([rule], count)
        yield alerts
        store = status["store"]
        for key in ("queued", "written", "dropped"):
            if key in store:
                metric = CounterMetricFamily("sentinel_store_%s" % key, "Store writer: rows %s" % key)
                metric.add_metric([], store[key])
                yield metric
        if "last_flush_seconds" in store:
            latency = GaugeMetricFamily("sentinel_store_flush_seconds", "Latency of the last store flush")
            latency.add_metric([], store["last_flush_seconds"])
            yield latency


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError("metrics.listen must be HOST:PORT, got %r" % listen)
    return (host.strip("[]") or "127.0.0.1", int(port))


def serve_metrics(listen: str, agent: Any):
    host, port = parse_listen(listen)
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    return start_http_server(port, addr=host, registry=registry)
