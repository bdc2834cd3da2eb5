"""Command line: thin wrappers over the library; each command's docstring shows an example."""

from __future__ import annotations

import sys

import click

from sentinel import __version__
from sentinel.errors import SentinelError


class _Group(click.Group):
    """Reports SentinelError as one clean line (with its location) and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SentinelError as exc:
            click.echo("sentinel: error: %s" % exc, err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="sentinel")
def main() -> None:
    """sentinel: eBPF sensors, Falco rules and in-kernel enforcement."""


@main.command()
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False), help="Configuration file (YAML).")
@click.option("--rules", "rule_paths", multiple=True, metavar="PATH", help="Rule file or folder (repeatable); default: the shipped rules.")
@click.option("--db", "db_path", metavar="PATH", help="SQLite event store (default /var/lib/sentinel/events.db as root).")
@click.option("--alerts-file", metavar="PATH|-", help="Where alert lines go ('-' is stdout).")
def run(config_path: str | None, rule_paths: tuple[str, ...], db_path: str | None, alerts_file: str | None) -> None:
    """Run the agent in the foreground until SIGTERM or SIGINT.

    Example: sudo sentinel run --rules rules/ --rules /etc/sentinel/rules.d --alerts-file -
    """
    import dataclasses

    from sentinel import config as configuration
    from sentinel import log
    from sentinel.agent import Agent

    cfg = configuration.load(config_path, rules=rule_paths or None)
    if db_path:
        cfg = cfg.replace(store=dataclasses.replace(cfg.store, path=db_path))
    if alerts_file:
        cfg = cfg.replace(alerts=dataclasses.replace(cfg.alerts, file=alerts_file))
    log.configure(cfg.log_level)
    agent = Agent(cfg, config_path)
    agent.install_signal_handlers()
    agent.start()
    agent.run()


@main.command()
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False), help="Configuration file (for the socket path).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def status(config_path: str | None, as_json: bool) -> None:
    """Counters of the running agent: events, drops, alerts per rule, store latency.

    Example: sudo sentinel status --json
    """
    import json

    from sentinel import config as configuration
    from sentinel.control import request

    result = request(configuration.load(config_path).control_socket, "status")
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    for key, value in result.items():
        if isinstance(value, dict):
            click.echo("%s:" % key)
            for sub, sub_value in sorted(value.items()):
                click.echo("  %-28s %s" % (sub, sub_value))
        else:
            click.echo("%-30s %s" % (key, value))


@main.command()
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False), help="Configuration file (for the socket path).")
def reload(config_path: str | None) -> None:
    """Ask the running agent to reload its rules (the old set stays if the new one has errors).

    Example: sudo sentinel reload
    """
    from sentinel import config as configuration
    from sentinel.control import request

    result = request(configuration.load(config_path).control_socket, "reload")
    if not result.get("ok"):
        raise click.ClickException("reload failed, previous rules kept: %s" % result.get("error"))
    click.echo("rules reloaded: version %s" % result["version"])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False), help="Configuration file (for the BTF cache directory).")
def doctor(as_json: bool, config_path: str | None) -> None:
    """Try each kernel feature sentinel uses and show what enforcement gets here.

    Exit status 1 when the agent cannot run (no way to compile, no ring buffer or no
    tracepoints). Example: sudo sentinel doctor --json
    """
    import json

    from sentinel import config
    from sentinel.kernel import probe

    report = probe.doctor_report(config.load(config_path).sensor.btf_cache_dir)
    click.echo(json.dumps(report) if as_json else probe.format_report(report))
    sys.exit(0 if report["can_run"] else 1)


@main.command()
@click.option("--type", "event_types", multiple=True, metavar="TYPE", help="Only this event type (repeatable): execve, procexit, ...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, with every field.")
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False), help="Configuration file.")
def trace(event_types: tuple[str, ...], as_json: bool, config_path: str | None) -> None:
    """Print live kernel events as they happen, without rules (Ctrl-C to stop).

    Example: sudo sentinel trace --type execve --type procexit
    """
    from sentinel import config, trace as tracing

    sys.exit(tracing.run(config.load(config_path), event_types, as_json, sys.stdout))


@main.command()
@click.option("--container", metavar="ID", help="Only the processes of this container (its id, or 'host').")
@click.option("--pid", type=int, metavar="PID", help="Only this process and its ancestors.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, with every field.")
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False), help="Configuration file.")
def ps(container: str | None, pid: int | None, as_json: bool, config_path: str | None) -> None:
    """Show running processes as rules will see them: ancestry, user names resolved in each
    process's own root, container ids. Reads /proc only; nothing is loaded into the kernel.

    Example: sudo sentinel ps --container 3f4c2b1a0e9d
    """
    import json
    import shutil

    from sentinel import config
    from sentinel.enrich import pstree
    from sentinel.enrich.proctable import ProcessTable

    table = ProcessTable(config.load(config_path).sensor)
    table.bootstrap()
    procs = pstree.select(table.processes(), container=container, pid=pid)
    if pid is not None and not procs:
        raise click.ClickException("no process %d" % pid)
    if as_json:
        lines = (json.dumps(pstree.process_record(proc)) for proc in procs)
    else:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        lines = pstree.format_tree(procs, width)
    for line in lines:
        click.echo(line)


# --- reading the event store ------------------------------------------------------------------

_db_option = click.option(
    "--db", "db_path", metavar="PATH", help="Event store to read (default: store.path of the configuration)."
)
_json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")


def _open_store(db_path: str | None):
    from sentinel import config
    from sentinel.actions.store import open_readonly

    return open_readonly(db_path or config.load().db_path)


def _print_result(result, as_json: bool) -> None:
    from sentinel.actions.store_query import format_json_lines, format_table

    text = format_json_lines(result) if as_json else format_table(result)
    if text:
        click.echo(text)


@main.command()
@click.argument("sql")
@_db_option
@_json_option
def query(sql: str, db_path: str | None, as_json: bool) -> None:
    """Run SQL on the event store, read-only (tables: events, alerts, processes, actions).

    Example: sentinel query "SELECT proc_name, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC"
    """
    from sentinel.actions.store_query import run_query

    _print_result(run_query(_open_store(db_path), sql), as_json)


@main.command()
@click.option("--since", help="Only newer: a duration (30m, 1h, 2d) or a UTC time (2026-11-23T10:00).")
@click.option("--rule", help="Only alerts of this rule.")
@click.option("--priority", help="Only this priority or more severe (e.g. warning).")
@click.option("--limit", default=100, show_default=True, help="At most this many, newest first.")
@_db_option
@_json_option
def alerts(since: str | None, rule: str | None, priority: str | None, limit: int, db_path: str | None, as_json: bool) -> None:
    """List stored alerts, newest first.

    Example: sentinel alerts --since 1h --priority warning --json
    """
    from sentinel.actions import store_query

    since_ns = store_query.parse_since(since) if since else None
    columns = store_query.ALERT_DETAIL_COLUMNS if as_json else store_query.ALERT_LIST_COLUMNS
    result = store_query.query_alerts(
        _open_store(db_path), since_ns=since_ns, rule=rule, priority=priority, limit=limit, columns=columns
    )
    _print_result(result, as_json)


@main.command()
@click.argument("condition", required=False)
@click.option("--type", "event_types", multiple=True, help="Only this event type (repeatable): execve, connect, ...")
@click.option("--pid", type=int, help="Only events of this process id.")
@click.option("--comm", help="Only events of processes with this name.")
@click.option("--since", help="Only newer: a duration (30m, 1h, 2d) or a UTC time (2026-11-23T10:00).")
@click.option("--limit", default=100, show_default=True, help="At most this many, newest first.")
@click.option(
    "--rules", "rule_paths", multiple=True, type=click.Path(exists=True), help="Rule file(s) whose macros and lists CONDITION may use."
)
@_db_option
@_json_option
def events(
    condition: str | None,
    rule_paths: tuple[str, ...],
    event_types: tuple[str, ...],
    pid: int | None,
    comm: str | None,
    since: str | None,
    limit: int,
    db_path: str | None,
    as_json: bool,
) -> None:
    """List stored events, newest first; CONDITION is in the rule language.

    Example: sentinel events "proc.name = curl and fd.sport = 443" --since 2h
    """
    from sentinel.actions import store_query

    ruleset = None
    if rule_paths:
        from sentinel.rules.ruleset import load_rules

        ruleset = load_rules(list(rule_paths))
    since_ns = store_query.parse_since(since) if since else None
    columns = store_query.EVENT_DETAIL_COLUMNS if as_json else store_query.EVENT_LIST_COLUMNS
    result = store_query.query_events(
        _open_store(db_path),
        condition=condition,
        ruleset=ruleset,
        since_ns=since_ns,
        event_types=event_types,
        pid=pid,
        comm=comm,
        limit=limit,
        columns=columns,
    )
    _print_result(result, as_json)


@main.command()
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False), help="Configuration file (store and socket paths).")
@click.option("--socket", "socket_path", metavar="PATH", help="The agent's control socket, for kill/deny/ack (default: from the configuration).")
@_db_option
def tui(config_path: str | None, socket_path: str | None, db_path: str | None) -> None:
    """Browse alerts and events in a terminal UI, live while the agent writes (press ? for keys).

    Example: sentinel tui --db /var/lib/sentinel/events.db
    """
    from sentinel import config
    from sentinel.tui.app import run as run_tui

    settings = config.load(config_path)
    run_tui(db_path or settings.db_path, socket_path or settings.control_socket)


@main.group()
def forward() -> None:
    """Forwarding to SIEMs (syslog, RELP, webhook, Splunk HEC, Elasticsearch, Loki, files)."""


@forward.command("test")
@click.argument("name")
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False), help="Configuration file.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for the acknowledgement.")
def forward_test(name: str, config_path: str | None, timeout: float) -> None:
    """Send one test alert to output NAME and report whether the receiver acknowledged it.

    Example: sentinel forward test soc-relp --config /etc/sentinel/sentinel.yaml
    """
    from sentinel import config
    from sentinel.actions.forward.probe import send_test_alert

    result = send_test_alert(config.load(config_path), name, timeout)
    if result.delivered:
        click.echo("ok: output %s (%s) acknowledged test alert %s in %.0f ms"
                   % (result.output, result.type, result.record_id, result.seconds * 1000))
        return
    click.echo("failed: output %s (%s): %s" % (result.output, result.type, result.error), err=True)
    sys.exit(1)


@forward.command("status")
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False), help="Configuration file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def forward_status(config_path: str | None, as_json: bool) -> None:
    """Show each output's position in the outbox: delivered up to, backlog, records lost.

    Example: sentinel forward status --config /etc/sentinel/sentinel.yaml
    """
    import dataclasses
    import json

    from sentinel import config
    from sentinel.actions.forward.outbox import read_status

    rows = read_status(config.load(config_path).outbox_path)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
        return
    click.echo("%-24s %12s %12s %10s %8s" % ("output", "cursor", "head", "backlog", "lost"))
    for row in rows:
        click.echo("%-24s %12d %12d %10d %8d" % (row.output, row.cursor, row.head, row.backlog, row.lost))


@main.group()
def rules() -> None:
    """Rule files in Falco's language: validate them, list fields, run test cases."""


@rules.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object: counts, errors, warnings, interest.")
def rules_validate(paths: tuple[str, ...], as_json: bool) -> None:
    """Load rule files (or folders) in order; exit 1 if any has an error.

    Example: sentinel rules validate rules/ /etc/sentinel/rules.d/local.yaml
    """
    import json

    from sentinel.rules.validate import validate

    result = validate(list(paths))
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else result.text())
    sys.exit(0 if result.ok else 1)


@rules.command("fields")
@click.option("--json", "as_json", is_flag=True, help="JSON list of fields.")
@click.option("--markdown", is_flag=True, help="The field map as Markdown (docs/fields.md).")
def rules_fields(as_json: bool, markdown: bool) -> None:
    """List every field a condition or output can use, with where its value comes from.

    Example: sentinel rules fields --markdown > docs/fields.md
    """
    import json

    from sentinel.rules import fields

    if markdown:
        click.echo(fields.markdown(), nl=False)
        return
    entries = fields.all_fields()
    if as_json:
        click.echo(json.dumps([{"name": f.name, "type": f.type, "arg": f.arg, "doc": f.doc, "source": f.source}
                               for f in entries], indent=2))
        return
    for entry in entries:
        click.echo("%-40s %-8s %s" % (entry.name + ("[arg]" if entry.arg != "none" else ""), entry.type, entry.doc))


@rules.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--rules-dir", "rules_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Where to look for the rule files a case file names, if not beside it (repeatable).")
def rules_test(paths: tuple[str, ...], rules_dirs: tuple[str, ...]) -> None:
    """Run rule test cases (YAML events and the rules that must or must not match).

    Example: sentinel rules test rules/tests/
    """
    from sentinel.rules.testcases import run_paths

    results = run_paths(list(paths), list(rules_dirs))
    failed = [result for result in results if not result.passed]
    for result in failed:
        click.echo(str(result))
    click.echo("%d passed, %d failed" % (len(results) - len(failed), len(failed)))
    sys.exit(1 if failed else 0)


@main.group()
def enforce() -> None:
    """Kill and deny decisions in the kernel: what is enforced now, and in which mode."""


@enforce.command("list")
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False), help="Configuration file (for the socket path).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def enforce_list(config_path: str | None, as_json: bool) -> None:
    """Show modes, deny entries with their rules and mechanisms, and the kernel maps now.

    Without a running agent, shows what sentinel still has in the kernel (bpftool).
    Example: sudo sentinel enforce list
    """
    import json

    from sentinel import config as configuration
    from sentinel.actions.enforce import format_listing, kernel_objects_text
    from sentinel.control import ControlError, request

    try:
        listing = request(configuration.load(config_path).control_socket, "enforce_list")
    except ControlError as exc:
        click.echo("no agent answers (%s); sentinel objects in the kernel:" % exc, err=True)
        click.echo(kernel_objects_text())
        return
    click.echo(json.dumps(listing, indent=2, sort_keys=True) if as_json else format_listing(listing))


@enforce.command("mode")
@click.argument("mode", type=click.Choice(["audit", "enforce"]))
@click.option("--rule", metavar="NAME", help="Only this rule (default: the global mode).")
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False), help="Configuration file (for the socket path).")
def enforce_mode(mode: str, rule: str | None, config_path: str | None) -> None:
    """Switch the running agent (or one rule) between audit and enforce.

    A rule acts only when both the global mode and its own are enforce.
    Example: sudo sentinel enforce mode enforce --rule "Deny crypto miners"
    """
    from sentinel import config as configuration
    from sentinel.control import request

    result = request(configuration.load(config_path).control_socket, "mode", mode=mode, rule=rule)
    click.echo("global mode: %s" % result["global"])
    for name, rule_mode in result["rules"].items():
        click.echo("  %-40s %s" % (name, rule_mode))


if __name__ == "__main__":
    main()
