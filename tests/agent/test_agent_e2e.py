"""`sentinel run` on the real kernel: suspicious actions raise alerts, benign ones do not.

Each test starts the real agent (compile, attach, bootstrap) with its own DB, alerts file
and control socket, performs actions on files and processes it created, and reads the
alerts from the JSON lines and from the store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sentinel.control import request

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.kernel

EXEC_FROM_TMP = "Execution from shared memory or temporary directory"
SHELL_FROM_WEB = "Shell spawned by a web server"


@pytest.fixture
def shm_dir():
    directory = Path("/dev/shm") / ("sentinel-test-" + uuid.uuid4().hex[:8])
    directory.mkdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def stored_alerts(db: Path, rule: str) -> list[dict]:
    with sqlite3.connect("file:%s?mode=ro" % db, uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM alerts WHERE rule = ?", (rule,))]


def wait_stored(db: Path, rule: str, predicate, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in stored_alerts(db, rule):
            if predicate(row):
                return row
        time.sleep(0.2)
    raise AssertionError("alert %r not in the store" % rule)


def test_suspicious_actions_alert_with_ancestry_and_benign_ones_do_not(start_agent, agent_dir, shm_dir):
    agent = start_agent()
    token = uuid.uuid4().hex

    # A payload dropped in /dev/shm and run from there.
    payload = shm_dir / "payload"
    shutil.copy("/bin/true", payload)
    subprocess.run([str(payload), token], check=True)

    # A shell started by a process called nginx (a copy of dash under that name).
    web_dir = agent_dir / "srv"
    web_dir.mkdir()
    nginx = web_dir / "nginx"
    shutil.copy("/bin/dash", nginx)
    subprocess.run([str(nginx), "-c", "/bin/sh -c 'true %s'; true" % token], check=True)

    # Benign: a system binary with the same token.
    subprocess.run(["/bin/true", "benign-" + token], check=True)

    from_shm = agent.wait_for_alert(lambda a: a["rule"] == EXEC_FROM_TMP and token in a["output"])
    assert from_shm["output_fields"]["proc.exepath"] == str(payload)
    assert from_shm["priority"] == "Warning"
    assert {"time", "rule", "priority", "source", "hostname", "output", "tags", "output_fields"} <= set(from_shm)
    assert from_shm["host"]["machine_id"] and from_shm["ruleset_version"]

    shell = agent.wait_for_alert(lambda a: a["rule"] == SHELL_FROM_WEB and token in a["output"])
    assert shell["output_fields"]["proc.pname"] == "nginx"

    # In the store, with the ancestry at that moment: nginx <- this test (pytest's python).
    row = wait_stored(agent.db, SHELL_FROM_WEB, lambda r: token in r["output"])
    chain = json.loads(row["ancestry"])
    assert chain[0]["comm"] == "nginx" and chain[0]["exepath"] == str(nginx)
    assert os.getpid() in [p["pid"] for p in chain]

    time.sleep(1.0)
    assert not [a for a in agent.alerts() if "benign-" + token in a["output"]]


def test_broken_rule_file_on_reload_keeps_the_old_rules(start_agent, agent_dir, shm_dir):
    rules_dir = agent_dir / "rules"
    rules_dir.mkdir()
    shutil.copy(REPO / "rules" / "sentinel_rules.yaml", rules_dir)
    agent = start_agent(rules=[rules_dir])
    before = request(str(agent.socket_path), "status")["ruleset_version"]

    (rules_dir / "broken.yaml").write_text("- rule: Broken\n  desc: x\n  condition: proc.name = = x\n  output: x\n  priority: WARNING\n")
    agent.process.send_signal(signal.SIGHUP)
    failure = agent.wait_for_alert(lambda a: a["rule"] == "Sentinel rule reload failed")
    assert "broken.yaml:3:26" in failure["output"]
    status = request(str(agent.socket_path), "status")
    assert status["ruleset_version"] == before
    assert status["counters"]["reload_failed"] >= 1

    # The old rules still work.
    payload = shm_dir / "still-detected"
    shutil.copy("/bin/true", payload)
    subprocess.run([str(payload)], check=True)
    agent.wait_for_alert(lambda a: a["rule"] == EXEC_FROM_TMP and str(payload) in a["output"])

    # A fixed file is picked up on its own (file change), and its rule works.
    (rules_dir / "broken.yaml").write_text(
        "- rule: Marker program ran\n  desc: test\n  condition: evt.type = execve and proc.name = marker-prog\n"
        "  output: marker ran %proc.cmdline\n  priority: NOTICE\n"
    )
    deadline = time.monotonic() + 15
    while request(str(agent.socket_path), "status")["ruleset_version"] == before:
        assert time.monotonic() < deadline, "the changed rule file was not reloaded"
        time.sleep(0.3)
    marker = agent_dir / "marker-prog"
    shutil.copy("/bin/true", marker)
    subprocess.run([str(marker)], check=True)
    agent.wait_for_alert(lambda a: a["rule"] == "Marker program ran")


def test_sigterm_during_a_burst_stores_every_accepted_event(start_agent, agent_dir):
    agent = start_agent()
    burst = subprocess.Popen(
        ["/bin/sh", "-c", "i=0; while [ $i -lt 3000 ]; do /bin/true burst-$i; i=$((i+1)); done"],
    )
    time.sleep(1.5)
    assert agent.stop(signal.SIGTERM) == 0
    burst.wait()
    stopped = [r for r in agent.log_records() if r.get("event") == "agent.stopped"]
    assert stopped, agent.log_path.read_text()[-3000:]
    store = stopped[0]["store"]
    assert store["dropped"] == 0 and store["errors"] == 0 and store["written"] > 0
    with sqlite3.connect(agent.db) as conn:
        stored_bursts = conn.execute("SELECT count(*) FROM events WHERE proc_args LIKE 'burst-%'").fetchone()[0]
        total_rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert stored_bursts > 100
    assert total_rows == stopped[0]["events.stored"]


def test_unwritable_store_is_reported_and_alerts_still_flow(start_agent, shm_dir):
    agent = start_agent(db="/proc/sentinel-cannot-write-here/events.db")
    failure = agent.wait_for_alert(lambda a: a["rule"] == "Sentinel store unavailable")
    assert "/proc/sentinel-cannot-write-here" in failure["output"]
    payload = shm_dir / "no-store"
    shutil.copy("/bin/true", payload)
    subprocess.run([str(payload)], check=True)
    agent.wait_for_alert(lambda a: a["rule"] == EXEC_FROM_TMP and str(payload) in a["output"])
    assert request(str(agent.socket_path), "status")["store"]["error"]


def test_executed_processes_are_recorded_with_their_parent(start_agent, agent_dir):
    agent = start_agent()
    token = uuid.uuid4().hex
    child = subprocess.Popen(["/bin/sleep", "30", token])
    try:
        deadline = time.monotonic() + 10
        row = None
        while row is None and time.monotonic() < deadline:
            time.sleep(0.3)
            with sqlite3.connect("file:%s?mode=ro" % agent.db, uri=True) as conn:
                conn.row_factory = sqlite3.Row
                row = conn.execute("SELECT * FROM processes WHERE pid = ?", (child.pid,)).fetchone()
        assert row is not None, "exec of pid %d not in the processes table" % child.pid
        assert row["ppid"] == os.getpid()
        assert token in row["cmdline"] and row["exepath"].endswith("sleep")
    finally:
        child.kill()
        child.wait()


def test_alerts_and_events_are_forwarded_through_the_outbox(start_agent, agent_dir, shm_dir):
    siem = agent_dir / "siem.jsonl"
    agent = start_agent(
        extra_config=(
            "forward:\n  outbox: %s\n"
            "outputs:\n"
            "  - {name: alerts-only, type: jsonfile, path: %s}\n"
            "  - {name: with-events, type: jsonfile, path: %s, events: true}\n"
        )
        % (agent_dir / "outbox.db", siem, agent_dir / "siem-events.jsonl")
    )
    payload = shm_dir / "forwarded"
    shutil.copy("/bin/true", payload)
    token = uuid.uuid4().hex
    subprocess.run([str(payload), token], check=True)
    alert = agent.wait_for_alert(lambda a: a["rule"] == EXEC_FROM_TMP and token in a["output"])

    def forwarded(path: Path) -> list[dict]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    deadline = time.monotonic() + 15
    while not any(r.get("id") == alert["id"] for r in forwarded(siem)):
        assert time.monotonic() < deadline, "alert not forwarded: %s" % forwarded(siem)[-3:]
        time.sleep(0.2)
    assert all(r["kind"] == "alert" for r in forwarded(siem))
    record = next(r for r in forwarded(siem) if r["id"] == alert["id"])
    assert record["output"] == alert["output"] and record["time"] == alert["time"]

    # The events output also gets the exec itself, with the same id as in the store.
    deadline = time.monotonic() + 15
    while True:
        events = [r for r in forwarded(agent_dir / "siem-events.jsonl") if r["kind"] == "event" and token in json.dumps(r)]
        if events:
            break
        assert time.monotonic() < deadline, "event not forwarded"
        time.sleep(0.2)
    assert events[0]["evt"]["proc.exepath"] == str(payload)
    # The store writes in batches: the forwarded copy may arrive before the batch commits.
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect("file:%s?mode=ro" % agent.db, uri=True) as conn:
            if conn.execute("SELECT count(*) FROM events WHERE id = ?", (events[0]["id"],)).fetchone()[0] == 1:
                break
        assert time.monotonic() < deadline, "forwarded event id not in the store"
        time.sleep(0.2)


def test_a_part_failing_at_start_stops_the_others_and_exits(agent_dir):
    """The store, forwarder and enforcement start before the sensor; when the sensor's process
    table refuses its configuration (a check made at start, not when the file loads) the
    process must still exit (nothing left holding it alive)."""
    config = agent_dir / "bad.yaml"
    config.write_text(
        "sensor:\n  process_table_max: 0\ncontrol:\n  socket: %s\nforward:\n  outbox: %s\n"
        "outputs:\n  - {name: f, type: jsonfile, path: %s}\n"
        % (agent_dir / "c.sock", agent_dir / "outbox.db", agent_dir / "f.jsonl")
    )
    result = subprocess.run(
        [sys.executable, "-m", "sentinel.cli", "run", "--config", str(config), "--db", str(agent_dir / "e.db")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 1
    assert "sensor.process_table_max must be at least 1, not 0" in result.stderr
    assert "agent.stopped" in result.stderr


def test_a_broken_rule_file_at_start_exits_with_its_location_and_leaves_nothing_attached(agent_dir):
    """The rules load alongside the enforcement programs: their error must still stop the
    start, after the enforcement that did load is closed again."""
    broken = agent_dir / "broken.yaml"
    broken.write_text("- rule: Broken\n  desc: x\n  condition: proc.name = = x\n  output: x\n  priority: WARNING\n")
    config = agent_dir / "sentinel.yaml"
    config.write_text("control:\n  socket: %s\n" % (agent_dir / "c.sock"))
    result = subprocess.run(
        [sys.executable, "-m", "sentinel.cli", "run", "--config", str(config), "--db", str(agent_dir / "e.db"),
         "--rules", str(broken)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 1
    assert "broken.yaml:3:26" in result.stderr
    assert "enforce.mechanisms" in result.stderr  # the enforcement had started...
    assert "agent.stopped" in result.stderr  # ...and shutdown() closed it


def test_status_says_where_the_start_time_went(start_agent):
    agent = start_agent()
    status = request(str(agent.socket_path), "status")
    phases = status["start_seconds"]
    assert list(phases) == ["store_spawn", "kernel_claim", "enforcement_and_rules", "store_wait", "sensor"]
    assert all(seconds >= 0 for seconds in phases.values()) and phases["sensor"] > 0
    assert 0 < status["rules_load_seconds"] <= phases["enforcement_and_rules"] + phases["kernel_claim"]
