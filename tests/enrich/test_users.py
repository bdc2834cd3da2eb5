"""User names resolved in each process's own root, with caching and invalidation."""

from __future__ import annotations

import os

from fakeproc import FakeClock, make_root

from sentinel.enrich.users import UNSET_LOGINUID, parse_id_file

CONTAINER_PASSWD = "root:x:0:0::/root:/bin/sh\nnginx:x:1000:1000::/var/www:/sbin/nologin\n"
CONTAINER_GROUP = "root:x:0:\nwww-data:x:1000:\n"


def test_parse_id_file_first_entry_wins_and_skips_garbage():
    text = "# comment\nroot:x:0:0::/:/bin/sh\nbroken\ntoor:x:0:0::/:/bin/sh\nbad:x:notanumber:0\n:x:5:5\n"
    assert parse_id_file(text) == {0: "root"}


def test_host_process_uses_host_database(fake_proc):
    fake_proc.add(50, uid=1000)
    users = fake_proc.users()
    assert users.names(50, 1000, 1000, 1000) == ("alice", "alice", "alice")
    assert users.names(50, 0, 50, UNSET_LOGINUID) == ("root", "staff", "")


def test_container_process_uses_its_own_root(fake_proc, tmp_path):
    container_root = make_root(tmp_path / "container", CONTAINER_PASSWD, CONTAINER_GROUP)
    fake_proc.add(51, uid=1000, root=container_root)
    users = fake_proc.users()
    assert users.names(51, 1000, 1000, 0) == ("nginx", "www-data", "root")
    # the same uid on the host is somebody else
    fake_proc.add(52, uid=1000)
    assert users.names(52, 1000, 1000, UNSET_LOGINUID) == ("alice", "alice", "")


def test_unknown_ids_are_empty(fake_proc):
    fake_proc.add(53)
    assert fake_proc.users().names(53, 4242, 4242, 4242) == ("", "", "")


def test_gone_container_process_resolves_nothing(fake_proc):
    users = fake_proc.users()
    assert users.names(999, 0, 0, 0) == ("", "", "")
    assert users.names(999, 0, 0, 0, on_host=True) == ("root", "root", "root")


def test_passwd_change_is_seen_after_recheck_period(fake_proc, tmp_path):
    clock = FakeClock()
    container_root = make_root(tmp_path / "container", CONTAINER_PASSWD, CONTAINER_GROUP)
    fake_proc.add(54, root=container_root)
    users = fake_proc.users(clock=clock, recheck_seconds=1.0)
    assert users.names(54, 1001, 0, UNSET_LOGINUID)[0] == ""
    passwd = container_root / "etc/passwd"
    passwd.write_text(CONTAINER_PASSWD + "app:x:1001:1001::/app:/bin/sh\n")
    stat = passwd.stat()
    os.utime(passwd, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert users.names(54, 1001, 0, UNSET_LOGINUID)[0] == ""  # within the recheck period: cached
    clock.now += 1.5
    assert users.names(54, 1001, 0, UNSET_LOGINUID)[0] == "app"


def test_roots_are_cached_by_identity_not_by_pid(fake_proc, tmp_path):
    container_root = make_root(tmp_path / "container", CONTAINER_PASSWD, CONTAINER_GROUP)
    fake_proc.add(55, root=container_root)
    fake_proc.add(56, root=container_root)
    users = fake_proc.users()
    users.names(55, 1000, 0, 0)
    users.names(56, 1000, 0, 0)
    assert len(users._roots) == 1
