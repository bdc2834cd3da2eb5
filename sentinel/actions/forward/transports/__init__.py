"""Transports by output type: `make_transport(settings)` picks the one an output needs."""

from __future__ import annotations

from sentinel.actions.forward.settings import (
    CommonSettings,
    ElasticsearchSettings,
    JSONFileSettings,
    LokiSettings,
    SplunkHECSettings,
    SyslogSettings,
    WebhookSettings,
)
from sentinel.actions.forward.transports.base import Batch, DeliveryError, Transport


def make_transport(settings: CommonSettings) -> Transport:
    from sentinel.actions.forward.transports import http, jsonfile, relp, syslog

    if isinstance(settings, SyslogSettings):
        if settings.protocol == "udp":
            return syslog.UDPSyslogTransport(settings)
        if settings.protocol in ("relp", "relp-tls"):
            return relp.RELPTransport(settings, tls=settings.protocol == "relp-tls")
        return syslog.StreamSyslogTransport(settings)
    if isinstance(settings, WebhookSettings):
        return http.WebhookTransport(settings)
    if isinstance(settings, SplunkHECSettings):
        return http.SplunkHECTransport(settings)
    if isinstance(settings, ElasticsearchSettings):
        return http.ElasticsearchTransport(settings)
    if isinstance(settings, LokiSettings):
        return http.LokiTransport(settings)
    if isinstance(settings, JSONFileSettings):
        return jsonfile.JSONFileTransport(settings)
    raise TypeError("no transport for %s" % type(settings).__name__)


__all__ = ["Batch", "DeliveryError", "Transport", "make_transport"]
