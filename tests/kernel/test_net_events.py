"""Network events on the running kernel, on loopback only: addresses and ports of both ends
read from the struct sock at exit, Falco's per-socket state (fd.connected, fd.name_changed),
unix sockets by path, and dup2 of a socket onto stdout."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from syscall_sensor import Collector, start_sensor

pytestmark = pytest.mark.kernel

TYPES = {"socket", "connect", "accept", "accept4", "bind", "listen", "sendto", "sendmsg", "dup", "dup2", "dup3"}


@pytest.fixture(scope="module")
def sensor():
    sensor = start_sensor(TYPES)
    yield sensor
    sensor.close()


@pytest.fixture
def collector(sensor):
    return Collector(sensor)


def _mine(event_type, predicate=lambda e: True):
    return lambda e: e.type == event_type and e.proc.pid == os.getpid() and predicate(e)


@pytest.mark.parametrize("family, host, typechar", [(socket.AF_INET, "127.0.0.1", "4"), (socket.AF_INET6, "::1", "6")])
def test_connect_and_accept_on_loopback(collector, family, host, typechar):
    with socket.socket(family) as server:
        server.bind((host, 0))
        server.listen()
        server_port = server.getsockname()[1]
        with socket.socket(family) as client:
            client.connect((host, server_port))
            client_port = client.getsockname()[1]
            accepted, _ = server.accept()
            accepted.close()
        connect = collector.wait_for(_mine("connect", lambda e: e.fd.rport == server_port))
        accept = collector.wait_for(_mine("accept4", lambda e: e.fd.lport == server_port))
        listen = collector.wait_for(_mine("listen", lambda e: e.fd.lport == server_port))
    assert connect.res == 0
    assert connect.fd.typechar == typechar
    assert (connect.fd.lip, connect.fd.lport, connect.fd.rip, connect.fd.rport) == (host, client_port, host, server_port)
    assert connect.fd.name == "%s:%d->%s:%d" % (host, client_port, host, server_port)
    assert connect.fd.l4proto == "tcp"
    assert connect.fd.connected is False and connect.fd.is_server is False
    assert connect.args["addr"] == "%s:%d" % (host, server_port)
    assert accept.res >= 0 and accept.fd.num == accept.res
    assert accept.fd.typechar == typechar
    assert (accept.fd.lip, accept.fd.lport, accept.fd.rip, accept.fd.rport) == (host, server_port, host, client_port)
    assert accept.fd.is_server is True
    assert (accept.fd.cip, accept.fd.cport, accept.fd.sip, accept.fd.sport) == (host, client_port, host, server_port)
    assert accept.fd.name == connect.fd.name
    assert listen.args["backlog"] > 0 and listen.fd.is_server


def test_nonblocking_connect_reports_addresses_with_einprogress(collector):
    # a listening socket that is never accepted still completes the handshake on loopback,
    # but a non-blocking connect returns EINPROGRESS first
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.socket() as client:
            client.setblocking(False)
            res = client.connect_ex(("127.0.0.1", port))
            local_port = client.getsockname()[1]
        event = collector.wait_for(_mine("connect", lambda e: e.fd.rport == port))
    assert res in (0, errno.EINPROGRESS)
    assert event.res == -res
    assert (event.fd.lip, event.fd.lport, event.fd.rip, event.fd.rport) == ("127.0.0.1", local_port, "127.0.0.1", port)


def test_unconnected_udp_sendto_changes_the_name(collector):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        udp.sendto(b"one", ("127.0.0.1", port))
        udp.sendto(b"two", ("127.0.0.1", port))
        local_port = udp.getsockname()[1]
        first = collector.wait_for(_mine("sendto", lambda e: e.fd.rport == port and e.res == 3))
        second = collector.wait_for(_mine("sendto", lambda e: e.fd.rport == port and e.num > first.num))
        # a connected socket's send gives no address: no sendto event at all
        udp.connect(("127.0.0.1", port))
        udp.send(b"three")
        collector.drain()
    assert first.fd.l4proto == "udp" and first.fd.typechar == "4"
    assert first.fd.connected is False
    assert first.fd.name_changed is True
    assert second.fd.name_changed is False  # same peer as the previous sendto
    assert first.fd.name == "0.0.0.0:%d->127.0.0.1:%d" % (local_port, port)
    assert first.args["addr"] == "127.0.0.1:%d" % port and first.args["size"] == 3
    # send() on the connected socket is sendto(fd, ..., NULL, 0) in libc: filtered in the kernel
    assert [e.res for e in collector.mine("sendto") if e.fd.rport == port] == [3, 3]


def test_unix_socket_connect_and_bind_carry_the_path(collector, tmp_path):
    path = str(tmp_path / "sentinel.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
        bind = collector.wait_for(_mine("bind", lambda e: e.args.get("addr") == path))
        connect = collector.wait_for(_mine("connect", lambda e: e.args.get("addr") == path))
    assert bind.fd.type == "unix" and bind.fd.name == path
    assert connect.fd.type == "unix" and connect.fd.typechar == "u"
    assert connect.fd.name == path


def test_dup2_of_a_socket_onto_stdout_is_typed_ipv4(collector):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = textwrap.dedent(
            """
            import os, socket, sys
            s = socket.create_connection(("127.0.0.1", %d))
            os.dup2(s.fileno(), 1)
            """
            % port
        )
        child = subprocess.run([sys.executable, "-c", code], check=True)
        assert child.returncode == 0
        event = collector.wait_for(lambda e: e.type in ("dup2", "dup3") and e.args.get("newfd") == 1 and e.fd is not None and e.fd.rport == port)
    assert event.res == 1
    assert event.fd.num == 1
    assert event.fd.type == "ipv4" and event.fd.typechar == "4"
    assert event.fd.rip == "127.0.0.1" and event.fd.l4proto == "tcp"


def test_socket_creation_arguments(collector):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM):
        pass
    event = collector.wait_for(_mine("socket", lambda e: e.args["domain"] == socket.AF_INET and e.fd.l4proto == "udp"))
    assert event.args["type"] & 0xF == socket.SOCK_DGRAM
    assert event.fd.num == event.res and event.fd.type == "ipv4"
