"""Where Sigma's Linux log sources and field names land in sentinel's (Falco-style) fields.

This table is the single source of truth for the Sigma mapping: the translator reads it, and
`sigma_mapping_markdown()` renders it into docs/sigma.md (a test keeps the doc up to date).

Sigma rules are written against log producers (Sysmon for Linux, auditd, EDRs), not against
syscalls. Each supported `logsource.category` therefore becomes a fixed base condition on the
event type (what the producer would have logged) and a per-category field table. A Sigma field
a host sensor cannot supply maps to an `Unavailable` entry with the reason: a rule using it is
skipped at load with that reason, never loaded as a rule that silently matches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mapped:
    """A Sigma field read from one sentinel field."""

    field: str
    kind: str = "string"  # "string" | "path" (absolute, or empty when unknown) | "number" | "ip"
    note: str = ""

    @property
    def is_text(self) -> bool:
        return self.kind in ("string", "path")


@dataclass(frozen=True)
class Unavailable:
    """A Sigma field no host sensor can supply; rules using it are skipped with `reason`."""

    reason: str


@dataclass(frozen=True)
class Direction:
    """Sysmon's `Initiated`: 'true' for an outgoing connection, 'false' for an accepted one."""

    initiated_types: tuple[str, ...]
    accepted_types: tuple[str, ...]


FieldMapping = Mapped | Unavailable | Direction


@dataclass(frozen=True)
class LogSource:
    """One supported Sigma `logsource.category` on product linux."""

    category: str
    event_types: tuple[str, ...]
    # Falco condition text (over sentinel fields) that every event of this category satisfies,
    # besides its event type; parsed by the rule engine's own condition parser.
    base_condition: str
    meaning: str
    fields: dict[str, FieldMapping]
    # Fields unfielded Sigma keywords are searched in (as a case-insensitive substring).
    keyword_fields: tuple[str, ...]
    # Output template of the alert (after the rule title), listing the key fields.
    output_fields: tuple[tuple[str, str], ...]


_NO_ORIGINAL_FILE_NAME = Unavailable(
    "PE version resources (OriginalFileName, Product, Company, Description, ...) exist only on Windows"
)
_NO_HASHES = Unavailable("sensors do not hash executables or files")
_NO_INTEGRITY = Unavailable("Windows integrity levels do not exist on Linux")
_NO_HOSTNAME = Unavailable(
    "the DNS name of a peer is not known at connect()/accept() time on a host (only its address)"
)

_PROCESS_FIELDS: dict[str, FieldMapping] = {
    "Image": Mapped("proc.exepath", "path", note="resolved path of the executable file"),
    "CommandLine": Mapped(
        "proc.exeline",
        note="argv[0] (as the program was started) followed by the arguments, space separated; "
        "Falco's proc.cmdline starts with the 15-byte comm instead, which is not what Sigma expects",
    ),
    "ParentImage": Mapped("proc.pexepath", "path"),
    "ParentCommandLine": Mapped("proc.pexeline", note="the parent's argv[0] and arguments"),
    "User": Mapped("user.name"),
    "LogonId": Mapped("user.loginuid", "number", note="audit login uid, -1 when unset"),
    "CurrentDirectory": Mapped("proc.cwd"),
    "ProcessId": Mapped("proc.pid", "number"),
    "ParentProcessId": Mapped("proc.ppid", "number"),
    "ParentUser": Unavailable("the parent's user is not tracked separately from the child's"),
    "OriginalFileName": _NO_ORIGINAL_FILE_NAME,
    "Product": _NO_ORIGINAL_FILE_NAME,
    "Company": _NO_ORIGINAL_FILE_NAME,
    "Description": _NO_ORIGINAL_FILE_NAME,
    "FileVersion": _NO_ORIGINAL_FILE_NAME,
    "Hashes": _NO_HASHES,
    "IntegrityLevel": _NO_INTEGRITY,
    "LogonGuid": Unavailable("logon GUIDs are a Sysmon construct with no kernel counterpart"),
    "ProcessGuid": Unavailable("process GUIDs are a Sysmon construct; sentinel identifies processes by (pid, start time)"),
    "ParentProcessGuid": Unavailable("process GUIDs are a Sysmon construct; sentinel identifies processes by (pid, start time)"),
    "TerminalSessionId": Unavailable("terminal session ids are a Windows construct"),
}

_FILE_FIELDS: dict[str, FieldMapping] = {
    "TargetFilename": Mapped("fd.name", "path", note="resolved path of the created file"),
    "Image": Mapped("proc.exepath", "path"),
    "User": Mapped("user.name"),
    "ProcessId": Mapped("proc.pid", "number"),
    "CreationUtcTime": Unavailable("file creation times are not part of an open event"),
    "Hashes": _NO_HASHES,
}

_NETWORK_FIELDS: dict[str, FieldMapping] = {
    "Image": Mapped("proc.exepath", "path"),
    "User": Mapped("user.name"),
    "ProcessId": Mapped("proc.pid", "number"),
    # Sysmon names the ends by who initiated: Destination is the server side in both
    # directions (an inbound RDP connection has DestinationPort 3389). That is Falco's
    # server/client view, which equals fd.rip/fd.rport for outgoing connections.
    "DestinationIp": Mapped("fd.sip", "ip", note="server address: the remote end of a connect(), the local end of an accept()"),
    "DestinationPort": Mapped("fd.sport", "number", note="server port"),
    "SourceIp": Mapped("fd.cip", "ip", note="client address"),
    "SourcePort": Mapped("fd.cport", "number", note="client port"),
    "Protocol": Mapped("fd.l4proto", note="tcp / udp"),
    "Initiated": Direction(initiated_types=("connect",), accepted_types=("accept", "accept4")),
    "DestinationHostname": _NO_HOSTNAME,
    "SourceHostname": _NO_HOSTNAME,
    "DestinationPortName": Unavailable("service names of ports are not resolved by the sensor"),
    "SourcePortName": Unavailable("service names of ports are not resolved by the sensor"),
    "DestinationIsIpv6": Unavailable("use DestinationIp with a cidr modifier instead"),
    "SourceIsIpv6": Unavailable("use SourceIp with a cidr modifier instead"),
}

# `ip` fields compare against CIDR networks through their Falco `*net` counterpart.
IP_NETWORK_FIELDS = {"fd.sip": "fd.snet", "fd.cip": "fd.cnet", "fd.rip": "fd.rnet", "fd.lip": "fd.lnet"}

LOGSOURCES: dict[str, LogSource] = {
    source.category: source
    for source in (
        LogSource(
            category="process_creation",
            event_types=("execve", "execveat"),
            base_condition="evt.type in (execve, execveat) and evt.rawres = 0",
            meaning="a successful execve/execveat (the new program image)",
            fields=_PROCESS_FIELDS,
            keyword_fields=("CommandLine",),
            output_fields=(
                ("user", "user.name"),
                ("image", "proc.exepath"),
                ("cmdline", "proc.exeline"),
                ("parent", "proc.pexepath"),
                ("pid", "proc.pid"),
                ("ppid", "proc.ppid"),
                ("container", "container.id"),
            ),
        ),
        LogSource(
            category="file_event",
            event_types=("open", "openat", "openat2", "creat"),
            base_condition="evt.type in (open, openat, openat2, creat) and evt.is_open_create = true",
            meaning="an open-family syscall that created the file (the kernel set FMODE_CREATED)",
            fields=_FILE_FIELDS,
            keyword_fields=("TargetFilename",),
            output_fields=(
                ("user", "user.name"),
                ("file", "fd.name"),
                ("image", "proc.exepath"),
                ("cmdline", "proc.exeline"),
                ("pid", "proc.pid"),
                ("container", "container.id"),
            ),
        ),
        LogSource(
            category="network_connection",
            event_types=("connect", "accept", "accept4"),
            base_condition=(
                "((evt.type = connect and (evt.rawres >= 0 or evt.res = EINPROGRESS))"
                " or (evt.type in (accept, accept4) and evt.rawres >= 0))"
                " and fd.type in (ipv4, ipv6)"
            ),
            meaning="an IPv4/IPv6 connect() that succeeded or is in progress, or an accepted connection",
            fields=_NETWORK_FIELDS,
            keyword_fields=(),
            output_fields=(
                ("user", "user.name"),
                ("connection", "fd.name"),
                ("image", "proc.exepath"),
                ("cmdline", "proc.exeline"),
                ("pid", "proc.pid"),
                ("container", "container.id"),
            ),
        ),
    )
}

SUPPORTED_PRODUCT = "linux"

# Sigma level -> Falco priority. Sigma has five levels, Falco eight: each level takes the
# Falco priority with the same operational meaning (medium = worth a look = WARNING).
LEVEL_PRIORITY = {
    "informational": "informational",
    "low": "notice",
    "medium": "warning",
    "high": "error",
    "critical": "critical",
}
DEFAULT_LEVEL = "medium"  # a Sigma rule without a level


def sigma_mapping_markdown() -> str:
    """The log source and field tables of docs/sigma.md, generated from this module."""
    lines = [
        "| Sigma level | Falco priority |",
        "|---|---|",
    ]
    lines += ["| %s | %s |" % (level, priority) for level, priority in LEVEL_PRIORITY.items()]
    for source in LOGSOURCES.values():
        lines += [
            "",
            "### `category: %s`" % source.category,
            "",
            "Events: %s (`%s`)." % (source.meaning, source.base_condition),
            "Keywords are searched in: %s."
            % (", ".join("`%s`" % name for name in source.keyword_fields) or "nothing (rules with keywords are skipped)"),
            "",
            "| Sigma field | sentinel field | notes |",
            "|---|---|---|",
        ]
        for name, mapping in source.fields.items():
            if isinstance(mapping, Mapped):
                kind = "" if mapping.kind == "string" else " (%s)" % mapping.kind
                lines.append("| %s | `%s`%s | %s |" % (name, mapping.field, kind, mapping.note))
            elif isinstance(mapping, Direction):
                lines.append(
                    "| %s | `evt.type` | 'true': %s; 'false': %s |"
                    % (name, ", ".join(mapping.initiated_types), ", ".join(mapping.accepted_types))
                )
            else:
                lines.append("| %s | not available | rule skipped: %s |" % (name, mapping.reason))
    return "\n".join(lines) + "\n"


GENERATED_MARKER = "<!-- generated by sentinel.rules.sigma_fields.sigma_mapping_markdown(): do not edit below -->"


def render_sigma_doc(current: str) -> str:
    """docs/sigma.md with its generated part (after the marker) replaced by the current tables."""
    head, marker, _old = current.partition(GENERATED_MARKER)
    if not marker:
        raise ValueError("docs/sigma.md lacks the generated-section marker")
    return head + GENERATED_MARKER + "\n\n" + sigma_mapping_markdown()


if __name__ == "__main__":  # regenerate: python -m sentinel.rules.sigma_fields docs/sigma.md
    import sys
    from pathlib import Path

    doc = Path(sys.argv[1])
    doc.write_text(render_sigma_doc(doc.read_text()))
