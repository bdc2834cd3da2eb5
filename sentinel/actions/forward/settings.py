"""Options of each output type: declared once, checked at config load with locations.

`parse_output(config)` turns an OutputConfig (name, type, raw options) into a frozen,
typed settings object; `sentinel.config` calls `validate_output` while loading so a typo
fails at start with `file:line:col`, not at the first alert. Secrets are never written
inline: `token_file:`/`token_env:` (and the same for passwords) name where to read them.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

from sentinel.actions.forward.records import PRIORITIES, RecordFilter, normalize_priority
from sentinel.errors import ConfigError, SourceLocation

UDP_MAX_PAYLOAD = 65507


class Secret:
    """A credential read from a file or the environment; never shown by repr/str."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str) -> None:
        self._value = value
        self.origin = origin  # "file:/path" or "env:NAME": safe to log

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(%s, ***)" % self.origin

    __str__ = __repr__


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives (a file or an environment variable); resolved when used."""

    file: str = ""
    env: str = ""

    def __bool__(self) -> bool:
        return bool(self.file or self.env)

    def resolve(self, location: SourceLocation | None = None) -> Secret:
        if self.file:
            try:
                with open(self.file) as handle:
                    return Secret(handle.read().strip(), "file:%s" % self.file)
            except OSError as exc:
                raise ConfigError("cannot read secret file %s: %s" % (self.file, exc.strerror), location) from None
        if self.env not in os.environ:
            raise ConfigError("environment variable %s (a secret) is not set" % self.env, location)
        return Secret(os.environ[self.env], "env:%s" % self.env)


@dataclass(frozen=True)
class CommonSettings:
    """Options every output has: what it takes, and how it retries."""

    name: str = ""
    type: str = ""
    min_priority: str = "debug"
    rules: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    events: bool = False  # also forward raw events, not only alerts
    batch_size: int = 100
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    timeout: float = 10.0
    location: SourceLocation | None = field(default=None, compare=False)

    @property
    def record_filter(self) -> RecordFilter:
        return RecordFilter(normalize_priority(self.min_priority), frozenset(self.rules), frozenset(self.tags), self.events)


@dataclass(frozen=True)
class TLSSettings:
    """Client TLS: trust anchors, optional client certificate, name checked on the server."""

    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_key_password: SecretRef = SecretRef()
    tls_server_name: str = ""  # default: the host connected to
    tls_verify: bool = True


@dataclass(frozen=True)
class SyslogSettings(CommonSettings, TLSSettings):
    host: str = "127.0.0.1"
    port: int = 0  # default per protocol: 514 udp/tcp, 6514 tls, 2514 relp
    protocol: str = "udp"  # udp | tcp | tls | relp | relp-tls
    format: str = "rfc5424"  # rfc5424 | rfc3164
    payload: str = "json"  # json | cef
    facility: str = "local0"
    app_name: str = "sentinel"
    max_message_bytes: int = 8192  # rsyslog's default maxMessageSize
    relp_window: int = 128

    @property
    def effective_port(self) -> int:
        return self.port or {"udp": 514, "tcp": 514, "tls": 6514, "relp": 2514, "relp-tls": 2514}[self.protocol]


@dataclass(frozen=True)
class HTTPSettings(CommonSettings, TLSSettings):
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    max_body_bytes: int = 1_000_000  # before compression
    max_record_bytes: int = 256 * 1024
    gzip: bool = False  # Content-Encoding: gzip (HEC, Elasticsearch, Loki accept it)


@dataclass(frozen=True)
class WebhookSettings(HTTPSettings):
    batch_size: int = 1  # falcosidekick takes one event per request
    bearer_token: SecretRef = SecretRef()  # sent as `Authorization: Bearer ...`


@dataclass(frozen=True)
class SplunkHECSettings(HTTPSettings):
    token: SecretRef = SecretRef()
    index: str = ""
    source: str = "sentinel"
    sourcetype: str = "falco"


@dataclass(frozen=True)
class ElasticsearchSettings(HTTPSettings):
    index: str = "sentinel"  # strftime patterns use the record's UTC time: sentinel-%Y.%m.%d
    username: str = ""
    password: SecretRef = SecretRef()
    api_key: SecretRef = SecretRef()
    batch_size: int = 500
    max_body_bytes: int = 5 * 1024 * 1024


@dataclass(frozen=True)
class LokiSettings(HTTPSettings):
    labels: dict[str, str] = field(default_factory=dict)  # static labels added to host/rule/priority
    username: str = ""
    password: SecretRef = SecretRef()
    tenant: str = ""  # X-Scope-OrgID
    batch_size: int = 500
    max_body_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class JSONFileSettings(CommonSettings):
    path: str = ""
    fsync: bool = False
    batch_size: int = 1000
    backoff_max: float = 5.0


OUTPUT_TYPES: dict[str, type[CommonSettings]] = {
    "syslog": SyslogSettings,
    "webhook": WebhookSettings,
    "splunk_hec": SplunkHECSettings,
    "elasticsearch": ElasticsearchSettings,
    "opensearch": ElasticsearchSettings,
    "loki": LokiSettings,
    "jsonfile": JSONFileSettings,
}

_CHOICES = {
    "protocol": ("udp", "tcp", "tls", "relp", "relp-tls"),
    "format": ("rfc5424", "rfc3164"),
    "payload": ("json", "cef"),
}
SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{"local%d" % n: 16 + n for n in range(8)},
}
# Inline secrets are refused with a hint: they would land in ps output and config backups.
_INLINE_SECRETS = ("token", "password", "api_key", "tls_key_password", "bearer_token")


def _where(options: Mapping, key: str, default: SourceLocation | None) -> SourceLocation | None:
    marks = getattr(options, "marks", None)
    if marks and key in marks and default is not None:
        return SourceLocation(default.path, *marks[key])
    return default


def _coerce(name: str, hint: Any, value: Any, location: SourceLocation | None) -> Any:
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError("%s: expected true or false, got %r" % (name, value), location)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError("%s: expected an integer, got %r" % (name, value), location)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError("%s: expected a number, got %r" % (name, value), location)
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ConfigError("%s: expected a string, got %r" % (name, value), location)
        return str(value)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError("%s: expected a list of strings" % name, location)
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in value.items()):
            raise ConfigError("%s: expected a mapping of strings" % name, location)
        return {k: str(v) for k, v in value.items()}
    raise ConfigError("%s: unsupported option type" % name, location)


def parse_output(name: str, type_name: str, options: Mapping[str, Any], location: SourceLocation | None = None) -> CommonSettings:
    """Typed, validated settings for one output; ConfigError (with location) when invalid."""
    if type_name not in OUTPUT_TYPES:
        raise ConfigError("output %r: unknown type %r (known: %s)" % (name, type_name, ", ".join(sorted(OUTPUT_TYPES))), location)
    cls = OUTPUT_TYPES[type_name]
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)} - {"name", "type", "location"}
    secret_fields = {f for f in fields if hints[f] is SecretRef}
    kwargs: dict[str, Any] = {"name": name, "type": type_name, "location": location}
    for key, value in options.items():
        where = _where(options, key, location)
        if key in _INLINE_SECRETS and key in secret_fields:
            raise ConfigError(
                "output %r: inline `%s` is not accepted; use `%s_file` or `%s_env`" % (name, key, key, key), where
            )
        base, _, suffix = str(key).rpartition("_")
        if suffix in ("file", "env") and base in secret_fields:
            if not isinstance(value, str) or not value:
                raise ConfigError("%s: expected a file path or variable name" % key, where)
            current = kwargs.get(base, SecretRef())
            kwargs[base] = dataclasses.replace(current, **{suffix: value})
            continue
        if key not in fields:
            known = sorted((fields - secret_fields) | {"%s_%s" % (s, k) for s in secret_fields for k in ("file", "env")})
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = "did you mean %r? " % close[0] if close else ""
            raise ConfigError(
                "output %r: unknown option %r for type %s (%sknown: %s)" % (name, key, type_name, hint, ", ".join(known)), where
            )
        value = _coerce(key, hints[key], value, where)
        if key == "min_priority":
            try:
                value = normalize_priority(value)
            except ValueError:
                raise ConfigError("%s: expected one of %s, got %r" % (key, ", ".join(PRIORITIES), value), where) from None
        elif key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError("%s: expected one of %s, got %r" % (key, ", ".join(_CHOICES[key]), value), where)
        if key == "facility" and value not in SYSLOG_FACILITIES:
            raise ConfigError("facility: expected one of %s" % ", ".join(SYSLOG_FACILITIES), where)
        if key in ("batch_size", "max_message_bytes", "max_body_bytes", "max_record_bytes", "relp_window", "port") and value <= 0:
            raise ConfigError("%s: must be positive" % key, where)
        kwargs[key] = value
    settings = cls(**kwargs)
    _check_whole(settings, options, location)
    return settings


def _check_whole(settings: CommonSettings, options: Mapping, location: SourceLocation | None) -> None:
    """Checks that involve several options (required ones, limits, combinations)."""

    def fail(message: str, key: str | None = None) -> None:
        raise ConfigError("output %r: %s" % (settings.name, message), _where(options, key, location) if key else location)

    if isinstance(settings, SyslogSettings):
        if settings.protocol == "udp" and settings.max_message_bytes > UDP_MAX_PAYLOAD:
            fail("max_message_bytes: a UDP datagram carries at most %d bytes" % UDP_MAX_PAYLOAD, "max_message_bytes")
        if settings.max_message_bytes < 480:
            fail("max_message_bytes: at least 480 (RFC 5424 6.1)", "max_message_bytes")
    if isinstance(settings, HTTPSettings):
        parts = urlsplit(settings.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            fail("url: expected http(s)://host[:port][/path], got %r" % settings.url, "url" if "url" in options else None)
    if isinstance(settings, SplunkHECSettings) and not settings.token:
        fail("splunk_hec needs token_file or token_env")
    if isinstance(settings, JSONFileSettings) and not settings.path:
        fail("jsonfile needs `path`")
    if isinstance(settings, TLSSettings) and bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        fail("tls_cert_file and tls_key_file go together", "tls_cert_file" if settings.tls_cert_file else "tls_key_file")
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, SecretRef) and value.file and value.env:
            fail("%s: give %s_file or %s_env, not both" % (f.name, f.name, f.name), f.name + "_file")


def validate_output(name: str, type_name: str, options: Mapping[str, Any], location: SourceLocation | None) -> None:
    """Called by the config loader: raises ConfigError for any invalid option."""
    parse_output(name, type_name, options, location)
