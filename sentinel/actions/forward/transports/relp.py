"""RELP client (rsyslog's Reliable Event Logging Protocol): acknowledged syslog over TCP/TLS.

Frames are `TXNR SP COMMAND SP DATALEN [SP DATA] LF`. A session opens with an `open` offer,
sends `syslog` commands numbered 1, 2, ... (wrapping after 999,999,999), keeps at most
`relp_window` unacknowledged, and counts a message delivered only on its `rsp` with code
200. A failed session is dropped; the output then resends every unacknowledged record on a
new session, from its outbox cursor (RELP itself never promises more than that).
"""

from __future__ import annotations

import socket
from collections import deque

from sentinel import __version__
from sentinel.actions.forward.settings import SyslogSettings
from sentinel.actions.forward.transports.base import Batch, DeliveryError
from sentinel.actions.forward.transports.syslog import _Syslog, connect_stream

MAX_TXNR = 999_999_999
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
OFFERS = b"relp_version=0\nrelp_software=sentinel,%s,-\ncommands=syslog" % __version__.encode()


class RELPProtocolError(Exception):
    """The server sent something that is not RELP or refused a command."""


class RELPSession:
    """One RELP connection: framing, transaction numbers and response parsing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.next_txnr = 1
        self.quickack = _QUICKACK is not None

    def take_txnr(self) -> int:
        txnr = self.next_txnr
        self.next_txnr = 1 if txnr >= MAX_TXNR else txnr + 1
        return txnr

    @staticmethod
    def frame(txnr: int, command: bytes, data: bytes) -> bytes:
        if data:
            return b"%d %s %d %s\n" % (txnr, command, len(data), data)
        return b"%d %s 0\n" % (txnr, command)

    def _fill(self) -> None:
        # rsyslog writes one small `rsp` per message and its Nagle holds the next ones until
        # our ACK, which Linux delays by up to 40 ms: acknowledge at once instead.
        if self.quickack:
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:  # not a TCP socket
                self.quickack = False
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("RELP server closed the connection")
        self.buffer += chunk

    def _take_token(self) -> bytes:
        while True:
            index = self.buffer.find(b" ")
            newline = self.buffer.find(b"\n")
            if index >= 0 and (newline < 0 or index < newline):
                token = bytes(self.buffer[:index])
                del self.buffer[: index + 1]
                return token
            if len(self.buffer) > 64:
                raise RELPProtocolError("malformed RELP header %r" % bytes(self.buffer[:64]))
            self._fill()

    def read_frame(self) -> tuple[int, bytes, bytes]:
        """(txnr, command, data) of the next frame the server sent."""
        txnr = self._take_token()
        command = self._take_token()
        while True:  # DATALEN ends with SP (data follows) or LF (no data)
            for end, char in enumerate(self.buffer):
                if char in (0x20, 0x0A):
                    break
            else:
                if len(self.buffer) > 12:
                    raise RELPProtocolError("malformed RELP data length")
                self._fill()
                continue
            break
        length_text = bytes(self.buffer[:end])
        terminator = self.buffer[end]
        del self.buffer[: end + 1]
        try:
            length, number = int(length_text), int(txnr)
        except ValueError:
            raise RELPProtocolError("malformed RELP frame header") from None
        if terminator == 0x0A:
            return number, command, b""
        while len(self.buffer) < length + 1:
            self._fill()
        data = bytes(self.buffer[:length])
        if self.buffer[length] != 0x0A:
            raise RELPProtocolError("RELP frame without trailer")
        del self.buffer[: length + 1]
        return number, command, data

    def read_response(self) -> tuple[int, int, bytes]:
        """(txnr, status code, rest) of the next `rsp`; a `serverclose` ends the session."""
        txnr, command, data = self.read_frame()
        if command == b"serverclose":
            raise ConnectionError("RELP server closed the session")
        if command != b"rsp":
            raise RELPProtocolError("unexpected RELP command %r" % command)
        code_text, _, rest = data.partition(b" ")
        try:
            code = int(code_text) if code_text else 0
        except ValueError:
            raise RELPProtocolError("malformed RELP response %r" % data[:40]) from None
        return txnr, code, rest

    def open(self) -> None:
        txnr = self.take_txnr()
        self.sock.sendall(self.frame(txnr, b"open", OFFERS))
        got, code, rest = self.read_response()
        if got != txnr or code != 200:
            raise RELPProtocolError("RELP open refused: %d %r" % (code, rest[:80]))

    def close(self) -> None:
        try:
            self.sock.sendall(self.frame(self.take_txnr(), b"close", b""))
            self.read_response()
        except (OSError, ConnectionError, RELPProtocolError):
            pass
        finally:
            self.sock.close()


class RELPTransport(_Syslog):
    """Sends a batch with at most relp_window messages in flight; returns when all are acked."""

    settings: SyslogSettings

    def __init__(self, settings: SyslogSettings, tls: bool = False) -> None:
        super().__init__(settings)
        self.tls = tls
        self.session: RELPSession | None = None

    def _connect(self) -> RELPSession:
        sock = connect_stream(self.settings, self.tls)
        session = RELPSession(sock)
        try:
            session.open()
        except BaseException:
            sock.close()
            raise
        return session

    def send(self, batch: Batch) -> None:
        # Render first: an entry that cannot be sent at all is dropped, keeping positions.
        messages: list[tuple[int, bytes | None]] = []
        for index, (_seq, record) in enumerate(batch):
            rendered = self.messages([(0, record)])
            messages.append((index, rendered[0] if rendered else None))
        acked = [message is None for _index, message in messages]
        delivered = 0
        try:
            if self.session is None:
                self.session = self._connect()
            session = self.session
            session.sock.settimeout(self.settings.timeout)
            in_flight: deque[tuple[int, int]] = deque()  # (txnr, index)
            pending = iter([(i, m) for i, m in messages if m is not None])
            exhausted = False
            while True:
                frames = []
                # Refill once half the window is acknowledged: fewer, larger writes.
                refill = len(in_flight) <= self.settings.relp_window // 2
                while refill and not exhausted and len(in_flight) < self.settings.relp_window:
                    item = next(pending, None)
                    if item is None:
                        exhausted = True
                        break
                    txnr = session.take_txnr()
                    frames.append(session.frame(txnr, b"syslog", item[1]))
                    in_flight.append((txnr, item[0]))
                if frames:
                    session.sock.sendall(b"".join(frames))
                if not in_flight:
                    break
                txnr, code, rest = session.read_response()
                for position, (sent_txnr, index) in enumerate(in_flight):
                    if sent_txnr == txnr:
                        break
                else:
                    raise RELPProtocolError("RELP response for unknown txnr %d" % txnr)
                if code != 200:
                    raise RELPProtocolError("RELP server refused message: %d %r" % (code, rest[:80]))
                del in_flight[position]
                acked[index] = True
                while delivered < len(acked) and acked[delivered]:
                    delivered += 1
        except (OSError, ConnectionError, RELPProtocolError) as exc:
            self._abandon()
            raise DeliveryError(
                "relp %s:%d: %s" % (self.settings.host, self.settings.effective_port, exc), delivered=delivered
            ) from None

    def _abandon(self) -> None:
        if self.session is not None:
            try:
                self.session.sock.close()
            except OSError:
                pass
            self.session = None

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
