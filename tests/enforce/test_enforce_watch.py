"""The inotify watcher that makes deny entries follow replaced paths (no root needed)."""

from __future__ import annotations

import os
import threading

from sentinel.actions.enforce_watch import PathWatcher, watch_directory


def test_the_watched_directory_is_the_nearest_existing_ancestor(tmp_path):
    assert watch_directory(str(tmp_path / "file")) == str(tmp_path)
    assert watch_directory(str(tmp_path / "missing" / "deeper" / "file")) == str(tmp_path)
    assert watch_directory("/") == "/"


def test_a_file_replaced_by_rename_calls_on_change(tmp_path):
    changed = threading.Event()
    watcher = PathWatcher(changed.set, backstop_seconds=60)
    try:
        target = tmp_path / "tool"
        target.write_text("old")
        watcher.watch([str(target)])
        assert watcher.watched() == [str(tmp_path)]
        (tmp_path / "tool.new").write_text("new")
        assert not changed.wait(0.2)  # another name: nothing to re-resolve
        os.rename(tmp_path / "tool.new", target)
        assert changed.wait(5)
        assert watcher.changes == 1
    finally:
        watcher.close()


def test_watches_follow_the_wanted_set_and_the_backstop_fires_without_events(tmp_path):
    calls = []
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fired = threading.Event()
    watcher = PathWatcher(lambda: (calls.append(1), fired.set()), backstop_seconds=0.2)
    try:
        watcher.watch([str(tmp_path / "a" / "x"), str(tmp_path / "b" / "y")])
        assert watcher.watched() == [str(tmp_path / "a"), str(tmp_path / "b")]
        watcher.watch([str(tmp_path / "b" / "y")])
        assert watcher.watched() == [str(tmp_path / "b")]
        assert fired.wait(5)  # no event at all: the periodic backstop still re-resolves
        assert watcher.changes == 0
    finally:
        watcher.close()


def test_a_watched_directory_moved_away_is_replaced_by_the_new_one(tmp_path):
    changed = threading.Event()
    watched = tmp_path / "dir"
    watched.mkdir()
    watcher = PathWatcher(changed.set, backstop_seconds=60)
    try:
        watcher.watch([str(watched / "tool")])
        os.rename(watched, tmp_path / "dir.old")
        watched.mkdir()
        assert changed.wait(5)
        watcher.watch([str(watched / "tool")])  # what on_change does after re-resolving
        changed.clear()
        (watched / "tool").write_text("new")  # in the NEW directory
        assert changed.wait(5)
    finally:
        watcher.close()


def test_other_names_in_a_watched_directory_do_not_refresh(tmp_path):
    changed = threading.Event()
    watcher = PathWatcher(changed.set, backstop_seconds=60)
    try:
        watcher.watch([str(tmp_path / "tool"), str(tmp_path / "missing" / "deeper" / "x")])
        for i in range(20):
            (tmp_path / ("noise%d" % i)).write_text("x")  # a busy directory's churn
        assert not changed.wait(0.5)
        (tmp_path / "missing").mkdir()  # a directory on the way to a watched path
        assert changed.wait(5)
        changed.clear()
        (tmp_path / "tool").write_text("x")
        assert changed.wait(5)
        assert watcher.changes == 2
    finally:
        watcher.close()
