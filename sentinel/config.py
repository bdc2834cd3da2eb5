"""The one configuration object: read once from YAML, validated with locations, then frozen.

Every section is a frozen dataclass; unknown keys and wrong types are errors that name the
file, line and column. Defaults make `sentinel run` with no file do the right thing.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sentinel.errors import ConfigError, SourceLocation

PACKAGE_DIR = Path(__file__).resolve().parent
# Shipped rules: beside the package in a checkout, under /usr/share in a .deb install.
_RULE_DIR_CANDIDATES = (PACKAGE_DIR.parent / "rules", Path("/usr/share/sentinel/rules"))


def default_rules_dir() -> Path:
    for candidate in _RULE_DIR_CANDIDATES:
        if candidate.is_dir():
            return candidate
    return _RULE_DIR_CANDIDATES[0]


def default_state_dir() -> Path:
    return Path("/var/lib/sentinel") if os.geteuid() == 0 else Path.home() / ".local/state/sentinel"


def default_run_dir() -> Path:
    return Path("/run/sentinel") if os.geteuid() == 0 else Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp")) / "sentinel"


@dataclass(frozen=True)
class SensorConfig:
    # Environment variables kept from an exec (names only; values of others never leave
    # the kernel). Secrets are never in this list.
    env_keep: tuple[str, ...] = (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "GLIBC_TUNABLES",
        "SSH_CONNECTION",
        "SUDO_USER",
        "PATH",
    )
    # Pages of each CPU's ring buffer (a power of two): 1024 = 4 MiB per online CPU.
    ringbuf_pages: int = 1024
    # While events flow, the reader drains the ring buffers once per batch_ms (events of
    # kill rules at once): the longest wait of an event there. Lower costs CPU under load:
    # per fork+exec of the exec-loop benchmark the consumer thread spent ~35 us at 10 ms,
    # ~25 us at 50 ms and no less at 100 ms (fewer wakeups, each over a warmer cache).
    batch_ms: int = 50
    btf_cache_dir: str = "/var/cache/sentinel/bcc-btf"
    proc_reconcile_seconds: float = 30.0
    process_table_max: int = 65536
    # An exited process stays resolvable this long for late events (longer while it has
    # live children).
    process_exit_grace_seconds: float = 5.0
    # ...and at most this many exited processes stay (the oldest go first; those with live
    # children stay whatever the count): at 5,000 execs/s the grace alone would keep 25,000.
    process_exited_max: int = 8192

    def __post_init__(self) -> None:
        pages = self.ringbuf_pages
        if not isinstance(pages, int) or pages <= 0 or pages & (pages - 1):
            raise ConfigError("sensor.ringbuf_pages must be a power of two, not %r" % (pages,))
        if not isinstance(self.batch_ms, int) or not 1 <= self.batch_ms <= 1000:
            raise ConfigError("sensor.batch_ms must be between 1 and 1000, not %r" % (self.batch_ms,))


@dataclass(frozen=True)
class StoreConfig:
    path: str = ""  # empty: <state dir>/events.db
    # what is stored: "matched" events always; plus these types unconditionally
    always_store: tuple[str, ...] = ("execve", "execveat", "connect")
    retention_days: float = 14.0
    max_bytes: int = 2 * 1024**3
    batch_size: int = 2000
    flush_seconds: float = 0.5
    group: str = ""  # a group given read access to the DB (analysts)
    # SQLite's work (JSON, inserts, retention) in a child process on another core: measured,
    # it takes the agent's cost per stored event from ~21 us to ~8 us (benchmarks/bench_store.py)
    separate_process: bool = True


@dataclass(frozen=True)
class AlertsConfig:
    file: str = "-"  # "-" = stdout
    min_priority: str = "debug"
    match: str = "all"  # "all" matching rules, or "first"


@dataclass(frozen=True)
class ControlConfig:
    socket: str = ""  # empty: <run dir>/control.sock
    allowed_uids: tuple[int, ...] = (0,)
    allowed_gids: tuple[int, ...] = ()


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""  # e.g. "127.0.0.1:9464"; empty: no Prometheus endpoint


@dataclass(frozen=True)
class EnforceConfig:
    mode: str = "audit"  # global: "audit" or "enforce"
    allow_comms: tuple[str, ...] = ()
    allow_exepaths: tuple[str, ...] = ()
    keep_on_exit: bool = False  # fail-closed: pin what can be pinned across restarts
    max_kills_per_minute: int = 60


@dataclass(frozen=True)
class ForwardConfig:
    """The outbox every forwarded record goes through (its own SQLite file, bounded)."""

    outbox: str = ""  # empty: <state dir>/outbox.db
    max_rows: int = 1_000_000
    max_age_hours: float = 168.0


@dataclass(frozen=True)
class OutputConfig:
    """One forwarding destination; `type` picks the transport, the rest are its options."""

    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    rules: tuple[str, ...] = ()  # empty: the shipped rules
    sensor: SensorConfig = SensorConfig()
    store: StoreConfig = StoreConfig()
    alerts: AlertsConfig = AlertsConfig()
    control: ControlConfig = ControlConfig()
    metrics: MetricsConfig = MetricsConfig()
    enforce: EnforceConfig = EnforceConfig()
    forward: ForwardConfig = ForwardConfig()
    outputs: tuple[OutputConfig, ...] = ()
    log_level: str = "info"

    @property
    def rule_paths(self) -> tuple[str, ...]:
        return self.rules or (str(default_rules_dir()),)

    @property
    def db_path(self) -> str:
        return self.store.path or str(default_state_dir() / "events.db")

    @property
    def outbox_path(self) -> str:
        return self.forward.outbox or str(default_state_dir() / "outbox.db")

    @property
    def control_socket(self) -> str:
        return self.control.socket or str(default_run_dir() / "control.sock")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records where each mapping key was written."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = {}
    marks = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        mapping[key] = loader.construct_object(value_node, deep=True)
        marks[key] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
    return _MarkedDict(mapping, marks, node.start_mark.line + 1, node.start_mark.column + 1)


class _MarkedDict(dict):
    def __init__(self, data: dict, marks: dict, line: int, col: int) -> None:
        super().__init__(data)
        self.marks = marks
        self.line = line
        self.col = col


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _build(cls: type, data: Any, path: str, where: tuple[int, int]) -> Any:
    location = SourceLocation(path, *where)
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping for %s" % cls.__name__, location)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    marks = getattr(data, "marks", {})
    for key, value in data.items():
        key_where = marks.get(key, where)
        if key not in known:
            raise ConfigError(
                "unknown key %r (known: %s)" % (key, ", ".join(sorted(known))),
                SourceLocation(path, *key_where),
            )
        kwargs[key] = _coerce(hints[key], value, path, key_where, key)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(str(exc), location) from None
    except ConfigError as exc:  # a section's own check: point at the section
        raise ConfigError(exc.message, exc.location or location) from None


def _coerce(hint: Any, value: Any, path: str, where: tuple[int, int], key: str) -> Any:
    location = SourceLocation(path, *where)
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, (getattr(value, "line", where[0]), getattr(value, "col", where[1])))
    if origin is tuple:
        (item_hint, *_rest) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError("%s: expected a list" % key, location)
        if dataclasses.is_dataclass(item_hint):
            outputs = tuple(_build_output(v, path, where) for v in value)
            seen: set[str] = set()
            for output, raw in zip(outputs, value):
                if output.name in seen:  # cursors in the outbox are kept by output name
                    here = (getattr(raw, "line", where[0]), getattr(raw, "col", where[1]))
                    raise ConfigError("output name %r is used twice" % output.name, SourceLocation(path, *here))
                seen.add(output.name)
            return outputs
        return tuple(_coerce(item_hint, v, path, where, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError("%s: expected a mapping" % key, location)
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ConfigError("%s: expected %s, got %r" % (key, hint.__name__, value), location)
    return value


def _build_output(value: Any, path: str, where: tuple[int, int]) -> OutputConfig:
    here = (getattr(value, "line", where[0]), getattr(value, "col", where[1]))
    if not isinstance(value, dict) or "name" not in value or "type" not in value:
        raise ConfigError("each output needs at least `name` and `type`", SourceLocation(path, *here))
    options = {k: v for k, v in value.items() if k not in ("name", "type")}
    # Each type's options are checked here, so a typo fails at load with its location.
    from sentinel.actions.forward.settings import validate_output

    marked = _MarkedDict(options, getattr(value, "marks", {}), *here)
    validate_output(str(value["name"]), str(value["type"]), marked, SourceLocation(path, *here))
    return OutputConfig(name=str(value["name"]), type=str(value["type"]), options=options)


def load(path: str | os.PathLike | None = None, **overrides: Any) -> Config:
    """Read `path` (or defaults when None) and apply command-line overrides."""
    config = Config()
    if path is not None:
        text = Path(path).read_text()
        try:
            data = yaml.load(text, Loader=_LineLoader) or {}
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = (mark.line + 1, mark.column + 1) if mark else (0, 0)
            raise ConfigError("invalid YAML: %s" % exc.problem, SourceLocation(str(path), *where)) from None
        config = _build(Config, data, str(path), (1, 1))
    changes = {k: v for k, v in overrides.items() if v is not None}
    return config.replace(**changes) if changes else config
