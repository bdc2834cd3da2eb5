"""Privilege and tampering events on the running kernel, and the blind spots of syscalls:*
(32-bit syscalls, io_uring) raised as events of their own. Every target is a process, file
or namespace the test created."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from syscall_sensor import Collector, start_sensor

from sentinel.events import syscalls

pytestmark = pytest.mark.kernel

PROGRAMS = Path(__file__).resolve().parent / "programs"
TYPES = {"ptrace", "bpf", "memfd_create", "setns", "unshare", "setuid", "setresuid", "kill", "tgkill", "prctl",
         "compat_syscall", "io_uring_setup", "io_uring_submit", "open", "openat", "mount", "umount2", "capset",
         "pidfd_open", "pidfd_send_signal", "pidfd_getfd"}  # fmt: skip
LIBC = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
CLONE_NEWNET = 0x40000000
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SOCKET_FILTER = 1


@pytest.fixture(scope="module")
def sensor():
    # opens are filtered to a prefix nothing here opens: the compat open must not show up as one anyway
    sensor = start_sensor(TYPES, bootstrap=True, open_path_prefixes=("/nonexistent-prefix/",))
    yield sensor
    sensor.close()


@pytest.fixture
def collector(sensor):
    return Collector(sensor)


@pytest.fixture
def sleeper():
    child = subprocess.Popen(["sleep", "60"])
    yield child
    if child.poll() is None:
        child.kill()
        child.wait()


def _mine(event_type, predicate=lambda e: True):
    return lambda e: e.type == event_type and e.proc.pid == os.getpid() and predicate(e)


def _build(tmp_path: Path, source: str, *flags: str) -> str:
    binary = tmp_path / Path(source).stem
    subprocess.run(["gcc", "-O1", *flags, "-o", str(binary), str(PROGRAMS / source)], check=True)
    return str(binary)


def test_ptrace_attach_to_a_child(collector, sleeper):
    assert LIBC.ptrace(PTRACE_ATTACH, sleeper.pid, None, None) == 0
    try:
        os.waitpid(sleeper.pid, 0)
    finally:
        LIBC.ptrace(PTRACE_DETACH, sleeper.pid, None, None)
    event = collector.wait_for(_mine("ptrace", lambda e: e.args["request"] == PTRACE_ATTACH))
    assert event.args["pid"] == sleeper.pid
    assert event.res == 0


def test_bpf_prog_load_reports_cmd_type_and_name(collector):
    insns = (ctypes.c_uint64 * 2)(0x00000000000000B7, 0x0000000000000095)  # r0 = 0; exit
    license = ctypes.create_string_buffer(b"GPL")
    attr = (ctypes.c_uint8 * 128)()
    ctypes.memmove(attr, ctypes.byref(ctypes.c_uint32(BPF_PROG_TYPE_SOCKET_FILTER)), 4)
    ctypes.memmove(ctypes.addressof(attr) + 4, ctypes.byref(ctypes.c_uint32(2)), 4)
    ctypes.memmove(ctypes.addressof(attr) + 8, ctypes.byref(ctypes.c_uint64(ctypes.addressof(insns))), 8)
    ctypes.memmove(ctypes.addressof(attr) + 16, ctypes.byref(ctypes.c_uint64(ctypes.addressof(license))), 8)
    ctypes.memmove(ctypes.addressof(attr) + 48, b"snt_test_load", 13)
    fd = LIBC.syscall(321, BPF_PROG_LOAD, attr, 128)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    os.close(fd)
    event = collector.wait_for(_mine("bpf", lambda e: e.args["cmd"] == BPF_PROG_LOAD and e.res == fd))
    assert event.args["prog_type"] == BPF_PROG_TYPE_SOCKET_FILTER
    assert event.args["prog_name"] == "snt_test_load"
    assert event.args["size"] == 128


def test_memfd_create_reports_its_name(collector):
    name = "snt-" + uuid.uuid4().hex[:8]
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.close(fd)
    event = collector.wait_for(_mine("memfd_create", lambda e: e.args["name"] == name))
    assert event.res == fd and event.args["fd"] == fd
    assert event.args["flags"] == os.MFD_CLOEXEC
    assert event.fd.type == "memfd" and event.fd.name == "/memfd:" + name


def test_setns_into_a_child_network_namespace(collector):
    holder = subprocess.Popen(["unshare", "-n", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        own_ns = os.readlink("/proc/self/ns/net")
        while os.readlink("/proc/%d/ns/net" % holder.pid) == own_ns and time.monotonic() < deadline:
            time.sleep(0.05)  # unshare has not exec'd sleep in the new namespace yet
        code = textwrap.dedent(
            """
            import ctypes, os, sys
            fd = os.open("/proc/%d/ns/net", os.O_RDONLY)
            sys.exit(ctypes.CDLL(None).setns(fd, %d))
            """
            % (holder.pid, CLONE_NEWNET)
        )
        helper = subprocess.run([sys.executable, "-c", code])
        assert helper.returncode == 0
        target_ns = os.readlink("/proc/%d/ns/net" % holder.pid)
    finally:
        holder.kill()
        holder.wait()
    event = collector.wait_for(
        lambda e: e.type == "setns" and e.args.get("nstype") == CLONE_NEWNET and e.fd is not None and e.fd.name.endswith(target_ns)
    )
    assert event.res == 0
    assert event.fd.name == target_ns  # as readlink shows it: "net:[inode]"


def test_unshare_reports_its_flags(collector):
    subprocess.run(["unshare", "-n", "true"], check=True)
    event = collector.wait_for(lambda e: e.type == "unshare" and e.proc.comm == "unshare")
    assert event.args["flags"] & CLONE_NEWNET
    assert event.res == 0


def test_setuid_updates_the_process_table(collector):
    code = "import os, time; os.setuid(65534); time.sleep(0.2)"
    child = subprocess.Popen([sys.executable, "-c", code])
    child.wait()
    event = collector.wait_for(lambda e: e.type == "setuid" and e.proc.pid == child.pid)
    assert event.args["uid"] == 65534 and event.res == 0
    assert event.proc.uid == 65534 and event.proc.euid == 65534


def test_kill_to_another_process_but_not_to_itself(collector, sleeper):
    os.kill(os.getpid(), 0)  # a signal to itself is dropped in the kernel
    os.kill(sleeper.pid, signal.SIGTERM)
    sleeper.wait()
    event = collector.wait_for(_mine("kill", lambda e: e.args["pid"] == sleeper.pid))
    assert event.args["sig"] == signal.SIGTERM and event.res == 0
    assert not [e for e in collector.mine("kill") if e.args["pid"] == os.getpid()]


def test_prctl_reports_its_option(collector):
    code = "import ctypes; ctypes.CDLL(None).prctl(15, b'snt-prctl', 0, 0, 0)"  # PR_SET_NAME
    child = subprocess.Popen([sys.executable, "-c", code])
    assert child.wait() == 0
    event = collector.wait_for(lambda e: e.type == "prctl" and e.proc.pid == child.pid and e.args["option"] == 15)
    assert event.res == 0


def test_int80_open_is_a_compat_event_and_invisible_to_syscall_tracepoints(collector, tmp_path):
    target = tmp_path / "compat-target.txt"
    target.write_text("x")
    binary = _build(tmp_path, "compat_open.c", "-no-pie")
    child = subprocess.run([binary, str(target)])
    assert child.returncode == 0, "the three int 0x80 opens did not all succeed"
    opens = []
    deadline = time.monotonic() + 10
    while len(opens) < 3 and time.monotonic() < deadline:
        collector.drain(0.2)
        opens = [e for e in collector.events if e.type == "compat_syscall" and e.args["nr"] == 5 and e.proc.comm == "compat_open"]
    assert len(opens) == 3
    assert opens[0].args["name"] == "open"
    assert opens[0].args["arg1"] == 0  # O_RDONLY
    # the same opens never reached syscalls:sys_enter_open / openat
    assert not [e for e in collector.events if e.type in ("open", "openat") and e.proc.comm == "compat_open"
                and e.args.get("name") == str(target)]  # fmt: skip


def test_io_uring_setup_and_submissions_are_events(collector, tmp_path):
    binary = _build(tmp_path, "uring_nop.c")
    target = tmp_path / "uring-target.txt"
    target.write_text("x")
    child = subprocess.run([binary, str(target)])
    assert child.returncode == 0
    setup = collector.wait_for(lambda e: e.type == "io_uring_setup" and e.proc.comm == "uring_nop")
    assert setup.res >= 0 and setup.args["entries"] == 4
    assert setup.fd.type == "io_uring"
    nop = collector.wait_for(lambda e: e.type == "io_uring_submit" and e.args["user_data"] == 0x5E17)
    openat = collector.wait_for(lambda e: e.type == "io_uring_submit" and e.args["user_data"] == 0x5E18)
    assert nop.args["op"] == "NOP" and openat.args["op"] == "OPENAT"
    assert openat.args["opcode"] == 18



def test_a_thread_that_exits_leaves_no_syscall_entry(sensor, sleeper):
    """An entry the exit side never consumed (a thread that died inside a syscall) is removed
    when the thread exits instead of waiting for LRU eviction."""
    entries = sensor._bpf[b"snt_sys_args"]
    key = entries.Key(sleeper.pid)
    value = entries.Leaf()
    value.nr = syscalls.BY_NR[42].nr  # as if it were inside connect()
    entries[key] = value
    assert any(k.value == sleeper.pid for k in entries.keys())
    sleeper.kill()
    sleeper.wait()
    assert not any(k.value == sleeper.pid for k in entries.keys())


def test_mount_and_umount_in_a_private_mount_namespace(collector, tmp_path):
    target = tmp_path / "mnt"
    target.mkdir()
    script = "mount -t tmpfs -o size=1m sentinel-test %s && umount %s" % (target, target)
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], check=True)
    mount = collector.wait_for(lambda e: e.type == "mount" and e.args.get("dir") == str(target))
    assert (mount.args["dev"], mount.args["type"], mount.res) == ("sentinel-test", "tmpfs", 0)
    umount = collector.wait_for(lambda e: e.type == "umount2" and e.args.get("name") == str(target))
    assert umount.res == 0


CAP_CHOWN, CAP_KILL, CAP_SETUID, CAP_BPF = 0, 5, 7, 39
LINUX_CAPABILITY_VERSION_3 = 0x20080522


def test_capset_reports_the_three_sets_and_updates_the_process(collector):
    effective = 1 << CAP_CHOWN | 1 << CAP_KILL
    permitted = effective | 1 << CAP_SETUID | 1 << CAP_BPF  # CAP_BPF: a bit of the second 32-bit word
    inheritable = 1 << CAP_CHOWN
    code = textwrap.dedent(
        """
        import ctypes, struct, sys
        header = ctypes.create_string_buffer(struct.pack("<Ii", %d, 0))
        eff, perm, inh = %d, %d, %d
        data = ctypes.create_string_buffer(struct.pack("<6I", eff & 0xffffffff, perm & 0xffffffff, inh & 0xffffffff,
                                                       eff >> 32, perm >> 32, inh >> 32))
        sys.exit(ctypes.CDLL(None, use_errno=True).syscall(126, header, data))
        """
        % (LINUX_CAPABILITY_VERSION_3, effective, permitted, inheritable)
    )
    child = subprocess.run([sys.executable, "-c", code])
    assert child.returncode == 0
    event = collector.wait_for(lambda e: e.type == "capset" and e.proc.comm.startswith("python") and e.res == 0
                               and e.args["cap_permitted"] == permitted)
    assert event.args["cap_effective"] == effective
    assert event.args["cap_inheritable"] == inheritable
    assert (event.proc.cap_effective, event.proc.cap_permitted, event.proc.cap_inheritable) == (effective, permitted, inheritable)


def test_pidfd_open_and_send_signal_name_the_target(collector, sleeper):
    pidfd = os.pidfd_open(sleeper.pid)
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        sleeper.wait()
    finally:
        os.close(pidfd)
    opened = collector.wait_for(_mine("pidfd_open", lambda e: e.res == pidfd))
    assert opened.args["pid"] == sleeper.pid and opened.args["fd"] == pidfd
    sent = collector.wait_for(_mine("pidfd_send_signal", lambda e: e.args["pidfd"] == pidfd))
    assert sent.args["pid"] == sleeper.pid  # resolved from the pidfd in the kernel
    assert sent.args["sig"] == signal.SIGTERM and sent.res == 0


def test_pidfd_of_a_process_in_a_child_pid_namespace_is_numbered_as_the_caller_sees_it(collector):
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        children = []
        while not children and time.monotonic() < deadline:
            children = Path("/proc/%d/task/%d/children" % (holder.pid, holder.pid)).read_text().split()
            time.sleep(0.05)
        target = int(children[0])  # pid 1 of the new namespace, as this namespace numbers it
        pidfd = os.pidfd_open(target)
        signal.pidfd_send_signal(pidfd, 0)
        os.close(pidfd)
        sent = collector.wait_for(_mine("pidfd_send_signal", lambda e: e.args["sig"] == 0 and e.args["pidfd"] == pidfd))
        assert sent.args["pid"] == target
    finally:
        holder.kill()
        holder.wait()
