"""SigmaHQ Linux rules on real kernel events: run harmless commands, check the alerts they raise.

The SigmaHQ compatibility corpus (beside the checkout) is loaded through the rule engine (as `sentinel run --rules` does),
the sensor attaches what the ruleset's interest asks for, and each action below is a real
exec whose event must raise exactly the Sigma rules listed for it. Every action only touches
files under the test's own temporary folder (and one copy of /usr/bin/true in /dev/shm that
the test removes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from sentinel.config import Config
from sentinel.events.model import Event
from sentinel.rules.ruleset import load_rules
from sentinel.sensor import Sensor

pytestmark = pytest.mark.kernel

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "compat" / "sigma"
WAIT_SECONDS = 10.0


@dataclass
class Action:
    """A command to run (argv[0] as a user would type it, the binary to exec) and the rules it must raise."""

    argv: list[str]
    executable: str
    expected: set[str]
    pid: int = 0


@pytest.fixture(scope="module")
def ruleset():
    return load_rules([str(CORPUS)])


@pytest.fixture(scope="module")
def sensor(ruleset):
    assert {"execve", "execveat"} <= ruleset.interest.event_types
    sensor = Sensor(Config(), ruleset.interest)
    sensor.start()
    yield sensor
    sensor.close()


@pytest.fixture
def workdir():
    """A fresh folder under /tmp (several rules look for '/tmp/' in the command line)."""
    path = Path("/tmp") / ("sentinel-sigma-" + uuid.uuid4().hex)
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def actions_in(workdir: Path, shm_copy: Path) -> list[Action]:
    history = workdir / ".bash_history"
    plain = workdir / "file.txt"
    encoded = workdir / "encoded.txt"
    tmp_true = workdir / "true"
    return [
        Action(["base64", "-d", str(encoded)], "/usr/bin/base64", {"Decode Base64 Encoded Text"}),
        Action(["chattr", "-i", str(plain)], "/usr/bin/chattr", {"Remove Immutable File Attribute"}),
        Action(["uname", "-a"], "/usr/bin/uname", {"System Information Discovery"}),
        Action(["cat", str(history)], "/usr/bin/cat", {"Print History File Contents"}),
        Action(["rm", "-f", str(history)], "/usr/bin/rm", {"File Deletion", "History File Deletion"}),
        Action(
            ["touch", "-t", "202001010000", str(workdir / "evil.service")],
            "/usr/bin/touch",
            {"Touch Suspicious Service File"},
        ),
        Action(
            ["mkfifo", str(workdir / "fifo")],
            "/usr/bin/mkfifo",
            {"Named Pipe Created Via Mkfifo", "Potentially Suspicious Named Pipe Created Via Mkfifo"},
        ),
        Action(
            ["find", str(workdir), "-perm", "-4000", "-print"],
            "/usr/bin/find",
            {
                "Potential Discovery Activity Using Find - Linux",
                "Linux Recon Indicators",
                "File and Directory Discovery - Linux",
            },
        ),
        Action(["chmod", "600", str(plain)], "/usr/bin/chmod", {"Chmod Targeting Sensitive Directories"}),
        Action(["bash", "-i", "-c", "true"], "/usr/bin/bash", {"Bash Interactive Shell"}),
        Action(["sh", "-c", "echo true | sh"], "/usr/bin/sh", {"Linux Shell Pipe to Shell"}),
        Action(
            ["sh", "-c", "cat %s" % plain],
            "/usr/bin/sh",
            {"Execution Of Script Located In Potentially Suspicious Directory"},
        ),
        Action([str(shm_copy)], str(shm_copy), {"Process Execution From Shared Memory Directory"}),
        Action([str(tmp_true)], str(tmp_true), {"Potentially Suspicious Execution From Tmp Folder"}),
        Action(["nohup", str(tmp_true)], "/usr/bin/nohup", {"Nohup Execution", "Suspicious Nohup Execution"}),
        Action(["getcap", "-r", str(workdir)], "/usr/sbin/getcap", {"Capabilities Discovery - Linux"}),
    ]


def run(action: Action, cwd: Path) -> None:
    proc = subprocess.Popen(
        action.argv,
        executable=action.executable,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(cwd)},
    )
    action.pid = proc.pid
    proc.wait(timeout=30)


def first_exec_of(sensor: Sensor, actions: list[Action]) -> dict[int, object]:
    """The first successful exec event of each action's pid (the program the test started)."""
    wanted = {action.pid for action in actions}
    found: dict[int, object] = {}
    deadline = time.monotonic() + WAIT_SECONDS
    while wanted - found.keys() and time.monotonic() < deadline:
        for event in sensor.poll(0.1):
            pid = event.proc.pid
            if pid in wanted and pid not in found and event.type in ("execve", "execveat") and event.res == 0:
                found[pid] = event
    missing = [action.argv for action in actions if action.pid not in found]
    assert not missing, "no exec event for %s" % missing
    return found


def test_process_creation_rules_raise_alerts_on_real_execs(ruleset, sensor, workdir):
    (workdir / ".bash_history").write_text("ls\n")
    (workdir / "file.txt").write_text("sentinel sigma test\n")
    (workdir / "encoded.txt").write_text("c2VudGluZWw=\n")
    shutil.copy2("/usr/bin/true", workdir / "true")
    shm_copy = Path("/dev/shm") / ("sentinel-sigma-" + uuid.uuid4().hex)
    shutil.copy2("/usr/bin/true", shm_copy)
    try:
        actions = actions_in(workdir, shm_copy)
        sensor.poll(0.05)  # drop what happened before
        for action in actions:
            run(action, workdir)
        events = first_exec_of(sensor, actions)
    finally:
        shm_copy.unlink(missing_ok=True)

    raised: set[str] = set()
    for action in actions:
        event = events[action.pid]
        matched = {rule.name: rule for rule in ruleset.match(event) if rule.source == "sigma"}
        assert set(matched) == action.expected, (action.argv, event.proc.exepath, event.proc.exe, event.proc.args)
        for rule in matched.values():
            output = rule.render_output(event)
            assert output.startswith(rule.name + " (sigma ") and "image=%s" % event.proc.exepath in output
            assert "sigma" in rule.tags and rule.priority in ("informational", "notice", "warning", "error", "critical")
        raised |= set(matched)
    assert len(raised) >= 10, sorted(raised)
    assert len(raised) == len(set().union(*(action.expected for action in actions)))


def test_a_failed_exec_raises_no_process_creation_alert(ruleset, sensor, workdir):
    """`bash -i` failing to exec a missing program: the same process with res 0 would match."""
    missing = workdir / "missing-program"
    sensor.poll(0.05)
    subprocess.run(
        ["bash", "-i", "-c", "%s; true" % missing], executable="/usr/bin/bash", cwd=workdir,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=30,
    )
    deadline = time.monotonic() + WAIT_SECONDS
    failed = None
    while failed is None and time.monotonic() < deadline:
        for event in sensor.poll(0.1):
            if event.type == "execve" and event.res < 0 and event.args.get("filename") == str(missing):
                failed = event
    assert failed is not None, "no failed-exec event"
    assert failed.res == -2 and failed.proc.exepath.endswith("/bash")
    assert not [rule.name for rule in ruleset.match(failed) if rule.source == "sigma"]
    succeeded = Event("execve", failed.proc, res=0)
    assert "Bash Interactive Shell" in {rule.name for rule in ruleset.match(succeeded)}


def test_sentinel_run_with_sigma_rules_writes_sigma_alerts(workdir):
    """`sentinel run --rules <Sigma folder> --rules <Falco file>`: a real alert line, source sigma."""
    repo = Path(__file__).resolve().parents[2]
    notify_path = workdir / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(1.0)
    alerts_path = workdir / "alerts.json"
    config_path = workdir / "sentinel.yaml"
    config_path.write_text("control:\n  socket: %s\n" % (workdir / "control.sock"))
    command = [
        sys.executable, "-m", "sentinel.cli", "run", "--config", str(config_path), "--db", str(workdir / "events.db"),
        "--alerts-file", str(alerts_path), "--rules", str(CORPUS), "--rules", str(repo / "rules" / "sentinel_rules.yaml"),
    ]
    log_path = workdir / "agent.log"
    with open(log_path, "wb") as log:
        agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=repo,
                                 env=dict(os.environ, NOTIFY_SOCKET=str(notify_path)))
    try:
        deadline = time.monotonic() + 120
        notifications = ""
        while "READY=1" not in notifications:
            assert agent.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            try:
                notifications += notify.recv(4096).decode()
            except TimeoutError:
                pass
        target = workdir / ("immutable-" + uuid.uuid4().hex)
        target.write_text("x")
        subprocess.run(["chattr", "-i", str(target)], executable="/usr/bin/chattr", check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        alert = None
        deadline = time.monotonic() + WAIT_SECONDS
        while alert is None and time.monotonic() < deadline:
            lines = alerts_path.read_text().splitlines() if alerts_path.exists() else []
            for line in lines:
                record = json.loads(line)
                if record["rule"] == "Remove Immutable File Attribute" and str(target) in record["output"]:
                    alert = record
            time.sleep(0.1)
        assert alert is not None, log_path.read_text()[-3000:]
        assert alert["source"] == "sigma"
        assert alert["priority"] == "Warning"  # Sigma level medium
        assert {"attack.t1222.002", "sigma"} <= set(alert["tags"])
        assert alert["output_fields"]["proc.exepath"] == "/usr/bin/chattr"
        assert alert["sigma"]["id"] == "34979410-e4b5-4e5d-8cfb-389fdff05c12" and alert["sigma"]["level"] == "medium"
        assert alert["sigma"]["references"] and all(url.startswith("https://") for url in alert["sigma"]["references"])
        assert alert["output"].startswith("Remove Immutable File Attribute (sigma 34979410-e4b5-4e5d-8cfb-389fdff05c12) ")
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        notify.close()
    # the load was reported: counts, and each skipped rule with its location and reason
    records = []
    for line in log_path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    (loaded,) = [r for r in records if r.get("event") == "rules.loaded"]
    assert loaded["rules.sigma_rules"] == 132 and loaded["rules.sigma_skipped.unavailable-field"] == 3
    skipped = [r for r in records if r.get("event") == "rules.sigma_skipped"]
    assert {r["rule.name"] for r in skipped} == {
        "Linux Crypto Mining Pool Connections",
        "Communication To LocaltoNet Tunneling Service Initiated - Linux",
        "Communication To Ngrok Tunneling Service - Linux",
    }
    assert all("DestinationHostname" in r["reason"] and r["rule.location"].endswith(":9") for r in skipped)


def matches_until(sensor: Sensor, ruleset, predicate, timeout: float = WAIT_SECONDS) -> set[str]:
    """Names of the Sigma rules raised by the first event that satisfies `predicate`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in sensor.poll(0.1):
            if predicate(event):
                return {rule.name for rule in ruleset.match(event) if rule.source == "sigma"}
    raise AssertionError("no matching event within %.0fs" % timeout)


def test_file_event_rules_raise_alerts_on_real_file_creations(ruleset, sensor, workdir):
    """TargetFilename means a file was created: a `wget` (a copy of touch under that name)
    creating a file in /tmp, and the Triple Cross rootkit's lock file /tmp/rootlog."""
    assert ruleset.interest.open_created
    wget = workdir / "wget"
    shutil.copy2("/usr/bin/touch", wget)
    created = Path("/tmp") / ("sentinel-sigma-download-" + uuid.uuid4().hex)
    existed_before = Path("/tmp/rootlog").exists()
    try:
        subprocess.run([str(wget), str(created)], check=True)
        raised = matches_until(sensor, ruleset, lambda e: e.fd is not None and e.fd.name == str(created) and e.fd.created)
        assert "Wget Creating Files in Tmp Directory" in raised
        if not existed_before:
            subprocess.run(["/usr/bin/touch", "/tmp/rootlog"], check=True)
            raised = matches_until(sensor, ruleset, lambda e: e.fd is not None and e.fd.name == "/tmp/rootlog" and e.fd.created)
            assert "Triple Cross eBPF Rootkit Default LockFile" in raised
        # Opening an existing file is not a creation: no file_event rule (the kernel filter
        # may drop the open altogether, since these rules only want created files).
        subprocess.run([str(wget), str(created)], check=True)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for event in sensor.poll(0.1):
                if event.fd is not None and event.fd.name == str(created):
                    assert not event.fd.created
                    assert "Wget Creating Files in Tmp Directory" not in {r.name for r in ruleset.match(event)}
    finally:
        created.unlink(missing_ok=True)
        if not existed_before:
            Path("/tmp/rootlog").unlink(missing_ok=True)


@pytest.fixture
def remote_host():
    """A peer with a non-loopback address: a network namespace joined to this one by a veth pair
    (198.18.0.0/30, the benchmarking range), listening on 4444. Removed afterwards."""
    name = "snt" + uuid.uuid4().hex[:8]
    host_if, peer_if = name + "h", name + "p"
    commands = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if],
        ["ip", "link", "set", peer_if, "netns", name],
        ["ip", "addr", "add", "198.18.0.1/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "-n", name, "addr", "add", "198.18.0.2/30", "dev", peer_if],
        ["ip", "-n", name, "link", "set", peer_if, "up"],
        ["ip", "-n", name, "link", "set", "lo", "up"],
    ]
    listener = None
    try:
        for command in commands:
            subprocess.run(command, check=True)
        listener = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c",
             "import socket; s = socket.socket(); s.bind(('198.18.0.2', 4444)); s.listen(8)\n"
             "while True: s.accept()[0].close()"],
        )
        deadline = time.monotonic() + 10
        while True:
            probe = subprocess.run(["ip", "netns", "exec", name, "ss", "-ltn", "sport = :4444"], capture_output=True, text=True)
            if "LISTEN" in probe.stdout:
                break
            assert time.monotonic() < deadline, "listener in the namespace did not start"
            time.sleep(0.1)
        yield "198.18.0.2"
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_network_connection_rules_raise_alerts_on_a_real_connect(ruleset, sensor, remote_host):
    """bash's /dev/tcp to port 4444 of a non-local peer: a back-connect shell and a known
    malware callback port. The same connect to loopback raises neither."""
    script = "exec 3<>/dev/tcp/%s/4444; exec 3>&-"
    subprocess.run(["/usr/bin/bash", "-c", script % remote_host], check=True, timeout=10)
    raised = matches_until(sensor, ruleset, lambda e: e.type == "connect" and e.fd is not None and e.fd.rip == remote_host)
    assert "Potentially Suspicious Malware Callback Communication - Linux" in raised
    assert "Linux Reverse Shell Indicator" in raised

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        subprocess.run(["/usr/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/%d; exec 3>&-" % port], check=True, timeout=10)
        raised = matches_until(sensor, ruleset, lambda e: e.type == "connect" and e.fd is not None and e.fd.rport == port)
        assert not raised
    finally:
        server.close()
