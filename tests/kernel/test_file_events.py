"""File events on the running kernel: opens with resolved and raw paths, the open filter,
and the path-changing syscalls, with their decoded fields asserted exactly."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from syscall_sensor import Collector, start_sensor

from sentinel.events.interest import ACCMODES_READ, ACCMODES_WRITE, ON_HOST, Interest, OpenSelectors
from sentinel.rules import render

pytestmark = pytest.mark.kernel

REPO_ROOT = Path(__file__).resolve().parents[2]
TYPES = {"open", "openat", "openat2", "creat", "unlinkat", "unlink", "renameat2", "rename", "mkdir", "mkdirat",
         "symlink", "symlinkat", "chmod", "fchmodat", "fchmod", "fchownat", "truncate", "ftruncate", "linkat", "rmdir"}  # fmt: skip
LIBC = ctypes.CDLL(None, use_errno=True)
SYS_OPEN = 2
SYS_OPENAT2 = 437


@pytest.fixture(scope="module")
def sensor():
    sensor = start_sensor(TYPES, open_path_prefixes=("/tmp/", "/var/tmp/"))
    yield sensor
    sensor.close()


@pytest.fixture
def collector(sensor):
    return Collector(sensor)


@pytest.fixture
def workdir(tmp_path):
    # tmp_path is under /tmp, one of the filter's prefixes; resolve() removes symlinks
    path = (tmp_path / uuid.uuid4().hex[:8]).resolve()
    path.mkdir()
    return path


def _mine(event_type, predicate):
    return lambda e: e.type == event_type and e.proc.pid == os.getpid() and predicate(e)


def test_truncating_open_renders_its_flags(collector, workdir):
    target = workdir / "trunc.txt"
    target.write_text("data")
    fd = os.open(target, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    # write_text's own open (O_CREAT) comes first: wait for the one without O_CREAT
    event = collector.wait_for(_mine("openat", lambda e: e.fd.name == str(target) and not e.args["flags"] & os.O_CREAT))
    assert render.open_flags(event.args["flags"]) == "O_TRUNC|O_WRONLY|O_CLOEXEC"
    assert event.args["name"] == str(target)
    assert event.args["dirfd"] == -100
    assert event.fd.num == fd
    assert event.fd.type == "file" and event.fd.typechar == "f"
    assert event.fd.nameraw == str(target)
    assert event.fd.created is False
    assert event.fd.ino == os.stat(target).st_ino


def test_creating_open_sets_created(collector, workdir):
    target = workdir / "new.txt"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.close(fd)
    event = collector.wait_for(_mine("openat", lambda e: e.fd.name == str(target)))
    assert event.fd.created is True
    assert event.args["mode"] == 0o640
    assert render.open_flags(event.args["flags"]) == "O_EXCL|O_CREAT|O_WRONLY|O_CLOEXEC"


def test_failed_relative_open_is_joined_with_the_cwd(collector, workdir):
    before = os.getcwd()
    os.chdir(workdir)
    try:
        with pytest.raises(FileNotFoundError):
            os.open("missing.txt", os.O_RDONLY)
    finally:
        os.chdir(before)
    event = collector.wait_for(_mine("openat", lambda e: e.args.get("name") == "missing.txt"))
    assert event.res == -errno.ENOENT
    assert render.errno_name(event.res) == "ENOENT"
    assert event.fd.num == -1
    assert event.fd.name == str(workdir / "missing.txt")
    assert event.fd.nameraw == "missing.txt"


def test_relative_open_after_chdir_resolves_the_opened_file(collector, workdir):
    (workdir / "sub").mkdir()
    (workdir / "sub" / "rel.txt").write_text("x")
    before = os.getcwd()
    os.chdir(workdir / "sub")
    try:
        fd = os.open("rel.txt", os.O_RDONLY)
        os.close(fd)
    finally:
        os.chdir(before)
    event = collector.wait_for(_mine("openat", lambda e: e.args.get("name") == "rel.txt" and e.res >= 0))
    assert event.fd.name == str(workdir / "sub" / "rel.txt")
    assert event.fd.nameraw == "rel.txt"
    assert render.open_flags(event.args["flags"]) == "O_RDONLY|O_CLOEXEC"


def test_open_through_a_symlink_reports_the_target(collector, workdir):
    real = workdir / "real.txt"
    real.write_text("x")
    link = workdir / "link.txt"
    link.symlink_to(real)
    fd = os.open(link, os.O_RDONLY)
    os.close(fd)
    event = collector.wait_for(_mine("openat", lambda e: e.args.get("name") == str(link)))
    assert event.fd.name == str(real)
    assert event.fd.nameraw == str(link)


def test_directory_open_is_typed_directory(collector, workdir):
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    os.close(fd)
    event = collector.wait_for(_mine("openat", lambda e: e.args.get("name") == str(workdir)))
    assert event.fd.type == "directory" and event.fd.typechar == "d"
    assert event.fd.name == str(workdir)


def test_legacy_open_syscall(collector, workdir):
    target = workdir / "legacy.txt"
    target.write_text("x")
    fd = LIBC.syscall(SYS_OPEN, str(target).encode(), os.O_RDONLY, 0)
    assert fd >= 0
    os.close(fd)
    event = collector.wait_for(_mine("open", lambda e: e.fd.name == str(target)))
    assert event.res == fd and event.args["fd"] == fd
    assert list(event.args) == ["fd", "name", "flags", "mode"]


def test_open_filter_keeps_paths_outside_the_prefixes_in_the_kernel(sensor, collector, workdir):
    seen_before, sent_before = sensor.open_counts()
    for _ in range(50):
        with open("/etc/hostname"):
            pass
    marker = workdir / "after-filter.txt"
    marker.write_text("x")
    collector.wait_for(_mine("openat", lambda e: e.fd.name == str(marker)))
    assert not [e for e in collector.mine("openat") if e.fd.name == "/etc/hostname"]
    seen, sent = sensor.open_counts()
    assert seen - seen_before >= 51
    assert sent - sent_before < 10
    # failed opens outside the prefixes are filtered on the path as given
    with pytest.raises(FileNotFoundError):
        os.open("/etc/sentinel-missing-" + uuid.uuid4().hex, os.O_RDONLY)
    marker2 = workdir / "after-failed.txt"
    marker2.write_text("x")
    collector.wait_for(_mine("openat", lambda e: e.fd.name == str(marker2)))
    assert not [e for e in collector.mine("openat") if "sentinel-missing" in e.fd.name]


def test_update_interest_refreshes_the_filter_maps(sensor, collector, workdir):
    try:
        sensor.update_interest(Interest(event_types=frozenset(TYPES), open_path_prefixes=("/etc/hostname",)))
        with open("/etc/hostname"):
            pass
        event = collector.wait_for(_mine("openat", lambda e: e.fd.name == "/etc/hostname"))
        assert event.fd.nameraw == "/etc/hostname"
        # a listed comm passes whatever the path
        sensor.update_interest(
            Interest(event_types=frozenset(TYPES), open_path_prefixes=(), open_comms=frozenset({"cat"}))
        )
        subprocess.run(["cat", "/etc/os-release"], check=True, capture_output=True)
        event = collector.wait_for(lambda e: e.type == "openat" and e.proc.comm == "cat" and e.fd.name.endswith("os-release"))
        assert event.fd.nameraw == "/etc/os-release"
    finally:
        sensor.update_interest(Interest(event_types=frozenset(TYPES), open_path_prefixes=("/tmp/", "/var/tmp/")))


def test_path_changing_syscalls_carry_falco_argument_names(collector, workdir):
    src = workdir / "a.txt"
    src.write_text("x")
    os.rename(src, workdir / "b.txt")
    os.mkdir(workdir / "d", 0o750)
    os.symlink("b.txt", workdir / "s")
    os.chmod(workdir / "b.txt", 0o4755)
    os.truncate(workdir / "b.txt", 0)
    os.unlink(workdir / "s")
    os.rmdir(workdir / "d")
    pid = os.getpid()
    rename = collector.wait_for(lambda e: e.type in ("rename", "renameat2") and e.proc.pid == pid and e.args.get("newpath") == str(workdir / "b.txt"))
    assert rename.args["oldpath"] == str(src) and rename.res == 0
    mkdir = collector.wait_for(lambda e: e.type in ("mkdir", "mkdirat") and e.proc.pid == pid and e.args.get("path") == str(workdir / "d"))
    assert mkdir.args["mode"] == 0o750
    symlink = collector.wait_for(lambda e: e.type in ("symlink", "symlinkat") and e.proc.pid == pid and e.args.get("linkpath") == str(workdir / "s"))
    assert symlink.args["target"] == "b.txt"
    chmod = collector.wait_for(lambda e: e.type in ("chmod", "fchmodat") and e.proc.pid == pid and e.args.get("filename") == str(workdir / "b.txt"))
    assert chmod.args["mode"] == 0o4755
    truncate = collector.wait_for(lambda e: e.type == "truncate" and e.proc.pid == pid and e.args.get("path") == str(workdir / "b.txt"))
    assert truncate.args["length"] == 0
    unlink = collector.wait_for(lambda e: e.type in ("unlink", "unlinkat") and e.proc.pid == pid and e.args.get("name", e.args.get("path")) == str(workdir / "s"))
    assert unlink.res == 0
    rmdir = collector.wait_for(lambda e: e.type in ("rmdir", "unlinkat") and e.proc.pid == pid and e.args.get("name", e.args.get("path")) == str(workdir / "d"))
    assert rmdir.res == 0


def test_trace_cli_shows_resolved_and_raw_paths(workdir):
    target = workdir / "traced.txt"
    target.write_text("x")
    link = workdir / "traced-link"
    link.symlink_to(target)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sentinel.cli", "trace", "--type", "open", "--json"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        found = None
        while found is None and time.monotonic() < deadline:
            fd = LIBC.syscall(SYS_OPEN, str(link).encode(), os.O_RDONLY, 0)
            if fd >= 0:
                os.close(fd)
            time.sleep(0.5)
            if proc.poll() is not None:
                break
            os.set_blocking(proc.stdout.fileno(), False)
            for line in proc.stdout:
                record = json.loads(line)
                if record["type"] == "open" and record["fd"]["nameraw"] == str(link):
                    found = record
                    break
        assert found is not None, "no open event from sentinel trace"
        assert found["fd"]["name"] == str(target)
        assert found["args"]["name"] == str(link)
        assert found["proc"]["pid"] == os.getpid()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_openat2_flags_and_mode_come_from_open_how(collector, workdir):
    target = workdir / "how.txt"
    how = struct.pack("<QQQ", os.O_WRONLY | os.O_CREAT, 0o600, 0)  # struct open_how: flags, mode, resolve
    fd = LIBC.syscall(SYS_OPENAT2, -100, str(target).encode(), how, len(how))
    assert fd >= 0, os.strerror(ctypes.get_errno())
    os.close(fd)
    event = collector.wait_for(_mine("openat2", lambda e: e.fd.name == str(target)))
    assert render.open_flags(event.args["flags"]) == "O_CREAT|O_WRONLY"
    assert event.args["mode"] == 0o600 and event.args["resolve"] == 0
    assert event.fd.created is True and event.res == fd


def test_listed_file_names_pass_the_filter_in_any_directory(sensor, collector, workdir):
    wanted = workdir / "authorized_keys"
    other = workdir / "authorized_keys.bak"
    try:
        sensor.update_interest(
            Interest(event_types=frozenset(TYPES), open_path_prefixes=(), open_basenames=frozenset({"authorized_keys"}))
        )
        other.write_text("x")
        wanted.write_text("x")
        event = collector.wait_for(_mine("openat", lambda e: e.fd.name == str(wanted)))
        assert event.fd.nameraw == str(wanted)
        collector.drain()
        assert not [e for e in collector.mine("openat") if e.fd.name == str(other)]
    finally:
        sensor.update_interest(Interest(event_types=frozenset(TYPES), open_path_prefixes=("/tmp/", "/var/tmp/")))


def _select(sensor, workdir, selectors):
    sensor.update_interest(Interest(event_types=frozenset(TYPES), open_path_prefixes=(str(workdir) + "/",),
                                    open_selectors=selectors))


def _opened(collector, path, pid=None):
    """Whether an open of `path` (by `pid`, default this process) reached userspace."""
    pid = os.getpid() if pid is None else pid
    return [e for e in collector.events if e.type == "openat" and e.proc.pid == pid and e.fd.name == str(path)]


def _marker(collector, workdir, name):
    """An open that passes every selector below, so that earlier records have been read."""
    marker = workdir / name
    fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)
    os.close(fd)
    collector.wait_for(_mine("openat", lambda e: e.fd.name == str(marker)))


def test_access_selector_passes_only_opens_for_writing(sensor, collector, workdir):
    target = workdir / "access.txt"
    target.write_text("x")
    try:
        _select(sensor, workdir, OpenSelectors(accmodes=ACCMODES_WRITE))
        with open(target):
            pass
        with open(target, "a"):
            pass
        event = collector.wait_for(_mine("openat", lambda e: e.fd.name == str(target)))
        assert event.args["flags"] & os.O_ACCMODE == os.O_WRONLY
        _marker(collector, workdir, "access-marker")
        # (write_text's own open, before the selector, was a write too)
        assert os.O_RDONLY not in [e.args["flags"] & os.O_ACCMODE for e in _opened(collector, target)]
        # O_PATH opens keep no access mode in the kernel: they pass whatever their flags
        os.close(os.open(target, os.O_PATH | os.O_WRONLY))
        collector.wait_for(_mine("openat", lambda e: e.fd.name == str(target) and e.args["flags"] & os.O_PATH))
    finally:
        sensor.update_interest(Interest(event_types=frozenset(TYPES), open_path_prefixes=("/tmp/", "/var/tmp/")))


def test_a_prefix_for_writes_keeps_reads_under_it_in_the_kernel(sensor, collector, workdir):
    """A prefix carries the access modes its rules match: a read under a write-only prefix
    stays in the kernel, unless a longer prefix under it takes reads; writes pass."""
    inner = workdir / "readable"
    inner.mkdir()
    outer_file, inner_file = workdir / "outer.txt", inner / "inner.txt"
    outer_file.write_text("x")
    inner_file.write_text("x")
    try:
        sensor.update_interest(Interest(event_types=frozenset(TYPES),
                                        open_path_prefixes=(str(workdir) + "/", str(inner) + "/"),
                                        open_prefix_accmodes=((str(workdir) + "/", ACCMODES_WRITE),)))
        for path, mode in ((outer_file, "r"), (inner_file, "r"), (outer_file, "a")):
            with open(path, mode):
                pass
        collector.wait_for(_mine("openat", lambda e: e.fd.name == str(inner_file) and e.args["flags"] & os.O_ACCMODE == os.O_RDONLY))
        collector.wait_for(_mine("openat", lambda e: e.fd.name == str(outer_file) and e.args["flags"] & os.O_ACCMODE == os.O_WRONLY))
        _marker(collector, workdir, "prefix-marker")
        assert os.O_RDONLY not in [e.args["flags"] & os.O_ACCMODE for e in _opened(collector, outer_file)]
    finally:
        sensor.update_interest(Interest(event_types=frozenset(TYPES), open_path_prefixes=("/tmp/", "/var/tmp/")))


def test_reads_outside_the_prefixes_pass_only_with_dotdot_in_the_path_as_passed(sensor, collector, workdir):
    """Falco's directory traversal rule reads any path, but only through "../": reads whose
    path as passed has none stay in the kernel, at whatever offset the "../" sits (the kernel
    scans eight bytes at a stride of six); writes, failed opens and paths longer than the
    scan pass whatever their path."""
    (workdir / "sub").mkdir()
    target = workdir / "t.txt"
    target.write_text("x")
    listed = workdir / "listed"
    try:
        sensor.update_interest(Interest(event_types=frozenset(TYPES), open_path_prefixes=(str(listed) + "/",),
                                        open_any_path=OpenSelectors(dotdot_accmodes=ACCMODES_READ)))
        passing = [str(workdir) + "/" + "./" * pad + "sub/../t.txt" for pad in range(8)]
        passing += [str(workdir) + "/" + "/" * pad + "sub/../t.txt" for pad in range(1, 8)]
        passing.append("/" * 300 + str(target)[1:])  # longer than the scan: counts as having "../"
        (workdir / "d..x").mkdir()
        (workdir / "d..x" / "t.txt").write_text("x")
        dropped = [str(target), str(workdir) + "/./d..x/./t.txt", str(workdir) + "/.//./t.txt"]
        for raw in passing + dropped:
            os.close(os.open(raw, os.O_RDONLY))
        relative = os.open("../t.txt", os.O_RDONLY, dir_fd=os.open(workdir / "sub", os.O_RDONLY | os.O_DIRECTORY))
        os.close(relative)
        os.close(os.open(target, os.O_WRONLY))
        with pytest.raises(FileNotFoundError):
            os.open(workdir / "missing", os.O_RDONLY)
        for raw in passing + ["../t.txt"]:
            collector.wait_for(_mine("openat", lambda e, raw=raw: e.fd.nameraw == raw))
        collector.wait_for(_mine("openat", lambda e: e.fd.name == str(target) and e.args["flags"] & os.O_ACCMODE == os.O_WRONLY))
        collector.wait_for(_mine("openat", lambda e: e.fd.nameraw == str(workdir / "missing")))
        marker = workdir / "dotdot-marker"
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644))  # a write: passes, after the reads
        collector.wait_for(_mine("openat", lambda e: e.fd.name == str(marker)))
        assert not [e for e in collector.mine("openat")
                    if e.fd.nameraw in dropped and e.args["flags"] & os.O_ACCMODE == os.O_RDONLY]
    finally:
        sensor.update_interest(Interest(event_types=frozenset(TYPES), open_path_prefixes=("/tmp/", "/var/tmp/")))


def test_file_type_selector_keeps_directory_opens_in_the_kernel(sensor, collector, workdir):
    (workdir / "sub").mkdir()
    target = workdir / "typed.txt"
    target.write_text("x")
    try:
        _select(sensor, workdir, OpenSelectors(file_types=frozenset(range(16)) - {0o1, 0o4, 0o14}))
        os.close(os.open(workdir / "sub", os.O_RDONLY | os.O_DIRECTORY))
        os.close(os.open(target, os.O_RDONLY))
        collector.wait_for(_mine("openat", lambda e: e.fd.name == str(target)))
        _marker(collector, workdir, "type-marker")
        assert not _opened(collector, workdir / "sub")
        # a failed open has no inode: it passes (its fd.typechar is f)
        with pytest.raises(FileNotFoundError):
            os.open(workdir / "missing", os.O_RDONLY)
        collector.wait_for(_mine("openat", lambda e: e.fd.name == str(workdir / "missing") and e.res < 0))
    finally:
        sensor.update_interest(Interest(event_types=frozenset(TYPES), open_path_prefixes=("/tmp/", "/var/tmp/")))


def test_uid_selector_passes_only_the_listed_real_uids(sensor, collector, workdir):
    nobody = 65534
    target = workdir / "uid.txt"
    target.write_text("x")
    # real uid nobody, effective uid root: it can still open the test's files
    code = "import os, sys; os.setresuid(%d, 0, 0); open(sys.argv[1]).close()" % nobody
    try:
        # with the uid changes the process table follows, as a rule set's interest has them
        sensor.update_interest(Interest(event_types=frozenset(TYPES | {"setresuid"}), open_path_prefixes=(str(workdir) + "/",),
                                        open_selectors=OpenSelectors(uids=frozenset({nobody}))))
        with open(target):
            pass
        subprocess.run([sys.executable, "-c", code, str(target)], check=True)
        event = collector.wait_for(lambda e: e.type == "openat" and e.fd.name == str(target) and e.proc.pid != os.getpid())
        assert event.proc.uid == nobody
        collector.drain()
        reads = [e for e in _opened(collector, target) if not e.args["flags"] & os.O_CREAT]  # write_text's came before
        assert not reads, "an open by uid 0 passed a selector of uid %d" % nobody
    finally:
        sensor.update_interest(Interest(event_types=frozenset(TYPES), open_path_prefixes=("/tmp/", "/var/tmp/")))


@pytest.fixture
def container_cgroup():
    """A v2 cgroup named as docker names a container's (systemd driver)."""
    from sentinel.kernel.probe import cgroup2_mount

    root = cgroup2_mount()
    if root is None:
        pytest.fail("no cgroup2 mount")
    path = Path(root) / ("docker-%s.scope" % (uuid.uuid4().hex * 2))
    path.mkdir()
    yield path
    for _ in range(50):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.1)  # the last process is still leaving


def test_host_selector_keeps_opens_from_container_cgroups_in_the_kernel(sensor, collector, workdir, container_cgroup):
    target = workdir / "host-only.txt"
    target.write_text("x")
    # the child waits for a line, by then it is in the container's cgroup
    code = "import sys; sys.stdin.readline(); open(sys.argv[1]).close()"
    child = subprocess.Popen([sys.executable, "-c", code, str(target)], stdin=subprocess.PIPE, text=True)
    try:
        (container_cgroup / "cgroup.procs").write_text(str(child.pid))
        _select(sensor, workdir, OpenSelectors(container=ON_HOST))  # classes are read at load: after the mkdir
        child.communicate("go\n", timeout=30)
        assert child.returncode == 0
        with open(target):
            pass
        collector.wait_for(_mine("openat", lambda e: e.fd.name == str(target)))
        collector.drain()
        assert not _opened(collector, target, pid=child.pid), "an open from a container cgroup passed a host selector"
        # without the selector the same open from the same cgroup passes
        sensor.update_interest(Interest(event_types=frozenset(TYPES), open_path_prefixes=(str(workdir) + "/",)))
        again = subprocess.Popen([sys.executable, "-c", code, str(target)], stdin=subprocess.PIPE, text=True)
        (container_cgroup / "cgroup.procs").write_text(str(again.pid))
        again.communicate("go\n", timeout=30)
        collector.wait_for(lambda e: e.type == "openat" and e.proc.pid == again.pid and e.fd.name == str(target))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        sensor.update_interest(Interest(event_types=frozenset(TYPES), open_path_prefixes=("/tmp/", "/var/tmp/")))
