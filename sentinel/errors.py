"""Errors that carry where the bad input came from, so users can fix it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLocation:
    """A position in a user-supplied file: 1-based line and column, as editors show them."""

    path: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if not self.line:
            return self.path
        if not self.col:
            return "%s:%d" % (self.path, self.line)
        return "%s:%d:%d" % (self.path, self.line, self.col)


class SentinelError(Exception):
    """Base of every error sentinel reports to a user; `location` points at the cause."""

    def __init__(self, message: str, location: SourceLocation | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        if self.location is None:
            return self.message
        return "%s: %s" % (self.location, self.message)


class ConfigError(SentinelError):
    """The configuration file or a command-line option is invalid."""


class RuleError(SentinelError):
    """A rule, macro or list is invalid."""


class KernelError(SentinelError):
    """The kernel refused a program, a map operation or an attachment."""


class StoreError(SentinelError):
    """The event store cannot be opened or written."""
