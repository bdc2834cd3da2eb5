"""`sentinel doctor`: the probe table, the mechanism choice and the exit status."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from sentinel.cli import main
from sentinel.kernel import probe
from sentinel.kernel.probe import ProbeResult


@pytest.mark.kernel
def test_doctor_json_is_one_object_on_stdout_and_exit_zero_here():
    done = subprocess.run([sys.executable, "-m", "sentinel.cli", "doctor", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["can_run"] is True and report["cannot_run_because"] == []
    by_name = {p["name"]: p for p in report["probes"]}
    assert by_name["ringbuf"]["ok"] and by_name["tracepoint"]["ok"]
    assert set(report["enforcement"]) == {"deny_exec", "deny_open", "deny_connect", "kill"}
    # what this kernel gets follows from the probes, never from a version number
    expected = probe.enforcement_mechanisms([ProbeResult(p["name"], p["ok"]) for p in report["probes"]])
    assert report["enforcement"] == {k: list(v) for k, v in expected.items()}
    assert any(flag.startswith("-DSENTINEL_HAVE_") for flag in report["btf_feature_cflags"])


@pytest.mark.kernel
def test_doctor_table_lists_features_mechanisms_and_verdict():
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["FEATURE", "STATUS", "DETAIL"]
    assert any(line.split()[:2] == ["ringbuf", "ok"] for line in lines[1:] if line.strip())
    assert "ENFORCEMENT" in lines
    assert [line for line in lines if line.startswith("deny_connect")]
    assert lines[-1] == "verdict: the agent can run here"


def _fake_probes(failing: str):
    def run_probes(configured_cache_dir=None):
        names = ("btf", "header_tree", "ringbuf", "tracepoint", "send_signal", "cgroup_sock_addr", "bpf_lsm")
        return [
            ProbeResult(n, n not in (failing, "bpf_lsm"), "fine", "" if n not in (failing, "bpf_lsm") else "EPERM")
            for n in names
        ]

    return run_probes


@pytest.mark.parametrize(
    ("failing", "reason"),
    [
        ("ringbuf", "no BPF ring buffer"),
        ("tracepoint", "tracepoints cannot be attached"),
        ("header_tree", "cannot compile"),
    ],
)
def test_doctor_exits_non_zero_when_the_agent_cannot_run(monkeypatch, failing, reason):
    monkeypatch.setattr(probe, "run_probes", _fake_probes(failing))
    monkeypatch.setattr(probe.headers, "btf_feature_cflags", lambda configured_cache_dir=None: [])
    as_json = CliRunner().invoke(main, ["doctor", "--json"])
    assert as_json.exit_code == 1
    report = json.loads(as_json.output)
    assert report["can_run"] is False and any(reason in r for r in report["cannot_run_because"])
    table = CliRunner().invoke(main, ["doctor"])
    assert table.exit_code == 1
    assert "CANNOT run" in table.output and reason in table.output


def test_doctor_says_when_it_is_not_root(monkeypatch):
    monkeypatch.setattr(probe, "run_probes", _fake_probes("none"))
    monkeypatch.setattr(probe.headers, "btf_feature_cflags", lambda configured_cache_dir=None: [])
    monkeypatch.setattr(probe.os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(main, ["doctor", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["cannot_run_because"] == ["not running as root: loading BPF programs needs root"]


def test_doctor_uses_the_configured_btf_cache(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(probe, "run_probes", lambda configured_cache_dir=None: seen.append(configured_cache_dir) or [])
    monkeypatch.setattr(probe.headers, "btf_feature_cflags", lambda configured_cache_dir=None: [])
    config = tmp_path / "sentinel.yaml"
    config.write_text("sensor:\n  btf_cache_dir: %s\n" % (tmp_path / "cache"))
    CliRunner().invoke(main, ["doctor", "--config", str(config)])
    assert seen == [str(tmp_path / "cache")]
