"""Reading processes from a proc tree: field by field, on fake trees written by the tests."""

from __future__ import annotations

import os
import time

import pytest
from fakeproc import TICK_NS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.enrich.procfs import (
    ProcFS,
    exe_on_upper_layer,
    kernel_dev,
    parse_stat,
    same_start,
    split_nul,
    strip_deleted,
    tty_nr_to_kernel_dev,
)


def test_stat_comm_with_parens_and_spaces():
    comm, fields = parse_stat("42 (a) b (c) R 1 42 42 0 -1")
    assert comm == "a) b (c"
    assert fields[:2] == ["R", "1"]


def test_read_identity_credentials_and_namespaces(fake_proc):
    fake_proc.add(
        4242,
        ppid=77,
        comm="worker",
        start_ticks=12345,
        argv=("/usr/bin/worker", "--flag", "value with spaces"),
        uid=1000,
        euid=0,
        gid=1000,
        egid=50,
        loginuid=1000,
        pgid=4200,
        sid=4100,
        nspid=(4242, 7),
        nspgid=(4200, 3),
        caps=(0x1, 0x3FF, 0x2),
        cwd="/srv/data",
    )
    proc = fake_proc.procfs().read(4242)
    assert proc is not None and proc.from_proc
    assert (proc.pid, proc.ppid, proc.pgid, proc.sid) == (4242, 77, 4200, 4100)
    assert proc.start_ns == 12345 * TICK_NS
    assert proc.comm == "worker"
    assert proc.exe == "/usr/bin/worker"
    assert proc.args == ("--flag", "value with spaces")
    assert (proc.uid, proc.euid, proc.gid, proc.egid) == (1000, 0, 1000, 50)
    assert proc.loginuid == 1000
    assert (proc.vpid, proc.vpgid) == (7, 3)
    assert not proc.is_vpgid_leader
    assert (proc.cap_inheritable, proc.cap_permitted, proc.cap_effective) == (0x1, 0x3FF, 0x2)
    assert proc.cwd == "/srv/data"


def test_exe_path_and_its_inode(fake_proc):
    fake_proc.add(10, comm="sleep")
    proc = fake_proc.procfs().read(10)
    target = fake_proc.host / "bin/sleep"
    st = os.stat(target)
    assert proc.exepath == str(target)
    assert proc.exe_ino == st.st_ino
    assert proc.exe_dev == (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
    assert proc.exe_mtime_ns == st.st_mtime_ns
    assert proc.exe_ctime_ns == st.st_ctime_ns
    assert not proc.exe_from_memfd


def test_exe_writable_follows_dac_and_cap_dac_override(fake_proc):
    exe = fake_proc.host / "bin/sh"
    os.chown(exe, 0, 0)
    os.chmod(exe, 0o755)
    fake_proc.add(20, uid=1000)  # other: r-x
    fake_proc.add(21, uid=0)  # owner: rwx
    fake_proc.add(22, uid=1000, caps=(0, 1 << 1, 1 << 1))  # CAP_DAC_OVERRIDE
    procfs = fake_proc.procfs()
    assert [procfs.read(pid).exe_writable for pid in (20, 21, 22)] == [False, True, True]


def test_deleted_exe_and_memfd_exe(fake_proc):
    fake_proc.add(11, exe="/tmp/dropper (deleted)")
    fake_proc.add(12, exe="/memfd:payload (deleted)")
    procfs = fake_proc.procfs()
    dropped = procfs.read(11)
    assert dropped.exepath == "/tmp/dropper" and not dropped.exe_from_memfd
    assert dropped.exe_ino == 0  # the file is gone: nothing to stat
    fileless = procfs.read(12)
    assert fileless.exepath == "/memfd:payload" and fileless.exe_from_memfd


def test_long_cmdline_is_cut_like_the_kernel_does(fake_proc):
    from sentinel.events.abi import ARGS_MAX

    argv = ("tool",) + tuple("arg%05d" % n for n in range(1000))  # 9 kB
    fake_proc.add(19, argv=argv)
    proc = fake_proc.procfs().read(19)
    assert proc.args_truncated
    assert len("\0".join((proc.exe,) + proc.args)) == ARGS_MAX
    assert proc.args[:-1] == argv[1 : len(proc.args)]
    fake_proc.add(18, argv=argv[:10])
    assert not fake_proc.procfs().read(18).args_truncated


def test_environ_keeps_only_configured_names(fake_proc):
    fake_proc.add(13, environ=("PATH=/bin", "AWS_SECRET_ACCESS_KEY=hunter2", "LD_PRELOAD=/x.so", "weird"))
    proc = fake_proc.procfs(env_keep=("PATH", "LD_PRELOAD")).read(13)
    assert proc.env == ("PATH=/bin", "LD_PRELOAD=/x.so")
    assert not any("hunter2" in entry for entry in proc.env)
    assert fake_proc.procfs().read(13).env == ()


def test_environ_is_scanned_within_the_kernel_sides_bounds(fake_proc):
    from sentinel.events.abi import ENV_VAR_MAX, ENV_VARS

    procfs = fake_proc.procfs(env_keep=("PATH", "LD_PRELOAD"))
    fake_proc.add(23, environ=("PATH=/bin", "HUGE=" + "x" * ENV_VAR_MAX, "LD_PRELOAD=/x.so"))
    assert procfs.read(23).env == ("PATH=/bin",)  # the kernel cannot step over HUGE either
    filler = tuple("V%d=1" % n for n in range(ENV_VARS))
    fake_proc.add(24, environ=("PATH=/bin", *filler, "LD_PRELOAD=/x.so"))
    assert procfs.read(24).env == ("PATH=/bin",)  # past the first ENV_VARS entries


def test_tty_is_converted_to_kernel_dev_t(fake_proc):
    # /dev/pts/3: major 136, minor 3 -> tty_nr 34819 in /proc's encoding
    fake_proc.add(14, tty_nr=(136 << 8) | 3)
    assert fake_proc.procfs().read(14).tty == (136 << 20) | 3
    # minors above 255 use the high bits of tty_nr
    assert tty_nr_to_kernel_dev((4 << 8) | 0x34 | (0x12 << 20)) == (4 << 20) | 0x1234


def test_cgroup_and_container(fake_proc):
    cid = "a" * 64
    fake_proc.add(15, cgroup="0::/system.slice/docker-%s.scope\n" % cid)
    proc = fake_proc.procfs().read(15)
    assert proc.cgroup == "/system.slice/docker-%s.scope" % cid
    assert proc.container_id == "a" * 12


def test_a_thread_id_reads_its_thread_group(fake_proc):
    fake_proc.add(300, comm="server", start_ticks=100, argv=("server", "--port", "80"))
    fake_proc.add(305, comm="worker", start_ticks=250, tgid=300)  # /proc/<tid>: the thread's own start
    proc = fake_proc.procfs().read(305)
    assert (proc.pid, proc.tid, proc.start_ns, proc.comm) == (300, 305, 100 * TICK_NS, "server")
    assert proc.args == ("--port", "80")
    fake_proc.remove(300)
    assert fake_proc.procfs().read(305) is None  # its group is gone


def test_kernel_thread_has_no_exe_or_args(fake_proc):
    directory = fake_proc.add(2, ppid=0, comm="kthreadd", argv=())
    os.unlink(directory / "exe")  # readlink gives ENOENT for kernel threads
    proc = fake_proc.procfs().read(2)
    assert proc.comm == "kthreadd"
    assert (proc.exe, proc.exepath, proc.args) == ("", "", ())


def test_vanished_process_and_unreadable_files(fake_proc):
    procfs = fake_proc.procfs()
    assert procfs.read(999) is None
    assert procfs.start_ns(999) is None
    directory = fake_proc.add(16)
    for name in ("status", "cmdline", "environ", "loginuid", "cgroup", "exe", "cwd"):
        os.unlink(directory / name)
    proc = procfs.read(16)  # only stat is needed for the process to exist
    assert proc is not None and proc.comm == "sh" and proc.exepath == ""
    os.unlink(directory / "stat")
    assert procfs.read(16) is None


def test_pids_lists_only_numeric_entries(fake_proc):
    fake_proc.add(3)
    fake_proc.add(40)
    (fake_proc.root / "self").mkdir()
    assert sorted(fake_proc.procfs().pids()) == [3, 40]


def test_same_start_is_tick_precision():
    from_proc = 1234 * TICK_NS
    assert same_start(from_proc + TICK_NS - 1, from_proc)  # kernel's precise value in the tick
    assert same_start(from_proc, from_proc)
    assert not same_start(from_proc + 3 * TICK_NS, from_proc)


def test_monotonic_exec_ids_are_shifted_by_suspend_time(fake_proc):
    fake_proc.add(17, start_ticks=500)
    boot = fake_proc.procfs().read(17).start_ns
    mono = fake_proc.procfs(exec_id_clock="monotonic").read(17).start_ns
    suspended = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert abs((boot - mono) - suspended) < 1_000_000
    with pytest.raises(ValueError, match="exec_id_clock"):
        ProcFS(exec_id_clock="realtime")


def test_small_helpers():
    assert split_nul(b"a\0b c\0") == ["a", "b c"]
    assert split_nul(b"") == []
    assert strip_deleted("/x (deleted)") == ("/x", True)
    assert strip_deleted("/x") == ("/x", False)
    assert kernel_dev(os.makedev(259, 1)) == (259 << 20) | 1


MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
300 27 0:60 / /var/lib/docker/overlay2/abc/merged rw - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/up/abc,workdir=/w
301 27 0:61 / / rw,relatime - overlay overlay rw,lowerdir=/img,upperdir=/var/lib/docker/overlay2/def/diff,workdir=/wd
302 301 0:62 / /opt/my\\040dir rw - overlay overlay rw,lowerdir=/x,upperdir=/up\\040space,workdir=/w2
303 301 0:63 / /usr/share rw - tmpfs tmpfs rw
304 301 0:64 / /ro rw - overlay overlay ro,lowerdir=/a:/b
"""


@pytest.mark.parametrize(
    "exepath,upper_files,expected",
    [
        ("/bin/dropped", {"/var/lib/docker/overlay2/def/diff/bin/dropped"}, True),  # the last "/" mount wins
        ("/bin/ls", set(), False),  # only in the image (lower layers)
        ("/opt/my dir/tool", {"/up space/tool"}, True),  # escaped spaces in both fields
        ("/usr/share/x", {"/var/lib/docker/overlay2/def/diff/usr/share/x"}, False),  # tmpfs over it
        ("/ro/bin/x", {"/ro/bin/x"}, False),  # no upper layer at all
    ],
)
def test_exe_on_upper_layer(exepath, upper_files, expected):
    assert exe_on_upper_layer(MOUNTINFO, exepath, exists=upper_files.__contains__) is expected


def test_exe_not_on_overlay():
    assert not exe_on_upper_layer("27 1 8:1 / / rw - ext4 /dev/sda1 rw\n", "/bin/ls", exists=lambda path: True)
    assert not exe_on_upper_layer("garbage line\n", "/bin/ls", exists=lambda path: True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["stat", "status", "cmdline", "environ", "loginuid", "cgroup", "mountinfo"]),
    content=st.one_of(
        st.binary(max_size=300),
        st.text(alphabet="0123456789 ()-SZ\n:\tUidGNSpg=/", max_size=300).map(str.encode),
    ),
)
def test_garbage_in_any_file_never_raises(fake_proc, name, content):
    directory = fake_proc.add(33, environ=("PATH=/bin",))
    (directory / name).write_bytes(content)
    proc = fake_proc.procfs(env_keep=("PATH",)).read(33)
    assert proc is None or proc.pid == 33
