"""systemd's notify protocol (sd_notify): one datagram to $NOTIFY_SOCKET.

A Type=notify service tells systemd it is ready with "READY=1" once its sensors are
attached, so units ordered after it never start unobserved. The socket path is a unix
datagram socket; a leading '@' means the abstract namespace.
"""

from __future__ import annotations

import os
import socket

from sentinel.log import get_logger

log = get_logger("sentinel.notify")


def notify(state: str, socket_path: str | None = None) -> bool:
    """Send `state` (e.g. "READY=1", "STOPPING=1", "STATUS=...") to systemd.

    Returns False when no notify socket is configured (not started by systemd); a socket
    that is configured but unreachable is logged, never fatal.
    """
    path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("notify.failed", socket=path, state=state, error=str(exc))
        return False
    return True
