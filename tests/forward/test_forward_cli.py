"""`sentinel forward test NAME --config FILE` against a live receiver and a dead one."""

from __future__ import annotations

import json

from click.testing import CliRunner
from forward_harness import IDENTITY, free_port, make_alert, wait_for

from sentinel import config
from sentinel.actions.forward import Forwarder
from sentinel.actions.forward.probe import TEST_RULE
from sentinel.cli import main


def write_config(tmp_path, url: str) -> str:
    path = tmp_path / "sentinel.yaml"
    path.write_text(
        "outputs:\n"
        "  - name: hook\n    type: webhook\n    url: %s\n    min_priority: critical\n    rules: [Something else]\n"
        "  - name: file\n    type: jsonfile\n    path: %s\n" % (url, tmp_path / "alerts.jsonl")
    )
    return str(path)


def test_forward_test_reports_an_acknowledged_alert(tmp_path, http_receiver):
    receiver = http_receiver("webhook")
    result = CliRunner().invoke(main, ["forward", "test", "hook", "--config", write_config(tmp_path, receiver.url)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: output hook (webhook) acknowledged test alert ")
    (request,) = receiver.requests
    body = json.loads(request["body"])
    assert body["rule"] == TEST_RULE and body["id"] in result.output  # the output's filter did not hide it


def test_forward_test_reports_a_dead_receiver_and_exits_1(tmp_path):
    url = "http://127.0.0.1:%d" % free_port()
    result = CliRunner().invoke(main, ["forward", "test", "hook", "--config", write_config(tmp_path, url), "--timeout", "1"])
    assert result.exit_code == 1
    assert "failed: output hook (webhook):" in result.output and "refused" in result.output.lower()


def test_forward_test_unknown_output_lists_the_known_ones(tmp_path):
    result = CliRunner().invoke(main, ["forward", "test", "nope", "--config", write_config(tmp_path, "http://127.0.0.1:1")])
    assert result.exit_code == 1
    assert "no output named 'nope' (outputs: hook, file)" in result.output


def test_forward_status_reads_cursors_backlog_and_losses(tmp_path):
    config_path = tmp_path / "sentinel.yaml"
    config_path.write_text(
        "forward:\n  outbox: %s\n  max_rows: 4\n"
        "outputs:\n  - name: file\n    type: jsonfile\n    path: %s\n"
        "  - name: stuck\n    type: jsonfile\n    path: %s\n    backoff_initial: 60\n"
        % (tmp_path / "outbox.db", tmp_path / "a.jsonl", tmp_path / "missing-dir" / "b.jsonl")
    )
    forwarder = Forwarder.from_config(config.load(config_path), identity=IDENTITY, trim_seconds=3600)
    forwarder.start()
    forwarder.submit_many(make_alert(n) for n in range(6))
    forwarder.flush()
    forwarder.outbox.trim({w.settings.name: w.record_filter for w in forwarder.workers[1:]})
    forwarder.stop(timeout=1)
    result = CliRunner().invoke(main, ["forward", "status", "--config", str(config_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["output"]: row for row in json.loads(result.output)}
    assert rows["stuck"] == {"output": "stuck", "cursor": 2, "head": 6, "backlog": 4, "lost": 2}
    table = CliRunner().invoke(main, ["forward", "status", "--config", str(config_path)])
    assert table.exit_code == 0 and table.output.splitlines()[0].split() == ["output", "cursor", "head", "backlog", "lost"]


def test_forward_status_without_an_outbox_is_a_clear_error(tmp_path):
    config_path = tmp_path / "sentinel.yaml"
    config_path.write_text("forward:\n  outbox: %s\n" % (tmp_path / "none.db"))
    result = CliRunner().invoke(main, ["forward", "status", "--config", str(config_path)])
    assert result.exit_code == 1 and "no outbox at" in result.output


def test_forward_test_through_relp_to_rsyslog(tmp_path, rsyslog):
    path = tmp_path / "relp.yaml"
    path.write_text("outputs:\n  - name: soc\n    type: syslog\n    protocol: relp\n    host: 127.0.0.1\n    port: %d\n"
                    % rsyslog.ports["relp"])
    result = CliRunner().invoke(main, ["forward", "test", "soc", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert wait_for(lambda: rsyslog.lines())
    (line,) = rsyslog.lines()
    assert json.loads(line["msg"])["rule"] == TEST_RULE and line["input"] == "relp"
