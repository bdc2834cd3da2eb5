"""The BPF LSM programs (bpf/lsm.bpf.c) denying exec, open and connect/sendto with EPERM.

They only run where the kernel loads BPF LSM programs: `make lsm-test` boots a guest
kernel with the BPF LSM (tests/lsm/lsm_vm.sh) and runs this file there. On a kernel that
refuses them (this project's development host returns EPERM) the whole module is
skipped, and the skip reason says why.
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
from enforce_helpers import dual_stack_socket, entering

from sentinel.actions.enforce_kernel import KernelEnforcer, kernel_dev
from sentinel.actions.enforce_plan import DenyEntry, Scope
from sentinel.errors import KernelError
from sentinel.kernel.probe import cgroup2_mount, probe_bpf_lsm, scratch_cgroup

pytestmark = [pytest.mark.kernel, pytest.mark.lsm]

LSM = {"deny_exec": ("lsm",), "deny_open": ("lsm",), "deny_connect": ("lsm",), "kill": ("bpf-send-signal",)}


@pytest.fixture(scope="module")
def loaded():
    """One compile for the module (a guest under emulation compiles slowly)."""
    try:
        enforcer = KernelEnforcer(LSM)
    except KernelError:
        result = probe_bpf_lsm()
        if result.ok:
            raise  # the kernel loads LSM programs: sentinel's must load too
        pytest.skip("BPF LSM programs cannot load on this kernel: %s %s" % (result.error, result.detail))
    assert enforcer.lsm
    yield enforcer
    enforcer.close()


@pytest.fixture
def kernel(loaded):
    yield loaded
    for entry in loaded.entries():
        loaded.remove(entry)


def _exec_status(path) -> str:
    try:
        return str(subprocess.run([str(path)], preexec_fn=lambda: None, timeout=30).returncode)
    except PermissionError:
        return "EPERM"


def test_exec_of_a_denied_file_gets_eperm(kernel, tmp_path):
    (tmp_path / "a").mkdir()
    denied, other = tmp_path / "a" / "tool", tmp_path / "tool"
    for path in (denied, other):
        shutil.copy("/bin/true", path)
    kernel.add(DenyEntry("exec_file", str(denied)))
    assert kernel.mechanism_for(DenyEntry("exec_file", str(denied))) == "lsm"
    assert _exec_status(denied) == "EPERM"
    assert _exec_status(other) == "0"
    kernel.remove(DenyEntry("exec_file", str(denied)))
    assert _exec_status(denied) == "0"


def test_exec_by_name_and_under_a_directory_gets_eperm(kernel, tmp_path):
    (tmp_path / "dir").mkdir()
    named, inside, other = tmp_path / "sntlsmname", tmp_path / "dir" / "tool", tmp_path / "other"
    for path in (named, inside, other):
        shutil.copy("/bin/true", path)
    kernel.add(DenyEntry("exec_name", "sntlsmname"))
    kernel.add(DenyEntry("exec_dir", str(tmp_path / "dir")))
    assert _exec_status(named) == "EPERM"
    assert _exec_status(inside) == "EPERM"
    assert _exec_status(other) == "0"


def test_open_of_a_denied_file_or_directory_gets_eperm(kernel, tmp_path):
    (tmp_path / "dir").mkdir()
    secret, inside, other = tmp_path / "secret", tmp_path / "dir" / "f", tmp_path / "other"
    for path in (secret, inside, other):
        path.write_text("x")
    kernel.add(DenyEntry("open_file", str(secret)))
    kernel.add(DenyEntry("open_dir", str(tmp_path / "dir")))
    for path in (secret, inside):
        result = subprocess.run(["cat", str(path)], capture_output=True, text=True, timeout=30)
        assert "Operation not permitted" in result.stderr
    assert subprocess.run(["cat", str(other)], capture_output=True, text=True, timeout=30).stdout == "x"


CLIENT = textwrap.dedent(
    """
    import socket, sys
    host, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                      socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    try:
        s.connect((host, port)) if kind == "tcp" else s.sendto(b"x", (host, port))
        print(0)
    except OSError as exc:
        print(exc.errno)
    """
)


@pytest.mark.parametrize("host", ["127.0.0.1", "::ffff:127.0.0.1"])
@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_connect_and_sendto_a_denied_port_get_eperm(kernel, host, kind):
    servers = []
    for _ in range(2):
        servers.append(dual_stack_socket(kind))
    denied, allowed = (s.getsockname()[1] for s in servers)
    try:
        kernel.add(DenyEntry("net", "127.0.0.1/32", denied))

        def attempt(port: int) -> int:
            out = subprocess.run([sys.executable, "-c", CLIENT, host, str(port), kind], capture_output=True, text=True, timeout=30)
            return int(out.stdout)

        assert attempt(denied) == errno.EPERM
        assert attempt(allowed) == 0
    finally:
        for s in servers:
            s.close()


NOBODY = 65533


def _status_as(argv, **who) -> str:
    try:
        result = subprocess.run([str(a) for a in argv], preexec_fn=entering(**who), capture_output=True, text=True, timeout=30)
    except PermissionError:
        return "EPERM"
    return "EPERM" if "Operation not permitted" in result.stderr else str(result.returncode)


@pytest.fixture
def shared_dir():
    """A directory uid 65533 can use (pytest's tmp_path is root-only), on /run: a tmpfs,
    where stat()'s device is the inode's own (the guest's /tmp is an overlay)."""
    directory = tempfile.mkdtemp(prefix="sentinel-lsm-", dir="/run")
    os.chmod(directory, 0o755)
    yield Path(directory)
    shutil.rmtree(directory, ignore_errors=True)


def test_exec_and_open_by_inode_number_get_eperm(kernel, shared_dir):
    tool, other, secret = shared_dir / "tool", shared_dir / "other", shared_dir / "secret"
    for path in (tool, other):
        shutil.copy("/bin/true", path)
    secret.write_text("x")
    st = secret.stat()
    kernel.add(DenyEntry("exec_ino", str(tool.stat().st_ino)))
    kernel.add(DenyEntry("open_ino", "%d:%d" % (st.st_ino, kernel_dev(st.st_dev))))
    assert _status_as([tool]) == "EPERM"
    assert _status_as([other]) == "0"
    assert _status_as(["cat", secret]) == "EPERM"


def test_denies_scoped_to_a_uid_leave_other_users_alone(kernel, shared_dir):
    tool = shared_dir / "sntlsmuid"
    shutil.copy("/bin/true", tool)
    secret = shared_dir / "secret"
    secret.write_text("x")
    secret.chmod(0o644)
    kernel.add(DenyEntry("exec_name", "sntlsmuid", scope=Scope(uid=NOBODY)))
    kernel.add(DenyEntry("open_file", str(secret), scope=Scope(uid=NOBODY)))
    assert _status_as([tool], uid=NOBODY) == "EPERM"
    assert _status_as([tool]) == "0"
    assert _status_as(["cat", secret], uid=NOBODY) == "EPERM"
    assert _status_as(["cat", secret]) == "0"


def test_connect_deny_scoped_to_a_cgroup(kernel):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    try:
        with scratch_cgroup("lsm-scope") as cgroup:
            inside = cgroup[len(cgroup2_mount().rstrip("/")):]
            kernel.add(DenyEntry("net", "127.0.0.1/32", port, Scope(cgroup=inside)))

            def attempt(**who) -> int:
                out = subprocess.run([sys.executable, "-c", CLIENT, "127.0.0.1", str(port), "tcp"], preexec_fn=entering(**who),
                                     capture_output=True, text=True, timeout=30)
                return int(out.stdout)

            assert attempt(cgroup=cgroup) == errno.EPERM
            assert attempt() == 0
    finally:
        server.close()
