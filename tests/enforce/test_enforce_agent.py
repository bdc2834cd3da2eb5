"""`sentinel run` with rules that carry actions: kills, denies, audit, control commands,
fail-open on stop and no stale deny after a crash. Targets are binaries, processes and a
loopback port this test created."""

from __future__ import annotations

import errno
import os
import importlib.util
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from sentinel.control import request

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]


def _running_agent_class():
    spec = importlib.util.spec_from_file_location("agent_test_support", REPO / "tests" / "agent" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RunningAgent


RunningAgent = _running_agent_class()

RULES = """
- rule: kill test sleeper
  desc: a kill rule
  condition: evt.type in (execve, execveat) and proc.name = {kill_name}
  output: "killing %proc.name (%proc.pid)"
  priority: WARNING
  action: kill
  mode: enforce
- rule: deny test tool
  desc: a deny rule
  condition: evt.type in (execve, execveat) and proc.exepath = {denied}
  output: "denied %proc.exepath"
  priority: WARNING
  action: deny
  mode: enforce
- rule: audit test tool
  desc: an audited deny rule
  condition: evt.type in (execve, execveat) and proc.exepath = {audited}
  output: "would deny %proc.exepath"
  priority: WARNING
  action: deny
"""

NET_RULE = """
- rule: deny test port
  desc: a network deny
  condition: evt.type = connect and fd.rip = 127.0.0.1 and fd.rport = {port}
  output: "denied connect"
  priority: WARNING
  action: deny
  mode: enforce
"""


@pytest.fixture
def workdir():
    directory = Path(tempfile.mkdtemp(prefix="sentinel-enforce-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _spawn(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, **kwargs)


def _exec_status(path) -> str:
    try:
        return str(_spawn([str(path)]).returncode)
    except PermissionError:
        return "EPERM"


def _actions(db: Path) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT kind, target, rule, mode, outcome, detail FROM actions")]


def _wait(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


def _connect(port: int) -> int:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port))
        return 0
    except OSError as exc:
        return exc.errno
    finally:
        s.close()


ENFORCE_CONFIG = "enforce:\n  mode: enforce\n"


def _wait_for_free_kernel_lock(timeout: float = 180.0) -> None:
    """Only the agent holding the host's kernel lock removes leftovers; another agent running
    on this host (a service, another test run) would make the next start skip the cleanup."""
    from sentinel.errors import SentinelError
    from sentinel.kernel import hygiene

    deadline = time.monotonic() + timeout
    while True:
        try:
            hygiene.acquire_kernel_lock().release()
            return
        except SentinelError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_agent_kills_denies_audits_and_fails_open(workdir):
    kill_name = "sntk%d" % (time.monotonic_ns() % 100000)
    (workdir / "bin").mkdir()
    sleeper, bystander = workdir / "bin" / kill_name, workdir / "bin" / "sleeper"
    denied, audited = workdir / "bin" / "denied", workdir / "bin" / "audited"
    for path, source in ((sleeper, "/bin/sleep"), (bystander, "/bin/sleep"), (denied, "/bin/true"), (audited, "/bin/true")):
        shutil.copy(source, path)
    rules = workdir / "rules.yaml"
    rules.write_text(RULES.format(kill_name=kill_name, denied=denied, audited=audited))
    agent = RunningAgent(workdir, [rules], extra_config=ENFORCE_CONFIG)
    try:
        agent.wait_for_notification("READY=1")
        assert _exec_status(denied) == "EPERM"
        assert _exec_status(audited) == "0"

        victim = subprocess.Popen([str(sleeper), "60"])
        other = subprocess.Popen([str(bystander), "60"])
        try:
            assert victim.wait(15) == -signal.SIGKILL
            assert other.poll() is None
        finally:
            other.kill()
            other.wait()
        agent.wait_for_alert(lambda a: a["rule"] == "audit test tool")

        listing = request(str(agent.socket_path), "enforce_list")
        assert any(e["entry"] == "exec_file %s" % denied and e["mechanism"] == "fanotify" for e in listing["entries"])
        assert listing["modes"]["rules"]["audit test tool"] == "audit"

        request(str(agent.socket_path), "mode", mode="audit", rule="deny test tool")
        assert _exec_status(denied) == "0"
        request(str(agent.socket_path), "mode", mode="enforce", rule="deny test tool")
        assert _exec_status(denied) == "EPERM"

        actions = _wait(lambda: [a for a in _actions(agent.db) if a["kind"] == "deny" and a["rule"] == "deny test tool"])
        assert any(a["outcome"] == "denied (EPERM)" for a in actions)
        recorded = _actions(agent.db)
        assert any(a["kind"] == "kill" and a["rule"] == "kill test sleeper" and a["outcome"] == "killed" for a in recorded)
        assert any(a["rule"] == "audit test tool" and a["outcome"] == "would have denied" for a in recorded)
        assert any(a["kind"] == "mode" for a in recorded)
        deaths = _wait(lambda: [a for a in _actions(agent.db) if a["kind"] == "kill_done"])
        assert deaths and "after the event" in deaths[0]["detail"]
    finally:
        assert agent.stop() == 0
    assert _exec_status(denied) == "0"  # a clean stop detaches everything


def test_a_rule_the_kernel_cannot_enforce_stops_the_load(workdir):
    rules = workdir / "rules.yaml"
    rules.write_text(
        "- rule: unpushable\n  desc: x\n  condition: evt.type = connect and proc.name = curl\n"
        "  output: x\n  priority: WARNING\n  action: deny\n"
    )
    agent = RunningAgent(workdir, [rules], extra_config=ENFORCE_CONFIG)
    agent.process.wait(120)
    code = agent.stop()
    log = agent.log_path.read_text()
    assert code != 0
    assert "cannot push down `proc.name = curl`" in log and "rules.yaml:1" in log, log[-2000:]


def test_a_crashed_agent_leaves_no_stale_deny_after_the_next_start(workdir):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        rules = workdir / "rules.yaml"
        rules.write_text(NET_RULE.format(port=port))
        (workdir / "first").mkdir()
        (workdir / "second").mkdir()
        first = RunningAgent(workdir / "first", [rules], extra_config=ENFORCE_CONFIG)
        first.wait_for_notification("READY=1")
        assert _connect(port) == errno.EPERM
        first.stop(signal.SIGKILL)
        assert _connect(port) == errno.EPERM  # cgroup programs outlive a crashed loader
        rules.write_text("[]\n")
        _wait_for_free_kernel_lock()
        second = RunningAgent(workdir / "second", [rules], extra_config=ENFORCE_CONFIG)
        try:
            second.wait_for_notification("READY=1")
            assert _connect(port) == 0, second.log_path.read_text()[-3000:]
        finally:
            second.stop()
    finally:
        listener.close()


SCOPED_RULES = """
- rule: deny tool to nobody
  desc: a deny scoped to one uid
  condition: evt.type = execve and proc.exepath = {tool} and user.uid = {uid}
  output: "denied %proc.exepath to %user.uid"
  priority: WARNING
  action: deny
  mode: enforce
- rule: deny by inode
  desc: an exec deny by inode number
  condition: evt.type = execve and proc.exe_ino = {ino}
  output: "killed %proc.exepath"
  priority: WARNING
  action: deny
  mode: enforce
"""


def _as_uid(uid: int):
    def before_exec() -> None:
        os.setgid(uid)
        os.setuid(uid)

    return before_exec


def test_agent_enforces_scoped_and_inode_rules(workdir):
    workdir.chmod(0o755)
    (workdir / "bin").mkdir(mode=0o755)
    tool, by_inode = workdir / "bin" / "tool", workdir / "bin" / "inode"
    for path in (tool, by_inode):
        shutil.copy("/bin/true", path)
    rules = workdir / "rules.yaml"
    rules.write_text(SCOPED_RULES.format(tool=tool, uid=65533, ino=by_inode.stat().st_ino))
    agent = RunningAgent(workdir, [rules], extra_config=ENFORCE_CONFIG)
    try:
        agent.wait_for_notification("READY=1")
        with pytest.raises(PermissionError):
            subprocess.run([str(tool)], preexec_fn=_as_uid(65533), timeout=30)
        assert _exec_status(tool) == "0"  # root is out of the rule's scope
        assert _exec_status(by_inode) == str(-signal.SIGKILL)
        listing = request(str(agent.socket_path), "enforce_list")
        entries = {e["entry"]: e["mechanism"] for e in listing["entries"]}
        assert entries == {"exec_file %s for uid 65533" % tool: "fanotify", "exec_ino %d" % by_inode.stat().st_ino: "kill-at-exec"}
        denials = _wait(lambda: [a for a in _actions(agent.db) if a["rule"] == "deny tool to nobody" and a["outcome"] == "denied (EPERM)"])
        assert denials
    finally:
        assert agent.stop() == 0


CGROUP_NET_RULE = """
- rule: deny test port to one cgroup
  desc: a network deny scoped to a cgroup
  condition: evt.type = connect and fd.rport = {port} and proc.cgroup = {cgroup}
  output: "denied connect from %proc.cgroup"
  priority: WARNING
  action: deny
  mode: enforce
"""

CONNECT_CLIENT = "import socket, sys\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', int(sys.argv[1])))\n    print(0)\nexcept OSError as exc:\n    print(exc.errno)\n"


def test_agent_enforces_a_network_deny_scoped_to_a_cgroup(workdir):
    import sys

    from sentinel.kernel.probe import cgroup2_mount, scratch_cgroup

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        with scratch_cgroup("agent-scope") as cgroup:
            relative = cgroup[len(cgroup2_mount().rstrip("/")):]
            rules = workdir / "rules.yaml"
            rules.write_text(CGROUP_NET_RULE.format(port=port, cgroup=relative))
            agent = RunningAgent(workdir, [rules], extra_config=ENFORCE_CONFIG)
            try:
                agent.wait_for_notification("READY=1")

                def connect_from(inside: bool) -> int:
                    def enter() -> None:
                        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                            f.write("0")

                    out = subprocess.run([sys.executable, "-c", CONNECT_CLIENT, str(port)], preexec_fn=enter if inside else None,
                                         capture_output=True, text=True, timeout=30)
                    return int(out.stdout)

                assert connect_from(inside=True) == errno.EPERM
                assert connect_from(inside=False) == 0
                assert _connect(port) == 0  # this test process is outside the cgroup too
                listing = request(str(agent.socket_path), "enforce_list")
                assert [e["entry"] for e in listing["entries"]] == ["net ::/0 port %d for cgroup %s" % (port, relative)]
            finally:
                assert agent.stop() == 0
    finally:
        listener.close()
