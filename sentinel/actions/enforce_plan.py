"""Deny rules compiled to the kernel map entries that enforce them.

A deny rule is pushed into the kernel, never decided per event in Python, so its condition
must be one the maps can express. Accepted shape: a conjunction (`and`) of

    evt.type = T / evt.type in (...)     one operation class: exec (execve, execveat),
                                         open (open, openat, openat2, creat) or
                                         network (connect, sendto, sendmsg)
    evt.dir = < / >                      ignored (both halves of one syscall)
  exec:    proc.exepath = P / in (...)   a specific file (followed by inode)
           proc.exepath startswith D/    every file under directory D
           proc.name = N / in (...)      a program name (comm, 15 bytes)
           proc.exe_ino = N / in (...)   an executable by inode number (on any device)
  open:    fd.name = P / in (...)        a specific file
           fd.name startswith D/, fd.directory = D     every file under directory D
           fd.ino = N / in (...)         a file by inode number, with `and fd.dev = D`
                                         (the kernel dev_t) to name one device
  network: fd.rip / fd.sip = A / in (...), fd.rnet / fd.snet / fd.net = CIDR / in (...),
           fd.rport / fd.sport / fd.port = N / in (...)   (addresses x ports)
  scope (any operation, optional, at most one of each):
           user.uid = U / in (...)       only processes with that real uid
           proc.cgroup = P / in (...)    only processes in that cgroup v2 (path under the
                                         cgroup2 mount, as proc.cgroup shows it)
           proc.cgroup startswith P/     only processes in cgroups below P

where the targets of one kind may also be joined with `or`. A scope narrows every target
of the rule (targets x uids x cgroups entries). Anything else is a RuleError at load that
names the part that cannot be pushed down and the rule's location.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from sentinel.errors import RuleError, SourceLocation
from sentinel.rules import ast

EXEC_TYPES = frozenset({"execve", "execveat"})
OPEN_TYPES = frozenset({"open", "openat", "openat2", "creat"})
NET_TYPES = frozenset({"connect", "sendto", "sendmsg"})
_OPERATION_OF_TYPE = {**{t: "exec" for t in EXEC_TYPES}, **{t: "open" for t in OPEN_TYPES}, **{t: "net" for t in NET_TYPES}}

COMM_MAX = 15  # the kernel keeps 15 bytes of a program name

_ADDRESS_FIELDS = frozenset({"fd.rip", "fd.sip"})
_NETWORK_FIELDS = frozenset({"fd.rnet", "fd.snet", "fd.net"})
_PORT_FIELDS = frozenset({"fd.rport", "fd.sport", "fd.port"})


ANY_UID = -1
ENTRY_KINDS = ("exec_file", "exec_dir", "exec_name", "exec_ino", "open_file", "open_dir", "open_ino", "net")


@dataclass(frozen=True, order=True)
class Scope:
    """Whom a deny applies to: a real uid (ANY_UID: any) and a cgroup v2 path relative to
    the cgroup2 mount ("": any); with `below`, the cgroups under that path, not the path."""

    uid: int = ANY_UID
    cgroup: str = ""
    below: bool = False

    @property
    def everyone(self) -> bool:
        return self.uid == ANY_UID and not self.cgroup

    def __str__(self) -> str:
        parts = []
        if self.uid != ANY_UID:
            parts.append("uid %d" % self.uid)
        if self.cgroup:
            parts.append(("cgroups below %s" if self.below else "cgroup %s") % self.cgroup)
        return ", ".join(parts) or "everyone"


EVERYONE = Scope()


@dataclass(frozen=True, order=True)
class DenyEntry:
    """One kernel map entry. kind: one of ENTRY_KINDS.

    `target` is a path, a program name, an inode ("ino" or "ino:dev" with the kernel
    dev_t), or for net a CIDR; `port` is 0 for any port; `scope` whom it applies to.
    Several rules can need the same entry: the enforcer counts references to it.
    """

    kind: str
    target: str
    port: int = 0
    scope: Scope = EVERYONE

    def __str__(self) -> str:
        text = "net %s port %s" % (self.target, self.port or "any") if self.kind == "net" else "%s %s" % (self.kind, self.target)
        return text if self.scope.everyone else "%s for %s" % (text, self.scope)


@dataclass(frozen=True)
class DenyPlan:
    rule: str
    operation: str  # exec | open | net
    entries: tuple[DenyEntry, ...]


def _values(check: ast.BinaryCheck) -> tuple[str, ...] | None:
    if check.op in ("=", "==") and isinstance(check.value, ast.Value):
        return (check.value.text,)
    if check.op == "in" and isinstance(check.value, ast.ValueList):
        return check.value.items
    return None


def _conjuncts(node: ast.Expr) -> list[ast.Expr]:
    if isinstance(node, ast.And):
        return [leaf for child in node.children for leaf in _conjuncts(child)]
    return [node]


def _disjuncts(node: ast.Expr) -> list[ast.Expr]:
    if isinstance(node, ast.Or):
        return [leaf for child in node.children for leaf in _disjuncts(child)]
    return [node]


class _Unsupported(Exception):
    def __init__(self, node: ast.Expr, why: str) -> None:
        super().__init__(why)
        self.node = node
        self.why = why


def _directory(path: str, node: ast.Expr) -> str:
    if not path.startswith("/"):
        raise _Unsupported(node, "a directory prefix must be an absolute path")
    if not path.endswith("/"):
        raise _Unsupported(node, "a path prefix can be pushed down only at a directory boundary (end it with '/')")
    return path.rstrip("/") or "/"


def _file(path: str, node: ast.Expr) -> str:
    if not path.startswith("/"):
        raise _Unsupported(node, "a file must be named by its absolute path")
    return path


_TARGET_KINDS = {
    ("exec", "proc.exepath"): "exec_file",
    ("exec", "proc.name"): "exec_name",
    ("exec", "proc.exe_ino"): "exec_ino",
    ("open", "fd.name"): "open_file",
    ("open", "fd.directory"): "open_dir",
    ("open", "fd.ino"): "open_ino",
}


def _inode_numbers(node: ast.BinaryCheck, values: tuple[str, ...], what: str) -> list[int]:
    if any(not v.isdigit() or int(v) == 0 for v in values):
        raise _Unsupported(node, "%s must be a positive integer" % what)
    return [int(v) for v in values]


def _target_entries(operation: str, node: ast.Expr) -> list[DenyEntry] | None:
    """Entries for one target check, or None when the node is not a target of `operation`."""
    if not isinstance(node, ast.BinaryCheck) or node.field.transformers or node.field.arg is not None:
        return None
    kind = _TARGET_KINDS.get((operation, node.field.name))
    if kind is None:
        return None
    values = _values(node)
    if node.op == "startswith" and isinstance(node.value, ast.Value) and kind in ("exec_file", "open_file"):
        return [DenyEntry(kind.replace("_file", "_dir"), _directory(node.value.text, node))]
    if values is None:
        raise _Unsupported(node, "only =, in (and startswith a directory for paths) can be pushed down")
    if kind == "exec_name":
        too_long = [v for v in values if len(v.encode()) > COMM_MAX]
        if too_long:
            raise _Unsupported(node, "a program name has at most %d bytes: %s" % (COMM_MAX, too_long[0]))
        return [DenyEntry(kind, v) for v in values]
    if kind == "open_dir":
        return [DenyEntry(kind, _directory(v if v.endswith("/") else v + "/", node)) for v in values]
    if kind in ("exec_ino", "open_ino"):
        return [DenyEntry(kind, str(ino)) for ino in _inode_numbers(node, values, "an inode number")]
    return [DenyEntry(kind, _file(v, node)) for v in values]


_SCOPE_FIELDS = frozenset({"user.uid", "proc.cgroup"})


def _is_scope(node: ast.Expr) -> bool:
    return isinstance(node, ast.BinaryCheck) and node.field.name in _SCOPE_FIELDS and not node.field.transformers


def _scopes(nodes: list[ast.Expr]) -> list[Scope]:
    """The scopes (uids x cgroups) named by the scope conjuncts of a rule."""
    uids: list[int] | None = None
    cgroups: list[tuple[str, bool]] | None = None
    for node in nodes:
        assert isinstance(node, ast.BinaryCheck)
        values = _values(node)
        if node.field.name == "user.uid":
            if uids is not None:
                raise _Unsupported(node, "one user.uid condition per rule")
            if values is None:
                raise _Unsupported(node, "user.uid must be compared with = or in")
            if any(not v.isdigit() or int(v) >= 0xFFFFFFFF for v in values):
                raise _Unsupported(node, "a uid is a number below 4294967295")
            uids = [int(v) for v in values]
            continue
        if cgroups is not None:
            raise _Unsupported(node, "one proc.cgroup condition per rule")
        if node.op == "startswith" and isinstance(node.value, ast.Value):
            below = True
            values = (node.value.text,)
            if not node.value.text.endswith("/"):
                raise _Unsupported(node, "a cgroup prefix must end with '/' (the cgroups below a path)")
        elif values is None:
            raise _Unsupported(node, "proc.cgroup must be compared with =, in or startswith P/")
        else:
            below = False
        if any(not v.startswith("/") for v in values):
            raise _Unsupported(node, "a cgroup is its absolute path under the cgroup2 mount (as proc.cgroup shows it)")
        cgroups = [(v.rstrip("/") or "/", below) for v in values]
    return [Scope(uid, cgroup, below) for uid in (uids or [ANY_UID]) for cgroup, below in (cgroups or [("", False)])]


def _device(node: ast.BinaryCheck) -> int:
    values = _values(node)
    if values is None or len(values) != 1:
        raise _Unsupported(node, "fd.dev must be compared with = to one device")
    return _inode_numbers(node, values, "a device number (the kernel dev_t)")[0]


def _networks(node: ast.BinaryCheck, values: tuple[str, ...]) -> list[str]:
    found = []
    for text in values:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise _Unsupported(node, "not an IP address or CIDR: %s" % text) from None
        if node.field.name in _ADDRESS_FIELDS and network.num_addresses != 1:
            raise _Unsupported(node, "%s compares one address; use fd.rnet for a CIDR" % node.field.name)
        found.append(str(network))
    return found


def _ports(node: ast.BinaryCheck, values: tuple[str, ...]) -> list[int]:
    ports = []
    for text in values:
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise _Unsupported(node, "not a port number: %s" % text)
        ports.append(int(text))
    return ports


def _operation(conjuncts: list[ast.Expr]) -> tuple[str, list[ast.Expr]]:
    operations: set[str] = set()
    rest = []
    for node in conjuncts:
        if isinstance(node, ast.BinaryCheck) and node.field.name == "evt.type" and not node.field.transformers:
            values = _values(node)
            if values is None:
                raise _Unsupported(node, "evt.type must be compared with = or in")
            unknown = [v for v in values if v not in _OPERATION_OF_TYPE]
            if unknown:
                raise _Unsupported(node, "no kernel deny exists for event type %s" % unknown[0])
            operations |= {_OPERATION_OF_TYPE[v] for v in values}
        elif isinstance(node, ast.BinaryCheck) and node.field.name == "evt.dir":
            continue
        else:
            rest.append(node)
    if len(operations) != 1:
        raise _Unsupported(
            conjuncts[0] if conjuncts else ast.Constant(True),
            "a deny rule needs evt.type restricted to one of exec (execve, execveat), open "
            "(open, openat, openat2, creat) or network (connect, sendto, sendmsg)",
        )
    return operations.pop(), rest


def _plan_entries(condition: ast.Expr) -> tuple[str, list[DenyEntry]]:
    operation, rest = _operation(_conjuncts(condition))
    scopes = _scopes([node for node in rest if _is_scope(node)])
    rest = [node for node in rest if not _is_scope(node)]
    operation, entries = _unscoped_entries(condition, operation, rest)
    return operation, [DenyEntry(e.kind, e.target, e.port, scope) for e in entries for scope in scopes]


def _unscoped_entries(condition: ast.Expr, operation: str, rest: list[ast.Expr]) -> tuple[str, list[DenyEntry]]:
    if operation == "net":
        networks: list[str] | None = None
        ports: list[int] | None = None
        for node in rest:
            if not isinstance(node, ast.BinaryCheck) or node.field.transformers:
                raise _Unsupported(node, "a network deny is only addresses, CIDRs and ports")
            values = _values(node)
            if values is None:
                raise _Unsupported(node, "only = and in can be pushed down")
            if node.field.name in _ADDRESS_FIELDS | _NETWORK_FIELDS:
                if networks is not None:
                    raise _Unsupported(node, "one address condition per rule")
                networks = _networks(node, values)
            elif node.field.name in _PORT_FIELDS:
                if ports is not None:
                    raise _Unsupported(node, "one port condition per rule")
                ports = _ports(node, values)
            else:
                raise _Unsupported(node, "a network deny is only addresses, CIDRs and ports")
        if networks is None and ports is None:
            raise _Unsupported(condition, "a network deny needs an address, a CIDR or a port")
        return operation, [
            DenyEntry("net", network, port)
            for network in (networks or ["::/0"])
            for port in (ports or [0])
        ]
    entries: list[DenyEntry] = []
    device: int | None = None
    for node in rest:
        if operation == "open" and isinstance(node, ast.BinaryCheck) and node.field.name == "fd.dev" and not node.field.transformers:
            if device is not None:
                raise _Unsupported(node, "one fd.dev condition per rule")
            device = _device(node)
            continue
        for alternative in _disjuncts(node):
            found = _target_entries(operation, alternative)
            if found is None:
                raise _Unsupported(alternative, "not a target an %s deny can match in the kernel" % operation)
            entries += found
    if not entries:
        raise _Unsupported(condition, "an %s deny needs a file, a directory or a program name" % operation)
    if device is not None:
        if any(e.kind != "open_ino" for e in entries):
            raise _Unsupported(condition, "fd.dev narrows only inode targets (fd.ino)")
        entries = [DenyEntry(e.kind, "%s:%d" % (e.target, device)) for e in entries]
    return operation, entries


def compile_deny(name: str, condition: ast.Expr, location: SourceLocation) -> DenyPlan:
    """The kernel entries of one deny rule; RuleError naming what cannot be pushed down."""
    try:
        operation, entries = _plan_entries(condition)
    except _Unsupported as exc:
        part = ast.render(exc.node) if not isinstance(exc.node, ast.Constant) else ast.render(condition)
        raise RuleError("rule %r: cannot push down `%s` into the kernel: %s" % (name, part, exc.why), location) from None
    return DenyPlan(name, operation, tuple(sorted(set(entries))))


def compile_rules(rules: Iterable) -> dict[str, DenyPlan]:
    """Plans of every enabled deny rule, by rule name; every error at once (joined) if any fails."""
    plans: dict[str, DenyPlan] = {}
    errors: list[RuleError] = []
    for rule in rules:
        if getattr(rule, "action", None) != "deny" or not rule.enabled:
            continue
        try:
            plans[rule.name] = compile_deny(rule.name, rule.expanded, rule.location)
        except RuleError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise RuleError("%d deny rules cannot be enforced in the kernel:\n%s" % (len(errors), "\n".join(map(str, errors))), errors[0].location)
    return plans
