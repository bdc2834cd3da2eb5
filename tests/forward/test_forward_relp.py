"""The RELP client's framing and bookkeeping, against a scripted peer on a socketpair."""

from __future__ import annotations

import re
import socket
import threading

import pytest
from forward_harness import IDENTITY, make_alert

from sentinel.actions.forward import Forwarder
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
    """RELP sessions one after another: the first acks `ack` syslog frames with 200, then
    answers 500 ("refuse") or hangs up; later sessions ack everything."""

    def __init__(self, ack: int, then: str, sessions: int = 1) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.ack, self.then, self.sessions = ack, then, sessions
        self.messages: list[bytes] = []
        self.txnrs: list[list[int]] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        try:
            for number in range(self.sessions):
                conn, _ = self.listener.accept()
                self.txnrs.append([])
                try:
                    self.session(conn, limit=self.ack if number == 0 else None)
                except (ConnectionError, OSError):
                    pass
                finally:
                    conn.close()
        finally:
            self.listener.close()

    def session(self, conn: socket.socket, limit: int | None) -> None:
        session = RELPSession(conn)
        txnr, command, data = session.read_frame()
        assert command == b"open" and b"commands=syslog" in data
        conn.sendall(b"%d rsp 6 200 OK\n" % txnr)
        acked = 0
        while True:
            txnr, command, data = session.read_frame()
            if command == b"close":
                conn.sendall(b"%d rsp 0\n0 serverclose 0\n" % txnr)
                return
            self.txnrs[-1].append(txnr)
            if limit is None or acked < limit:
                acked += 1
                self.messages.append(data)
                conn.sendall(b"%d rsp 6 200 OK\n" % txnr)
            elif self.then == "refuse":
                conn.sendall(b"%d rsp 15 500 queue full\n" % txnr)
            else:
                return


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


def test_unacknowledged_messages_are_resent_on_a_new_session_and_acked_ones_are_not(tmp_path):
    server = ScriptedServer(ack=4, then="hangup", sessions=2)
    settings = parse_output("relp", "syslog", {"protocol": "relp", "port": server.port, "relp_window": 3,
                                               "backoff_initial": 0.05, "timeout": 5})
    records = [make_alert(n) for n in range(10)]
    forwarder = Forwarder([settings], str(tmp_path / "outbox.db"), identity=IDENTITY)
    forwarder.start()
    forwarder.submit_many(records)
    assert forwarder.wait_delivered(20), forwarder.status()
    forwarder.stop()
    server.thread.join(5)
    ids = [parse_sd_id(message) for message in server.messages]
    assert ids == [r["id"] for r in records]  # each once, in order
    assert server.txnrs[1][0] == 2  # the new session numbers from 1 (open) again


def parse_sd_id(message: bytes) -> str:
    return re.search(rb'id="([^"]+)"', message).group(1).decode()
