"""`sentinel ps`: the tree view, its filters, and the command on this machine."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner

from sentinel.cli import main
from sentinel.enrich.pstree import format_tree, process_record, select
from sentinel.events.model import Process


def family() -> list[Process]:
    init = Process(1, 1, comm="init", exepath="/sbin/init", user_name="root")
    shell = Process(50, 5, comm="bash", exepath="/bin/bash", user_name="alice", uid=1000, parent=init)
    job = Process(
        60, 6, comm="evil", exepath="/tmp/\x1b[2Jevil", args=("-x",), parent=shell, container_id="3f4c2b1a0e9d"
    )
    daemon = Process(40, 4, comm="sshd", exepath="/usr/sbin/sshd", user_name="root", parent=init)
    return [job, daemon, init, shell]


def test_tree_nests_children_by_start_and_escapes_untrusted_text():
    lines = list(format_tree(family()))
    assert lines[0].split() == ["PID", "USER", "COMMAND"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "40", "50", "60"]
    assert lines[3].endswith("  /bin/bash")  # depth 1
    assert "    /tmp/\\x1b[2Jevil -x  container=3f4c2b1a0e9d" in lines[4]  # depth 2, escaped
    assert "\x1b" not in "".join(lines)
    narrow = list(format_tree(family(), width=30))
    assert all(len(line) <= 30 for line in narrow) and narrow[4].endswith("…")


def test_select_by_container_and_by_pid():
    procs = family()
    assert [p.pid for p in select(procs, container="3f4c2b1a0e9d" + "0" * 52)] == [60]
    assert sorted(p.pid for p in select(procs, container="host")) == [1, 40, 50]
    assert [p.pid for p in select(procs, pid=60)] == [1, 50, 60]
    assert select(procs, pid=999) == []
    # a process whose parent is filtered out becomes a root of the tree
    assert [line.split()[0] for line in list(format_tree(select(procs, container="3f4c2b1a0e9d")))[1:]] == ["60"]


def test_record_has_ancestors_nearest_first():
    job = family()[0]
    record = process_record(job)
    assert record["ancestors"] == [50, 1]
    assert record["container_id"] == "3f4c2b1a0e9d" and record["args"] == ["-x"]
    json.dumps(record)


def test_ps_command_on_this_machine():
    runner = CliRunner()
    result = runner.invoke(main, ["ps", "--pid", str(os.getpid()), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    assert records[0]["pid"] == 1 and records[-1]["pid"] == os.getpid()
    assert records[-1]["ancestors"] == [record["pid"] for record in reversed(records[:-1])]
    assert records[-1]["exepath"] == os.path.realpath("/proc/self/exe")
    tree = runner.invoke(main, ["ps"])
    assert tree.exit_code == 0 and any(line.split()[0] == str(os.getpid()) for line in tree.output.splitlines()[1:])
    missing = runner.invoke(main, ["ps", "--pid", "999999999"])
    assert missing.exit_code == 1 and "no process 999999999" in missing.output
