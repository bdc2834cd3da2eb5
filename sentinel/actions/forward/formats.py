"""Rendering records for receivers: Falco JSON, RFC 5424, RFC 3164, CEF and ECS.

Values come from the monitored system and are hostile by default: each format escapes what
its grammar gives meaning to, so no value can end a record, start another or add a field.
- JSON: the encoder escapes quotes and control characters; invalid UTF-8 (bytes, or str
  holding surrogateescape'd bytes) becomes a visible `\\xNN` text first (`clean`).
- RFC 5424: octet counting (TCP/TLS) or one datagram (UDP) frames the message; SD-PARAM
  values escape `"`, `\\` and `]` (RFC 5424 6.3.3); header fields are printable ASCII.
- RFC 3164 and CEF: control characters (newline, ANSI escape) become visible escapes.
- CEF: the header escapes `\\` and `|`; extension values escape `\\`, `=`, CR and LF.
Size limits are met by cutting the largest strings with an explicit marker
(`…[truncated N bytes]`) and `"truncated": true`, never by splitting a record.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable

from sentinel.actions.forward.records import parse_rfc3339_ns, severity_of

TRUNCATION_MARK = "…[truncated %d bytes]"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_NAMES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _clean_str(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        # Lone surrogates from surrogateescape'd invalid UTF-8: back to bytes, shown as \xNN.
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def clean(value: Any) -> Any:
    """A JSON-safe deep copy: bytes and invalid UTF-8 become `\\xNN` text, tuples lists."""
    if isinstance(value, str):
        return _clean_str(value)
    if isinstance(value, dict):
        return {_clean_str(str(k)): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [clean(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _clean_str(str(value))


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def clean_json(record: dict) -> str:
    """to_json(clean(record)) in one pass when the record is already clean (the usual case)."""
    try:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=_json_default)
        text.encode("utf-8")  # lone surrogates (surrogateescape'd bytes) fail here
        return text
    except (UnicodeEncodeError, TypeError, ValueError):
        return to_json(clean(record))


def visible(text: str) -> str:
    """Control characters (C0, DEL, C1: newline, ANSI escapes) as visible escapes."""
    return _CONTROL.sub(lambda m: _CONTROL_NAMES.get(m.group(), "\\x%02x" % ord(m.group())), text)


def to_json(record: dict, ascii_only: bool = False) -> str:
    """One line of JSON (never a raw newline inside)."""
    return json.dumps(record, ensure_ascii=ascii_only, separators=(",", ":"))


# ---------------------------------------------------------------- truncation
def _string_leaves(value: Any, path: tuple = ()) -> list[tuple[int, tuple]]:
    """(utf-8 size, path) of every string leaf; the record's own keys (id, ...) never count."""
    if isinstance(value, str):
        return [(len(value.encode("utf-8", "surrogatepass")), path)]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    leaves = []
    for key, item in items:
        if path == () and key in ("id", "kind", "time", "truncated"):
            continue
        leaves.extend(_string_leaves(item, path + (key,)))
    return leaves


def _cut(text: str, drop: int) -> str:
    encoded = text.encode("utf-8", "surrogatepass")
    keep = max(0, len(encoded) - drop)
    kept = encoded[:keep].decode("utf-8", "ignore")
    removed = len(encoded) - len(kept.encode("utf-8"))
    return kept + TRUNCATION_MARK % removed


def _replace(record: dict, path: tuple, drop: int) -> None:
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = _cut(parent[path[-1]], drop)


def fit(record: dict, render: Callable[[dict], bytes], limit: int) -> bytes:
    """render(record), shrinking its large strings with a marker until it fits `limit`.

    A first pass shrinks every large string by the same ratio (each keeps its beginning);
    then the largest one is cut until the rendering fits. The record itself is not
    modified. Raises ValueError if it cannot fit (a limit too small for the fixed parts),
    which the caller counts as a dropped record.
    """
    data = render(record)
    if len(data) <= limit:
        return data
    record = json.loads(json.dumps(record))  # private deep copy
    record["truncated"] = True
    ratio = limit / len(data)
    for size, path in _string_leaves(record):
        if size > 512:
            _replace(record, path, size - int(size * ratio * 0.8))
    for _attempt in range(64):
        data = render(record)
        excess = len(data) - limit
        if excess <= 0:
            return data
        leaves = _string_leaves(record)
        size, path = max(leaves, key=lambda leaf: leaf[0]) if leaves else (0, ())
        if size <= 0:
            break
        # Escaping can expand a string (CEF, syslog): cut a bit more than the excess.
        _replace(record, path, min(size, excess + 32))
    raise ValueError("record %s cannot fit in %d bytes" % (record.get("id"), limit))


# ---------------------------------------------------------------- syslog
_SD_ESCAPE = re.compile(r'["\\\]]')
_SD_SAFE = re.compile(r'[^"\\\]\x00-\x1f\x7f-\x9f]*')
_PRINTUSASCII = re.compile(r"[!-~]+")
_NOT_PRINTUSASCII = re.compile(r"[^!-~]")


def sd_param(value: str) -> str:
    """An SD-PARAM value (RFC 5424 6.3.3): escape `"`, `\\`, `]`; controls made visible."""
    if _SD_SAFE.fullmatch(value):
        return value
    return _SD_ESCAPE.sub(lambda m: "\\" + m.group(), visible(value))


def _header_field(value: str, max_len: int) -> str:
    """A header field of RFC 5424: printable US-ASCII without spaces, or NILVALUE."""
    if not _PRINTUSASCII.fullmatch(value):
        value = _NOT_PRINTUSASCII.sub("_", value)
    return value[:max_len] or "-"


def _rfc5424_time(record: dict) -> str:
    stamp = record.get("time", "")
    # RFC 5424 allows at most 6 fraction digits: nanoseconds are cut to microseconds.
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", stamp)
    if not match:
        return "-"
    return "%s.%sZ" % (match.group(1), (match.group(2) or "0").ljust(6, "0")[:6])


def structured_data(record: dict) -> str:
    """[sentinel@32473 id=".." kind=".." rule=".." priority=".."]: the id lets receivers dedupe."""
    params = [("id", record.get("id", "")), ("kind", record.get("kind", "alert"))]
    if record.get("kind", "alert") == "alert":
        params += [("rule", record.get("rule", "")), ("priority", record.get("priority", ""))]
    if record.get("truncated"):
        params.append(("truncated", "true"))
    return "[sentinel@32473 %s]" % " ".join('%s="%s"' % (k, sd_param(str(v))) for k, v in params)


def syslog_pri(record: dict, facility: int) -> int:
    return facility * 8 + severity_of(record)


def rfc5424(record: dict, *, facility: int, app_name: str, payload: Callable[[dict], str]) -> bytes:
    """One RFC 5424 message (without transport framing); MSGID is the record kind."""
    header = "<%d>1 %s %s %s - %s %s " % (
        syslog_pri(record, facility),
        _rfc5424_time(record),
        _header_field(record.get("hostname", ""), 255),
        _header_field(app_name, 48),
        _header_field(record.get("kind", "alert"), 32),
        structured_data(record),
    )
    return (header + payload(record)).encode("utf-8", "backslashreplace")


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def rfc3164(record: dict, *, facility: int, app_name: str, payload: Callable[[dict], str]) -> bytes:
    """A BSD syslog line for old receivers: one line, controls escaped, id in the message."""
    stamp = record.get("time", "")
    try:
        parsed = time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        parsed = time.gmtime()
    timestamp = "%s %2d %02d:%02d:%02d" % (_MONTHS[parsed.tm_mon - 1], parsed.tm_mday, parsed.tm_hour, parsed.tm_min, parsed.tm_sec)
    tag = "".join(ch for ch in app_name if ch.isalnum() or ch in "-_.")[:32] or "sentinel"
    line = "<%d>%s %s %s: %s" % (
        syslog_pri(record, facility),
        timestamp,
        _header_field(record.get("hostname", ""), 255),
        tag,
        visible(payload(record)),
    )
    return line.encode("utf-8", "backslashreplace")


def json_payload(record: dict) -> str:
    """The record as ASCII JSON: no raw control, C1 or non-ASCII bytes reach a syslog file."""
    return to_json(record, ascii_only=True)


# ---------------------------------------------------------------- CEF
_CEF_SEVERITY = (10, 9, 8, 7, 6, 4, 3, 1)  # by syslog severity
# Falco output fields with a CEF dictionary key of their own.
_CEF_KEYS = {
    "proc.name": "sproc",
    "proc.pid": "spid",
    "proc.exepath": "filePath",
    "user.name": "suser",
    "user.uid": "suid",
    "fd.name": "fname",
    "fd.sip": "src",
    "fd.dip": "dst",
    "fd.sport": "spt",
    "fd.dport": "dpt",
    "proc.cmdline": "cs3",
    "container.id": "cs4",
}
_CEF_LABELS = {"cs1": "rule", "cs2": "tags", "cs3": "cmdline", "cs4": "containerId", "cs5": "outputFields"}
_CEF_HEADER_ESCAPE = re.compile(r"[\\|]")
_CEF_EXT_ESCAPE = re.compile(r"[\\=\r\n]")
_CEF_EXT_NAMES = {"\\": "\\\\", "=": "\\=", "\r": "\\r", "\n": "\\n"}


def cef_header_value(value: str) -> str:
    """Header field: controls made visible text first (CEF has no line breaks there), then
    `\\` and `|` escaped; `=` is literal in the header."""
    return _CEF_HEADER_ESCAPE.sub(lambda m: "\\" + m.group(), visible(value))


_CONTROL_EXCEPT_CRLF = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def cef_extension_value(value: str) -> str:
    """Extension value: CR/LF as CEF's \\r \\n, other controls as visible text; then `\\`
    and `=` escaped (a `|` is literal in the extension)."""
    shown = _CONTROL_EXCEPT_CRLF.sub(lambda m: visible(m.group()), value)
    return _CEF_EXT_ESCAPE.sub(lambda m: _CEF_EXT_NAMES[m.group()], shown)


def _parse_epoch_ms(stamp: str) -> int:
    try:
        return parse_rfc3339_ns(stamp) // 1_000_000
    except ValueError:
        return int(time.time() * 1000)


def cef(record: dict, *, vendor: str = "Sentinel", product: str = "sentinel") -> str:
    """An ArcSight CEF:0 line for an alert or an event."""
    kind = record.get("kind", "alert")
    severity = severity_of(record)
    if kind == "alert":
        signature, name = record.get("rule", ""), record.get("rule", "")
    else:
        evt = record.get("evt", {})
        signature, name = "event:%s" % evt.get("type", ""), "event %s" % evt.get("type", "")
    header = "CEF:0|%s|%s|%s|%s|%s|%d|" % (
        cef_header_value(vendor),
        cef_header_value(product),
        cef_header_value(str(record.get("agent_version", ""))),
        cef_header_value(str(signature)),
        cef_header_value(str(name)),
        _CEF_SEVERITY[min(severity, len(_CEF_SEVERITY) - 1)],
    )
    extension: list[tuple[str, Any]] = [
        ("rt", _parse_epoch_ms(record.get("time", ""))),
        ("externalId", record.get("id", "")),
        ("dvchost", record.get("hostname", "")),
        ("cat", kind),
    ]
    fields = record.get("output_fields") if kind == "alert" else record.get("evt")
    fields = fields if isinstance(fields, dict) else {}
    if kind == "alert":
        extension += [("msg", record.get("output", "")), ("cs1Label", "rule"), ("cs1", record.get("rule", ""))]
        extension += [("cs2Label", "tags"), ("cs2", ",".join(record.get("tags", ())))]
    used = {"cs1", "cs2"}
    for field_name, key in _CEF_KEYS.items():
        value = fields.get(field_name)
        if value is not None and key not in used:
            used.add(key)
            if key.startswith("cs"):
                extension.append((key + "Label", _CEF_LABELS[key]))
            extension.append((key, value))
    extension += [("cs5Label", "outputFields"), ("cs5", to_json(fields, ascii_only=False))]
    if record.get("truncated"):
        extension.append(("cn1Label", "truncated"))
        extension.append(("cn1", 1))
    body = " ".join("%s=%s" % (key, cef_extension_value(str(value))) for key, value in extension)
    return header + body


# ---------------------------------------------------------------- ECS
def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def ecs(record: dict) -> dict:
    """An Elastic Common Schema document: @timestamp, event.*, rule.*, process.*, host.*."""
    kind = record.get("kind", "alert")
    fields = (record.get("output_fields") if kind == "alert" else record.get("evt")) or {}
    host = record.get("host", {})
    document: dict[str, Any] = {
        "@timestamp": record.get("time"),
        "event": {
            "kind": kind,
            "id": record.get("id"),
            "module": "sentinel",
            "dataset": "sentinel.%s" % kind,
            "severity": severity_of(record),
        },
        "host": {
            "hostname": record.get("hostname"),
            "name": record.get("hostname"),
            "id": host.get("machine_id") or None,
            "boot": {"id": host.get("boot_id")} if host.get("boot_id") else None,
        },
        "agent": {"type": "sentinel", "version": record.get("agent_version")},
        "sentinel": {"fields": fields},
    }
    if kind == "alert":
        document["message"] = record.get("output")
        document["rule"] = {"name": record.get("rule"), "ruleset": "sentinel", "version": record.get("ruleset_version")}
        document["tags"] = list(record.get("tags", ()))
        document["log"] = {"level": str(record.get("priority", "")).lower()}
        document["event"]["provider"] = record.get("source")
    else:
        document["event"]["action"] = fields.get("type") or fields.get("evt.type")
    get = fields.get
    process = {
        "pid": _int_or_none(get("proc.pid", get("pid"))),
        "name": get("proc.name", get("comm")),
        "executable": get("proc.exepath", get("exepath")),
        "command_line": get("proc.cmdline", get("cmdline")),
        "working_directory": get("proc.cwd"),
        "parent": {"pid": _int_or_none(get("proc.ppid")), "name": get("proc.pname")},
    }
    user = {"name": get("user.name"), "id": None if get("user.uid") is None else str(get("user.uid"))}
    document["process"] = process
    document["user"] = user
    if get("fd.name") is not None:
        document["file"] = {"path": get("fd.name")}
    if get("container.id") not in (None, "host"):
        document["container"] = {"id": get("container.id"), "name": get("container.name")}
    if record.get("truncated"):
        document["sentinel"]["truncated"] = True
    return _drop_empty(document)


def _drop_empty(value: Any) -> Any:
    if isinstance(value, dict):
        cleaned = {k: _drop_empty(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v is not None and v != {}}
    return value

