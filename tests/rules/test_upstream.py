"""The three upstream Falco rule files: they load unmodified, compile, and evaluate consistently."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from benchmarks.bench_rules import generated_rules, synthetic_events
from sentinel.events.interest import OpenSelectors
from sentinel.events.model import Event, Fd, Process
from sentinel.rules.ruleset import RuleSpec, compile_rules, load_rules
from sentinel.rules.testcases import run_paths

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_DIR = REPO.parent / "shared" / "compat" / "falco"
UPSTREAM = [str(UPSTREAM_DIR / name) for name in ("falco_rules.yaml", "falco-incubating_rules.yaml", "falco-sandbox_rules.yaml")]


@pytest.fixture(scope="module")
def upstream():
    return load_rules(UPSTREAM)


def grep_count(path: str, kind: str) -> int:
    return len(re.findall(r"^- %s:" % kind, Path(path).read_text(), re.MULTILINE))


def test_counts_match_the_files(upstream):
    assert [grep_count(p, "rule") for p in UPSTREAM] == [25, 31, 37]
    assert [grep_count(p, "macro") for p in UPSTREAM] == [87, 82, 182]
    assert [grep_count(p, "list") for p in UPSTREAM] == [49, 54, 60]
    # One sandbox macro is written with `condition:` before `macro:`, which a line grep misses.
    assert upstream.counts["raw_rules"] == 25 + 31 + 37
    assert upstream.counts["raw_macros"] == 87 + 82 + 182 + 1
    assert upstream.counts["raw_lists"] == 49 + 54 + 60
    # After later definitions replace earlier ones by name:
    assert (upstream.counts["rules"], upstream.counts["macros"], upstream.counts["lists"]) == (93, 315, 118)
    assert upstream.counts["enabled_rules"] == 81


def test_every_enabled_rule_compiles_to_event_types(upstream):
    assert upstream.warnings == []
    for rule in upstream.enabled_rules:
        assert rule.event_types, rule.name
    assert {"execve", "openat", "connect", "ptrace", "bpf", "setuid"} <= upstream.interest.event_types


def test_interest_reports_rules_that_need_every_open(upstream):
    interest = upstream.interest
    # Four rules match opens whatever their path; none whatever their kind: all four require
    # fd.typechar = f, so directory and fifo opens outside the prefixes stay in the kernel. Of
    # them only the directory traversal one takes O_RDONLY opens, and only through "../".
    assert interest.open_path_prefixes is not None and "/etc/" in interest.open_path_prefixes
    assert interest.open_any_path == OpenSelectors(file_types=frozenset(range(16)) - {0o1, 0o4, 0o14},
                                                   dotdot_accmodes=frozenset({0}))
    assert sorted(interest.reasons) == [
        "rule 'Delete or rename shell history' passes opens by access, file type only, whatever their path",
        "rule 'Detect release_agent File Container Escapes' passes opens by access, file type, container only, whatever their path",
        "rule 'Directory traversal monitored file read' passes opens by file type, ../ in the path only, whatever their path",
        "rule 'Write below root' passes opens by access, file type only, whatever their path",
    ]


def test_upstream_test_cases_pass():
    results = run_paths([str(REPO / "rules" / "tests" / "falco")])
    failures = [str(result) for result in results if not result.passed]
    assert len(results) >= 60
    assert not failures, "\n".join(failures)


def _reference_matches(rules, events):
    """Each rule compiled alone: no shared sub-conditions, no indexes."""
    result = {id(event): set() for event in events}
    for rule in rules:
        alone = compile_rules([RuleSpec(name=rule.name, condition=rule.expanded, output="", priority=rule.priority)])
        for event in events:
            if alone.match(event):
                result[id(event)].add(rule.name)
    return result


def _varied_events(count: int) -> list[Event]:
    """The synthetic mix plus events aimed at generated rules `number` (and near misses)."""
    rng = random.Random(7)
    events = synthetic_events(count, seed=3)
    for number in range(count // 4):
        target = number % 200
        parent = Process(1, 1, comm=rng.choice(["bash", "nginx"]))
        comm = rng.choice(["tool%d" % target, "python3", "sh"])
        for event_type in ("open", "openat", "openat2"):
            path = rng.choice(["/opt/app%d/conf" % target, "/opt/app%d" % target, "/etc/shadow"])
            proc = Process(4000 + number, 1, comm=comm, parent=parent)
            events.append(Event(event_type, proc, res=3, args={"flags": rng.choice((0, 1, 577))}, fd=Fd(3, "file", path), num=1))
        events.append(Event("execve", Process(5000 + number, 1, comm=comm, parent=parent), num=1))
        fd = Fd(4, "ipv4", "", l4proto="tcp", lip="10.0.0.1", lport=1, rip="8.8.8.8", rport=10000 + rng.choice((target, target + 1)))
        events.append(Event("connect", Process(6000 + number, 1, comm="client%d" % target, parent=parent), fd=fd, num=1))
    return events


def test_compiled_buckets_agree_with_rules_compiled_alone(upstream):
    events = _varied_events(1200)
    reference = _reference_matches(upstream.enabled_rules, events)
    for event in events:
        assert {rule.name for rule in upstream.match(event)} == reference[id(event)], event
    assert upstream.errors_at_runtime == 0


def test_indexed_rules_agree_with_rules_compiled_alone(upstream):
    specs = generated_rules(upstream, 200)
    bigger = compile_rules(specs, base=upstream)
    events = _varied_events(800)
    generated = [rule for rule in bigger.enabled_rules if rule.name.startswith("generated")]
    reference = _reference_matches(generated, events)
    hits = 0
    for event in events:
        names = [rule.name for rule in bigger.match(event)]
        assert {n for n in names if n.startswith("generated")} == reference[id(event)]
        order = [bigger.rule(n).index for n in names]
        assert order == sorted(order)
        hits += len(reference[id(event)])
    assert hits > 20  # the events do exercise the indexed groups
    assert "_prefix_dispatch" in bigger.generated_source("openat")


def test_shared_macros_are_evaluated_once_per_event(upstream):
    source = upstream.generated_source("openat")
    # open_read and friends are memoised: assigned once, then read by name
    assert re.search(r"_m\d+ if _m\d+ is not None else \(_m\d+ := ", source)
    assert "evt.type" not in source  # event-type checks were decided when the bucket was built


def test_later_files_replace_earlier_definitions(upstream):
    import yaml

    seen: dict[tuple[str, str], int] = {}
    for path in UPSTREAM:
        for item in yaml.load(Path(path).read_text(), Loader=yaml.CSafeLoader):
            for kind in ("rule", "macro", "list"):
                if kind in item:
                    seen[(kind, item[kind])] = seen.get((kind, item[kind]), 0) + 1
    assert sum(1 for count in seen.values() if count > 1) == 62
    # falco_rules.yaml lists uv; the incubating and sandbox files, loaded later, do not
    assert upstream.lists["python_package_managers"] == ("pip", "pip3", "conda")


def test_expanded_condition_of_an_upstream_rule(upstream):
    assert upstream.rule("PTRACE anti-debug attempt").expanded_condition == (
        "evt.type = ptrace and evt.arg.request contains PTRACE_TRACEME and not proc.name in (<NA>, N/A)")
