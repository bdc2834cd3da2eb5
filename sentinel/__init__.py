"""sentinel: eBPF sensors, Falco-compatible rules and in-kernel enforcement for Linux hosts."""

from __future__ import annotations

__version__ = "0.1.0"
