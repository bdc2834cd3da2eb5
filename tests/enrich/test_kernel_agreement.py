"""The kernel's exec records and this module's /proc reader describe a process the same way.

Bootstrap and reconcile build processes from /proc; the sensor builds them from kernel
records. Rules must not see a process change because of where it was learnt, so for one
real process both sources are compared field by field, and the table's enrichment of the
kernel record (parent, names, cgroup, container) is checked against the running system.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import termios
import textwrap
import time
import uuid

import pytest

from sentinel.config import Config
from sentinel.enrich.procfs import ProcFS, same_start
from sentinel.enrich.proctable import ProcessTable
from sentinel.events.interest import Interest
from sentinel.sensor import Sensor

pytestmark = pytest.mark.kernel

COMPARED = (
    "pid", "ppid", "pgid", "sid", "vpid", "vpgid", "comm", "exe", "exepath", "args", "args_truncated", "cwd", "tty",
    "uid", "euid", "gid", "egid", "loginuid", "cap_permitted", "cap_effective", "cap_inheritable",
    "exe_ino", "exe_dev", "exe_mtime_ns", "exe_ctime_ns", "exe_from_memfd", "exe_writable",
    "is_vpgid_leader", "env", "cgroup", "container_id", "user_name", "group_name", "login_name",
)  # fmt: skip


@pytest.fixture(scope="module")
def table():
    return ProcessTable(Config().sensor)


@pytest.fixture(scope="module")
def sensor(table):
    sensor = Sensor(Config(), Interest(), table=table)
    sensor.start()
    yield sensor
    sensor.close()


def wait_for_execs(sensor: Sensor, *marks: str, exe: str | None = None, timeout: float = 10.0) -> dict:
    """The exec event of each mark (found among the arguments; of that argv[0] if given)."""
    found = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(found) < len(marks):
        for event in sensor.poll(0.1):
            if event.type in ("execve", "execveat") and exe in (None, event.proc.exe):
                for mark in marks:
                    if mark in event.proc.args:
                        found[mark] = event
    missing = [mark for mark in marks if mark not in found]
    assert not missing, "no exec with %s within %.0fs" % (missing, timeout)
    return found


def wait_for_exec(sensor: Sensor, mark: str, exe: str | None = None, timeout: float = 10.0):
    return wait_for_execs(sensor, mark, exe=exe, timeout=timeout)[mark]


def spawn_on_a_terminal(argv: list[str], cwd: str) -> subprocess.Popen:
    """A process in its own session with a pty as controlling terminal (so tty != 0)."""
    leader, follower = os.openpty()

    def take_terminal() -> None:
        fcntl.ioctl(follower, termios.TIOCSCTTY, 0)

    child = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=follower,
        start_new_session=True,
        preexec_fn=take_terminal,
        env={"PATH": os.environ["PATH"], "LD_PRELOAD": ""},
    )
    os.close(follower)
    child.leader_fd = leader  # type: ignore[attr-defined]
    return child


def test_kernel_record_and_proc_read_agree(sensor, table, tmp_path):
    mark = "0.%d" % uuid.uuid4().int
    child = spawn_on_a_terminal(["sleep", "300", mark], str(tmp_path))
    try:
        event = wait_for_exec(sensor, mark)
        from_kernel = event.proc
        from_proc = ProcFS(env_keep=Config().sensor.env_keep).read(child.pid)
        assert from_proc is not None and not from_kernel.from_proc
        # the /proc copy gets the same enrichment as a bootstrapped process
        from_proc.user_name, from_proc.group_name, from_proc.login_name = table.users.names(
            child.pid, from_proc.uid, from_proc.gid, from_proc.loginuid
        )
        differences = {
            name: (getattr(from_kernel, name), getattr(from_proc, name))
            for name in COMPARED
            if getattr(from_kernel, name) != getattr(from_proc, name)
        }
        assert differences == {}
        assert from_kernel.tty != 0  # the terminal was really seen
        assert same_start(from_kernel.start_ns, from_proc.start_ns)
    finally:
        child.kill()
        child.wait()
        os.close(child.leader_fd)


def test_kernel_exec_is_enriched_and_linked_to_pid_1(sensor, table):
    mark = "0.%d" % uuid.uuid4().int
    child = subprocess.Popen(["sleep", "300", mark])
    try:
        event = wait_for_exec(sensor, mark)
        proc = event.proc
        assert table.lookup(child.pid, proc.start_ns) is proc
        assert proc.parent is table.lookup(os.getpid())
        assert [p.pid for p in proc.ancestors()][-1] == 1
        assert proc.user_name == "root" and proc.group_name == "root"
        assert proc.container_id == "host"
        with open("/proc/%d/cgroup" % child.pid) as handle:
            assert any(line.endswith(":" + proc.cgroup) for line in handle.read().splitlines())
    finally:
        child.kill()
        child.wait()
    # the kernel's exit record retires it; it stays resolvable for late events
    deadline = time.monotonic() + 10
    while not proc.exited and time.monotonic() < deadline:
        sensor.poll(0.1)
    assert proc.exited and proc.exit_signal == 9
    assert table.lookup(child.pid, proc.start_ns) is proc


def test_upper_layer_exe_agrees_with_the_kernel(sensor, tmp_path):
    """An overlay mounted in a private mount namespace (nothing leaks to the host): a binary
    from the image (lower layer) and one written into the container (upper layer)."""
    layers = {name: tmp_path / name for name in ("lower", "upper", "work", "merged")}
    for directory in layers.values():
        directory.mkdir()
    shutil.copy(os.path.realpath(shutil.which("sleep")), layers["lower"] / "image-sleep")
    in_image, dropped = "0.%d" % uuid.uuid4().int, "0.%d" % uuid.uuid4().int
    merged = layers["merged"]
    script = (
        "mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {merged} && "
        "cp {merged}/image-sleep {merged}/dropped-sleep && "
        "{{ {merged}/image-sleep 300 {in_image} & exec {merged}/dropped-sleep 300 {dropped}; }}"
    ).format(in_image=in_image, dropped=dropped, **layers)
    child = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], start_new_session=True
    )
    try:
        events = wait_for_execs(sensor, in_image, dropped)
        procfs = ProcFS()
        for mark, expected in ((in_image, False), (dropped, True)):
            from_kernel = events[mark].proc
            from_proc = procfs.read(from_kernel.pid)
            assert from_proc is not None
            name = "image-sleep" if mark == in_image else "dropped-sleep"
            assert from_proc.exepath == from_kernel.exepath == str(merged / name)
            assert (from_kernel.exe_upper_layer, from_proc.exe_upper_layer) == (expected, expected)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def test_long_argv_is_cut_at_the_same_byte(sensor):
    mark = "0.%d" % uuid.uuid4().int
    filler = ["%04d-" % n + "x" * 40 for n in range(200)]  # ~9 kB of arguments
    # sh waits on its stdin and ignores the positional arguments (sleep would reject them)
    child = subprocess.Popen(["sh", "-c", "read line", "sh", mark, *filler], stdin=subprocess.PIPE)
    try:
        from_kernel = wait_for_exec(sensor, mark).proc
        from_proc = ProcFS().read(child.pid)
        assert from_kernel.args_truncated and from_proc.args_truncated
        assert from_kernel.args == from_proc.args
        assert from_proc.args[:4] == ("-c", "read line", "sh", mark)
        assert from_proc.args[-1] != filler[len(from_proc.args) - 5]  # cut inside an argument
    finally:
        child.kill()
        child.communicate()


def test_memfd_exe_agrees_with_the_kernel(sensor):
    mark = "0.%d" % uuid.uuid4().int
    program = textwrap.dedent(
        """
        import ctypes, os, shutil, sys
        fd = os.memfd_create("payload")
        with open(os.path.realpath(shutil.which("sleep")), "rb") as f:
            os.write(fd, f.read())
        argv = (ctypes.c_char_p * 4)(b"sleep", b"300", sys.argv[1].encode(), None)
        envp = (ctypes.c_char_p * 1)(None)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(322, fd, b"", argv, envp, 0x1000)  # SYS_execveat, AT_EMPTY_PATH
        sys.exit("execveat failed: %d" % ctypes.get_errno())
        """
    )
    child = subprocess.Popen([sys.executable, "-c", program, mark])
    try:
        from_kernel = wait_for_exec(sensor, mark, exe="sleep").proc
        from_proc = ProcFS().read(child.pid)
        assert from_kernel.exe_from_memfd and from_proc.exe_from_memfd
        assert from_kernel.exepath == from_proc.exepath == "/memfd:payload"
        assert (from_kernel.exe_ino, from_kernel.exe_dev) == (from_proc.exe_ino, from_proc.exe_dev)
    finally:
        child.kill()
        child.wait()


def test_kept_environment_agrees_past_a_huge_variable(sensor):
    mark = "0.%d" % uuid.uuid4().int
    env = {"PATH": os.environ["PATH"], "HUGE": "x" * 5000, "LD_PRELOAD": ""}
    child = subprocess.Popen(["sleep", "300", mark], env=env)
    try:
        from_kernel = wait_for_exec(sensor, mark).proc
        from_proc = ProcFS(env_keep=Config().sensor.env_keep).read(child.pid)
        assert from_kernel.env == from_proc.env == ("PATH=" + os.environ["PATH"],)
    finally:
        child.kill()
        child.wait()
