"""What every transport implements, and the error that says how far a batch got."""

from __future__ import annotations

from typing import Sequence

from sentinel.actions.forward.settings import CommonSettings

# (outbox seq, record) pairs, oldest first.
Batch = Sequence[tuple[int, dict]]


class DeliveryError(Exception):
    """A batch failed after its first `delivered` entries were acknowledged; retry the rest
    (not before `retry_after` seconds when the receiver asked for that, e.g. HTTP 429)."""

    def __init__(self, message: str, delivered: int = 0, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.delivered = delivered
        self.retry_after = retry_after


class Transport:
    """Sends batches to one receiver; `send` returns only once the receiver acknowledged.

    Records that can never be delivered (too large even after truncation, refused as
    malformed) are counted in `dropped` and skipped instead of blocking the output.
    """

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self.dropped = 0

    def send(self, batch: Batch) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; the next send reconnects."""

    def reopen(self) -> None:
        """Reopen files (after log rotation); network transports ignore it."""
