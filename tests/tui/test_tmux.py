"""`sentinel tui` in a real terminal (tmux), on the store of a real agent that saw a real exec.

What a person would see: the alert's rule in the list, its detail after Enter, the result of
a filter, and an acknowledgement that went through the agent's control socket.
"""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXEC_FROM_TMP = "Execution from shared memory or temporary directory"


def _running_agent_class():
    """The agent tests' RunningAgent (a real `sentinel run` in a subprocess)."""
    spec = importlib.util.spec_from_file_location("agent_test_support", REPO / "tests" / "agent" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RunningAgent


class Tmux:
    def __init__(self, name: str, command: str, width: int = 100, height: int = 30) -> None:
        self.name = name
        # COLUMNS/LINES from pytest's environment would override the terminal's real size.
        command = "env -u COLUMNS -u LINES " + command
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), command], check=True, cwd=REPO
        )

    def screen(self) -> str:
        result = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
        return result.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def type(self, text: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, "-l", text], check=True)

    def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if needle in screen:
                return screen
            if time.monotonic() > deadline:
                size = subprocess.run(
                    ["tmux", "display", "-p", "-t", self.name, "#{window_width}x#{window_height}"], capture_output=True, text=True
                ).stdout.strip()
                raise AssertionError("%r not on screen (%s) after %.0f s:\n%s" % (needle, size, timeout, screen))
            time.sleep(0.1)

    def pane_title(self) -> str:
        result = subprocess.run(["tmux", "display", "-p", "-t", self.name, "#{pane_title}"], capture_output=True, text=True)
        return result.stdout.strip()

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def workdir():
    directory = Path(tempfile.mkdtemp(prefix="sentinel-tui-"))
    payload_dir = Path("/dev/shm") / ("sentinel-tui-" + uuid.uuid4().hex[:8])
    payload_dir.mkdir()
    yield directory, payload_dir
    shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(payload_dir, ignore_errors=True)


@pytest.mark.kernel
def test_tui_in_a_terminal_shows_the_real_agents_alert_filters_details_and_acks(workdir):
    directory, payload_dir = workdir
    agent = _running_agent_class()(directory, [REPO / "rules" / "sentinel_rules.yaml"])
    tmux = None
    try:
        agent.wait_for_notification("READY=1")
        token = uuid.uuid4().hex[:10]
        payload = payload_dir / "payload"
        shutil.copy("/bin/true", payload)
        subprocess.run([str(payload), token], check=True)
        agent.wait_for_alert(lambda a: a["rule"] == EXEC_FROM_TMP and token in a["output"])

        command = "%s -m sentinel.cli tui --db %s --socket %s" % (sys.executable, agent.db, agent.socket_path)
        # Tall enough for the whole ancestry tree: under `make test` the chain runs up through
        # make, the CI script and pytest, and a 30-row screen cut the process itself off.
        tmux = Tmux("sentinel-tui-test-%s" % token, command, height=50)
        screen = tmux.wait_for("Execution from shared memory")
        assert "sentinel" in screen.splitlines()[0] and "ALERTS" in screen.splitlines()[0]

        # The filter bar: only the payload's alert remains.
        tmux.keys("f")
        time.sleep(0.3)  # keys typed faster than focus moves would land on the list's bindings
        tmux.type("proc.exepath startswith %s/ and proc.args contains %s" % (payload_dir, token))
        tmux.keys("Enter")
        screen = tmux.wait_for(" 1 rows filter")  # the status line names an active filter
        time.sleep(0.3)  # a person's pause: focus has moved from the filter bar to the list
        rows = [line for line in screen.splitlines() if "WARN" in line]
        assert len(rows) == 1 and "Execution from shared memory" in rows[0]

        # The detail pane: output with the exe path, the process and its ancestry.
        tmux.keys("Enter")
        screen = tmux.wait_for("process ancestry:")
        assert "output: Program executed from a writable temporary location (exe=%s" % payload in screen.replace("\n", "")
        assert "payload [" in screen, screen  # the process itself, deepest in the tree
        tree_lines = [line for line in screen.splitlines() if "└──" in line]
        assert tree_lines and "payload [" in tree_lines[-1]

        # Acknowledge through the agent's control socket, after confirming.
        tmux.keys("a")
        tmux.wait_for("Acknowledge alert")
        time.sleep(0.3)
        tmux.keys("y")
        tmux.wait_for("ack: {'acknowledged': 1")

        # A program whose name sets the terminal title and whose argv holds Rich markup,
        # run while the TUI is live: shown escaped, the title untouched.
        title_before = tmux.pane_title()
        hostile = payload_dir / "ev\x1b]0;pwned\x07il"
        shutil.copy("/bin/true", hostile)
        subprocess.run([str(hostile), "[bold]" + token], check=True)
        tmux.keys("Escape", "c")
        time.sleep(0.3)
        tmux.type("/")
        time.sleep(0.3)
        tmux.type("pwned")
        tmux.keys("Enter")
        tmux.wait_for(" 1 rows text~pwned")
        time.sleep(0.3)
        tmux.keys("Enter")
        screen = tmux.wait_for("process ancestry:")
        assert "ev\\x1b]0;pwned\\x07il" in screen
        assert "[bold]" + token in screen.replace("\n", "")
        assert tmux.pane_title() == title_before != "pwned"
        tmux.keys("q")
        time.sleep(0.5)
    finally:
        if tmux is not None:
            tmux.kill()
        agent.stop()

    conn = sqlite3.connect(agent.db)
    acknowledged = conn.execute("SELECT acknowledged FROM alerts WHERE rule = ? AND output LIKE ?", (EXEC_FROM_TMP, "%" + token + "%")).fetchone()
    assert acknowledged == (1,)
    assert conn.execute("SELECT count(*) FROM actions WHERE kind = 'ack' AND detail = 'uid 0'").fetchone()[0] == 1
