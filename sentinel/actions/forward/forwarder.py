"""The Forwarder: `submit()` from the pipeline, one delivery thread per output.

submit() only appends to an in-memory deque (well under a microsecond); a writer thread
moves records into the outbox in batched transactions every `flush_seconds`. Each output's
thread reads batches after its cursor, keeps what its filter accepts, sends, and moves the
cursor only after the receiver's acknowledgement; failures back off exponentially with
jitter up to backoff_max (or the receiver's Retry-After). Records lost to the outbox bounds
raise a loss alert record through `on_loss` (by default submitted to the outputs themselves).

Durability: what is in the outbox survives a crash and is delivered at least once; what was
submitted in the last `flush_seconds` before a crash (still in memory) is not. `flush()`
waits until everything submitted so far is in the outbox.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from sentinel.actions.forward.outbox import Outbox
from sentinel.actions.alert import HostIdentity, alert_record
from sentinel.actions.forward.settings import CommonSettings, parse_output
from sentinel.actions.forward.transports import DeliveryError, Transport, make_transport
from sentinel.config import Config, OutputConfig
from sentinel.errors import SentinelError
from sentinel.log import get_logger

log = get_logger(__name__)
LOSS_RULE = "Forwarding records lost"
OVERFLOW_OUTPUT = "outbox"  # the name losses before the outbox are reported under


@dataclass
class OutputStatus:
    """Counters of one output, for `sentinel forward status` and metrics."""

    name: str
    type: str
    cursor: int = 0
    head: int = 0
    delivered: int = 0
    dropped: int = 0
    lost: int = 0
    failures: int = 0
    last_error: str = ""
    last_success: float = 0.0

    @property
    def backlog(self) -> int:
        return max(0, self.head - self.cursor)


def backoff_delay(failures: int, initial: float, maximum: float, rng: random.Random = random.Random()) -> float:
    """Exponential backoff with jitter: uniform in [d/2, d], d = min(max, initial * 2^(n-1))."""
    delay = min(maximum, initial * (2 ** max(0, failures - 1)))
    return delay * rng.uniform(0.5, 1.0)


class OutputWorker(threading.Thread):
    """Delivers one output's records in order, from its persisted cursor."""

    def __init__(self, settings: CommonSettings, outbox: Outbox, wakeup: threading.Condition, stopping: threading.Event,
                 transport: Transport | None = None) -> None:
        super().__init__(name="forward-%s" % settings.name, daemon=True)
        self.settings = settings
        self.outbox = outbox
        self.wakeup = wakeup
        self.stopping = stopping
        self.record_filter = settings.record_filter
        self.transport = transport or make_transport(settings)
        self.status = OutputStatus(settings.name, settings.type)
        self.cursor = outbox.register(settings.name)
        self.status.cursor = self.cursor

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    busy = self._step()
                except Exception as exc:  # a bug or a locked outbox must not end delivery
                    log.exception("forward.worker_error", output=self.settings.name, error=str(exc))
                    self._failed(exc)
                    continue
                if not busy:
                    with self.wakeup:
                        if self.outbox_head_cached() <= self.cursor and not self.stopping.is_set():
                            self.wakeup.wait(0.5)
        finally:
            self.transport.close()

    def outbox_head_cached(self) -> int:
        self.status.head = self.outbox.head()
        return self.status.head

    def _step(self) -> bool:
        """Deliver one batch; False when there was nothing to do (or after a failure wait)."""
        # The cursor may have been moved forward by a trim (records lost to the bounds).
        self.cursor = max(self.cursor, self.outbox.cursor(self.settings.name))
        rows = self.outbox.read_after(self.cursor, self.settings.batch_size)
        if not rows:
            return False
        selected = [row for row in rows if row.accepted_by(self.record_filter)]
        batch = [(row.seq, row.record) for row in selected]
        dropped_before = self.transport.dropped
        try:
            if batch:
                self.transport.send(batch)
        except (DeliveryError, SentinelError, OSError) as exc:
            delivered = getattr(exc, "delivered", 0)
            self.status.dropped = self.transport.dropped
            if delivered:
                self._advance(batch[delivered - 1][0], delivered)
            log.warning("forward.retry", output=self.settings.name, error=str(exc), failures=self.status.failures + 1)
            self._failed(exc)
            return True
        self.status.dropped = self.transport.dropped
        self.status.failures = 0
        self.status.last_success = time.time()
        self._advance(rows[-1].seq, len(batch) - (self.transport.dropped - dropped_before))
        return True

    def _failed(self, exc: BaseException) -> None:
        """Count the failure and wait out the backoff, or the receiver's Retry-After if longer
        (interrupted by stop)."""
        self.status.failures += 1
        self.status.last_error = str(exc)
        delay = backoff_delay(self.status.failures, self.settings.backoff_initial, self.settings.backoff_max)
        self.stopping.wait(max(delay, getattr(exc, "retry_after", 0.0)))

    def _advance(self, seq: int, delivered: int) -> None:
        self.outbox.advance(self.settings.name, seq)
        self.cursor = seq
        self.status.cursor = seq
        self.status.delivered += delivered


class Forwarder:
    """Durable, at-least-once forwarding of alert/event records to configured outputs.

    Used by the agent as:
        forwarder = Forwarder.from_config(config, identity=host, ruleset_version=version)
        forwarder.start()
        forwarder.submit(record)      # from the pipeline: ~0.1 us, never blocks
        forwarder.reopen()            # on SIGHUP
        forwarder.stop()              # what is undelivered stays in the outbox
    """

    def __init__(
        self,
        outputs: Iterable[OutputConfig | CommonSettings],
        outbox_path: str,
        *,
        max_rows: int = 1_000_000,
        max_age_seconds: float = 7 * 86400,
        flush_seconds: float = 0.05,
        trim_seconds: float = 5.0,
        identity: HostIdentity | None = None,
        ruleset_version: str = "",
        on_loss: Callable[[str, int], None] | None = None,
        max_pending: int = 200_000,
    ) -> None:
        self.settings = [
            o if isinstance(o, CommonSettings) else parse_output(o.name, o.type, o.options) for o in outputs
        ]
        names = [s.name for s in self.settings]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SentinelError("output names must be unique: %s" % ", ".join(duplicates))
        self.outbox = Outbox(outbox_path, max_rows=max_rows, max_age_seconds=max_age_seconds)
        self.flush_seconds = flush_seconds
        self.trim_seconds = trim_seconds
        self.identity = identity or HostIdentity.current()
        self.ruleset_version = ruleset_version
        self.on_loss = on_loss or self._submit_loss_alert
        self._pending: deque[dict] = deque()
        self.max_pending = max_pending
        self._overflow = 0  # records refused by submit() while the outbox writer lagged
        self._stopping = threading.Event()
        self._wakeup = threading.Condition()
        self._flushed = threading.Condition()
        self._written = 0
        self._accepted = 0
        self.workers = [OutputWorker(s, self.outbox, self._wakeup, self._stopping) for s in self.settings]
        self._writer = threading.Thread(target=self._write_loop, name="forward-outbox", daemon=True)
        self._last_trim = 0.0

    @classmethod
    def from_config(cls, config: Config, **kwargs) -> Forwarder:
        """The agent's forwarder: config.outputs through the outbox at config.outbox_path."""
        return cls(
            config.outputs,
            config.outbox_path,
            max_rows=config.forward.max_rows,
            max_age_seconds=config.forward.max_age_hours * 3600,
            **kwargs,
        )

    # ------------------------------------------------------------ pipeline side
    def submit(self, record: dict) -> None:
        """Queue one record (alert or event dict) for every output that accepts it.

        The dict is serialized later by the outbox writer: do not modify it after submit.
        If the writer lags by more than max_pending records (a stuck disk), the record is
        counted and reported as lost (output "outbox") instead of growing memory.
        """
        if len(self._pending) >= self.max_pending:
            self._overflow += 1
            return
        self._pending.append(record)

    def submit_many(self, records: Iterable[dict]) -> None:
        for record in records:
            self.submit(record)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._writer.start()
        for worker in self.workers:
            worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued to the outbox, then stop every thread (undelivered stays)."""
        self.flush(timeout)
        self._stopping.set()
        with self._wakeup:
            self._wakeup.notify_all()
        deadline = time.monotonic() + timeout
        for thread in [self._writer, *self.workers]:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        if not self._writer.is_alive():
            self._write_pending()
        self.outbox.close()

    def reopen(self) -> None:
        """Reopen output files (call on SIGHUP after log rotation)."""
        for worker in self.workers:
            worker.transport.reopen()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far is in the outbox."""
        target = self._written + len(self._pending)
        deadline = time.monotonic() + timeout
        with self._flushed:
            while self._written < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._writer.is_alive():
                    return self._written >= target
                self._flushed.wait(min(remaining, 0.05))
        return True

    def wait_delivered(self, timeout: float = 10.0) -> bool:
        """Wait until every output's cursor reached the outbox head (tests, CLI)."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        while time.monotonic() < deadline:
            head = self.outbox.head()
            if all(worker.cursor >= head for worker in self.workers):
                return True
            time.sleep(0.01)
        return False

    def status(self) -> list[OutputStatus]:
        head = self.outbox.head()
        for worker in self.workers:
            worker.status.head = head
            worker.status.lost = self.outbox.lost(worker.settings.name)
        return [worker.status for worker in self.workers]

    # ------------------------------------------------------------ writer thread
    def _write_pending(self) -> int:
        batch = []
        pending = self._pending
        while pending and len(batch) < 5000:
            batch.append(pending.popleft())
        if batch:
            try:
                self.outbox.append(batch)
            except BaseException:
                pending.extendleft(reversed(batch))  # keep them for the next attempt
                raise
            with self._flushed:
                self._written += len(batch)
                self._flushed.notify_all()
            with self._wakeup:
                self._wakeup.notify_all()
        return len(batch)

    def _write_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                written = self._write_pending()
                if time.monotonic() - self._last_trim >= self.trim_seconds:
                    self.trim()
            except Exception as exc:  # the writer must survive a full disk; retry later
                log.error("forward.outbox_error", error=str(exc))
                written = 0
            if not written:
                self._stopping.wait(self.flush_seconds)

    def trim(self) -> dict[str, int]:
        """Apply the outbox bounds now; report losses through on_loss."""
        self._last_trim = time.monotonic()
        losses = self.outbox.trim({w.settings.name: w.record_filter for w in self.workers})
        overflow, self._overflow = self._overflow, 0
        if overflow:
            losses[OVERFLOW_OUTPUT] = overflow
        for name, count in losses.items():
            log.error("forward.lost", output=name, count=count)
            self.on_loss(name, count)
        return losses

    def _submit_loss_alert(self, output: str, count: int) -> None:
        self.submit(
            alert_record(
                host=self.identity,
                ruleset_version=self.ruleset_version,
                time_ns=time.time_ns(),
                rule=LOSS_RULE,
                priority="error",
                output="sentinel lost %d records for output %s before delivery (outbox bound reached)" % (count, output),
                output_fields={"forward.output": output, "forward.lost": count},
                tags=("sentinel", "forwarding"),
                source="internal",
            )
        )
