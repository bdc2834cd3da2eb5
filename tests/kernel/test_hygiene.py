"""Leftovers of a dead agent are removed; other tools' programs and live agents are not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sentinel.errors import KernelError
from sentinel.kernel import hygiene, probe

# A child process loads a cgroup/connect4 program named `name`, attaches it to `cgroup`
# with the legacy (persistent) attach call and exits: the program outlives it, exactly
# like the program of an agent that was killed.
ATTACH_AND_DIE = textwrap.dedent(
    """
    import os, sys
    from bcc import BPF, BPFAttachType
    from sentinel.kernel import headers
    name, cgroup = sys.argv[1], sys.argv[2]
    bpf = headers.load_bpf("int %s(struct bpf_sock_addr *ctx) { return 1; }" % name)
    fn = bpf.load_func(name.encode(), BPF.CGROUP_SOCK_ADDR, attach_type=BPFAttachType.CGROUP_INET4_CONNECT)
    fd = os.open(cgroup, os.O_RDONLY)
    BPF.attach_func(fn, fd, BPFAttachType.CGROUP_INET4_CONNECT, 2)  # BPF_F_ALLOW_MULTI
    print(fn.fd and "attached")
    """
)


def _attach_in_dead_process(name: str, cgroup: str) -> None:
    done = subprocess.run([sys.executable, "-c", ATTACH_AND_DIE, name, cgroup], capture_output=True, text=True)
    assert done.returncode == 0 and "attached" in done.stdout, done.stderr[-2000:]


def _attached(cgroup: str) -> dict[str, int]:
    tree = json.loads(
        subprocess.run(
            ["bpftool", "-j", "cgroup", "show", cgroup], capture_output=True, text=True, check=True
        ).stdout.strip()
        or "[]"
    )
    return {p["name"]: p["id"] for p in tree}


@pytest.fixture
def test_cgroup():
    with probe.scratch_cgroup("hygiene") as path:
        try:
            yield path
        finally:  # whatever a failing test left attached: detach it so rmdir works
            for prog_id in _attached(path).values():
                subprocess.run(["bpftool", "cgroup", "detach", path, "cgroup_inet4_connect", "id", str(prog_id)])


@pytest.fixture
def lock_path(tmp_path):
    return str(tmp_path / "kernel.lock")


@pytest.mark.kernel
def test_cleanup_removes_our_leftover_and_spares_another_tools(test_cgroup, lock_path, tmp_path):
    _attach_in_dead_process("snt_left_c4", test_cgroup)
    _attach_in_dead_process("othertool_c4", test_cgroup)
    before = _attached(test_cgroup)
    assert set(before) == {"snt_left_c4", "othertool_c4"}
    listed = hygiene.list_sentinel_objects(cgroup_root=test_cgroup, pin_dir=str(tmp_path / "no-pins"))
    assert [a.name for a in listed.cgroup_attachments] == ["snt_left_c4"]
    assert "snt_left_c4" in [p["name"] for p in listed.programs]

    removed = hygiene.cleanup_leftovers(cgroup_root=test_cgroup, pin_dir=str(tmp_path / "no-pins"), lock_path=lock_path)

    assert len(removed) == 1 and "snt_left_c4" in removed[0]
    after = _attached(test_cgroup)
    assert "snt_left_c4" not in after
    assert after == {"othertool_c4": before["othertool_c4"]}  # never touched
    subprocess.run(
        ["bpftool", "cgroup", "detach", test_cgroup, "cgroup_inet4_connect", "id", str(after["othertool_c4"])],
        check=True,
    )


@pytest.mark.kernel
def test_a_program_a_live_process_holds_is_kept(test_cgroup, lock_path, tmp_path):
    from bcc import BPF, BPFAttachType

    from sentinel.kernel import headers

    bpf = headers.load_bpf("int snt_live_c4(struct bpf_sock_addr *ctx) { return 1; }")
    fn = bpf.load_func(b"snt_live_c4", BPF.CGROUP_SOCK_ADDR, attach_type=BPFAttachType.CGROUP_INET4_CONNECT)
    fd = os.open(test_cgroup, os.O_RDONLY)
    try:
        BPF.attach_func(fn, fd, BPFAttachType.CGROUP_INET4_CONNECT, 2)
        assert (
            hygiene.cleanup_leftovers(cgroup_root=test_cgroup, pin_dir=str(tmp_path / "p"), lock_path=lock_path) == []
        )
        assert "snt_live_c4" in _attached(test_cgroup)
        BPF.detach_func(fn, fd, BPFAttachType.CGROUP_INET4_CONNECT)
    finally:
        os.close(fd)
        bpf.cleanup()


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from sentinel.kernel import hygiene
    lock = hygiene.acquire_kernel_lock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.kernel
def test_nothing_is_touched_while_another_agent_holds_the_lock(test_cgroup, lock_path, tmp_path):
    _attach_in_dead_process("snt_left_c4", test_cgroup)
    pins = tmp_path / "pins"
    pins.mkdir()
    (pins / "marker").write_text("")
    agent = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, lock_path], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "locked"
        with pytest.raises(KernelError, match="pid %d" % agent.pid):
            hygiene.cleanup_leftovers(cgroup_root=test_cgroup, pin_dir=str(pins), lock_path=lock_path)
        assert "snt_left_c4" in _attached(test_cgroup) and (pins / "marker").exists()
    finally:
        agent.kill()
        agent.wait()
    # the agent is dead: its lock went with it
    removed = hygiene.cleanup_leftovers(cgroup_root=test_cgroup, pin_dir=str(pins), lock_path=lock_path)
    assert any("snt_left_c4" in line for line in removed)
    assert "pin %s" % (pins / "marker") in removed and not pins.exists()


@pytest.mark.kernel
def test_pinned_objects_under_the_pin_dir_are_removed(lock_path):
    probe.ensure_kernel_filesystems()
    pin_dir = "/sys/fs/bpf/sentinel-test-%d" % os.getpid()
    os.makedirs(pin_dir)
    try:
        pin = os.path.join(pin_dir, "snt_pinned")
        subprocess.run(
            [
                "bpftool",
                "map",
                "create",
                pin,
                "type",
                "hash",
                "key",
                "4",
                "value",
                "4",
                "entries",
                "1",
                "name",
                "snt_pinned",
            ],
            check=True,
        )
        assert hygiene.list_sentinel_objects(cgroup_root=None, pin_dir=pin_dir).pins == [pin]
        with hygiene.acquire_kernel_lock(lock_path) as lock:
            assert hygiene.cleanup_leftovers(lock, cgroup_root=None, pin_dir=pin_dir) == ["pin %s" % pin]
        assert not os.path.exists(pin_dir)
    finally:
        if os.path.exists(pin_dir):
            subprocess.run(["rm", "-rf", pin_dir])


def test_kernel_lock_is_exclusive_and_released(lock_path):
    with hygiene.acquire_kernel_lock(lock_path) as lock:
        assert lock.held
        with open(lock_path) as f:
            assert f.read().strip() == str(os.getpid())
    assert not lock.held
    with pytest.raises(KernelError, match="needs the kernel lock held"):
        hygiene.cleanup_leftovers(lock)
    hygiene.acquire_kernel_lock(lock_path).release()  # free again


def test_naming_convention():
    assert hygiene.names_breaking_convention(["snt_exec", "snt_events", "tracepoint__sched__x", "exec"]) == [
        "exec",
        "tracepoint__sched__x",
    ]
    assert hygiene.is_sentinel_name("snt_deny_exec_by_inode")
