"""Real-kernel enforcement: every deny and kill is scoped to files, ports, a cgroup and
processes this test created, and everything is detached afterwards."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
from enforce_helpers import MECHANISMS, dual_stack_socket, eventually

from sentinel.actions.enforce import Enforcer
from sentinel.actions.enforce_kernel import KernelEnforcer, process_start_ns
from sentinel.actions.enforce_plan import DenyEntry
from sentinel.config import EnforceConfig
from sentinel.kernel import hygiene
from sentinel.rules.ruleset import load_rules_text

pytestmark = pytest.mark.kernel

# Client run inside the test cgroup: prints the errno (0 = success) of each attempt.
CLIENT = textwrap.dedent(
    """
    import socket, sys
    host, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    try:
        if kind == "tcp":
            s.connect((host, port))
        else:
            s.sendto(b"x", (host, port))
        print(0)
    except OSError as exc:
        print(exc.errno)
    """
)


def _spawn(argv, **kwargs):
    # preexec_fn forces fork+exec (no vfork): the fanotify answers come from this process's
    # threads, which a vfork parent holding the GIL would block.
    return subprocess.run(argv, preexec_fn=lambda: None, capture_output=True, text=True, timeout=30, **kwargs)


def _exec_status(path: str) -> str:
    try:
        return str(_spawn([path]).returncode)
    except PermissionError:
        return "EPERM"


def _in_cgroup(cgroup: str, host: str, port: int, kind: str) -> int:
    def enter() -> None:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write("0")

    result = subprocess.run([sys.executable, "-c", CLIENT, host, str(port), kind], preexec_fn=enter,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@pytest.fixture
def servers():
    """A TCP listener and a UDP socket on two fresh loopback ports each (denied, allowed)."""
    opened = []

    def listen(kind: str) -> int:
        s = dual_stack_socket(kind)
        opened.append(s)
        return s.getsockname()[1]

    yield listen
    for s in opened:
        s.close()


def test_denied_binary_gets_eperm_and_a_copy_elsewhere_runs(kernel, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    denied, other = tmp_path / "a" / "tool", tmp_path / "b" / "tool"
    for path in (denied, other):
        shutil.copy("/bin/true", path)
    kernel.add(DenyEntry("exec_file", str(denied)))
    assert kernel.mechanism_for(DenyEntry("exec_file", str(denied))) == "fanotify"
    assert _exec_status(str(denied)) == "EPERM"
    assert _exec_status(str(other)) == "0"
    assert denied.read_bytes()[:4] == b"\x7fELF"  # reading is not executing
    kernel.remove(DenyEntry("exec_file", str(denied)))
    assert _exec_status(str(denied)) == "0"


def test_denied_path_follows_a_file_replaced_by_mv(kernel, tmp_path):
    denied = tmp_path / "tool"
    shutil.copy("/bin/true", denied)
    kernel.add(DenyEntry("exec_file", str(denied)))
    assert _exec_status(str(denied)) == "EPERM"
    fresh = tmp_path / "tool.new"
    shutil.copy("/bin/true", fresh)
    old_inode = denied.stat().st_ino
    assert _spawn(["mv", str(fresh), str(denied)]).returncode == 0
    assert denied.stat().st_ino != old_inode
    assert eventually(lambda: _exec_status(str(denied)) == "EPERM")
    assert str(tmp_path) in kernel._watcher.watched()


def test_denied_path_that_appears_later_is_denied_once_created(kernel, tmp_path):
    (tmp_path / "later").mkdir()
    denied = tmp_path / "later" / "sub" / "tool"
    kernel.add(DenyEntry("exec_dir", str(tmp_path / "later" / "sub")))
    (tmp_path / "later" / "sub").mkdir()  # the directory the deny names appears
    shutil.copy("/bin/true", denied)
    assert eventually(lambda: _exec_status(str(denied)) == str(-9))


def test_kill_at_exec_follows_a_directory_replaced_by_mv(kernel, tmp_path):
    denied = tmp_path / "deny"
    denied.mkdir()
    kernel.add(DenyEntry("exec_dir", str(denied)))
    shutil.copy("/bin/true", denied / "tool")
    assert _exec_status(str(denied / "tool")) == str(-9)
    (tmp_path / "fresh").mkdir()
    shutil.copy("/bin/true", tmp_path / "fresh" / "tool")
    assert _spawn(["mv", "-T", str(denied), str(tmp_path / "old")]).returncode == 0
    assert _spawn(["mv", "-T", str(tmp_path / "fresh"), str(denied)]).returncode == 0
    assert eventually(lambda: _exec_status(str(denied / "tool")) == str(-9))
    assert _exec_status(str(tmp_path / "old" / "tool")) == "0"  # the old directory is no longer denied


def test_open_of_a_denied_file_gets_eperm(kernel, tmp_path):
    secret, other = tmp_path / "secret", tmp_path / "other"
    secret.write_text("s")
    other.write_text("o")
    kernel.add(DenyEntry("open_file", str(secret)))
    assert "Operation not permitted" in _spawn(["cat", str(secret)]).stderr
    assert _spawn(["cat", str(other)]).stdout == "o"


def test_exec_by_name_is_killed_before_it_runs(kernel, tmp_path):
    name = "snt%d" % (os.getpid() % 100000)
    named, other = tmp_path / name, tmp_path / "other"
    for path in (named, other):
        shutil.copy("/bin/true", path)
    kernel.add(DenyEntry("exec_name", name))
    assert _exec_status(str(named)) == str(-9)
    assert _exec_status(str(other)) == "0"
    kernel.remove(DenyEntry("exec_name", name))
    assert _exec_status(str(named)) == "0"


def test_exec_under_a_denied_directory_is_killed(kernel, tmp_path):
    inside = tmp_path / "deny" / "deeper"
    inside.mkdir(parents=True)
    shutil.copy("/bin/true", inside / "tool")
    shutil.copy("/bin/true", tmp_path / "tool")
    kernel.add(DenyEntry("exec_dir", str(tmp_path / "deny")))
    assert _exec_status(str(inside / "tool")) == str(-9)
    assert _exec_status(str(tmp_path / "tool")) == "0"


def test_open_under_a_denied_directory_kills_after_the_open(kernel, tmp_path):
    (tmp_path / "deny").mkdir()
    (tmp_path / "deny" / "f").write_text("x")
    (tmp_path / "f").write_text("y")
    kernel.add(DenyEntry("open_dir", str(tmp_path / "deny")))
    assert _spawn(["cat", str(tmp_path / "deny" / "f")]).returncode == -9
    assert _spawn(["cat", str(tmp_path / "f")]).stdout == "y"


@pytest.mark.parametrize("host", ["127.0.0.1", "::ffff:127.0.0.1"])
@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_denied_port_gets_eperm_and_other_ports_work(kernel, cgroup, servers, host, kind):
    denied, allowed = servers(kind), servers(kind)
    kernel.add(DenyEntry("net", "127.0.0.1/32", denied))
    assert _in_cgroup(cgroup, host, denied, kind) == errno.EPERM
    assert _in_cgroup(cgroup, host, allowed, kind) == 0
    kernel.remove(DenyEntry("net", "127.0.0.1/32", denied))
    assert _in_cgroup(cgroup, host, denied, kind) == 0


def test_cidr_deny_covers_every_port(kernel, cgroup, servers):
    port = servers("tcp")
    kernel.add(DenyEntry("net", "127.0.0.0/8", 0))
    assert _in_cgroup(cgroup, "127.0.0.1", port, "tcp") == errno.EPERM
    assert _in_cgroup(cgroup, "::1", port, "tcp") == 0


def test_kill_kills_its_process_and_only_it(kernel):
    target = subprocess.Popen(["sleep", "60"])
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        start = process_start_ns(target.pid)
        result = kernel.kill(target.pid, start)
        assert result.done.wait(5)
        assert target.wait(5) == -9
        assert bystander.poll() is None
    finally:
        for proc in (target, bystander):
            proc.kill()
            proc.wait()


def test_kill_map_catches_a_busy_process_at_its_next_syscall(kernel):
    busy = subprocess.Popen([sys.executable, "-c", "import os\nwhile True: os.getppid()"])
    try:
        time.sleep(0.2)
        result = kernel.kill(busy.pid, process_start_ns(busy.pid))
        assert busy.wait(5) == -9
        assert result.done.wait(5)
        assert not result.backstop  # died at a syscall entry, before the pidfd backstop
    finally:
        busy.kill()
        busy.wait()


def test_kill_refuses_a_reused_pid(kernel):
    from sentinel.errors import KernelError

    target = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(KernelError, match="pid reused"):
            kernel.kill(target.pid, process_start_ns(target.pid) - 10**9)
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()


RULES = """
- rule: deny test tool
  desc: test
  condition: evt.type in (execve, execveat) and proc.exepath = {path}
  output: "%proc.name"
  priority: WARNING
  action: deny
  mode: {mode}
"""


def _rules(path, mode):
    return load_rules_text([("test.yaml", RULES.format(path=path, mode=mode))]).rules


def test_audit_mode_changes_nothing_but_records(kernel, tmp_path):
    tool = tmp_path / "tool"
    shutil.copy("/bin/true", tool)
    actions = []
    enforcer = Enforcer(EnforceConfig(mode="enforce"), lambda *a, **k: actions.append((a, k)), kernel)
    enforcer.apply_rules(_rules(tool, "audit"))
    assert kernel.entries() == []
    assert _exec_status(str(tool)) == "0"
    from sentinel.events.model import Event, Process

    event = Event(type="execve", res=0, proc=Process(pid=12345, start_ns=1, comm="tool"))
    assert enforcer.on_match(enforcer.rules["deny test tool"], event) == "would have denied"
    assert actions[-1][1]["outcome"] == "would have denied"
    enforcer.set_mode("enforce", rule="deny test tool")
    assert _exec_status(str(tool)) == "EPERM"
    enforcer.set_mode("audit")  # global audit wins over the rule
    assert _exec_status(str(tool)) == "0"


def test_reload_without_the_rule_removes_its_entries(kernel, tmp_path):
    tool = tmp_path / "tool"
    shutil.copy("/bin/true", tool)
    enforcer = Enforcer(EnforceConfig(mode="enforce"), lambda *a, **k: None, kernel)
    enforcer.apply_rules(_rules(tool, "enforce"))
    assert _exec_status(str(tool)) == "EPERM"
    enforcer.apply_rules([])
    assert kernel.entries() == []
    assert _exec_status(str(tool)) == "0"


def test_entry_shared_by_two_rules_stays_until_both_go(kernel, tmp_path):
    tool = tmp_path / "tool"
    shutil.copy("/bin/true", tool)
    two = load_rules_text([("t.yaml", RULES.format(path=tool, mode="enforce")
                            + RULES.format(path=tool, mode="enforce").replace("deny test tool", "second"))]).rules
    enforcer = Enforcer(EnforceConfig(mode="enforce"), lambda *a, **k: None, kernel)
    enforcer.apply_rules(two)
    assert enforcer.references[DenyEntry("exec_file", str(tool))] == 2
    enforcer.apply_rules([r for r in two if r.name == "second"])
    assert _exec_status(str(tool)) == "EPERM"
    enforcer.apply_rules([])
    assert _exec_status(str(tool)) == "0"


CRASHING_AGENT = textwrap.dedent(
    """
    import sys, time
    from sentinel.actions.enforce_kernel import KernelEnforcer
    from sentinel.actions.enforce_plan import DenyEntry
    mechanisms = {"deny_connect": ("cgroup-sock-addr",), "deny_exec": ("kill-at-exec",)}
    kernel = KernelEnforcer(mechanisms, cgroup_path=sys.argv[1])
    kernel.add(DenyEntry("net", "127.0.0.1/32", int(sys.argv[2])))
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_a_crashed_agent_leaves_no_stale_deny_after_the_next_start(cgroup, servers, tmp_path):
    port = servers("tcp")
    agent = subprocess.Popen([sys.executable, "-c", CRASHING_AGENT, cgroup, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "ready"
        assert _in_cgroup(cgroup, "127.0.0.1", port, "tcp") == errno.EPERM
    finally:
        agent.kill()
        agent.wait()
    # cgroup programs outlive their loader: the deny is still there...
    assert _in_cgroup(cgroup, "127.0.0.1", port, "tcp") == errno.EPERM
    # ...until the next start removes sentinel's leftovers.
    removed = hygiene.cleanup_leftovers(cgroup_root=cgroup, pin_dir=str(tmp_path / "pins"), lock_path=str(tmp_path / "lock"))
    assert any("snt_connect4" in line for line in removed)
    assert _in_cgroup(cgroup, "127.0.0.1", port, "tcp") == 0


def test_keep_on_exit_keeps_exec_and_network_denies_until_taken_over(cgroup, servers, tmp_path):
    pin_dir = "/sys/fs/bpf/sentinel-test-%d" % os.getpid()
    name = "sntkeep%d" % (os.getpid() % 10000)
    named = tmp_path / name
    shutil.copy("/bin/true", named)
    port = servers("tcp")
    kernel = KernelEnforcer(MECHANISMS, cgroup_path=cgroup, keep_on_exit=True, pin_dir=pin_dir)
    try:
        kernel.add(DenyEntry("exec_name", name))
        kernel.add(DenyEntry("net", "127.0.0.1/32", port))
    finally:
        kept = kernel.close()
    try:
        assert any("kill-at-exec" in line for line in kept) and any("cgroup" in line for line in kept)
        assert _exec_status(str(named)) == str(-9)  # still enforced with no loader alive
        assert _in_cgroup(cgroup, "127.0.0.1", port, "tcp") == errno.EPERM
    finally:
        successor = KernelEnforcer(MECHANISMS, cgroup_path=cgroup, pin_dir=pin_dir)
        successor.take_over_pins()
        successor.close()
        hygiene.cleanup_leftovers(cgroup_root=cgroup, pin_dir=pin_dir, lock_path=str(tmp_path / "lock"))
        shutil.rmtree(pin_dir, ignore_errors=True)
    assert _exec_status(str(named)) == "0"
    assert _in_cgroup(cgroup, "127.0.0.1", port, "tcp") == 0
