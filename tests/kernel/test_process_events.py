"""The process sensor on the running kernel: cause real execs/forks/exits and find them.

One Sensor is loaded for the module (compiling costs seconds). Every test uses a unique
token in argv or paths and waits for its event with a timeout.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from sentinel.config import Config, SensorConfig
from sentinel.events import abi
from sentinel.events.interest import Interest
from sentinel.kernel import hygiene, probe
from sentinel.sensor import Sensor, programs_for
from syscall_sensor import WAIT_SECONDS, Collector

pytestmark = pytest.mark.kernel

REPO_ROOT = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="module")
def started_before():
    """A process that exists before the sensor starts: only the /proc bootstrap knows it."""
    token = "before-" + uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", token])
    yield proc, token
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def sensor(started_before):
    config = Config()
    sensor = Sensor(config, Interest())
    sensor.start()
    yield sensor
    sensor.close()


@pytest.fixture
def collector(sensor):
    return Collector(sensor)


def token() -> str:
    return uuid.uuid4().hex


def _status_hex(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1], 16) for line in status if line.startswith(field + ":"))


def _cgroup2_id() -> int:
    """cgroup v2 id of this process: the inode of its unified-hierarchy directory."""
    with open("/proc/self/cgroup") as f:
        path = next(line.split("::", 1)[1].strip() for line in f if line.startswith("0::"))
    return os.stat(probe.cgroup2_mount() + path).st_ino


def exec_of(args_token: str, comm: str | None = None):
    """A successful exec with `args_token` among its arguments (and that comm, if given)."""
    return (
        lambda e: e.type in ("execve", "execveat")
        and e.res == 0
        and args_token in e.proc.args
        and (comm is None or e.proc.comm == comm)
    )


def test_every_lifecycle_program_is_attached_and_ready_is_measured(sensor):
    assert set(sensor.attached) == {p.name for p in programs_for(frozenset())}
    assert sensor.ready_seconds is not None and sensor.ready_seconds > 0


def test_exec_with_unique_argv(collector, tmp_path):
    mark = token()
    started_ns = time.time_ns()
    child = subprocess.run(["/bin/echo", mark, "second arg"], cwd=tmp_path, capture_output=True)
    finished_ns = time.time_ns()
    assert child.returncode == 0
    event = collector.wait_for(exec_of(mark))
    proc = event.proc
    st = os.stat("/bin/echo")
    assert event.type == "execve" and event.proc.exec_syscall == "execve"
    assert proc.ppid == os.getpid()
    assert proc.pid == event.tid
    assert proc.args == (mark, "second arg")
    assert proc.exe == "/bin/echo" and proc.filename == "/bin/echo"
    assert proc.exepath == os.path.realpath("/bin/echo")
    assert proc.comm == "echo"
    assert proc.cwd == str(tmp_path)
    assert proc.interpreter == ""
    assert (proc.exe_ino, proc.exe_dev) == (st.st_ino, (os.major(st.st_dev) << 20) | os.minor(st.st_dev))
    assert proc.exe_mtime_ns == st.st_mtime_ns and proc.exe_ctime_ns == st.st_ctime_ns
    assert (proc.uid, proc.euid, proc.gid, proc.egid) == (os.getuid(), os.geteuid(), os.getgid(), os.getegid())
    assert proc.pgid == os.getpgid(0) and proc.sid == os.getsid(0)
    assert proc.vpid == proc.pid  # no pid namespace here
    # root exec: the new permitted and effective sets are the bounding set
    assert proc.cap_permitted == proc.cap_effective == _status_hex("CapBnd")
    assert proc.cap_inheritable == _status_hex("CapInh")
    with open("/proc/self/loginuid") as f:
        assert proc.loginuid == int(f.read())
    assert proc.cgroup_id == _cgroup2_id()
    assert proc.parent is not None and proc.parent.pid == os.getpid()
    # boot clock + measured offset = UTC, to within the offset's measurement error
    assert started_ns - 5_000_000 <= event.time_ns <= finished_ns + 5_000_000
    assert proc.exe_from_memfd is False and proc.args_truncated is False


def test_script_reports_interpreter_and_the_kernel_exe(collector, tmp_path):
    mark = token()
    script = tmp_path / "script-test.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    subprocess.run([str(script), mark], check=True)
    event = collector.wait_for(exec_of(mark))
    proc = event.proc
    assert proc.filename == str(script)
    assert proc.interpreter == "/bin/sh"
    # The image the kernel runs is the interpreter, resolved through the /bin -> usr/bin
    # and sh -> dash links: what /proc/<pid>/exe shows.
    assert proc.exepath == os.path.realpath("/bin/sh")
    assert proc.exe == "/bin/sh" and proc.args == (str(script), mark)
    assert proc.comm == "script-test.sh"


def test_exec_from_memfd(collector):
    mark = token()
    # execveat(fd, "", argv, envp, AT_EMPTY_PATH) called directly: glibc's fexecve may
    # go through /proc/self/fd with execve instead.
    program = textwrap.dedent(
        """
        import ctypes, os, sys
        fd = os.memfd_create("sentinel-test")
        with open("/bin/true", "rb") as f:
            os.write(fd, f.read())
        argv = (ctypes.c_char_p * 3)(b"true", sys.argv[1].encode(), None)
        envp = (ctypes.c_char_p * 1)(None)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall(322, fd, b"", argv, envp, 0x1000)  # SYS_execveat, AT_EMPTY_PATH
        sys.exit("execveat failed: %d" % ctypes.get_errno())
        """
    )
    subprocess.run([sys.executable, "-c", program, mark], check=True)
    event = collector.wait_for(lambda e: exec_of(mark)(e) and e.proc.exe == "true")
    assert event.type == "execveat" and event.proc.exec_syscall == "execveat"
    assert event.proc.exe_from_memfd is True
    assert event.proc.exepath == "/memfd:sentinel-test"
    assert event.proc.filename.startswith("/dev/fd/")


def test_exec_from_a_non_leader_thread(collector):
    mark = token()
    program = textwrap.dedent(
        """
        import os, sys, threading
        def run():
            print(threading.get_native_id(), flush=True)
            os.execv("/bin/echo", ["echo", sys.argv[1]])
        threading.Thread(target=run).start()
        threading.Event().wait(30)
        """
    )
    child = subprocess.run([sys.executable, "-c", program, mark], capture_output=True, text=True, check=True)
    thread_id = int(child.stdout.split()[0])
    event = collector.wait_for(exec_of(mark, comm="echo"))
    assert thread_id != event.proc.pid
    assert event.tid == thread_id
    # after de_thread the process keeps its pid and its start time (its exec id)
    python_exec = collector.wait_for(lambda e: exec_of(mark)(e) and e.proc.comm.startswith("python"))
    assert python_exec.proc.pid == event.proc.pid
    assert python_exec.proc.start_ns == event.proc.start_ns


def test_failed_exec(collector):
    missing = "/nonexistent-%s/prog" % token()
    with pytest.raises(FileNotFoundError):
        subprocess.run([missing, "arg1"])
    event = collector.wait_for(lambda e: e.type == "execve" and e.res < 0 and e.args.get("filename") == missing)
    assert event.res == -2
    assert event.args["argv"] == (missing, "arg1")


def test_fork_and_exit_code(collector):
    mark = token()
    child = subprocess.run(["/bin/sh", "-c", "exit 7", mark])
    assert child.returncode == 7
    exited = collector.wait_for(lambda e: e.type == "procexit" and e.proc.pid == child_pid(collector, mark))
    assert exited.args == {"status": 7, "sig": 0, "core": False}
    assert exited.proc.exit_code == 7
    forked = collector.wait_for(lambda e: e.type in ("clone", "clone3", "fork", "vfork") and e.res == exited.proc.pid)
    assert forked.proc.pid == os.getpid()
    assert forked.args["is_thread"] is False


def child_pid(collector, mark: str) -> int:
    return collector.wait_for(exec_of(mark)).proc.pid


def test_exit_by_signal(collector):
    child = subprocess.Popen(["/bin/sleep", "60"])
    collector.wait_for(lambda e: e.type == "execve" and e.proc.pid == child.pid and e.proc.comm == "sleep")
    child.send_signal(signal.SIGTERM)
    child.wait()
    exited = collector.wait_for(lambda e: e.type == "procexit" and e.proc.pid == child.pid)
    assert exited.args == {"status": 0, "sig": signal.SIGTERM, "core": False}
    assert exited.proc.exit_signal == signal.SIGTERM


def test_thread_exit_is_not_a_process_exit(collector):
    mark = token()
    program = "import threading,sys; t=threading.Thread(target=lambda: None); t.start(); t.join(); sys.exit(3)"
    child = subprocess.Popen([sys.executable, "-c", program, mark])
    assert child.wait() == 3
    exits = []
    collector.wait_for(lambda e: e.type == "procexit" and e.proc.pid == child.pid and not exits.append(e) and True)
    thread_clone = collector.wait_for(lambda e: e.type.startswith("clone") and e.proc.pid == child.pid)
    assert thread_clone.args["is_thread"] is True
    time.sleep(0.2)
    collector.events.extend(collector.sensor.poll(0.1))
    assert [e.args["status"] for e in collector.events if e.type == "procexit" and e.proc.pid == child.pid] == [3]


def test_chdir_reports_the_new_cwd(collector, tmp_path):
    mark = token()
    target = tmp_path / ("dir-" + mark)
    target.mkdir()
    subprocess.run(["/bin/sh", "-c", 'cd "$1" && /bin/true "$2"', "sh", str(target), mark], check=True)
    event = collector.wait_for(lambda e: e.type == "chdir" and e.args.get("path") == str(target))
    assert event.res == 0
    true_exec = collector.wait_for(exec_of(mark))
    assert true_exec.proc.cwd == str(target)


def test_env_keeps_named_variables_only(collector):
    mark = token()
    secret = "secret-" + token()
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": "/nonexistent-%s.so" % mark, "SECRET": secret}
    subprocess.run(["/bin/true", mark], env=env, stderr=subprocess.DEVNULL)
    proc = collector.wait_for(exec_of(mark)).proc
    assert "LD_PRELOAD=/nonexistent-%s.so" % mark in proc.env
    assert "PATH=/usr/bin:/bin" in proc.env
    assert not any(secret in item or item.startswith("SECRET=") for item in proc.env)


def test_long_argv_is_truncated_and_flagged(collector):
    mark = token()
    filler = ["x" * 100] * 80  # 8 KB of arguments, above the 4 KB kernel bound
    subprocess.run(["/bin/true", mark, *filler], check=True)
    proc = collector.wait_for(exec_of(mark)).proc
    assert proc.args_truncated is True
    assert proc.args[0] == mark
    assert len("\0".join((proc.exe, *proc.args))) <= abi.ARGS_MAX


def test_process_started_before_the_sensor(collector, started_before):
    proc_before, before_token = started_before
    with open("/proc/%d/stat" % proc_before.pid) as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    proc_before.terminate()
    proc_before.wait()
    exited = collector.wait_for(lambda e: e.type == "procexit" and e.proc.pid == proc_before.pid)
    # the kernel's exec id and /proc's starttime are the same clock at tick precision
    assert abi.same_start_ticks(exited.proc.start_ns, ticks)
    # known from the bootstrap only: argv came from /proc/<pid>/cmdline
    assert exited.proc.args == ("-c", "import time; time.sleep(600)", before_token)
    assert exited.proc.from_proc is True
    assert exited.args["sig"] == signal.SIGTERM


def test_update_interest_keeps_the_lifecycle_attached(sensor, collector):
    before = sensor.attached
    sensor.update_interest(Interest(event_types=frozenset({"execve"})))
    assert sensor.attached == before
    mark = token()
    subprocess.run(["/bin/true", mark], check=True)
    collector.wait_for(exec_of(mark))


def test_nothing_was_lost_or_dropped(sensor, collector):
    collector.events.extend(sensor.poll(0.2))
    assert sensor.lost() == {}
    assert sensor.decoder.dropped == 0


def test_trace_command_notifies_ready_prints_json_and_stops_on_sigterm(tmp_path):
    notify_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(notify_path)
        notify_socket.settimeout(120)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path, PYTHONPATH=str(REPO_ROOT))
        trace = subprocess.Popen(
            [sys.executable, "-m", "sentinel.cli", "trace", "--json", "--type", "execve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            assert notify_socket.recv(100) == b"READY=1"
            mark = token()
            subprocess.run(["/bin/true", mark], check=True)
            found = None
            deadline = time.monotonic() + WAIT_SECONDS
            while found is None and time.monotonic() < deadline:
                ready, _, _ = select.select([trace.stdout], [], [], 0.5)
                if ready:
                    line = trace.stdout.readline()
                    record = json.loads(line)
                    assert record["type"] == "execve"
                    if mark in record["proc"]["args"]:
                        found = record
            assert found is not None and found["proc"]["exepath"] == os.path.realpath("/bin/true")
            trace.send_signal(signal.SIGTERM)
            assert trace.wait(timeout=30) == 0
            assert notify_socket.recv(100) == b"STOPPING=1"
        finally:
            if trace.poll() is None:
                trace.kill()
                trace.wait()


def test_exe_on_an_overlay_upper_layer(collector, tmp_path):
    """Overlayfs: a binary copied in through the mount lives on the upper layer; one that
    only exists in the lower layer does not (read from the overlay inode's upper dentry)."""
    layers = {name: tmp_path / name for name in ("lower", "upper", "work", "merged")}
    for directory in layers.values():
        directory.mkdir()
    shutil.copy2("/bin/true", layers["lower"] / "true-lower")
    options = "lowerdir=%(lower)s,upperdir=%(upper)s,workdir=%(work)s" % layers
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(layers["merged"])], check=True)
    try:
        shutil.copy2("/bin/true", layers["merged"] / "true-upper")
        marks = {}
        for name in ("true-lower", "true-upper"):
            marks[name] = token()
            subprocess.run([str(layers["merged"] / name), marks[name]], check=True)
        lower = collector.wait_for(exec_of(marks["true-lower"])).proc
        upper = collector.wait_for(exec_of(marks["true-upper"])).proc
    finally:
        subprocess.run(["umount", str(layers["merged"])], check=True)
    assert lower.exepath == str(layers["merged"] / "true-lower") and lower.exe_upper_layer is False
    assert upper.exepath == str(layers["merged"] / "true-upper") and upper.exe_upper_layer is True


def test_controlling_tty_is_the_kernel_dev_of_the_terminal(collector):
    mark = token()
    pid, master = pty.fork()
    if pid == 0:  # child: session leader with the pty slave as controlling terminal
        os.execv("/bin/sh", ["sh", "-c", 'stat -L -c "%%t %%T" /proc/self/fd/0; exec /bin/true %s' % mark])
    output = b""
    try:
        while b"\n" not in output:
            output += os.read(master, 100)
    finally:
        os.waitpid(pid, 0)
        os.close(master)
    major, minor = (int(x, 16) for x in output.split()[:2])
    proc = collector.wait_for(exec_of(mark)).proc
    assert proc.tty == (major << 20) | minor
    assert proc.sid == pid


def test_pid_namespace_view(collector):
    mark = token()
    subprocess.run(["unshare", "--pid", "--fork", "/bin/sh", "-c", "exec /bin/true %s" % mark], check=True)
    proc = collector.wait_for(exec_of(mark)).proc
    assert proc.vpid == 1 and proc.pid != 1
    assert proc.vpgid == 0  # its process group belongs to the parent namespace
    assert proc.is_vpgid_leader is False


def _program_ids_held_here(kind: str = "prog") -> set[int]:
    """BPF program (or map) ids this process holds a file descriptor of (/proc/self/fdinfo)."""
    ids = set()
    for fd in os.listdir("/proc/self/fdinfo"):
        try:
            with open("/proc/self/fdinfo/" + fd) as info:
                ids.update(int(line.split()[1]) for line in info if line.startswith(kind + "_id:"))
        except OSError:
            continue
    return ids


def _bpftool_show(kind: str = "prog") -> dict[int, str]:
    shown = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True, check=True).stdout
    return {p["id"]: p.get("name", "") for p in json.loads(shown or "[]")}


def _loaded_program_ids() -> set[int]:
    return set(_bpftool_show("prog"))


def test_every_program_and_map_is_named_as_sentinel_s(sensor):
    """What bpftool shows of the loaded object passes the hygiene naming convention."""
    names = []
    for kind in ("prog", "map"):
        shown = _bpftool_show(kind)
        names += [shown[i] for i in _program_ids_held_here(kind) if i in shown]
    assert len(names) >= len({p.name for p in programs_for(frozenset())}) + 4
    assert hygiene.names_breaking_convention(names) == []


def test_full_ring_buffer_counts_lost_records_and_close_detaches(sensor):
    """A one-page ring buffer: an exec record with 4 KB of argv cannot fit, and the kernel
    counts it as lost (bcc has no lost-record callback)."""
    before = _program_ids_held_here()
    small = Sensor(Config().replace(sensor=SensorConfig(ringbuf_pages=1)), Interest())
    small.start(bootstrap=False)
    try:
        loaded = _program_ids_held_here() - before
        assert len(loaded) == len({p.name for p in programs_for(frozenset())}) and loaded <= _loaded_program_ids()
        for _ in range(3):
            subprocess.run(["/bin/true", "x" * abi.ARGS_MAX], check=True)
        assert small.lost().get(abi.OP_EXEC, 0) >= 3
    finally:
        small.close()
    assert not (_loaded_program_ids() & loaded)  # detached and freed by the kernel


def test_loginuid_set_by_a_login_is_reported(collector):
    mark = token()
    subprocess.run(["/bin/sh", "-c", "echo 1234 > /proc/self/loginuid && exec /bin/true %s" % mark], check=True)
    assert collector.wait_for(exec_of(mark)).proc.loginuid == 1234


def test_failed_execveat_carries_dirfd_and_flags(collector, tmp_path):
    missing = "missing-" + token()
    program = textwrap.dedent(
        """
        import ctypes, os, sys
        dirfd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
        argv = (ctypes.c_char_p * 2)(sys.argv[2].encode(), None)
        envp = (ctypes.c_char_p * 1)(None)
        libc = ctypes.CDLL(None, use_errno=True)
        res = libc.syscall(322, dirfd, sys.argv[2].encode(), argv, envp, 0x100)  # AT_SYMLINK_NOFOLLOW
        print(dirfd, res, ctypes.get_errno())
        """
    )
    child = subprocess.run([sys.executable, "-c", program, str(tmp_path), missing], capture_output=True, text=True, check=True)
    dirfd, res, err = map(int, child.stdout.split())
    assert (res, err) == (-1, 2)
    event = collector.wait_for(lambda e: e.type == "execveat" and e.res < 0 and e.args.get("filename") == missing)
    assert event.res == -2
    assert event.args["dirfd"] == dirfd and event.args["flags"] == 0x100
    assert event.args["argv"] == (missing,)
