"""What the rules need from the sensors: the contract between the rule engine and the kernel side.

The rule engine computes an Interest from the loaded rules; the sensor attaches only the
programs those event types need and loads the filters into BPF maps (never into C text).
Every filter must over-approximate: it may let through events no rule matches, never drop
one a rule could match. `None` for a filter means "no narrowing possible".
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Interest:
    # Falco event type names (`execve`, `openat`, `connect`, `clone`, `procexit`, ...).
    event_types: frozenset[str] = frozenset()
    # Opens: only paths (resolved by the kernel) under one of these prefixes reach userspace.
    open_path_prefixes: tuple[str, ...] | None = None
    # Opens by these comms reach userspace whatever their path (adds to the prefixes).
    open_comms: frozenset[str] = frozenset()
    # Opens whose resolved path's last component is one of these names (fd.filename) reach
    # userspace whatever their directory (adds to the prefixes).
    open_basenames: frozenset[str] = frozenset()
    # Opens that created their file (FMODE_CREATED at exit; O_CREAT/O_TMPFILE at enter
    # over-approximates) reach userspace whatever their path (adds to the prefixes).
    open_created: bool = False
    # Why a filter could not be narrowed: "rule 'X' forces every open to userspace".
    reasons: tuple[str, ...] = field(default=())

    def wants(self, event_type: str) -> bool:
        return event_type in self.event_types

    def union(self, other: Interest) -> Interest:
        """Combine two interests (e.g. rules and the always-stored types) without losing either."""

        def merge_prefixes(a, b):
            if a is None or b is None:
                return None
            return tuple(sorted(set(a) | set(b)))

        return Interest(
            event_types=self.event_types | other.event_types,
            open_path_prefixes=merge_prefixes(self.open_path_prefixes, other.open_path_prefixes),
            open_comms=self.open_comms | other.open_comms,
            open_basenames=self.open_basenames | other.open_basenames,
            open_created=self.open_created or other.open_created,
            reasons=self.reasons + other.reasons,
        )


# The process lifecycle is always captured: the process table needs it whatever the rules say.
PROCESS_LIFECYCLE = frozenset({"execve", "execveat", "clone", "fork", "vfork", "clone3", "procexit", "chdir", "fchdir"})
