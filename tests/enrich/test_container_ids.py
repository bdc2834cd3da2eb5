"""Container ids from every runtime's cgroup layout, v1, v2 and hybrid."""

from __future__ import annotations

import os
import subprocess

import pytest

from sentinel.enrich import container
from sentinel.enrich.container import HOST, CgroupResolver, parse_cgroup, pid_exists, short_id

ID = "3f4c2b1a0e9d8c7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa00"
ID2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
POD = "pod8f2e6d1c-1b2a-4c3d-9e8f-7a6b5c4d3e2f"
POD_SYSTEMD = "pod8f2e6d1c_1b2a_4c3d_9e8f_7a6b5c4d3e2f"

LAYOUTS = [
    # (case, /proc/<pid>/cgroup text, runtime, full id, stored path)
    ("docker v1 cgroupfs", "4:memory:/docker/%s\n1:pids:/docker/%s\n0::/\n" % (ID, ID), "docker", ID, "/docker/" + ID),
    (
        "docker v2 systemd",
        "0::/system.slice/docker-%s.scope\n" % ID,
        "docker",
        ID,
        "/system.slice/docker-%s.scope" % ID,
    ),
    (
        "docker hybrid systemd",
        "8:pids:/system.slice/docker-%s.scope\n1:name=systemd:/system.slice/docker-%s.scope\n0::/\n" % (ID, ID),
        "docker",
        ID,
        "/system.slice/docker-%s.scope" % ID,
    ),
    (
        "kubernetes cgroupfs (besteffort)",
        "0::/kubepods/besteffort/%s/%s\n" % (POD, ID),
        "kubernetes",
        ID,
        "/kubepods/besteffort/%s/%s" % (POD, ID),
    ),
    (
        "kubernetes cgroupfs (guaranteed)",
        "0::/kubepods/%s/%s\n" % (POD, ID),
        "kubernetes",
        ID,
        "/kubepods/%s/%s" % (POD, ID),
    ),
    (
        "containerd systemd (kubernetes)",
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-%s.slice/cri-containerd-%s.scope\n"
        % (POD_SYSTEMD, ID),
        "containerd",
        ID,
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-%s.slice/cri-containerd-%s.scope"
        % (POD_SYSTEMD, ID),
    ),
    (
        "cri-o systemd",
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-%s.slice/crio-%s.scope\n" % (POD_SYSTEMD, ID),
        "cri-o",
        ID,
        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-%s.slice/crio-%s.scope" % (POD_SYSTEMD, ID),
    ),
    (
        "cri-o cgroupfs",
        "0::/kubepods/burstable/%s/crio-%s\n" % (POD, ID),
        "cri-o",
        ID,
        "/kubepods/burstable/%s/crio-%s" % (POD, ID),
    ),
    (
        "podman systemd",
        "0::/machine.slice/libpod-%s.scope/container\n" % ID,
        "podman",
        ID,
        "/machine.slice/libpod-%s.scope/container" % ID,
    ),
    ("podman cgroupfs", "0::/libpod_parent/libpod-%s\n" % ID, "podman", ID, "/libpod_parent/libpod-%s" % ID),
    (
        "nerdctl systemd",
        "0::/system.slice/nerdctl-%s.scope\n" % ID,
        "containerd",
        ID,
        "/system.slice/nerdctl-%s.scope" % ID,
    ),
    ("containerd cgroupfs", "0::/default/%s\n" % ID, "containerd", ID, "/default/" + ID),
    ("lxc v1", "5:pids:/lxc/web01\n0::/\n", "lxc", "web01", "/lxc/web01"),
    ("lxc 4 payload", "0::/lxc.payload.web01/init.scope\n", "lxc", "web01", "/lxc.payload.web01/init.scope"),
    (
        "docker in docker: the innermost",
        "0::/docker/%s/docker/%s\n" % (ID, ID2),
        "docker",
        ID2,
        "/docker/%s/docker/%s" % (ID, ID2),
    ),
]


@pytest.mark.parametrize("text,runtime,full_id,path", [case[1:] for case in LAYOUTS], ids=[case[0] for case in LAYOUTS])
def test_container_layouts(text, runtime, full_id, path):
    info = parse_cgroup(text)
    assert info.runtime == runtime
    assert info.full_id == full_id
    assert info.container_id == short_id(full_id)
    assert info.path == path


HOST_LAYOUTS = [
    (
        "v2 user session",
        "0::/user.slice/user-1000.slice/session-2.scope\n",
        "/user.slice/user-1000.slice/session-2.scope",
    ),
    ("v2 docker daemon itself", "0::/system.slice/docker.service\n", "/system.slice/docker.service"),
    ("podman conmon", "0::/machine.slice/libpod-conmon-%s.scope\n" % ID, "/machine.slice/libpod-conmon-%s.scope" % ID),
    ("cri-o conmon", "0::/system.slice/crio-conmon-%s.scope\n" % ID, "/system.slice/crio-conmon-%s.scope" % ID),
    ("lxc monitor", "0::/lxc.monitor.web01\n", "/lxc.monitor.web01"),
    (
        "hybrid host: v1 pids path preferred to the v2 root",
        "9:name=systemd:/system.slice/ssh.service\n8:pids:/system.slice/ssh.service\n4:memory:/x\n0::/\n",
        "/system.slice/ssh.service",
    ),
    ("hybrid host at the root", "9:name=systemd:/\n1:cpu,cpuacct:/\n0::/\n", "/"),
    ("cpu controller when pids is absent", "2:cpu,cpuacct:/batch\n0::/\n", "/batch"),
]


@pytest.mark.parametrize("text,path", [case[1:] for case in HOST_LAYOUTS], ids=[case[0] for case in HOST_LAYOUTS])
def test_host_layouts(text, path):
    info = parse_cgroup(text)
    assert info.container_id == HOST
    assert info.runtime == "" and info.full_id == ""
    assert info.path == path


def test_short_id_matches_falco():
    assert short_id(ID) == ID[:12]
    assert short_id("web01") == "web01"


def test_only_v2_only_hosts_cache_by_cgroup_id(fake_proc):
    resolver = CgroupResolver(str(fake_proc.root))
    fake_proc.add(30, cgroup="0::/system.slice/docker-%s.scope\n" % ID)
    assert resolver.resolve(30, cgroup_id=777).container_id == ID[:12]
    fake_proc.remove(30)
    # Cached: a process of the same v2 cgroup resolves even when already gone.
    assert resolver.resolve(30, cgroup_id=777).container_id == ID[:12]
    assert resolver.resolve(30, cgroup_id=778) is None

    # Hybrid: the v2 id is shared by host and container processes, so never cached.
    fake_proc.add(31, cgroup="1:pids:/docker/%s\n0::/system.slice/containerd.service\n" % ID)
    assert resolver.resolve(31, cgroup_id=900).container_id == ID[:12]
    fake_proc.add(31, cgroup="1:pids:/system.slice/containerd.service\n0::/system.slice/containerd.service\n")
    assert resolver.resolve(31, cgroup_id=900).container_id == HOST


def test_hybrid_hosts_cache_by_css_set_until_it_may_have_been_reused(fake_proc):
    now = [100.0]
    resolver = CgroupResolver(str(fake_proc.root), max_age=60.0, clock=lambda: now[0])
    container = "1:pids:/docker/%s\n0::/system.slice/containerd.service\n" % ID
    host = "1:pids:/system.slice/containerd.service\n0::/system.slice/containerd.service\n"
    fake_proc.add(40, cgroup=container)
    assert resolver.resolve(40, cgroup_id=900, cgroups_key=0xAAA0).container_id == ID[:12]
    fake_proc.remove(40)
    # Another task with the same css_set is in the same cgroups: no read needed.
    assert resolver.resolve(41, cgroup_id=900, cgroups_key=0xAAA0).container_id == ID[:12]
    # Same v2 cgroup, other css_set (v1 cgroups differ): read afresh.
    fake_proc.add(42, cgroup=host)
    assert resolver.resolve(42, cgroup_id=900, cgroups_key=0xBBB0).container_id == HOST
    # An old answer may belong to a css_set since freed and reallocated: read again.
    now[0] += 61.0
    fake_proc.add(43, cgroup=host)
    assert resolver.resolve(43, cgroup_id=900, cgroups_key=0xAAA0).container_id == HOST


def test_malformed_lines_are_skipped():
    info = parse_cgroup("garbage\n\n0::/docker/%s\n" % ID)
    assert info.container_id == ID[:12]


def test_pid_exists_tells_a_running_process_from_a_reaped_one():
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    assert pid_exists(os.getpid())
    assert not pid_exists(child.pid)


def test_resolver_does_not_read_proc_for_a_reaped_process(monkeypatch):
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    opened = []
    monkeypatch.setattr(container, "read_at", lambda dir_fd, name: opened.append(name))
    assert CgroupResolver("/proc").resolve(child.pid, 0, 0) is None
    assert opened == []


def test_only_a_procfs_of_our_own_pid_namespace_is_checked_with_kill(tmp_path):
    assert container.shows_our_pids("/proc")
    assert not container.shows_our_pids(str(tmp_path))  # a fake /proc: every read goes to the files
