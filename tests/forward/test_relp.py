"""The RELP client's framing and bookkeeping, against a scripted peer on a socketpair."""

from __future__ import annotations

import socket
import threading

import pytest
from conftest import make_alert

from sentinel.actions.forward.settings import parse_output
from sentinel.actions.forward.transports import DeliveryError
from sentinel.actions.forward.transports.relp import MAX_TXNR, RELPSession, RELPTransport


def test_frames_and_txnr_wrap():
    session = RELPSession(socket.socket())
    try:
        assert session.frame(7, b"syslog", b"abc") == b"7 syslog 3 abc\n"
        assert session.frame(8, b"close", b"") == b"8 close 0\n"
        session.next_txnr = MAX_TXNR
        assert [session.take_txnr() for _ in range(3)] == [MAX_TXNR, 1, 2]
    finally:
        session.sock.close()


def test_responses_split_across_reads_and_data_with_newlines():
    ours, theirs = socket.socketpair()
    session = RELPSession(ours)
    payload = b"1 rsp 6 200 OK\n2 rsp 21 200 OK\nrelp_version=0\n3 rsp 0\n"
    sender = threading.Thread(target=lambda: [theirs.sendall(payload[i:i + 5]) for i in range(0, len(payload), 5)])
    sender.start()
    assert session.read_response() == (1, 200, b"OK")
    assert session.read_response() == (2, 200, b"OK\nrelp_version=0")
    assert session.read_frame() == (3, b"rsp", b"")
    sender.join()
    theirs.sendall(b"0 serverclose 0\n")
    with pytest.raises(ConnectionError):
        session.read_response()
    ours.close()
    theirs.close()


class ScriptedServer:
    """Accepts one RELP session; acks `ack` syslog frames with 200, then answers 500 or hangs up."""

    def __init__(self, ack: int, then: str) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.ack, self.then = ack, then
        self.messages: list[bytes] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        session = RELPSession(conn)
        try:
            txnr, command, data = session.read_frame()
            assert command == b"open" and b"commands=syslog" in data
            conn.sendall(b"%d rsp 6 200 OK\n" % txnr)
            while True:
                txnr, command, data = session.read_frame()
                if len(self.messages) < self.ack:
                    self.messages.append(data)
                    conn.sendall(b"%d rsp 6 200 OK\n" % txnr)
                elif self.then == "refuse":
                    conn.sendall(b"%d rsp 15 500 queue full\n" % txnr)
                else:
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()
            self.listener.close()


@pytest.mark.parametrize("then", ["refuse", "hangup"])
def test_delivered_counts_only_acknowledged_messages(then):
    server = ScriptedServer(ack=3, then=then)
    settings = parse_output("relp", "syslog", {"protocol": "relp", "port": server.port, "relp_window": 2, "timeout": 5})
    transport = RELPTransport(settings)
    batch = [(n, make_alert(n)) for n in range(6)]
    with pytest.raises(DeliveryError) as info:
        transport.send(batch)
    assert info.value.delivered == 3
    assert len(server.messages) == 3
    assert transport.session is None  # the next send opens a new session and resends the rest
    server.thread.join(5)
