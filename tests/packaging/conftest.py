"""Fixtures for the packaging tests: the .deb built once per session, and throw-away Debian
bookworm root filesystems (debootstrap) to install it into.

The package is never installed on this machine itself: each install test gets its own
copy of a debootstrap root and works in it with chroot. Every chroot command runs in a
private mount namespace (unshare) where /proc, /sys and /dev are mounted for it, so the
mounts vanish with the command and cannot outlive a failing test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "packaging/deb/build.sh"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("SENTINEL_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the package depends on: fetched once into the base root's apt cache.
RUNTIME_DEBS = ("python3", "python3-bpfcc", "bpftool")


def build_deb(out: Path, version: str | None = None) -> Path:
    command = [str(BUILD_SCRIPT), "--out", str(out)] + (["--version", version] if version else [])
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    deb = Path(result.stdout.strip().splitlines()[-1])
    assert deb.is_file()
    return deb


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [point for point in points if point == str(path) or point.startswith(str(path) + "/")]


def remove_root(path: Path) -> None:
    """rmtree, after making sure nothing of the host is mounted inside (it would be erased)."""
    mounted = _mounts_under(path)
    assert mounted == [], "refusing to delete %s: mounted inside: %s" % (path, mounted)
    shutil.rmtree(path)


class Rootfs:
    """A Debian root filesystem on disk, worked in with chroot."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, command: str, *, check: bool = True, timeout: float = 600, env: dict | None = None):
        """Run `command` with /bin/sh -c inside the root; returns the CompletedProcess."""
        setup = (
            'mount -t proc proc "$ROOT/proc" && mount --rbind /sys "$ROOT/sys" && '
            'mount --rbind /dev "$ROOT/dev" && exec chroot "$ROOT" /bin/sh -c "$COMMAND"'
        )
        environment = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND": "noninteractive",
            "LC_ALL": "C.UTF-8",
            "HOME": "/root",
            **(env or {}),
            "ROOT": str(self.path),
            "COMMAND": command,
        }
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", setup],
            capture_output=True,
            text=True,
            env=environment,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, "%s\n--- stdout\n%s\n--- stderr\n%s" % (command, result.stdout[-3000:], result.stderr[-3000:])
        return result

    def put(self, source: Path, inside: str) -> str:
        target = self.path / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        return inside

    def files(self) -> set[str]:
        """Every path in the root, relative to it."""
        return {"/" + str(p.relative_to(self.path)) for p in self.path.rglob("*")}


@pytest.fixture(scope="session")
def debian_suite() -> str:
    """The Debian release of the roots (a test module cannot import conftest reliably)."""
    return DEBIAN_SUITE


@pytest.fixture(scope="session")
def built_deb(tmp_path_factory) -> Path:
    return build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def debian_base(tmp_path_factory):
    """debootstrap --variant=minbase bookworm, apt lists fetched and the dependencies of
    the package downloaded (not installed) so each test's install is quick."""
    if os.geteuid() != 0:
        pytest.skip("debootstrap, chroot and mount namespaces need root (CI runs as root)")
    path = tmp_path_factory.mktemp("debian") / DEBIAN_SUITE
    try:
        # debootstrap mounts /proc and /sys in the target itself: in a private namespace.
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "debootstrap", "--variant=minbase", DEBIAN_SUITE, str(path), DEBIAN_MIRROR],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        shutil.copy("/etc/resolv.conf", path / "etc/resolv.conf")
        # No service may start inside a chroot (the Debian convention for build roots).
        policy = path / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        # No fsync per unpacked file: a throw-away root (3x faster installs).
        (path / "etc/dpkg/dpkg.cfg.d/unsafe-io").write_text("force-unsafe-io\n")
        base = Rootfs(path)
        base.run("apt-get update -qq")
        base.run("apt-get install -qq -y --download-only --no-install-recommends %s" % " ".join(RUNTIME_DEBS))
        yield path
    finally:
        if path.exists():
            remove_root(path)


def _copy(source: Path, target: Path) -> Path:
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    return target


@pytest.fixture(scope="session")
def debian_with_runtime(debian_base, tmp_path_factory):
    """The base root with the package's dependencies installed."""
    path = _copy(debian_base, tmp_path_factory.mktemp("debian-runtime") / DEBIAN_SUITE)
    try:
        Rootfs(path).run("apt-get install -qq -y --no-install-recommends %s" % " ".join(RUNTIME_DEBS))
        yield path
    finally:
        remove_root(path)


@pytest.fixture
def bare_rootfs(debian_base, tmp_path) -> Rootfs:
    """A private copy of the minimal root (no python3) for one test, deleted afterwards."""
    path = _copy(debian_base, tmp_path / "root")
    yield Rootfs(path)
    remove_root(path)


@pytest.fixture
def rootfs(debian_with_runtime, tmp_path) -> Rootfs:
    """A private copy of the root with the dependencies installed, deleted afterwards."""
    path = _copy(debian_with_runtime, tmp_path / "root")
    yield Rootfs(path)
    remove_root(path)
