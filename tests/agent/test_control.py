"""The control socket answers allowed peers and refuses everyone else, by SO_PEERCRED."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile

import pytest

from sentinel.control import ControlError, ControlServer, request


@pytest.fixture
def server():
    # pytest's tmp_path sits under a 0700 directory: another user could not reach the socket
    # at all, and the test must show the SO_PEERCRED check, not the directory's mode.
    directory = tempfile.mkdtemp(prefix="sentinel-ctl-")
    os.chmod(directory, 0o755)
    srv = ControlServer(os.path.join(directory, "control.sock"), allowed_uids=(0,))
    srv.register("status", lambda req, peer: {"events": 42, "peer_uid": peer.uid})
    srv.register("echo", lambda req, peer: req.get("text"))
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(directory)


def test_allowed_peer_gets_status(server):
    assert request(server.path, "status") == {"events": 42, "peer_uid": os.geteuid()}


def test_unknown_command_is_a_clear_error(server):
    with pytest.raises(ControlError, match="unknown command 'nope'.*status"):
        request(server.path, "nope")


def test_socket_file_is_not_world_accessible(server):
    assert os.stat(server.path).st_mode & 0o007 == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_unauthorised_peer_is_refused(server):
    """A peer running as `nobody` reaches the socket (mode opened up on purpose) but is refused."""
    os.chmod(server.path, 0o666)
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:  # whatever happens, the forked child must never return into pytest
            os.close(read_end)
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                request(server.path, "status")
                message = b"ALLOWED"
            except ControlError as exc:
                message = str(exc).encode()
            except BaseException as exc:
                message = repr(exc).encode()
            os.write(write_end, message)
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 4096).decode()
    os.waitpid(child, 0)
    assert answer == "permission denied for uid %d" % nobody.pw_uid
    assert server.refused == 1


def test_agent_not_running_is_a_clear_error(tmp_path):
    with pytest.raises(ControlError, match="cannot reach the agent"):
        request(str(tmp_path / "absent.sock"), "status")
