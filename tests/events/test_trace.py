"""`sentinel trace` rendering and the sd_notify helper (no kernel needed)."""

from __future__ import annotations

import json
import os
import socket
import uuid

from sentinel import trace
from sentinel.events.model import Event, Fd, Process
from sentinel.notify import notify


def sample_event() -> Event:
    parent = Process(1, 10, comm="init")
    proc = Process(
        42,
        1000,
        ppid=1,
        comm="evil\x1b[2J",
        exepath="/tmp/\udcffx",
        args=("-c", "echo\nhi"),
        env=("PATH=/bin",),
        parent=parent,
    )
    return Event("execve", proc, args={"filename": "/tmp/x"}, time_ns=1_795_435_121_521_035_374, tid=43, num=7)


def test_json_line_has_every_field_and_keeps_bytes_exact():
    record = json.loads(trace.format_json(sample_event()))
    assert set(record["proc"]) == set(Process.__slots__)
    assert record["proc"]["parent"] == [1, 10]
    assert record["proc"]["args"] == ["-c", "echo\nhi"]
    assert record["proc"]["exepath"] == "/tmp/\udcffx"
    assert (record["type"], record["tid"], record["num"], record["fd"]) == ("execve", 43, 7, None)


def test_json_line_carries_the_fd():
    event = sample_event()
    event.fd = Fd(3, "file", "/etc/shadow")
    assert json.loads(trace.format_json(event))["fd"]["name"] == "/etc/shadow"


def test_columns_escape_untrusted_text():
    line = trace.format_line(sample_event())
    assert "\x1b" not in line and "\n" not in line
    assert "evil\\x1b[2J" in line
    assert "/tmp/\\xffx -c echo\\nhi" in line
    assert line.startswith("11:58:41.521035 execve")  # UTC
    assert len(trace.header_line().split()) == len(trace.COLUMNS)


def test_notify_sends_one_datagram_to_a_path_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert notify("READY=1", path) is True
        assert server.recv(100) == b"READY=1"


def test_notify_uses_the_abstract_namespace_for_at_names(monkeypatch):
    name = "sentinel-test-%s" % uuid.uuid4().hex
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STATUS=ok") is True
        assert server.recv(100) == b"STATUS=ok"


def test_notify_without_systemd_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    assert notify("READY=1", str(tmp_path / "absent.sock")) is False
    assert not os.path.exists(tmp_path / "absent.sock")
