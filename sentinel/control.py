"""The agent's control socket: one JSON request per line, one JSON reply per line.

Access is checked twice: the socket file's permissions (0660, owner root, group from the
config) and, for every connection, the peer's credentials from SO_PEERCRED against the
allowed uids and gids, so a leaked file descriptor or a loose mode still cannot drive the
agent. Commands are plain callables registered by name: `status`, `reload` and the hooks
that enforcement, the TUI and forwarding add.
"""

from __future__ import annotations

import grp
import json
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from sentinel.errors import SentinelError
from sentinel.log import get_logger

log = get_logger("sentinel.control")

Handler = Callable[[dict[str, Any], "PeerCredentials"], Any]
_MAX_REQUEST = 64 * 1024


class ControlError(SentinelError):
    """The agent refused a request or could not be reached."""


class PeerCredentials:
    __slots__ = ("pid", "uid", "gid")

    def __init__(self, pid: int, uid: int, gid: int) -> None:
        self.pid, self.uid, self.gid = pid, uid, gid

    @classmethod
    def of(cls, conn: socket.socket) -> PeerCredentials:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return cls(*struct.unpack("3i", raw))


def _supplementary_gids(uid: int, primary_gid: int) -> set[int]:
    """The peer's groups as configured in the group database (its own list is not visible)."""
    gids = {primary_gid}
    try:
        import pwd

        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return gids
    gids.update(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)
    return gids


class ControlServer:
    def __init__(self, path: str, allowed_uids=(0,), allowed_gids=(), socket_group: str | None = None) -> None:
        self.path = path
        self.allowed_uids = frozenset(allowed_uids) | {os.geteuid()}
        self.allowed_gids = frozenset(allowed_gids)
        self.socket_group = socket_group
        self.handlers: dict[str, Handler] = {}
        self.refused = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def register(self, name: str, handler: Handler) -> None:
        self.handlers[name] = handler

    def authorised(self, peer: PeerCredentials) -> bool:
        if peer.uid in self.allowed_uids:
            return True
        return bool(self.allowed_gids and _supplementary_gids(peer.uid, peer.gid) & self.allowed_gids)

    def start(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            if _is_live(self.path):
                raise ControlError("another agent is listening on %s" % self.path)
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old_umask)
        if self.socket_group:
            os.chown(self.path, -1, grp.getgrnam(self.socket_group).gr_gid)
        sock.listen(16)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="sentinel-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            peer = PeerCredentials.of(conn)
            if not self.authorised(peer):
                self.refused += 1
                log.warning("control.refused", **{"peer.pid": peer.pid, "peer.uid": peer.uid})
                _send(conn, {"ok": False, "error": "permission denied for uid %d" % peer.uid})
                return
            reader = conn.makefile("rb")
            while True:
                line = reader.readline(_MAX_REQUEST + 1)
                if not line:
                    return
                _send(conn, self._dispatch(line, peer))

    def _dispatch(self, line: bytes, peer: PeerCredentials) -> dict[str, Any]:
        if len(line) > _MAX_REQUEST:
            return {"ok": False, "error": "request larger than %d bytes" % _MAX_REQUEST}
        try:
            request = json.loads(line)
        except ValueError as exc:
            return {"ok": False, "error": "invalid JSON at column %d: %s" % (exc.colno, exc.msg)}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": "a request is an object with a string `cmd`"}
        handler = self.handlers.get(request["cmd"])
        if handler is None:
            return {"ok": False, "error": "unknown command %r (known: %s)" % (request["cmd"], ", ".join(sorted(self.handlers)))}
        try:
            return {"ok": True, "result": handler(request, peer)}
        except SentinelError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug in one handler must not take the socket down
            log.exception("control.handler_failed", **{"control.cmd": request["cmd"]})
            return {"ok": False, "error": "internal error: %s" % exc}

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _send(conn: socket.socket, reply: dict[str, Any]) -> None:
    conn.sendall(json.dumps(reply, default=str).encode() + b"\n")


def _is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def request(path: str, cmd: str, timeout: float = 10.0, **args: Any) -> Any:
    """Send one command to a running agent and return its result, or raise ControlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise ControlError("cannot reach the agent at %s: %s" % (path, exc.strerror or exc)) from None
    with sock:
        try:
            sock.sendall(json.dumps(dict(args, cmd=cmd)).encode() + b"\n")
        except OSError:
            pass  # an agent refusing this peer answers and closes at once: its reply may be waiting
        try:
            reply_line = sock.makefile("rb").readline()
        except OSError as exc:
            raise ControlError("the agent closed the connection: %s" % (exc.strerror or exc)) from None
    if not reply_line:
        raise ControlError("the agent closed the connection without a reply")
    reply = json.loads(reply_line)
    if not reply.get("ok"):
        raise ControlError(reply.get("error", "request failed"))
    return reply.get("result")
