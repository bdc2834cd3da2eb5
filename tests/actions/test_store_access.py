"""Analysts read the store without root: a real group and user query while the agent writes."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import structlog.testing

from sentinel.actions.store import StoreWriter
from sentinel.config import StoreConfig
from sentinel.events.model import Event, Process

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates a group and a user (needs root)")

# Runs as the analyst: query repeatedly while the agent writes, then try to write.
READER = r"""
import sqlite3, sys, time
from sentinel.actions.store import open_readonly
from sentinel.errors import StoreError
path, rounds = sys.argv[1], int(sys.argv[2])
counts = []
try:
    for _ in range(rounds):
        db = open_readonly(path)
        counts.append(db.execute("SELECT count(*) FROM events").fetchone()[0])
        db.conn.close()
        time.sleep(0.05)
except StoreError as exc:
    print("error", exc)
    sys.exit(3)
db = open_readonly(path)
try:
    db.execute("INSERT INTO actions (id, time, kind) VALUES ('x', 1, 'forged')")
    print("write allowed")
    sys.exit(4)
except sqlite3.OperationalError:
    pass
print(" ".join(map(str, counts)))
"""


@pytest.fixture
def analyst():
    """A fresh group and a user in it; both removed afterwards."""
    suffix = "%d" % (os.getpid() % 100000)
    group, user = "sntl-readers-" + suffix, "sntl-analyst-" + suffix
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["useradd", "--no-create-home", "--gid", group, "--shell", "/usr/sbin/nologin", user], check=True)
        try:
            yield group, user
        finally:
            subprocess.run(["userdel", user], check=True)
    finally:
        subprocess.run(["groupdel", group], check=True)


@pytest.fixture
def shared_dir():
    base = tempfile.mkdtemp(prefix="sentinel-store-access-")
    os.chmod(base, 0o711)  # others may pass through to the store directory, not list it
    yield Path(base)
    subprocess.run(["rm", "-rf", base], check=True)


def as_user(user: str) -> dict:
    """Popen arguments that drop to `user` with exactly its own groups (not root's)."""
    entry = pwd.getpwnam(user)
    return {
        "user": entry.pw_uid,
        "group": entry.pw_gid,
        "extra_groups": os.getgrouplist(user, entry.pw_gid),
        "cwd": "/",
        "env": {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": "/"},
        "text": True,
    }


def run_reader(user: str, path: str, rounds: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", READER, path, str(rounds)], capture_output=True, timeout=120, **as_user(user))


def test_group_member_queries_while_the_agent_writes(analyst, shared_dir):
    group, user = analyst
    path = str(shared_dir / "state" / "events.db")
    writer = StoreWriter(path, StoreConfig(group=group, batch_size=20, flush_seconds=0.05), separate_process=False)
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, path, "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **as_user(user)
    )
    try:
        pid = 1
        while reader.poll() is None:
            writer.add_event(Event("execve", Process(pid, pid, comm="sh")), matched=False)
            pid += 1
            if pid % 20 == 0:
                time.sleep(0.01)
        out, err = reader.communicate()
    finally:
        writer.close()
    assert reader.returncode == 0, out + err
    counts = [int(n) for n in out.split()]
    assert len(counts) == 30
    assert counts == sorted(counts) and counts[-1] > counts[0]  # it saw the writes as they came
    gid = grp.getgrnam(group).gr_gid
    for name in (os.path.dirname(path), path):
        info = os.stat(name)
        assert info.st_gid == gid
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    # The agent stopped: the analyst still reads (no -shm to create in a directory they cannot write).
    after = run_reader(user, path, 1)
    assert after.returncode == 0, after.stdout + after.stderr
    assert int(after.stdout.split()[-1]) == pid - 1


def test_wal_files_get_group_read_while_open(analyst, shared_dir):
    group, _user = analyst
    path = str(shared_dir / "state" / "events.db")
    writer = StoreWriter(path, StoreConfig(group=group), separate_process=False)
    try:
        writer.add_event(Event("execve", Process(1, 1, comm="sh")), matched=False)
        writer.flush()
        gid = grp.getgrnam(group).gr_gid
        for suffix in ("-wal", "-shm"):
            info = os.stat(path + suffix)
            assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, 0o640), suffix
    finally:
        writer.close()


def test_user_outside_the_group_cannot_read(analyst, shared_dir):
    group, _user = analyst
    path = str(shared_dir / "state" / "events.db")
    writer = StoreWriter(path, StoreConfig(group=group), separate_process=False)
    try:
        writer.add_event(Event("execve", Process(1, 1, comm="sh")), matched=False)
        writer.flush()
        outsider = run_reader("nobody", path, 1)
    finally:
        writer.close()
    assert outsider.returncode == 3
    assert "permission denied" in outsider.stdout


@pytest.fixture
def tiny_filesystem():
    """A 1 MiB tmpfs: the disk fills up after a few thousand events."""
    mountpoint = tempfile.mkdtemp(prefix="sentinel-store-full-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", mountpoint], check=True)
    try:
        yield Path(mountpoint)
    finally:
        subprocess.run(["umount", mountpoint], check=True)
        os.rmdir(mountpoint)


def test_full_disk_costs_events_not_the_agent(tiny_filesystem):
    path = str(tiny_filesystem / "events.db")
    ballast = tiny_filesystem / "ballast"
    ballast.write_bytes(b"\0" * 400_000)
    writer = StoreWriter(path, StoreConfig(batch_size=200, flush_seconds=0.05), separate_process=False)
    try:
        with structlog.testing.capture_logs() as logs:
            for pid in range(1, 20_001):  # about 9 MB of rows into 1 MiB
                writer.add_event(Event("execve", Process(pid, pid, comm="sh", args=("-c", "x" * 300))), matched=False)
            writer.flush()
        status = writer.status()
        assert status["errors"] > 1 and status["dropped"] > 0
        assert len(logs) == 1 and logs[0]["log_level"] == "error"  # once, not per batch
        assert status["written"] + status["dropped"] == status["queued"] == 20_000
        ballast.unlink()  # space comes back: the store resumes by itself
        writer.add_event(Event("execve", Process(1, 1, comm="after")), matched=False)
        writer.flush()
        assert writer.status()["written"] == status["written"] + 1
    finally:
        writer.close()
