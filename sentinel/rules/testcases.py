"""Rule test cases: events written as YAML, and the rules that must and must not match them.

A case file (rules/tests/**/*.yaml):

    rules_files: [../../sentinel_rules.yaml]      # relative to this file (or found in --rules-dir)
    cases:
      - name: cat reads /etc/shadow
        event:
          type: openat                             # Falco event type
          res: 3                                   # number, or SUCCESS / an errno name
          args: {flags: O_RDONLY|O_CLOEXEC, name: /etc/shadow}   # flags/modes/requests by name or number
          proc: {name: cat, exepath: /usr/bin/cat, args: [/etc/shadow], uid: 1000, user: alice}
          parents: [{name: bash}, {name: sshd}]    # parent, grandparent, ...
          fd: {num: 3, type: file, name: /etc/shadow}
        match: [Read sensitive file untrusted]     # must all match
        no_match: [Write below etc]                # must not match

`proc`/parent keys are Process attributes (`name` stands for comm, `user` for user_name,
`group` for group_name); `fd` keys are Fd attributes. Capabilities are given as a list of
names. Every problem in a case file is reported with its line.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from sentinel.errors import RuleError, SourceLocation
from sentinel.events.model import Event, Fd, Process
from sentinel.rules import render
from sentinel.rules.loader import expand_paths
from sentinel.rules.ruleset import Ruleset, load_rules

_OPEN_FLAG_NAMES = {
    "O_RDONLY": 0, "O_WRONLY": 1, "O_RDWR": 2, "O_CREAT": render.O_CREAT, "O_EXCL": render.O_EXCL,
    "O_NOCTTY": render.O_NOCTTY, "O_TRUNC": render.O_TRUNC, "O_APPEND": render.O_APPEND,
    "O_NONBLOCK": render.O_NONBLOCK, "O_DSYNC": render.O_DSYNC, "O_DIRECT": render.O_DIRECT,
    "O_LARGEFILE": render.O_LARGEFILE, "O_DIRECTORY": render.O_DIRECTORY, "O_CLOEXEC": render.O_CLOEXEC,
    "O_SYNC": render.O_SYNC, "O_TMPFILE": render.O_TMPFILE,
}
_MODE_NAMES = {name: bit for name, bit in render._MODE_BITS}
_ENUMS = {
    "request": {name: value for value, name in render.PTRACE_REQUESTS.items()},
    "cmd": {name: value for value, name in render.BPF_COMMANDS.items()},
    "domain": {name: value for value, name in render.SOCKET_FAMILIES.items()},
}
_PROC_ALIASES = {"name": "comm", "user": "user_name", "group": "group_name", "loginname": "login_name"}


def _symbolic(name: str, value: Any) -> Any:
    """Raw argument value from a YAML one: names of flags, modes and enums become numbers."""
    if not isinstance(value, str):
        return value
    if name == "flags" and all(part.strip() in _OPEN_FLAG_NAMES for part in value.split("|")):
        result = 0
        for part in value.split("|"):
            result |= _OPEN_FLAG_NAMES[part.strip()]
        return result
    if name == "mode":
        if value.startswith("0") and value.isdigit():
            return int(value, 8)
        if all(part.strip() in _MODE_NAMES for part in value.split("|")):
            return sum(_MODE_NAMES[part.strip()] for part in value.split("|"))
    if name in _ENUMS and value in _ENUMS[name]:
        return _ENUMS[name][value]
    return value


def _result(value: Any) -> int:
    if value is None or value == "SUCCESS":
        return 0
    if isinstance(value, int):
        return value
    code = getattr(errno, str(value), None)
    if code is None:
        raise ValueError("res must be a number, SUCCESS or an errno name, not %r" % value)
    return -code


def _capabilities(value: Any) -> int:
    if isinstance(value, int):
        return value
    mask = 0
    for name in value:
        if name not in render.CAPABILITIES:
            raise ValueError("unknown capability %r" % name)
        mask |= 1 << render.CAPABILITIES.index(name)
    return mask


def _process(data: dict[str, Any], parent: Process | None, default_pid: int) -> Process:
    proc = Process(data.get("pid", default_pid), data.get("start_ns", default_pid))
    proc.parent = parent
    proc.ppid = parent.pid if parent is not None else 0
    for key, value in data.items():
        attribute = _PROC_ALIASES.get(key, key)
        if attribute not in Process.__slots__:
            raise ValueError("unknown process key %r" % key)
        if attribute in ("cap_permitted", "cap_effective", "cap_inheritable"):
            value = _capabilities(value)
        elif attribute in ("args", "env"):
            if isinstance(value, str):
                value = tuple(value.split()) if attribute == "args" else (value,)
            value = tuple(str(item) for item in value)
        setattr(proc, attribute, value)
    if "exe" not in data and "name" in data:
        proc.exe = proc.exepath or proc.comm
    return proc


def build_event(data: dict[str, Any]) -> Event:
    """An Event from its YAML description."""
    if not isinstance(data, dict) or "type" not in data:
        raise ValueError("an event needs at least a 'type'")
    parent = None
    parents = data.get("parents", []) or []
    for depth, parent_data in enumerate(reversed(parents)):
        parent = _process(parent_data or {}, parent, 100 + len(parents) - depth)
    proc = _process(data.get("proc", {}) or {}, parent, 1000)
    fd = None
    if data.get("fd") is not None:
        fd_data = dict(data["fd"])
        fd = Fd(fd_data.pop("num", 3), fd_data.pop("type", "file"), fd_data.pop("name", ""))
        for key, value in fd_data.items():
            if key not in Fd.__slots__:
                raise ValueError("unknown fd key %r" % key)
            setattr(fd, key, value)
        if "nameraw" not in data["fd"]:
            fd.nameraw = fd.name
    args = {str(key): _symbolic(str(key), value) for key, value in (data.get("args") or {}).items()}
    if fd is not None and "flags" in args and isinstance(args["flags"], int) and not fd.open_flags:
        fd.open_flags = args["flags"]
    unknown = set(data) - {"type", "res", "args", "proc", "parents", "fd", "time_ns", "boot_ns", "num"}
    if unknown:
        raise ValueError("unknown event key(s): %s" % ", ".join(sorted(unknown)))
    # evt.num starts at 1 as in Falco (several upstream rules say `not evt.num = 0`)
    return Event(str(data["type"]), proc, res=_result(data.get("res", 0)), args=args, fd=fd,
                 time_ns=data.get("time_ns", 0), boot_ns=data.get("boot_ns", 0), num=data.get("num", 1))


@dataclass
class CaseResult:
    file: str
    line: int
    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        status = "ok" if self.passed else "FAIL"
        text = "%s:%d: %s: %s" % (self.file, self.line, status, self.name)
        for problem in self.problems:
            text += "\n    " + problem
        return text


def _resolve_rule_files(case_file: Path, names: Sequence[str], rules_dirs: Sequence[str]) -> list[str]:
    paths = []
    for name in names:
        candidate = (case_file.parent / name).resolve()
        if not candidate.exists():
            for directory in rules_dirs:
                other = Path(directory) / Path(name).name
                if other.exists():
                    candidate = other
                    break
        if not candidate.exists():
            raise RuleError("rule file %s not found (relative to the case file, or pass --rules-dir)" % name,
                            SourceLocation(str(case_file)))
        paths.append(str(candidate))
    return paths


_ruleset_cache: dict[tuple[str, ...], Ruleset] = {}


def run_case_file(path: str, rules_dirs: Sequence[str] = ()) -> list[CaseResult]:
    """Run every case of one file; rule-loading problems raise RuleError."""
    case_file = Path(path)
    try:
        root = yaml.compose(case_file.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise RuleError("cannot read test cases: %s" % exc, SourceLocation(path)) from None
    data = yaml.safe_load(case_file.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "cases" not in data or not isinstance(data["cases"], list):
        raise RuleError("a test case file is a mapping with 'rules_files' and a list of 'cases'", SourceLocation(path, 1, 1))
    files = _resolve_rule_files(case_file, data.get("rules_files", []), rules_dirs)
    key = tuple(files)
    if key not in _ruleset_cache:
        _ruleset_cache[key] = load_rules(files)
    ruleset = _ruleset_cache[key]
    known = {rule.name for rule in ruleset.rules}
    case_nodes = _mapping_value(root, "cases")
    results = []
    for number, case in enumerate(data["cases"]):
        line = case_nodes[number].start_mark.line + 1 if case_nodes and number < len(case_nodes) else 0
        name = str(case.get("name", "case %d" % (number + 1))) if isinstance(case, dict) else "case %d" % (number + 1)
        result = CaseResult(path, line, name)
        results.append(result)
        if not isinstance(case, dict) or "event" not in case:
            result.problems.append("a case needs an 'event'")
            continue
        try:
            event = build_event(case["event"])
        except (ValueError, TypeError) as exc:
            result.problems.append("bad event: %s" % exc)
            continue
        must = list(case.get("match") or [])
        must_not = list(case.get("no_match") or [])
        for rule_name in must + must_not:
            if rule_name not in known:
                result.problems.append("no rule named %r is loaded" % rule_name)
        failures_before = ruleset.errors_at_runtime
        matched = {rule.name for rule in ruleset.match(event)}
        if ruleset.errors_at_runtime != failures_before:
            result.problems.append("evaluating the rules raised an exception on this event")
        for rule_name in must:
            if rule_name in known and rule_name not in matched:
                result.problems.append("expected rule %r to match; matched: %s" % (rule_name, sorted(matched) or "nothing"))
        for rule_name in must_not:
            if rule_name in matched:
                result.problems.append("expected rule %r not to match" % rule_name)
    return results


def _mapping_value(root: Any, key: str) -> list[Any]:
    if isinstance(root, yaml.MappingNode):
        for key_node, value_node in root.value:
            if getattr(key_node, "value", None) == key and isinstance(value_node, yaml.SequenceNode):
                return value_node.value
    return []


def run_paths(paths: Sequence[str], rules_dirs: Sequence[str] = ()) -> list[CaseResult]:
    """Run the case files given (folders: their *.yaml files, recursively)."""
    results: list[CaseResult] = []
    for path in _case_files(paths):
        results.extend(run_case_file(path, rules_dirs))
    return results


def _case_files(paths: Sequence[str]) -> list[str]:
    found: list[str] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found.extend(str(p) for p in sorted(path.rglob("*.yaml")))
        else:
            found.extend(expand_paths([entry]))
    return found
