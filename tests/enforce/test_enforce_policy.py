"""Deny-rule compilation, modes, reference counts and kill safety (no kernel needed)."""

from __future__ import annotations

import pytest

from sentinel.actions.enforce import Enforcer, RateLimiter
from sentinel.actions.enforce_plan import DenyEntry, Scope, compile_rules
from sentinel.config import EnforceConfig
from sentinel.errors import ConfigError, RuleError
from sentinel.events.model import Event, Process
from sentinel.rules.ruleset import load_rules_text


def rule_yaml(name: str, condition: str, action: str = "deny", mode: str | None = "enforce") -> str:
    text = "- rule: %s\n  desc: d\n  condition: %s\n  output: o\n  priority: WARNING\n  action: %s\n" % (name, condition, action)
    return text + ("  mode: %s\n" % mode if mode else "")


def rules(*texts: str):
    return load_rules_text([("rules.yaml", "".join(texts))]).rules


@pytest.mark.parametrize(
    "condition, expected",
    [
        ("evt.type = execve and proc.exepath = /opt/x", [DenyEntry("exec_file", "/opt/x")]),
        ("evt.type in (execve, execveat) and proc.name in (nc, ncat)", [DenyEntry("exec_name", "nc"), DenyEntry("exec_name", "ncat")]),
        ("evt.type = execve and proc.exepath startswith /tmp/", [DenyEntry("exec_dir", "/tmp")]),
        ("evt.type = execve and (proc.name = nc or proc.exepath = /bin/x)", [DenyEntry("exec_file", "/bin/x"), DenyEntry("exec_name", "nc")]),
        ("evt.type in (open, openat) and evt.dir = < and fd.name = /etc/shadow", [DenyEntry("open_file", "/etc/shadow")]),
        ("evt.type = openat and fd.directory = /secret", [DenyEntry("open_dir", "/secret")]),
        ("evt.type = connect and fd.rnet = 10.0.0.0/8", [DenyEntry("net", "10.0.0.0/8", 0)]),
        ("evt.type in (connect, sendto) and fd.rip = ::1 and fd.rport in (53, 853)",
         [DenyEntry("net", "::1/128", 53), DenyEntry("net", "::1/128", 853)]),
        ("evt.type = connect and fd.rport = 4444", [DenyEntry("net", "::/0", 4444)]),
        ("evt.type = execve and proc.exe_ino in (12, 13)", [DenyEntry("exec_ino", "12"), DenyEntry("exec_ino", "13")]),
        ("evt.type = openat and fd.ino = 7 and fd.dev = 2049", [DenyEntry("open_ino", "7:2049")]),
        ("evt.type = execve and proc.name = nc and user.uid in (1000, 1001)",
         [DenyEntry("exec_name", "nc", scope=Scope(uid=1000)), DenyEntry("exec_name", "nc", scope=Scope(uid=1001))]),
        ("evt.type = openat and fd.name = /etc/shadow and proc.cgroup = /system.slice/web.service",
         [DenyEntry("open_file", "/etc/shadow", scope=Scope(cgroup="/system.slice/web.service"))]),
        ("evt.type = connect and fd.rport = 25 and user.uid = 33 and proc.cgroup startswith /kubepods/",
         [DenyEntry("net", "::/0", 25, Scope(uid=33, cgroup="/kubepods", below=True))]),
    ],
)
def test_deny_conditions_compile_to_entries(condition, expected):
    plans = compile_rules(rules(rule_yaml("r", condition)))
    assert list(plans["r"].entries) == sorted(expected)


@pytest.mark.parametrize(
    "condition, part",
    [
        ("evt.type = connect and proc.name = curl", "proc.name = curl"),
        ("evt.type = execve and proc.cmdline contains evil", "proc.cmdline contains evil"),
        ("evt.type = execve and proc.exepath startswith /tmp/ev", "proc.exepath startswith /tmp/ev"),
        ("evt.type = execve and proc.name = averyveryverylongname", "proc.name = averyveryverylongname"),
        ("evt.type = unlink and fd.name = /x", "evt.type = unlink"),
        ("proc.name = nc", "proc.name = nc"),
        ("evt.type in (execve, connect) and proc.name = nc", "evt.type in (execve, connect)"),
        ("evt.type = execve and proc.name = nc and user.uid > 1000", "user.uid > 1000"),
        ("evt.type = execve and proc.name = nc and proc.cgroup contains web", "proc.cgroup contains web"),
        ("evt.type = execve and proc.name = nc and proc.cgroup startswith /web", "proc.cgroup startswith /web"),
        ("evt.type = execve and proc.name = nc and proc.cgroup = web.service", "proc.cgroup = web.service"),
        ("evt.type = execve and proc.name = nc and user.uid = 1 and user.uid = 2", "user.uid = 2"),
        ("evt.type = execve and proc.exe_ino = 0", "proc.exe_ino = 0"),
        ("evt.type = openat and fd.name = /x and fd.dev = 5", "fd.dev = 5"),
        ("evt.type = openat and fd.ino = 5 and fd.dev in (5, 6)", "fd.dev in (5, 6)"),
    ],
)
def test_a_condition_that_cannot_be_pushed_down_is_a_located_error(condition, part):
    with pytest.raises(RuleError) as caught:
        compile_rules(rules(rule_yaml("first", "evt.type = execve and proc.name = ok"), rule_yaml("bad", condition)))
    message = str(caught.value)
    assert message.startswith("rules.yaml:8:3:")
    assert part in message


def test_kill_rules_and_rules_without_action_need_no_pushdown():
    assert compile_rules(rules(rule_yaml("k", "proc.cmdline contains x", action="kill"))) == {}


class FakeKernel:
    def __init__(self):
        self.installed: set[DenyEntry] = set()
        self.kills: list[tuple[int, int]] = []

    def add(self, entry):
        self.installed.add(entry)

    def remove(self, entry):
        self.installed.discard(entry)

    def mechanism_for(self, entry):
        return "fake"

    def kill(self, pid, start_ns, event_time_ns=0):
        self.kills.append((pid, start_ns))

    def map_contents(self):
        return {}

    def attached(self):
        return []


def enforcer(mode="enforce", **config):
    actions = []
    kernel = FakeKernel()
    instance = Enforcer(EnforceConfig(mode=mode, **config), lambda *a, **k: actions.append((a, k)), kernel, agent_pid=4242)
    return instance, kernel, actions


def test_a_rule_without_mode_is_audit_and_global_audit_wins():
    instance, kernel, _ = enforcer()
    instance.apply_rules(rules(rule_yaml("no mode", "evt.type = execve and proc.name = a", mode=None),
                               rule_yaml("enforced", "evt.type = execve and proc.name = b")))
    assert instance.modes()["rules"] == {"enforced": "enforce", "no mode": "audit"}
    assert kernel.installed == {DenyEntry("exec_name", "b")}
    instance.set_mode("audit")
    assert kernel.installed == set()
    instance.set_mode("enforce")
    instance.set_mode("enforce", rule="no mode")
    assert kernel.installed == {DenyEntry("exec_name", "a"), DenyEntry("exec_name", "b")}


def test_shared_entries_are_reference_counted():
    instance, kernel, _ = enforcer()
    both = rules(rule_yaml("one", "evt.type = execve and proc.name in (a, b)"), rule_yaml("two", "evt.type = execve and proc.name = a"))
    instance.apply_rules(both)
    assert instance.references[DenyEntry("exec_name", "a")] == 2
    instance.apply_rules([r for r in both if r.name == "two"])
    assert kernel.installed == {DenyEntry("exec_name", "a")}
    instance.apply_rules([])
    assert kernel.installed == set()


def test_rules_on_one_target_with_different_scopes_count_separately():
    instance, kernel, _ = enforcer()
    scoped = rules(rule_yaml("for 1000", "evt.type = execve and proc.name = a and user.uid = 1000"),
                   rule_yaml("for 1000 too", "evt.type = execve and proc.name = a and user.uid in (1000, 1001)"),
                   rule_yaml("for web", "evt.type = execve and proc.name = a and proc.cgroup = /web"))
    instance.apply_rules(scoped)
    assert instance.references[DenyEntry("exec_name", "a", scope=Scope(uid=1000))] == 2
    assert kernel.installed == {DenyEntry("exec_name", "a", scope=Scope(uid=1000)),
                                DenyEntry("exec_name", "a", scope=Scope(uid=1001)),
                                DenyEntry("exec_name", "a", scope=Scope(cgroup="/web"))}
    instance.apply_rules([r for r in scoped if r.name == "for 1000"])
    assert kernel.installed == {DenyEntry("exec_name", "a", scope=Scope(uid=1000))}


def test_control_deny_takes_a_scope():
    from types import SimpleNamespace

    from sentinel.actions.enforce import AgentEnforcement

    instance, kernel, _ = enforcer()
    wiring = AgentEnforcement(instance, kernel, lambda *a, **k: None)
    deny = wiring.control_handlers()["deny"]
    deny({"kind": "exec_ino", "target": "1234", "uid": 33, "cgroup": "/web/", "below": True}, SimpleNamespace(uid=0))
    assert kernel.installed == {DenyEntry("exec_ino", "1234", scope=Scope(uid=33, cgroup="/web", below=True))}
    with pytest.raises(ConfigError):
        deny({"kind": "exec_name", "target": "nc", "cgroup": "web"}, SimpleNamespace(uid=0))


def _event(pid=100, vpid=100, comm="victim", exepath="/tmp/victim"):
    return Event(type="execve", res=0, proc=Process(pid=pid, start_ns=7, vpid=vpid, comm=comm, exepath=exepath))


def test_kill_safety_refusals():
    instance, kernel, actions = enforcer(allow_comms=("sshd",), allow_exepaths=("/usr/sbin/cron",))
    instance.apply_rules(rules(rule_yaml("k", "evt.type = execve", action="kill")))
    rule = instance.rules["k"]
    assert instance.on_match(rule, _event(pid=1, vpid=1)) == "refused: pid 1"
    assert instance.on_match(rule, _event(pid=4242)) == "refused: the agent itself"
    assert instance.on_match(rule, _event(vpid=1)).startswith("refused: a pid namespace init")
    assert instance.on_match(rule, _event(comm="sshd")).startswith("refused: allow-listed program")
    assert instance.on_match(rule, _event(exepath="/usr/sbin/cron")).startswith("refused: allow-listed executable")
    assert kernel.kills == []
    assert instance.on_match(rule, _event()) == "killed"
    assert kernel.kills == [(100, 7)]
    assert actions[-1][1] == {"rule": "k", "mode": "enforce", "outcome": "killed", "detail": "execve"}


def test_a_rule_naming_proc_vpid_may_kill_a_namespace_init():
    instance, kernel, _ = enforcer()
    instance.apply_rules(rules(rule_yaml("k", "evt.type = execve and proc.vpid = 1", action="kill")))
    assert instance.on_match(instance.rules["k"], _event(vpid=1)) == "killed"


def test_audit_kill_records_and_kills_nothing():
    instance, kernel, actions = enforcer()
    instance.apply_rules(rules(rule_yaml("k", "evt.type = execve", action="kill", mode="audit")))
    assert instance.on_match(instance.rules["k"], _event()) == "would have killed"
    assert kernel.kills == []
    assert actions[-1][1]["mode"] == "audit"


def test_kills_beyond_the_rate_limit_are_refused():
    instance, kernel, _ = enforcer(max_kills_per_minute=2)
    instance.apply_rules(rules(rule_yaml("k", "evt.type = execve", action="kill")))
    outcomes = [instance.on_match(instance.rules["k"], _event(pid=100 + i)) for i in range(3)]
    assert outcomes[:2] == ["killed", "killed"]
    assert outcomes[2].startswith("refused: rate limit")


def test_rate_limiter_window_slides():
    limiter = RateLimiter(1)
    assert limiter.allow(0.0) and not limiter.allow(30.0) and limiter.allow(60.0)


def test_control_mode_rejects_unknown_rule():
    from sentinel.errors import ConfigError

    instance, _, _ = enforcer()
    with pytest.raises(ConfigError):
        instance.set_mode("enforce", rule="nope")
    with pytest.raises(ConfigError):
        instance.set_mode("block")


def test_listing_shows_entries_with_their_rules():
    instance, _, _ = enforcer()
    instance.apply_rules(rules(rule_yaml("r", "evt.type = execve and proc.name = a")))
    listing = instance.listing()
    assert listing["entries"] == [{"entry": "exec_name a", "references": 1, "mechanism": "fake", "rules": ["r"]}]
    assert listing["modes"]["global"] == "enforce"


def test_the_enforcement_doc_examples_compile_to_kernel_entries():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "enforcement.md").read_text()
    blocks = [block.split("```", 1)[0] for block in doc.split("```yaml\n")[1:]]
    assert blocks
    for block in blocks:
        plans = compile_rules(load_rules_text([("enforcement.md", block)]).rules)
        assert plans and all(plan.entries for plan in plans.values())


def test_the_readme_enforcement_examples_compile_to_kernel_entries():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Enforcement", 1)[1].split("\n## ", 1)[0]
    blocks = [block.split("```", 1)[0] for block in section.split("```yaml\n")[1:]]
    assert len(blocks) >= 2
    for block in blocks:
        plans = compile_rules(load_rules_text([("README.md", block)]).rules)
        assert plans and all(plan.entries for plan in plans.values())
    scoped = compile_rules(load_rules_text([("README.md", blocks[1])]).rules)["No shell for the web service"]
    assert {entry.scope for entry in scoped.entries} == {Scope(uid=33, cgroup="/system.slice/web.service")}


def test_a_fanotify_denial_is_recorded_with_the_rules_whose_scope_applied():
    instance, _, actions = enforcer()
    instance.apply_rules(rules(rule_yaml("for 1000", "evt.type = execve and proc.exepath = /opt/x and user.uid = 1000"),
                               rule_yaml("for 2000", "evt.type = execve and proc.exepath = /opt/x and user.uid = 2000")))
    instance.kernel_denial("exec", "/opt/x", 77, (Scope(uid=1000),))
    assert actions[-1][1]["rule"] == "for 1000"
    instance.kernel_denial("exec", "/opt/x", 77)  # no scope known: every rule on the file
    assert actions[-1][1]["rule"] == "for 1000,for 2000"


def test_the_fanotify_scope_check_reads_uid_and_cgroup_from_proc():
    import os

    from sentinel.kernel.fanotify import process_cgroup, scopes_of

    me = os.getpid()
    mine = process_cgroup(me)
    assert mine is not None and mine.startswith("/")
    everyone, my_uid, other_uid = Scope(), Scope(uid=os.getuid()), Scope(uid=os.getuid() + 1)
    assert scopes_of(me, frozenset({my_uid, other_uid})) == [my_uid]
    assert scopes_of(me, frozenset({other_uid, everyone})) == [everyone]
    assert scopes_of(me, frozenset({Scope(cgroup=mine)})) == [Scope(cgroup=mine)]
    assert scopes_of(me, frozenset({Scope(cgroup=mine, below=True)})) == []  # below is strictly under
    assert scopes_of(me, frozenset({Scope(uid=os.getuid() + 1, cgroup=mine)})) == []  # both must hold
    gone = 2**22 + 1  # above pid_max: nothing can be read, so nothing contradicts the scope
    assert scopes_of(gone, frozenset({other_uid})) == [other_uid]
