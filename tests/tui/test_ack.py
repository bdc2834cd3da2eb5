"""Acknowledging alerts through the agent's store writer (in-thread and store-process sinks)."""

from __future__ import annotations

import sqlite3

import pytest

from sentinel.actions.store import StoreWriter
from sentinel.config import StoreConfig


@pytest.mark.parametrize("separate_process", [False, True], ids=["thread", "store-process"])
def test_store_writer_acknowledges_a_just_raised_alert_and_records_the_action(tmp_path, separate_process):
    path = str(tmp_path / "events.db")
    writer = StoreWriter(path, StoreConfig(flush_seconds=30), separate_process=separate_process)
    try:
        alert_id = writer.add_alert({"rule": "R", "priority": "warning", "output": "o", "time_ns": 1})
        other_id = writer.add_alert({"rule": "R", "priority": "warning", "output": "o", "time_ns": 2})
        # Still only in memory (flush_seconds is long): acknowledge() writes it first.
        assert writer.acknowledge([alert_id], "uid 0") == 1
        assert writer.acknowledge([alert_id], "uid 0") == 0  # already acknowledged
    finally:
        writer.close()
    conn = sqlite3.connect(path)
    states = dict(conn.execute("SELECT id, acknowledged FROM alerts"))
    assert states == {alert_id: 1, other_id: 0}
    actions = conn.execute("SELECT kind, target, outcome, detail FROM actions ORDER BY seq").fetchall()
    assert actions[0] == ("ack", alert_id, "acknowledged", "uid 0")
