"""Feature probes, checked against independent witnesses: findmnt, the kernel config, bpftool."""

from __future__ import annotations

import ctypes
import gzip
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import tempfile
import time

import pytest

from sentinel.errors import KernelError
from sentinel.kernel import headers, probe
from sentinel.kernel.probe import ProbeResult


def _kernel_config() -> dict[str, str]:
    config = {}
    for candidate in ("/proc/config.gz", "/boot/config-%s" % os.uname().release):
        if os.path.exists(candidate):
            opener = gzip.open if candidate.endswith(".gz") else open
            with opener(candidate, "rt") as f:
                for line in f:
                    key, sep, value = line.strip().partition("=")
                    if sep and key.startswith("CONFIG_"):
                        config[key] = value
            break
    return config


def _findmnt(*args: str) -> list[str]:
    out = subprocess.run(["findmnt", "-n", "-o", "TARGET", *args], capture_output=True, text=True).stdout
    return out.split()


def _bpftool(*args: str) -> list:
    return json.loads(
        subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True).stdout.strip() or "[]"
    )


@pytest.fixture(scope="module")
def results():
    by_name = {r.name: r for r in probe.run_probes()}
    return by_name


@pytest.mark.kernel
def test_every_probe_reports_a_result(results):
    expected = {
        "btf", "kernel_headers", "tracefs", "securityfs", "bpffs", "cgroup2", "header_tree", "ringbuf",
        "tracepoint", "raw_tracepoint", "send_signal", "cgroup_sock_addr", "bpf_lsm",
        "fanotify_open_perm", "fanotify_open_exec_perm",
    }  # fmt: skip
    assert set(results) == expected
    for result in results.values():
        assert result.ok or result.error, "a failed probe must say why: %r" % (result,)


@pytest.mark.kernel
def test_btf_and_headers_probes_match_the_filesystem(results):
    assert results["btf"].ok == os.path.exists("/sys/kernel/btf/vmlinux")
    build = "/lib/modules/%s/build/include" % os.uname().release
    assert results["kernel_headers"].ok == os.path.isdir(build)


@pytest.mark.kernel
def test_filesystems_are_mounted_after_probing(results):
    for name, fstype, target in (
        ("tracefs", "tracefs", "/sys/kernel/tracing"),
        ("securityfs", "securityfs", "/sys/kernel/security"),
        ("bpffs", "bpf", "/sys/fs/bpf"),
    ):
        assert results[name].ok, results[name]
        assert target in _findmnt("-t", fstype)
    assert probe.ensure_kernel_filesystems() == []  # already there: nothing mounted twice


@pytest.mark.kernel
def test_cgroup2_mount_is_found_not_assumed(results):
    assert probe.cgroup2_mount() == _findmnt("-t", "cgroup2")[0]
    assert results["cgroup2"].ok and probe.cgroup2_mount() in results["cgroup2"].detail


@pytest.mark.kernel
def test_program_probes_work_on_a_bpf_capable_kernel(results):
    # the machine this suite targets: tracepoints, ring buffers, signals, cgroup hooks
    for name in ("header_tree", "ringbuf", "tracepoint", "raw_tracepoint", "send_signal", "cgroup_sock_addr"):
        assert results[name].ok, results[name]


@pytest.mark.kernel
def test_header_tree_probe_reports_the_cold_build_time(results):
    if results["kernel_headers"].ok:
        assert "real kernel headers" in results["header_tree"].detail
    else:
        assert re.search(r"(cold build took|built now in) \d+\.\d s", results["header_tree"].detail)


@pytest.mark.kernel
def test_lsm_probe_agrees_with_the_kernel(results):
    config = _kernel_config()
    lsm = results["bpf_lsm"]
    with open("/sys/kernel/security/lsm") as f:
        active = f.read().strip().split(",")
    if lsm.ok:
        assert "bpf" in active and config.get("CONFIG_BPF_LSM", "y") == "y"
    else:
        # this development host lists bpf among its LSMs but refuses the trampoline: EPERM
        assert "EPERM" in lsm.error or "bpf" not in active, lsm


def _exec_under_fanotify_verdict(response: int) -> str:
    """Exec a scratch copy of /bin/true under a FAN_OPEN_EXEC_PERM mark, answer the
    permission event with `response`, and return the shell's report of the exec.

    The exec runs from a shell, so this process never blocks on it; whatever happens, the
    shell's session is killed before the group is closed.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    with tempfile.TemporaryDirectory() as scratch:
        program = os.path.join(scratch, "true")
        shutil.copy2("/bin/true", program)
        group = libc.fanotify_init(0x4 | 0x1, os.O_RDONLY)  # FAN_CLASS_CONTENT | FAN_CLOEXEC
        assert group >= 0, os.strerror(ctypes.get_errno())
        shell = None
        try:
            assert libc.fanotify_mark(group, 0x1, 0x40000, -100, program.encode()) == 0  # FAN_OPEN_EXEC_PERM
            shell = subprocess.Popen(
                ["/bin/sh", "-c", '"$0"; echo "rc=$?"', program],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            ready, _, _ = select.select([group], [], [], 10)
            assert ready, "no permission event within 10 s"
            _, _, _, _, mask, event_fd, _ = struct.unpack_from("=IBBHQii", os.read(group, 4096))
            assert mask & 0x40000
            os.write(group, struct.pack("=iI", event_fd, response))
            os.close(event_fd)
            output, _ = shell.communicate(timeout=10)
        finally:
            if shell is not None and shell.poll() is None:
                os.killpg(shell.pid, signal.SIGKILL)
                shell.wait()
            os.close(group)
    return output.strip().splitlines()[-1]


@pytest.mark.kernel
def test_fanotify_probes_agree_with_what_the_kernel_does(results):
    if results["fanotify_open_exec_perm"].ok:
        assert results["fanotify_open_perm"].ok  # exec permission events came later
        # the probe's promise, used for real: a denied exec fails with EPERM, an allowed one runs
        assert _exec_under_fanotify_verdict(0x2) == "rc=126"  # FAN_DENY: "Permission denied"
        assert _exec_under_fanotify_verdict(0x1) == "rc=0"  # FAN_ALLOW
    else:
        assert _kernel_config().get("CONFIG_FANOTIFY_ACCESS_PERMISSIONS") != "y"


@pytest.mark.kernel
def test_probes_leave_nothing_loaded_or_attached(results):
    root = probe.cgroup2_mount()
    deadline = time.monotonic() + 3
    while True:  # closed maps are freed by deferred kernel work: allow it a moment
        programs = [p["name"] for p in _bpftool("prog", "show") if p.get("name", "").startswith("snt_probe")]
        programs += [p["name"] for p in _bpftool("prog", "show") if "bprm_check" in p.get("name", "")]
        maps = [m["name"] for m in _bpftool("map", "show") if m.get("name", "").startswith("snt_probe")]
        if not (programs or maps) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert programs == [] and maps == []
    attached = [p for entry in _bpftool("cgroup", "tree", root) for p in entry["programs"]]
    assert not [p for p in attached if p["name"].startswith("snt_probe")]
    assert not [d for d in os.listdir(root) if d.startswith("sentinel-probe-")]


@pytest.mark.kernel
def test_scratch_cgroup_is_removed_even_on_error():
    with pytest.raises(RuntimeError), probe.scratch_cgroup("test") as path:
        assert os.path.isdir(path)
        raise RuntimeError("boom")
    assert not os.path.exists(path)


def _results(*ok: str) -> list[ProbeResult]:
    names = ("btf", "kernel_headers", "header_tree", "ringbuf", "tracepoint", "raw_tracepoint", "send_signal",
             "cgroup_sock_addr", "bpf_lsm", "fanotify_open_perm", "fanotify_open_exec_perm")  # fmt: skip
    return [ProbeResult(n, n in ok, error="" if n in ok else "no") for n in names]


BASE = ("btf", "header_tree", "ringbuf", "tracepoint", "raw_tracepoint")


def test_lsm_is_chosen_for_every_denial_when_loadable():
    chosen = probe.enforcement_mechanisms(
        _results(*BASE, "send_signal", "cgroup_sock_addr", "bpf_lsm", "fanotify_open_perm", "fanotify_open_exec_perm")
    )
    assert chosen == {
        "deny_exec": ("lsm",),
        "deny_open": ("lsm",),
        "deny_connect": ("lsm",),
        "kill": ("bpf-send-signal",),
    }


def test_fallbacks_without_lsm_are_the_design_table():
    chosen = probe.enforcement_mechanisms(
        _results(*BASE, "send_signal", "cgroup_sock_addr", "fanotify_open_perm", "fanotify_open_exec_perm")
    )
    assert chosen == {
        "deny_exec": ("fanotify", "kill-at-exec"),
        "deny_open": ("fanotify", "kill-at-open"),
        "deny_connect": ("cgroup-sock-addr",),
        "kill": ("bpf-send-signal",),
    }


def test_without_signals_or_fanotify_nothing_is_promised():
    chosen = probe.enforcement_mechanisms(_results(*BASE))
    assert chosen == {"deny_exec": (), "deny_open": (), "deny_connect": (), "kill": ()}


@pytest.mark.parametrize(
    ("ok", "reason"),
    [
        (BASE, None),
        (("kernel_headers", "header_tree", "ringbuf", "tracepoint"), None),
        (("header_tree", "ringbuf", "tracepoint"), "cannot compile"),
        (("btf", "ringbuf", "tracepoint"), "cannot compile"),
        (("btf", "header_tree", "tracepoint"), "ring buffer"),
        (("btf", "header_tree", "ringbuf", "raw_tracepoint"), "tracepoints"),
    ],
)
def test_missing_essentials(ok, reason):
    reasons = probe.missing_essentials(_results(*ok))
    if reason is None:
        assert reasons == []
    else:
        assert len(reasons) == 1 and reason in reasons[0]


def test_header_tree_probe_reports_a_build_failure(monkeypatch):
    def refuse(configured_cache_dir=None):
        raise KernelError("no kernel headers and no BTF: bcc cannot compile")

    monkeypatch.setattr(headers, "kernel_source", refuse)
    result = probe.probe_header_tree()
    assert not result.ok and "cannot compile" in result.error
