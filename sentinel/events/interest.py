"""What the rules need from the sensors: the contract between the rule engine and the kernel side.

The rule engine computes an Interest from the loaded rules; the sensor attaches only the
programs those event types need and loads the filters into BPF maps (never into C text).
Every filter must over-approximate: it may let through events no rule matches, never drop
one a rule could match. `None` for a filter means "no narrowing possible".

An open reaches userspace when it satisfies `open_selectors` AND either the path part
(its resolved path starts with one of `open_path_prefixes`, OR its file name is in
`open_basenames`, OR its comm is in `open_comms`, OR with `open_created` it created its file)
or `open_any_path` (the selectors of the rules that match opens whatever their path; for some
access modes they may require "../" in the path as the program passed it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from sentinel.enrich.container import container_from_paths
from sentinel.events import abi
from sentinel.events.syscalls import OPEN_TYPES

# Values of (open flags & O_ACCMODE) that evt.is_open_read / evt.is_open_write accept.
ACCMODES_READ = frozenset({0, 2, 3})
ACCMODES_WRITE = frozenset({1, 2, 3})
ACCMODES_ALL = frozenset(range(4))
FILE_TYPES_ALL = frozenset(range(16))
# OpenSelectors.container values: only opens by processes in containers / on the host.
IN_CONTAINER = "container"
ON_HOST = "host"


def _either(first, second):
    return None if first is None or second is None else first | second


@dataclass(frozen=True)
class OpenSelectors:
    """Conditions on an open other than its path; None: any value."""

    # the open's (flags & O_ACCMODE) is one of these
    accmodes: frozenset[int] | None = None
    # the opened inode's type (i_mode >> 12) is one of these (fd.typechar = f: not a directory or fifo)
    file_types: frozenset[int] | None = None
    # the caller's real uid is one of these
    uids: frozenset[int] | None = None
    # IN_CONTAINER or ON_HOST: the caller runs there
    container: str | None = None
    # opens of these access modes must also have "../" in the path as the program passed it
    # (fd.nameraw): every rule taking such an open requires it
    dotdot_accmodes: frozenset[int] = frozenset()

    @property
    def names(self) -> tuple[str, ...]:
        """The selectors in effect, by name (for logs and reasons)."""
        values = (("access", self.accmodes), ("file type", self.file_types), ("uid", self.uids),
                  ("container", self.container), ("../ in the path", self.dotdot_accmodes or None))  # fmt: skip
        return tuple(name for name, value in values if value is not None)

    def as_dict(self) -> dict[str, object]:
        """The selectors in effect, JSON-ready: access modes and inode types as sorted numbers."""
        values = {"access": self.accmodes, "file type": self.file_types, "uid": self.uids}
        shown: dict[str, object] = {name: sorted(value) for name, value in values.items() if value is not None}
        if self.container is not None:
            shown["container"] = self.container
        if self.dotdot_accmodes:
            shown["../ in the path, for access"] = sorted(self.dotdot_accmodes)
        return shown

    def union(self, other: OpenSelectors) -> OpenSelectors:
        """What either allows (a selector that allows every value becomes None)."""
        accmodes = _either(self.accmodes, other.accmodes)
        file_types = _either(self.file_types, other.file_types)
        return OpenSelectors(
            accmodes=None if accmodes == ACCMODES_ALL else accmodes,
            file_types=None if file_types == FILE_TYPES_ALL else file_types,
            uids=_either(self.uids, other.uids),
            container=self.container if self.container == other.container else None,
            dotdot_accmodes=self._dotdot_or_disallowed() & other._dotdot_or_disallowed() & (
                self._allowed_accmodes() | other._allowed_accmodes()),
        )

    def _allowed_accmodes(self) -> frozenset[int]:
        return ACCMODES_ALL if self.accmodes is None else self.accmodes

    def _dotdot_or_disallowed(self) -> frozenset[int]:
        """The access modes for which this side passes only opens with "../" (or none at all)."""
        return self.dotdot_accmodes | (ACCMODES_ALL - self._allowed_accmodes())


ANY = OpenSelectors()


@dataclass(frozen=True)
class Interest:
    # Falco event type names (`execve`, `openat`, `connect`, `clone`, `procexit`, ...).
    event_types: frozenset[str] = frozenset()
    # Opens: only paths (resolved by the kernel) under one of these prefixes reach userspace.
    open_path_prefixes: tuple[str, ...] | None = None
    # The access modes ((flags & O_ACCMODE) values) of opens under a prefix that rules can
    # match, for the prefixes that do not take every mode: ("/etc/", {1, 2, 3}) when every
    # rule on /etc/ is about writes. The kernel drops a read under /etc/ (unless another part
    # of the filter passes it).
    open_prefix_accmodes: tuple[tuple[str, frozenset[int]], ...] = ()
    # Opens by these comms reach userspace whatever their path (adds to the prefixes).
    open_comms: frozenset[str] = frozenset()
    # Opens whose resolved path's last component is one of these names (fd.filename) reach
    # userspace whatever their directory (adds to the prefixes).
    open_basenames: frozenset[str] = frozenset()
    # Opens that created their file (FMODE_CREATED at exit; O_CREAT/O_TMPFILE at enter
    # over-approximates) reach userspace whatever their path (adds to the prefixes).
    open_created: bool = False
    # Every open that reaches userspace satisfies these.
    open_selectors: OpenSelectors = ANY
    # Opens that satisfy these reach userspace whatever their path (adds to the prefixes);
    # None: no rule matches opens whatever their path.
    open_any_path: OpenSelectors | None = None
    # Why a filter could not be narrowed: "rule 'X' forces every open to userspace".
    reasons: tuple[str, ...] = field(default=())
    # Event types a kill rule matches: their records wake the reader at once instead of
    # waiting up to sensor.batch_ms with the rest, so a kill decision is not delayed.
    urgent_types: frozenset[str] = frozenset()

    def wants(self, event_type: str) -> bool:
        return event_type in self.event_types

    @property
    def wants_opens(self) -> bool:
        return bool(self.event_types & OPEN_TYPES)

    def union(self, other: Interest) -> Interest:
        """Combine two interests (e.g. rules and the always-stored types) without losing either.

        An interest that wants no open contributes nothing to the other's open filter."""
        merged = dict(
            event_types=self.event_types | other.event_types,
            reasons=self.reasons + other.reasons,
            urgent_types=self.urgent_types | other.urgent_types,
        )
        if not other.wants_opens:
            return replace(self, **merged)
        if not self.wants_opens:
            return replace(other, **merged)
        prefixes = None
        prefix_accmodes: dict[str, frozenset[int]] = {}
        if self.open_path_prefixes is not None and other.open_path_prefixes is not None:
            prefixes = tuple(sorted(set(self.open_path_prefixes) | set(other.open_path_prefixes)))
            for side in (self, other):
                restricted = dict(side.open_prefix_accmodes)
                for prefix in side.open_path_prefixes:
                    modes = restricted.get(prefix, ACCMODES_ALL)
                    prefix_accmodes[prefix] = prefix_accmodes.get(prefix, frozenset()) | modes
        any_path = self.open_any_path if other.open_any_path is None else other.open_any_path
        if self.open_any_path is not None and other.open_any_path is not None:
            any_path = self.open_any_path.union(other.open_any_path)
        return Interest(
            open_path_prefixes=prefixes,
            open_prefix_accmodes=tuple(sorted((p, m) for p, m in prefix_accmodes.items() if m != ACCMODES_ALL)),
            open_comms=self.open_comms | other.open_comms,
            open_basenames=self.open_basenames | other.open_basenames,
            open_created=self.open_created or other.open_created,
            open_selectors=self.open_selectors.union(other.open_selectors),
            open_any_path=any_path,
            **merged,
        )


# The process lifecycle is always captured: the process table needs it whatever the rules say.
PROCESS_LIFECYCLE = frozenset({"execve", "execveat", "clone", "fork", "vfork", "clone3", "procexit", "chdir", "fchdir"})


def cgroup_classes(root: str, hybrid: bool, limit: int) -> dict[int, int]:
    """The v2 cgroups under `root` (the cgroup2 mount) whose class is certain, by cgroup id
    (the directory's inode number, what bpf_get_current_cgroup_id returns): CGROUP_CONTAINER
    when the path names a container, CGROUP_HOST otherwise, but only where the v2 path
    decides container.id (not `hybrid`: there a v1 path may name the container). At most
    `limit` of them: a cgroup left out has no class, and the filter never drops for it."""
    classes: dict[int, int] = {}
    for directory, _subdirs, _files in os.walk(root):
        path = "/" if directory == root else "/" + os.path.relpath(directory, root)
        if container_from_paths([path]) is not None:
            kind = abi.CGROUP_CONTAINER
        elif hybrid:
            continue
        else:
            kind = abi.CGROUP_HOST
        try:
            classes[os.stat(directory).st_ino] = kind
        except OSError:
            continue  # removed meanwhile
        if len(classes) >= limit:
            break
    return classes


@dataclass(frozen=True)
class OpenFilterPlan:
    """What the sensor writes into the open filter's maps for an Interest (pure data, so the
    translation is tested without a kernel)."""

    enabled: bool
    cfg: dict[str, int]  # struct sentinel_open_cfg, by member
    prefixes: tuple[bytes, ...] = ()
    # the access-mode bits (1 << (flags & O_ACCMODE)) of opens each prefix passes: the value
    # of its trie entry (the kernel takes the longest prefix, so a prefix's bits include
    # those of the prefixes above it)
    prefix_accmodes: dict[bytes, int] = field(default_factory=dict)
    comms: tuple[bytes, ...] = ()
    basenames: tuple[bytes, ...] = ()
    # the first component of every prefix, when each has the form "/<component>/..." and the
    # component is short enough for the kernel's quick check (else empty)
    first_components: tuple[bytes, ...] = ()
    uids: dict[int, int] = field(default_factory=dict)  # uid -> OPEN_SEL_* bits
    reasons: tuple[str, ...] = ()

    @property
    def drops_by_cgroup(self) -> bool:
        return bool(self.cfg["drop_class"] or self.cfg["alt_drop_class"])


_ALL_ACCMODES = 0xF
_ALL_FILE_TYPES = 0xFFFF


def _mask(values: frozenset[int] | None, everything: int) -> int:
    return everything if values is None else sum(1 << value for value in values)


def _drop_class(container: str | None, hybrid: bool, reasons: list[str]) -> int:
    """The cgroup class whose opens a container selector drops."""
    if container == ON_HOST:
        return abi.CGROUP_CONTAINER
    if container == IN_CONTAINER:
        if hybrid:
            reason = "the container selector cannot drop host opens: on hybrid cgroups a v1 path may name the container"
            if reason not in reasons:
                reasons.append(reason)
            return 0
        return abi.CGROUP_HOST
    return 0


def _first_components(prefixes: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The first path components of the prefixes, for the kernel's quick check; () when a
    prefix does not name a whole first component ("/", "/et") or one is too long to compare."""
    firsts = set()
    for prefix in prefixes:
        component, slash, _rest = prefix[1:].partition(b"/")
        if not prefix.startswith(b"/") or not slash or not component or len(component) >= abi.OPEN_FIRST_COMPONENT_MAX:
            return ()
        firsts.add(component)
    return tuple(sorted(firsts))


def plan_open_filter(interest: Interest, hybrid: bool = False) -> OpenFilterPlan:
    """The open filter's map contents for `interest` on a host whose cgroups are `hybrid`
    (v1 controllers beside the v2 hierarchy) or not."""
    reasons = list(interest.reasons)
    prefixes = interest.open_path_prefixes
    selectors, any_path = interest.open_selectors, interest.open_any_path
    narrowed = (prefixes is not None and "" not in prefixes) or bool(selectors.names)
    encoded = {
        "prefixes": tuple(sorted({p.encode("utf-8", "surrogateescape")[: abi.OPEN_PREFIX_MAX - 1] for p in prefixes or ()})),
        "comms": tuple(sorted({c.encode("utf-8", "surrogateescape")[: abi.COMM_LEN - 1] for c in interest.open_comms})),
        "file names": tuple(sorted(n.encode("utf-8", "surrogateescape") for n in interest.open_basenames)),
    }
    uids: dict[int, int] = {}
    for uid in selectors.uids or ():
        uids[uid] = abi.OPEN_SEL_GLOBAL
    for uid in (any_path.uids if any_path is not None else None) or ():
        uids[uid] = uids.get(uid, 0) | abi.OPEN_SEL_ANY_PATH
    too_many = [what for what, items in encoded.items() if len(items) > abi.OPEN_FILTER_ENTRIES]
    if len(uids) > abi.OPEN_FILTER_ENTRIES:
        too_many.append("uids")
    long_names = [n for n in encoded["file names"] if len(n) >= abi.OPEN_BASENAME_MAX]
    if narrowed and long_names:
        narrowed = False  # a name the kernel cannot compare would be dropped: no narrowing
        reasons.append("open filter file name longer than %d bytes: %r" % (abi.OPEN_BASENAME_MAX - 1, long_names[0].decode("utf-8", "surrogateescape")))
    if narrowed and too_many:
        narrowed = False
        reasons.append("more open filter %s than the kernel map holds (%d)" % (" and ".join(too_many), abi.OPEN_FILTER_ENTRIES))
    if not narrowed:
        cfg = dict.fromkeys(("enabled", "pass_created", "has_comms", "has_basenames", "any_path", "uid_bits", "drop_class",
                             "alt_enabled", "alt_drop_class", "alt_dotdot_accmodes"), 0)  # fmt: skip
        cfg.update(accmodes=_ALL_ACCMODES, file_types=_ALL_FILE_TYPES, alt_accmodes=0, alt_file_types=0, first_check=0)
        return OpenFilterPlan(enabled=False, cfg=cfg, reasons=tuple(reasons))
    path_everything = prefixes is None or "" in prefixes
    alt = any_path if any_path is not None and not path_everything else None
    cfg = {
        "enabled": 1,
        "pass_created": int(interest.open_created),
        "has_comms": int(bool(encoded["comms"])),
        "has_basenames": int(bool(encoded["file names"])),
        "any_path": int(path_everything),
        "accmodes": _mask(selectors.accmodes, _ALL_ACCMODES),
        "file_types": _mask(selectors.file_types, _ALL_FILE_TYPES),
        "uid_bits": (abi.OPEN_SEL_GLOBAL if selectors.uids is not None else 0)
        | (abi.OPEN_SEL_ANY_PATH if alt is not None and alt.uids is not None else 0),
        "drop_class": _drop_class(selectors.container, hybrid, reasons),
        "alt_enabled": int(alt is not None),
        "alt_accmodes": _mask(alt.accmodes, _ALL_ACCMODES) if alt is not None else 0,
        "alt_file_types": _mask(alt.file_types, _ALL_FILE_TYPES) if alt is not None else 0,
        "alt_drop_class": _drop_class(alt.container, hybrid, reasons) if alt is not None else 0,
        "alt_dotdot_accmodes": _mask(alt.dotdot_accmodes, 0) if alt is not None else 0,
    }
    prefixes_kept = () if path_everything else encoded["prefixes"]
    firsts = _first_components(prefixes_kept)
    restricted = dict(interest.open_prefix_accmodes)
    own: dict[bytes, int] = {}
    for prefix in () if path_everything else prefixes or ():
        raw = prefix.encode("utf-8", "surrogateescape")[: abi.OPEN_PREFIX_MAX - 1]
        own[raw] = own.get(raw, 0) | _mask(restricted.get(prefix), _ALL_ACCMODES)
    prefix_accmodes = {}
    for raw in own:
        bits = 0
        for other, other_bits in own.items():
            if raw.startswith(other):
                bits |= other_bits
        prefix_accmodes[raw] = bits
    cfg["first_check"] = int(bool(firsts))
    return OpenFilterPlan(
        enabled=True,
        cfg=cfg,
        first_components=firsts,
        prefixes=prefixes_kept,
        prefix_accmodes=prefix_accmodes,
        comms=() if path_everything else encoded["comms"],
        basenames=() if path_everything else encoded["file names"],
        uids=uids,
        reasons=tuple(reasons),
    )
