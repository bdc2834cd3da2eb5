"""JSON lines appended to a file; `reopen()` (on SIGHUP) follows logrotate's rename."""

from __future__ import annotations

import os
import threading

from sentinel.actions.forward.formats import to_json
from sentinel.actions.forward.settings import JSONFileSettings
from sentinel.actions.forward.transports.base import Batch, DeliveryError, Transport


class JSONFileTransport(Transport):
    settings: JSONFileSettings

    def __init__(self, settings: JSONFileSettings) -> None:
        super().__init__(settings)
        self._file = None
        self._reopen = threading.Event()

    def reopen(self) -> None:
        # Called from a signal handler's thread: only flag it, the delivery thread reopens.
        self._reopen.set()

    def send(self, batch: Batch) -> None:
        if self._reopen.is_set():
            self._reopen.clear()
            self.close()
        try:
            if self._file is None:
                # Alerts name users, files and command lines: not world-readable.
                descriptor = os.open(self.settings.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
                self._file = open(descriptor, "a", encoding="utf-8")
            self._file.write("".join(to_json(record) + "\n" for _seq, record in batch))
            self._file.flush()
            if self.settings.fsync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            self.close()
            raise DeliveryError("cannot write %s: %s" % (self.settings.path, exc.strerror)) from None

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
