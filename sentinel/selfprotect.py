"""Rules that watch actions against the agent itself: tracing it, signalling it, rewriting
its configuration, rules or database, and reaching for its BPF objects.

They are ordinary rules in the rule language, built at start with the agent's own pid and
paths, so they are compiled, indexed and alerted on like every other rule. The agent drops
events of its own process before matching (its own actions are not findings); these rules
only look at other processes acting on it.
"""

from __future__ import annotations

from pathlib import Path

from sentinel.config import Config
from sentinel.rules.ast import quote
from sentinel.rules.ruleset import RuleSpec

TAGS = ("sentinel", "self_protection", "mitre_defense_evasion", "T1562.001")


def _names(paths: list[str]) -> str:
    return "(%s)" % ", ".join(quote(p) for p in paths)


def protected_files(config: Config, config_path: str | None) -> tuple[list[str], list[str]]:
    """Exact files and folder prefixes whose modification by another process is an alert."""
    files = [config.db_path, config.db_path + "-wal", config.db_path + "-shm"]
    if config_path:
        files.append(str(Path(config_path).resolve()))
    prefixes = []
    for entry in config.rule_paths:
        path = Path(entry).resolve()
        if path.is_dir():
            prefixes.append(str(path) + "/")
        else:
            files.append(str(path))
    return files, prefixes


def self_protection_rules(config: Config, agent_pid: int, config_path: str | None = None) -> list[RuleSpec]:
    files, prefixes = protected_files(config, config_path)
    written = "fd.name in %s" % _names(files)
    for prefix in prefixes:
        written += " or fd.name startswith %s" % quote(prefix)
    not_agent = "proc.pid != %d" % agent_pid
    return [
        RuleSpec(
            name="Sentinel agent traced by another process",
            desc="A process attached to the sentinel agent with ptrace: it can read or rewrite the agent's memory.",
            condition="evt.type = ptrace and evt.arg.pid = %d and %s" % (agent_pid, not_agent),
            output="Sentinel agent (pid %d) traced: request=%%evt.arg.request by %%proc.name (pid=%%proc.pid command=%%proc.cmdline user=%%user.name)" % agent_pid,
            priority="critical",
            tags=TAGS,
            warn_evttypes=False,
        ),
        RuleSpec(
            name="Sentinel agent signalled by another process",
            desc="A process sent a signal to the sentinel agent: stopping the agent blinds the host.",
            condition="evt.type in (kill, tkill, tgkill, pidfd_send_signal) and evt.arg.pid = %d and %s" % (agent_pid, not_agent),
            output="Sentinel agent (pid %d) signalled with %%evt.arg.sig by %%proc.name (pid=%%proc.pid command=%%proc.cmdline user=%%user.name)" % agent_pid,
            priority="warning",
            tags=TAGS,
            warn_evttypes=False,
        ),
        RuleSpec(
            name="Sentinel configuration, rules or store modified",
            desc="Another process opened the agent's configuration, rule files or database for writing.",
            condition="evt.type in (open, openat, openat2, creat) and evt.is_open_write = true and (%s) and %s" % (written, not_agent),
            output="Sentinel file %fd.name opened for writing by %proc.name (pid=%proc.pid command=%proc.cmdline user=%user.name)",
            priority="warning",
            tags=TAGS,
            warn_evttypes=False,
        ),
        RuleSpec(
            name="BPF objects reached by another process",
            desc=(
                "A process asked the kernel for BPF programs or maps by id, or detached one: how "
                "tools inspect, rewrite or remove the agent's sensors."
            ),
            condition=(
                "evt.type = bpf and evt.arg.cmd in (BPF_PROG_GET_FD_BY_ID, BPF_MAP_GET_FD_BY_ID, BPF_LINK_GET_FD_BY_ID, "
                "BPF_PROG_DETACH, BPF_LINK_DETACH, BPF_OBJ_GET) and %s" % not_agent
            ),
            output="BPF %evt.arg.cmd by %proc.name (pid=%proc.pid command=%proc.cmdline user=%user.name)",
            priority="notice",
            tags=TAGS,
            warn_evttypes=False,
        ),
    ]
