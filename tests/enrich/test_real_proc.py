"""The table on this machine's real /proc: bootstrap, ancestry, lookups, reconcile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from sentinel.enrich.procfs import TICK_NS, ProcFS, sees_host_pids
from sentinel.enrich.proctable import ProcessTable, is_placeholder


@pytest.fixture
def sleeper():
    """A `sleep` whose argv no other process has."""
    marker = "0.%d" % uuid.uuid4().int
    child = subprocess.Popen(["sleep", "300", marker], env={"PATH": os.environ["PATH"], "LD_PRELOAD": ""})
    spawned_at = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    deadline = time.monotonic() + 5
    # wait until the exec has happened (before it, /proc shows a copy of python)
    while time.monotonic() < deadline:
        try:
            with open("/proc/%d/cmdline" % child.pid, "rb") as handle:
                if marker.encode() in handle.read():
                    break
        except OSError:
            pass
        time.sleep(0.005)
    yield child, marker, spawned_at
    child.kill()
    child.wait()


def test_bootstrap_finds_a_process_with_exact_fields(sleeper):
    child, marker, spawned_at = sleeper
    table = ProcessTable()
    events = table.bootstrap()
    assert all(event.type == "execve" and event.proc.from_proc for event in events)
    assert all(event.time_ns < time.time_ns() for event in events)
    (found,) = [e.proc for e in events if marker in e.proc.args]
    assert found.pid == child.pid
    assert found.ppid == os.getpid()
    assert found.args == ("300", marker)
    assert found.exe == "sleep"
    assert found.exepath == os.path.realpath(shutil.which("sleep"))
    assert found.comm == "sleep"
    assert (found.uid, found.euid, found.gid, found.egid) == (os.getuid(), os.geteuid(), os.getgid(), os.getegid())
    assert found.cwd == os.getcwd()
    assert found.env == ("PATH=" + os.environ["PATH"], "LD_PRELOAD=")  # only kept names
    st = os.stat(found.exepath)
    assert found.exe_ino == st.st_ino
    assert found.exe_dev == (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
    assert 0 <= spawned_at - found.start_ns < 1_000_000_000  # /proc truncates to the tick
    (event,) = [e for e in events if e.proc is found]
    assert abs(event.time_ns - time.time_ns()) < 10 * 10**9  # started moments ago
    assert found.parent is table.lookup(os.getpid())
    assert found.parent.exepath == os.path.realpath("/proc/self/exe")


def test_ancestry_reaches_pid_1(sleeper):
    child, _marker, _spawned_at = sleeper
    table = ProcessTable()
    table.bootstrap()
    chain = [child.pid] + [proc.pid for proc in table.lookup(child.pid).ancestors()]
    assert chain[-1] == 1
    expected = [child.pid]
    while expected[-1] != 1:
        with open("/proc/%d/stat" % expected[-1]) as handle:
            expected.append(int(handle.read().rsplit(")", 1)[1].split()[1]))
    assert chain == expected
    assert table.lookup(1).user_name == "root"


def test_kernel_threads_are_included():
    table = ProcessTable()
    table.bootstrap()
    kthreadd = table.lookup(2)
    assert kthreadd.comm == "kthreadd" and kthreadd.exepath == "" and kthreadd.parent is None


def test_processes_started_after_bootstrap_are_read_on_lookup_and_reconciled(sleeper):
    table = ProcessTable()
    table.bootstrap()
    child, marker, _spawned_at = sleeper
    late = subprocess.Popen(["sleep", "300", marker + "1"])
    try:
        time.sleep(0.05)
        proc = table.lookup(late.pid)
        assert proc.pid == late.pid and proc.parent is table.lookup(os.getpid())
        assert table.stats()["misses"] >= 1
    finally:
        late.kill()
        late.wait()
    start = proc.start_ns
    table.reconcile()
    assert proc.exited
    assert table.lookup(late.pid, start) is proc  # kept for late events
    assert is_placeholder(table.lookup(late.pid, start + 100 * TICK_NS))  # not the process that exited


def test_start_ns_from_proc_agrees_with_the_boot_clock():
    start = ProcFS().start_ns(os.getpid())
    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    with open("/proc/self/stat") as handle:
        ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
    assert start == ticks * TICK_NS
    assert 0 < start < now


def test_a_proc_directory_fd_never_shows_another_process():
    """What ProcFS.read relies on: once /proc/<pid> is open, reads through it fail after the
    process is gone instead of showing whoever gets the pid next."""
    child = subprocess.Popen(["sleep", "300"])
    dir_fd = os.open("/proc/%d" % child.pid, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(os.open("stat", os.O_RDONLY, dir_fd=dir_fd))
        child.kill()
        child.wait()
        with pytest.raises(OSError):
            os.close(os.open("stat", os.O_RDONLY, dir_fd=dir_fd))
    finally:
        os.close(dir_fd)


def test_a_thread_id_resolves_to_its_process():
    started = threading.Event()
    stop = threading.Event()
    native = []

    def worker() -> None:
        native.append(threading.get_native_id())
        started.set()
        stop.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        started.wait(5)
        proc = ProcFS().read(native[0])
        assert native[0] != os.getpid()
        assert (proc.pid, proc.tid) == (os.getpid(), native[0])
        assert proc.start_ns == ProcFS().start_ns(os.getpid())
    finally:
        stop.set()
        thread.join()


def test_host_pid_namespace_is_recognised(tmp_path):
    assert sees_host_pids()
    assert not sees_host_pids(str(tmp_path))  # not a proc file system at all
    # a fresh pid namespace with its own /proc: the numbers there are not the kernel's
    probe = "from sentinel.enrich.procfs import sees_host_pids; print(sees_host_pids())"
    inside = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    )
    assert inside.stdout.strip() == "False"
    table = "from sentinel.enrich.proctable import ProcessTable; ProcessTable()"
    warned = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", table],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "proctable.foreign_pid_namespace" in warned.stdout + warned.stderr
