"""Syslog over UDP, TCP (RFC 6587 octet counting) and TLS (RFC 5425), 5424 or 3164 format.

Neither UDP nor plain TCP acknowledges anything: the cursor moves once the datagram or the
write has been handed to the kernel. Before each TCP batch a closed peer is detected (EOF
readable) so a restarted receiver does not swallow a batch into a dead connection. For
acknowledged delivery use RELP.
"""

from __future__ import annotations

import select
import socket
import ssl
from typing import Callable

from sentinel.actions.forward import formats
from sentinel.actions.forward.settings import SYSLOG_FACILITIES, SyslogSettings
from sentinel.actions.forward.transports.base import Batch, DeliveryError, Transport
from sentinel.actions.forward.transports.tls import client_context
from sentinel.log import get_logger

log = get_logger(__name__)


def message_renderer(settings: SyslogSettings) -> Callable[[dict], bytes]:
    """record -> one syslog message (no framing), cut to fit max_message_bytes."""
    payload = formats.cef if settings.payload == "cef" else formats.json_payload
    build = formats.rfc3164 if settings.format == "rfc3164" else formats.rfc5424
    facility = SYSLOG_FACILITIES[settings.facility]

    def render(record: dict) -> bytes:
        return build(record, facility=facility, app_name=settings.app_name, payload=payload)

    def render_fitted(record: dict) -> bytes:
        return formats.fit(record, render, settings.max_message_bytes)

    return render_fitted


class _Syslog(Transport):
    settings: SyslogSettings

    def __init__(self, settings: SyslogSettings) -> None:
        super().__init__(settings)
        self.render = message_renderer(settings)

    def messages(self, batch: Batch) -> list[bytes]:
        out = []
        for _seq, record in batch:
            try:
                out.append(self.render(record))
            except ValueError as exc:
                self.dropped += 1
                log.warning("forward.dropped", output=self.settings.name, reason=str(exc))
        return out


class UDPSyslogTransport(_Syslog):
    """One datagram per message; never more than max_message_bytes (<= 65507)."""

    def __init__(self, settings: SyslogSettings) -> None:
        super().__init__(settings)
        self._socket: socket.socket | None = None

    def send(self, batch: Batch) -> None:
        try:
            if self._socket is None:
                family, kind, proto, _name, address = socket.getaddrinfo(
                    self.settings.host, self.settings.effective_port, type=socket.SOCK_DGRAM
                )[0]
                self._socket = socket.socket(family, kind, proto)
                self._socket.connect(address)
            for message in self.messages(batch):
                self._socket.send(message)
        except OSError as exc:
            self.close()
            raise DeliveryError("syslog udp %s:%d: %s" % (self.settings.host, self.settings.effective_port, exc)) from None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def connect_stream(settings: SyslogSettings, tls: bool) -> socket.socket:
    """A connected TCP socket (wrapped in TLS with name checking when asked)."""
    sock = socket.create_connection((settings.host, settings.effective_port), timeout=settings.timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls:
        context = client_context(settings)
        try:
            sock = context.wrap_socket(sock, server_hostname=settings.tls_server_name or settings.host)
        except BaseException:
            sock.close()
            raise
    return sock


def peer_closed(sock: socket.socket) -> bool:
    """True when the receiver closed (or reset) the connection since the last write."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        sock.setblocking(False)
        try:
            return sock.recv(1) == b""
        finally:
            sock.setblocking(True)
    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    except OSError:
        return True


class StreamSyslogTransport(_Syslog):
    """TCP or TLS with octet-counted frames: `LEN SP MSG`, so newlines cannot split records."""

    def __init__(self, settings: SyslogSettings) -> None:
        super().__init__(settings)
        self._socket: socket.socket | None = None

    def send(self, batch: Batch) -> None:
        frames = b"".join(b"%d %s" % (len(message), message) for message in self.messages(batch))
        try:
            if self._socket is not None and peer_closed(self._socket):
                self.close()
            if self._socket is None:
                self._socket = connect_stream(self.settings, self.settings.protocol == "tls")
            self._socket.settimeout(self.settings.timeout)
            self._socket.sendall(frames)
        except OSError as exc:
            self.close()
            raise DeliveryError(
                "syslog %s %s:%d: %s" % (self.settings.protocol, self.settings.host, self.settings.effective_port, exc)
            ) from None

    def close(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            except OSError:
                pass
            self._socket = None
