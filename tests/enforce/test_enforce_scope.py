"""Real-kernel denies scoped to a uid or a cgroup, and denies by inode number, in every
fallback mechanism of this host (kill-at-exec, kill-at-open, fanotify, cgroup sock_addr).

Everything is scoped to what the test made: binaries and files in a fresh directory, a
scratch cgroup (and one below it), loopback ports it listens on, and uid 65533 taken by
children through setuid before their exec.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from enforce_helpers import MECHANISMS, entering, eventually

from sentinel.actions.enforce_kernel import KernelEnforcer, kernel_dev
from sentinel.actions.enforce_plan import DenyEntry, Scope
from sentinel.kernel.probe import cgroup2_mount

pytestmark = pytest.mark.kernel

NOBODY = 65533  # a uid no account of this host uses

CLIENT = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.connect(("127.0.0.1", int(sys.argv[1])))
        print(0)
    except OSError as exc:
        print(exc.errno)
    """
)


@pytest.fixture
def workdir():
    """A directory every uid can read and execute from (pytest's tmp_path is root-only)."""
    directory = Path(tempfile.mkdtemp(prefix="sentinel-scope-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def relative(cgroup: str) -> str:
    """A cgroup directory as proc.cgroup names it: its path under the cgroup2 mount."""
    return cgroup[len(cgroup2_mount().rstrip("/")):]


def run(argv: list[str], uid: int | None = None, cgroup: str | None = None) -> str:
    """Exit status of argv (-9: killed), or EPERM when the exec itself was refused, started
    by fork+exec as `uid` inside `cgroup`."""

    try:
        result = subprocess.run(argv, preexec_fn=entering(uid, cgroup), capture_output=True, text=True, timeout=30)
    except PermissionError:
        return "EPERM"
    if "Operation not permitted" in result.stderr:
        return "EPERM"
    return str(result.returncode)


def copy_true(path: Path) -> Path:
    shutil.copy("/bin/true", path)
    path.chmod(0o755)
    return path


# ---------------------------------------------------------------------- inode numbers


def test_exec_by_inode_number_is_killed_and_another_copy_runs(kernel, workdir):
    denied, other = copy_true(workdir / "a"), copy_true(workdir / "b")
    entry = DenyEntry("exec_ino", str(denied.stat().st_ino))
    kernel.add(entry)
    assert kernel.mechanism_for(entry) == "kill-at-exec"
    assert run([str(denied)]) == "-9"
    assert run([str(other)]) == "0"
    os.link(denied, workdir / "hardlink")  # another name, the same inode
    assert run([str(workdir / "hardlink")]) == "-9"
    kernel.remove(entry)
    assert run([str(denied)]) == "0"


def test_open_by_inode_and_device_kills_after_the_open(kernel, workdir):
    secret, other = workdir / "secret", workdir / "other"
    secret.write_text("s")
    other.write_text("o")
    st = secret.stat()
    kernel.add(DenyEntry("open_ino", "%d:%d" % (st.st_ino, kernel_dev(st.st_dev))))
    assert run(["cat", str(secret)]) == "-9"
    assert run(["cat", str(other)]) == "0"
    kernel.remove(DenyEntry("open_ino", "%d:%d" % (st.st_ino, kernel_dev(st.st_dev))))
    kernel.add(DenyEntry("open_ino", "%d:%d" % (st.st_ino, kernel_dev(st.st_dev) + 1)))  # another device
    assert run(["cat", str(secret)]) == "0"


# ---------------------------------------------------------------------- uid scopes


def test_exec_by_name_scoped_to_a_uid(kernel, workdir):
    name = "sntuid%d" % (os.getpid() % 100000)
    named = copy_true(workdir / name)
    kernel.add(DenyEntry("exec_name", name, scope=Scope(uid=NOBODY)))
    assert run([str(named)], uid=NOBODY) == "-9"
    assert run([str(named)]) == "0"  # root is out of scope


def test_fanotify_exec_deny_scoped_to_a_uid(kernel, workdir):
    tool = copy_true(workdir / "tool")
    entry = DenyEntry("exec_file", str(tool), scope=Scope(uid=NOBODY))
    kernel.add(entry)
    assert kernel.mechanism_for(entry) == "fanotify"
    assert run([str(tool)], uid=NOBODY) == "EPERM"
    assert run([str(tool)]) == "0"


def test_fanotify_open_deny_scoped_to_a_uid(kernel, workdir):
    secret = workdir / "secret"
    secret.write_text("s")
    secret.chmod(0o644)
    kernel.add(DenyEntry("open_file", str(secret), scope=Scope(uid=NOBODY)))
    assert run(["cat", str(secret)], uid=NOBODY) == "EPERM"
    assert run(["cat", str(secret)]) == "0"


# ---------------------------------------------------------------------- cgroup scopes


def test_kill_at_exec_scoped_to_a_cgroup_and_below_it(kernel, workdir, cgroup):
    name = "sntcg%d" % (os.getpid() % 100000)
    named = copy_true(workdir / name)
    below = os.path.join(cgroup, "below")
    os.mkdir(below)
    try:
        kernel.add(DenyEntry("exec_name", name, scope=Scope(cgroup=relative(cgroup))))
        assert run([str(named)], cgroup=cgroup) == "-9"
        assert run([str(named)], cgroup=below) == "0"  # `=` is that cgroup only
        assert run([str(named)]) == "0"
        kernel.remove(DenyEntry("exec_name", name, scope=Scope(cgroup=relative(cgroup))))
        kernel.add(DenyEntry("exec_name", name, scope=Scope(cgroup=relative(cgroup), below=True)))
        assert run([str(named)], cgroup=below) == "-9"
        assert run([str(named)], cgroup=cgroup) == "0"  # startswith P/ is below P only
    finally:
        os.rmdir(below)


def test_fanotify_exec_deny_scoped_to_a_cgroup(kernel, workdir, cgroup):
    tool = copy_true(workdir / "tool")
    kernel.add(DenyEntry("exec_file", str(tool), scope=Scope(cgroup=relative(cgroup))))
    assert run([str(tool)], cgroup=cgroup) == "EPERM"
    assert run([str(tool)]) == "0"


def test_scope_on_a_cgroup_created_later_applies_once_it_exists(kernel, workdir, cgroup):
    name = "sntlate%d" % (os.getpid() % 10000)
    named = copy_true(workdir / name)
    later = os.path.join(cgroup, "later")
    kernel.add(DenyEntry("exec_name", name, scope=Scope(cgroup=relative(later))))
    assert kernel.map_contents()["snt_deny_exec_comm"] == []  # nobody can be in it yet
    os.mkdir(later)
    try:
        # inotify on the parent cgroup sees the mkdir (the periodic backstop is 30 s away)
        assert eventually(lambda: kernel.map_contents()["snt_deny_exec_comm"] != [])
        assert run([str(named)], cgroup=later) == "-9"
    finally:
        os.rmdir(later)


# ---------------------------------------------------------------------- network


def _connect(port: int, uid: int | None = None, cgroup: str | None = None) -> int:
    result = subprocess.run([sys.executable, "-c", CLIENT, str(port)], preexec_fn=entering(uid, cgroup),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


def test_connect_deny_scoped_to_a_uid(kernel, cgroup, listener):
    kernel.add(DenyEntry("net", "127.0.0.1/32", listener, Scope(uid=NOBODY)))
    assert _connect(listener, uid=NOBODY, cgroup=cgroup) == errno.EPERM
    assert _connect(listener, cgroup=cgroup) == 0


def test_connect_deny_scoped_to_a_cgroup_below_the_attach_point(kernel, cgroup, listener):
    below = os.path.join(cgroup, "below")
    os.mkdir(below)
    try:
        kernel.add(DenyEntry("net", "127.0.0.1/32", listener, Scope(cgroup=relative(below))))
        assert _connect(listener, cgroup=below) == errno.EPERM
        assert _connect(listener, cgroup=cgroup) == 0
    finally:
        os.rmdir(below)


def test_a_scoped_longer_prefix_does_not_hide_a_shorter_unscoped_one(kernel, cgroup, listener):
    kernel.add(DenyEntry("net", "127.0.0.0/8", listener))
    kernel.add(DenyEntry("net", "127.0.0.1/32", listener, Scope(uid=NOBODY)))
    assert _connect(listener, cgroup=cgroup) == errno.EPERM  # the /8 applies to root too
    kernel.remove(DenyEntry("net", "127.0.0.0/8", listener))
    assert _connect(listener, cgroup=cgroup) == 0
    assert _connect(listener, uid=NOBODY, cgroup=cgroup) == errno.EPERM


# ---------------------------------------------------------------------- shared keys


def test_one_key_shared_by_two_scopes_keeps_the_other_when_one_goes(kernel, workdir, cgroup):
    name = "sntshare%d" % (os.getpid() % 1000)
    named = copy_true(workdir / name)
    by_uid = DenyEntry("exec_name", name, scope=Scope(uid=NOBODY))
    by_cgroup = DenyEntry("exec_name", name, scope=Scope(cgroup=relative(cgroup)))
    kernel.add(by_uid)
    kernel.add(by_cgroup)
    assert [row["scopes"].count(",") for row in kernel.map_contents()["snt_deny_exec_comm"]] == [1]  # one key, two scopes
    assert run([str(named)], uid=NOBODY) == "-9"
    assert run([str(named)], cgroup=cgroup) == "-9"
    assert run([str(named)]) == "0"
    kernel.remove(by_uid)
    assert run([str(named)], uid=NOBODY) == "0"
    assert run([str(named)], cgroup=cgroup) == "-9"
    kernel.add(DenyEntry("exec_name", name))  # an unscoped entry on the same key: everyone
    assert run([str(named)]) == "-9"
    kernel.remove(DenyEntry("exec_name", name))
    kernel.remove(by_cgroup)
    assert kernel.map_contents()["snt_deny_exec_comm"] == []
    assert run([str(named)], cgroup=cgroup) == "0"


def test_more_scopes_on_one_key_than_a_value_holds_fail_that_entry_only(kernel, workdir):
    from sentinel.actions.enforce_kernel import MAX_SCOPES
    from sentinel.errors import KernelError

    name = "sntmany%d" % (os.getpid() % 1000)
    named = copy_true(workdir / name)
    for uid in range(NOBODY - MAX_SCOPES, NOBODY):
        kernel.add(DenyEntry("exec_name", name, scope=Scope(uid=uid)))
    with pytest.raises(KernelError, match="scopes on one"):
        kernel.add(DenyEntry("exec_name", name, scope=Scope(uid=NOBODY)))
    assert DenyEntry("exec_name", name, scope=Scope(uid=NOBODY)) not in kernel.entries()
    assert run([str(named)], uid=NOBODY - 1) == "-9"  # the entries that fit still apply
    assert run([str(named)], uid=NOBODY) == "0"


@pytest.fixture
def kernel_without_fanotify(cgroup):
    """The kill fallbacks alone, as on a host without fanotify permission events."""
    enforcer = KernelEnforcer({"deny_exec": ("kill-at-exec",), "deny_open": ("kill-at-open",),
                               "deny_connect": ("cgroup-sock-addr",), "kill": ("bpf-send-signal",)}, cgroup_path=cgroup)
    assert enforcer.fanotify is None
    yield enforcer
    enforcer.close()


def test_kill_at_open_and_at_exec_of_a_file_respect_the_scope(kernel_without_fanotify, workdir, cgroup):
    kernel = kernel_without_fanotify
    secret, tool = workdir / "secret", copy_true(workdir / "tool")
    secret.write_text("s")
    secret.chmod(0o644)
    opened = DenyEntry("open_file", str(secret), scope=Scope(uid=NOBODY))
    executed = DenyEntry("exec_file", str(tool), scope=Scope(cgroup=relative(cgroup)))
    kernel.add(opened)
    kernel.add(executed)
    assert (kernel.mechanism_for(opened), kernel.mechanism_for(executed)) == ("kill-at-open", "kill-at-exec")
    assert run(["cat", str(secret)], uid=NOBODY) == "-9"
    assert run(["cat", str(secret)]) == "0"
    assert run([str(tool)], cgroup=cgroup) == "-9"
    assert run([str(tool)]) == "0"


def test_without_scope_helpers_in_sock_addr_programs_scoped_network_denies_are_refused(cgroup, listener):
    from sentinel.errors import KernelError

    kernel = KernelEnforcer(MECHANISMS, cgroup_path=cgroup, network_scopes=False)  # as on such a kernel
    try:
        assert not kernel.network_scopes
        with pytest.raises(KernelError, match="cannot read the caller's uid and cgroup"):
            kernel.add(DenyEntry("net", "127.0.0.1/32", listener, Scope(uid=NOBODY)))
        kernel.add(DenyEntry("net", "127.0.0.1/32", listener))
        assert _connect(listener, cgroup=cgroup) == errno.EPERM
    finally:
        kernel.close()
    assert _connect(listener, cgroup=cgroup) == 0


def test_this_kernel_checks_scopes_in_sock_addr_programs(kernel):
    assert kernel.network_scopes  # 6.1+: every program type has the uid/cgroup helpers
