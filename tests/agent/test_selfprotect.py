"""Self-protection rules: other processes acting on the agent alert; the agent itself does not."""

from __future__ import annotations

from sentinel.config import Config, StoreConfig
from sentinel.events.model import Event, Fd, Process
from sentinel.rules.render import BPF_COMMANDS, PTRACE_REQUESTS
from sentinel.rules.ruleset import load_rules_text
from sentinel.selfprotect import self_protection_rules

AGENT_PID = 4321
PTRACE_ATTACH = {name: value for value, name in PTRACE_REQUESTS.items()}["PTRACE_ATTACH"]
BPF_MAP_GET_FD_BY_ID = {name: value for value, name in BPF_COMMANDS.items()}["BPF_MAP_GET_FD_BY_ID"]


def ruleset(tmp_path):
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    config = Config(rules=(str(rules_dir),), store=StoreConfig(path=str(tmp_path / "events.db")))
    return load_rules_text([], extra=self_protection_rules(config, AGENT_PID)), config


def names(rules):
    return sorted(rule.name for rule in rules)


def test_ptrace_of_the_agent_alerts(tmp_path):
    rules, _ = ruleset(tmp_path)
    gdb = Process(pid=99, comm="gdb")
    event = Event("ptrace", gdb, res=0, args={"request": PTRACE_ATTACH, "pid": AGENT_PID})
    assert names(rules.match(event)) == ["Sentinel agent traced by another process"]
    other = Event("ptrace", gdb, res=0, args={"request": PTRACE_ATTACH, "pid": AGENT_PID + 1})
    assert rules.match(other) == []


def test_signal_to_the_agent_alerts_but_not_its_own(tmp_path):
    rules, _ = ruleset(tmp_path)
    kill = Event("kill", Process(pid=77, comm="bash"), args={"pid": AGENT_PID, "sig": 15})
    assert names(rules.match(kill)) == ["Sentinel agent signalled by another process"]
    own = Event("kill", Process(pid=AGENT_PID, comm="sentinel"), args={"pid": AGENT_PID, "sig": 15})
    assert rules.match(own) == []


def test_writes_to_store_and_rules_alert(tmp_path):
    rules, config = ruleset(tmp_path)
    writer = Process(pid=55, comm="sqlite3")
    for path in (config.db_path, config.db_path + "-wal", str(tmp_path / "rules" / "extra.yaml")):
        event = Event("openat", writer, res=3, args={"flags": 0o1}, fd=Fd(3, "file", path))
        assert names(rules.match(event)) == ["Sentinel configuration, rules or store modified"], path
    read = Event("openat", writer, res=3, args={"flags": 0}, fd=Fd(3, "file", config.db_path))
    assert rules.match(read) == []


def test_bpf_objects_reached_by_id(tmp_path):
    rules, _ = ruleset(tmp_path)
    event = Event("bpf", Process(pid=66, comm="bpftool"), res=4, args={"cmd": BPF_MAP_GET_FD_BY_ID})
    assert names(rules.match(event)) == ["BPF objects reached by another process"]
