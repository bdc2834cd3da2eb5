"""Each format keeps hostile values intact (escaped) and cannot be made to inject fields."""

from __future__ import annotations

import json
import re

from forward_harness import HOSTILE, IDENTITY, INJECT_JSON, INJECT_LINE, make_alert, parse_cef, parse_sd_params
from hypothesis import given
from hypothesis import strategies as st

from sentinel.actions.alert import rfc3339_ns
from sentinel.actions.forward import formats
from sentinel.actions.forward.records import event_record, parse_rfc3339_ns


def test_cef_header_escapes_pipe_and_backslash_but_not_equals():
    record = make_alert(rule="Rule | with = and \\ back")
    line = formats.cef(record)
    assert "Rule \\| with = and \\\\ back" in line
    header, fields = parse_cef(line)
    assert header[4] == header[5] == "Rule | with = and \\ back"
    assert fields["cs1"] == "Rule | with = and \\ back"


def test_cef_extension_escapes_equals_backslash_newlines_but_not_pipe():
    record = make_alert(output="a=b | c \\ d\ne\rf")
    line = formats.cef(record)
    assert "msg=a\\=b | c \\\\ d\\ne\\rf " in line
    assert "\n" not in line and "\r" not in line
    _header, fields = parse_cef(line)
    assert fields["msg"] == "a=b | c \\ d\ne\rf"


def test_cef_cannot_inject_extension_keys_or_records():
    record = make_alert(output="x act=blocked suser=admin" + INJECT_LINE, output_fields={"proc.name": "p dst=1.2.3.4"})
    line = formats.cef(record)
    _header, fields = parse_cef(line)
    assert "act" not in fields and fields.get("suser") == "root"
    assert fields["sproc"] == "p dst=1.2.3.4"
    assert fields["externalId"] == record["id"]
    assert "\n" not in line


def test_cef_control_characters_become_visible_text():
    record = make_alert(output="\x1b[2J\x00\x9b")
    line = formats.cef(record)
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", line)
    _header, fields = parse_cef(line)
    assert fields["msg"] == "\\x1b[2J\\x00\\x9b"


@given(st.text(max_size=60))
def test_cef_round_trips_any_text(text):
    record = make_alert(output=text, rule=text or "r")
    header, fields = parse_cef(formats.cef(record))
    # Extension: CR/LF travel as CEF escapes; other controls arrive as visible \xNN text.
    in_extension = re.sub(r"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f-\x9f]", lambda m: formats.visible(m.group()), text)
    assert fields["msg"] == in_extension
    # Header: CEF has no escape for line breaks there, so every control arrives visible.
    assert header[4] == (formats.visible(text) or "r")


# ------------------------------------------------------------------ JSON
def test_json_keeps_hostile_values_exact_on_one_line():
    record = formats.clean(make_alert(output=HOSTILE + INJECT_JSON, output_fields={"proc.cmdline": "a\nb"}))
    line = formats.to_json(record)
    assert "\n" not in line and "\x1b" not in line
    decoded = json.loads(line)
    assert decoded["output"] == HOSTILE + INJECT_JSON
    assert decoded["rule"] == "Read sensitive file"
    assert decoded["output_fields"]["proc.cmdline"] == "a\nb"


def test_invalid_utf8_bytes_and_surrogates_arrive_as_visible_escapes():
    raw = b"/tmp/\xff\xfe-evil"
    record = make_alert(output=raw.decode("utf-8", "surrogateescape"), output_fields={"fd.name": raw})
    cleaned = formats.clean(record)
    assert cleaned["output"] == "/tmp/\\xff\\xfe-evil"
    assert cleaned["output_fields"]["fd.name"] == "/tmp/\\xff\\xfe-evil"
    formats.to_json(cleaned).encode("utf-8")  # valid UTF-8, no lone surrogate


def test_json_payload_for_syslog_is_ascii_so_c1_and_del_cannot_reach_a_terminal():
    payload = formats.json_payload(formats.clean(make_alert(output=HOSTILE + "é")))
    assert payload.isascii() and not re.search(r"[\x00-\x1f\x7f]", payload)
    assert json.loads(payload)["output"] == HOSTILE + "é"


# ------------------------------------------------------------------ RFC 5424 / 3164
def split_5424(message: bytes) -> dict:
    text = message.decode("utf-8")
    match = re.fullmatch(r"<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) (\[.*?(?<!\\)\]) (.*)", text, re.S)
    assert match, text[:200]
    return dict(zip(("pri", "time", "host", "app", "procid", "msgid", "sd", "msg"), match.groups()))


def test_rfc5424_header_sd_and_payload():
    record = formats.clean(make_alert(rule='Rule "quoted" ] \\ \nnext', priority="critical"))
    message = formats.rfc5424(record, facility=16, app_name="sentinel", payload=formats.json_payload)
    parts = split_5424(message)
    assert parts["pri"] == str(16 * 8 + 2)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", parts["time"])  # 6 digits max
    assert parts["host"] == "test-host" and parts["msgid"] == "alert"
    params = parse_sd_params(parts["sd"])
    assert params["id"] == record["id"]
    assert params["rule"] == 'Rule "quoted" ] \\ \\nnext'  # newline shown as \n text
    assert json.loads(parts["msg"])["rule"] == record["rule"]
    assert b"\n" not in message


@given(st.text(max_size=40))
def test_sd_param_escaping_round_trips(text):
    sd = "[sentinel@32473 rule=\"%s\"]" % formats.sd_param(text)
    assert parse_sd_params(sd)["rule"] == formats.visible(text)


def test_rfc5424_hostile_hostname_and_app_cannot_shift_header_fields():
    record = formats.clean(make_alert())
    record["hostname"] = "evil host\n<13>"
    message = formats.rfc5424(record, facility=16, app_name="my app", payload=formats.json_payload)
    parts = split_5424(message)
    assert parts["host"] == "evil_host_<13>" and parts["app"] == "my_app"


def test_rfc3164_is_one_line_without_control_characters():
    record = formats.clean(make_alert(output=HOSTILE + INJECT_LINE))
    for payload in (formats.json_payload, formats.cef):
        line = formats.rfc3164(record, facility=4, app_name="sentinel", payload=payload)
        text = line.decode("utf-8")
        assert re.match(r"<36>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d test-host sentinel: ", text)
        assert not re.search(r"[\x00-\x1f\x7f-\x9f]", text)


# ------------------------------------------------------------------ truncation
def test_fit_truncates_the_largest_string_with_marker_and_flag():
    record = formats.clean(make_alert(output="A" * 65536))
    render = lambda r: formats.rfc5424(r, facility=16, app_name="sentinel", payload=formats.json_payload)  # noqa: E731
    message = formats.fit(record, render, 8192)
    assert 7000 < len(message) <= 8192
    parts = split_5424(message)
    decoded = json.loads(parts["msg"])
    assert decoded["truncated"] is True
    assert decoded["id"] == record["id"]
    cut = re.search(r"…\[truncated (\d+) bytes\]$", decoded["output"])
    assert cut and int(cut.group(1)) + len(decoded["output"]) - len(cut.group()) == 65536
    assert parse_sd_params(parts["sd"])["truncated"] == "true"
    assert record["output"] == "A" * 65536  # the caller's record is untouched


def test_fit_cuts_multibyte_text_on_character_boundaries():
    record = formats.clean(make_alert(output="é" * 20000))
    data = formats.fit(record, lambda r: formats.to_json(r).encode("utf-8"), 4096)
    assert len(data) <= 4096
    json.loads(data.decode("utf-8"))


def test_fit_refuses_a_limit_smaller_than_the_fixed_parts():
    record = formats.clean(make_alert())
    try:
        formats.fit(record, lambda r: formats.to_json(r).encode(), 10)
    except ValueError as exc:
        assert record["id"] in str(exc)
    else:
        raise AssertionError("a 10-byte limit cannot be met")


# ------------------------------------------------------------------ ECS and events
def test_ecs_document_fields():
    document = formats.ecs(formats.clean(make_alert(output_fields={"proc.cmdline": "cat /etc/shadow", "proc.ppid": "77"})))
    assert document["event"]["kind"] == "alert"
    assert document["rule"]["name"] == "Read sensitive file"
    assert document["process"] == {"pid": 1000, "name": "bash", "command_line": "cat /etc/shadow", "parent": {"pid": 77}}
    assert document["host"]["hostname"] == "test-host" and document["host"]["id"] == "m" * 32
    assert document["user"]["name"] == "root" and document["file"]["path"] == "/etc/shadow"
    assert document["@timestamp"].endswith("Z")


def test_event_records_render_in_every_format():
    record = formats.clean(event_record(IDENTITY, {"type": "execve", "proc.name": "sh|x=y"}))
    assert formats.ecs(record)["event"]["kind"] == "event"
    header, fields = parse_cef(formats.cef(record))
    assert header[4] == "event:execve" and fields["sproc"] == "sh|x=y" and fields["cat"] == "event"
    parts = split_5424(formats.rfc5424(record, facility=16, app_name="s", payload=formats.json_payload))
    assert parts["msgid"] == "event" and parse_sd_params(parts["sd"]) == {"id": record["id"], "kind": "event"}


def test_time_round_trip_keeps_nanoseconds():
    stamp = 1_790_000_000_123_456_789
    assert rfc3339_ns(stamp) == "2026-09-21T14:13:20.123456789Z"
    assert parse_rfc3339_ns(rfc3339_ns(stamp)) == stamp


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.binary(max_size=8)
    | st.text().map(lambda t: t.encode("utf-8", "surrogatepass").decode("utf-8", "ignore") + "\udcff"),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
))
def test_the_one_pass_serializer_matches_clean_then_dump(value):
    record = {"output": value, "tags": ("a", "b")}
    assert formats.clean_json(record) == formats.to_json(formats.clean(record))


def test_fit_with_cef_payload_keeps_one_parseable_record():
    record = formats.clean(make_alert(output="=|\\\n" * 16384, output_fields={"proc.cmdline": "x=" * 30000}))
    render = lambda r: formats.rfc5424(r, facility=16, app_name="sentinel", payload=formats.cef)  # noqa: E731
    message = formats.fit(record, render, 8192)
    assert len(message) <= 8192
    parts = split_5424(message)
    header, fields = parse_cef(parts["msg"])
    assert fields["externalId"] == record["id"] and fields["cn1"] == "1" and fields["cn1Label"] == "truncated"
    assert fields["msg"].startswith("=|\\\n=|\\\n") and fields["msg"].endswith(" bytes]")


@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=20))
def test_no_text_can_break_a_syslog_record_apart(output, rule, hostname):
    record = formats.clean(make_alert(output=output, rule=rule or "r"))
    record["hostname"] = formats.clean(hostname)
    for payload in (formats.json_payload, formats.cef):
        message = formats.rfc5424(record, facility=16, app_name="sentinel", payload=payload)
        assert b"\n" not in message and b"\r" not in message
        parts = split_5424(message)
        assert parse_sd_params(parts["sd"]) == {"id": record["id"], "kind": "alert", "rule": formats.visible(rule or "r"),
                                                "priority": "Warning"}
        line = formats.rfc3164(record, facility=16, app_name="sentinel", payload=payload)
        assert not re.search(rb"[\x00-\x1f\x7f]", line)
    assert json.loads(formats.json_payload(record))["output"] == record["output"]
